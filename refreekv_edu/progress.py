"""Progress bars for long loops (the evaluation, batch grading): tqdm when it is installed and wanted.

``tqdm`` is optional (the ``eval`` and ``course`` extras bring it); without it, or with ``enabled=False``, the
loops get :class:`SilentBar`, which counts but prints nothing, so they never need to ask which one they hold.
"""

from __future__ import annotations

import sys
from typing import Any


class SilentBar:
    """The part of tqdm's interface the loops use, printing nothing."""

    def __init__(self, total: int, desc: str):
        self.total, self.n, self.desc = total, 0, desc

    def set_postfix_str(self, text: str) -> None:
        pass

    def update(self, k: int = 1) -> None:
        self.n += k

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "run") -> Any:
    """A bar of ``total`` steps on stderr (tqdm), or a :class:`SilentBar` when disabled or tqdm is missing."""
    if not enabled:
        return SilentBar(total, desc)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return SilentBar(total, desc)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
