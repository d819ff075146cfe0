"""Shared bits of the benchmarks: naming the machine and timing a callable."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any


def machine() -> str:
    """One line naming this machine (CPU model, core count, OS)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls, in seconds (the minimum is the least noisy estimate)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def load_for_kvpress(threads: int | None) -> tuple[Any, Any] | None:
    """The bundled model (torch, eval mode) and tokenizer for a kvpress benchmark, after printing the machine and
    the versions; ``None``, with the install line on stderr, when kvpress (or the package's press) is missing."""
    try:
        import kvpress  # noqa: F401  (also registers the kv-press-text-generation pipeline)
        import refreekv_torch.kvpress_press  # noqa: F401
    except ImportError as exc:
        print(f'error: this benchmark needs kvpress ({exc}); pip install -e ".[torch,kvpress]"', file=sys.stderr)
        return None
    from importlib.metadata import version

    import torch

    import refreekv_edu as rk
    from refreekv_edu.eval.runner import set_threads

    if threads:
        set_threads(threads, "torch")
    model, tok = rk.load_model("smollm2-135m", backend="torch")
    model.eval()
    print(f"machine: {machine()}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {version('transformers')}, "
          f"kvpress {version('kvpress')}; model smollm2-135m")
    return model, tok
