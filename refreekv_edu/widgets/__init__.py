"""Interactive explainers for notebooks (optional extra: ``pip install 'refreekv_edu[notebooks]'``).

- :class:`DecisionExplorer` - a trace layer by layer and head by head: kept / evicted / window tokens,
  the halting curve, the budget of every layer.
- :class:`StepThrough` - one decision, evicting candidates one at a time until the halting rule stops.
- :class:`ThresholdPlayground` - move the threshold and watch every layer's budget re-decided instantly,
  next to fixed-budget baselines.
- :func:`synthetic_trace` - a realistic trace made with the numpy reference, no model needed.

ipywidgets and matplotlib are imported only when a widget is first used, so ``import refreekv_edu``
(and even ``import refreekv_edu.widgets``) works without them.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DecisionExplorer": "explorer",
    "StepThrough": "step_through",
    "ThresholdPlayground": "playground",
    "budgets_at_threshold": "playground",
    "synthetic_trace": "synthetic",
    "render_tokens": "token_view",
    "classes_by_position": "token_view",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
