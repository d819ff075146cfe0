"""refreekv_edu: ReFreeKV, threshold-free KV-cache pruning, to read, to teach and to use.

The algorithm lives in :mod:`refreekv_edu.policies` (steps 1-7), with the ranking in
:mod:`refreekv_edu.ranking` and the halting rule in :mod:`refreekv_edu.halting`. It runs
over a backend protocol (:mod:`refreekv_edu.backend`); :mod:`refreekv_edu.reference` is the
numpy reference every other backend (torch + Triton, MLX + Metal) is checked against.

This package imports only numpy and the standard library; model backends are optional extras.
"""

from . import backend, decision, halting, models, ranking
from .backend import Backend, available_backends, get_backend
from .decision import LayerDecision, Trace
from .generate import GenerationResult, generate
from .halting import halting_curve, halting_cut
from .models import fetch_model, load_model
from .policies import FixedBudget, FullCache, Policy, ReFreeKV

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "FixedBudget",
    "FullCache",
    "GenerationResult",
    "LayerDecision",
    "Policy",
    "ReFreeKV",
    "Trace",
    "available_backends",
    "backend",
    "decision",
    "fetch_model",
    "generate",
    "get_backend",
    "halting",
    "halting_cut",
    "halting_curve",
    "load_model",
    "models",
    "ranking",
    "__version__",
]


def __getattr__(name: str):
    # The widgets need ipywidgets + matplotlib (the "notebooks" extra): import them on first use only.
    if name in {"widgets", "exercises", "eval"}:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
