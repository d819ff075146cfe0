"""The numpy reference backend: the executable spec every other backend is checked against.

Plain numpy, float32 throughout, no tricks: the fused operations use the
:class:`~refreekv_edu.backend.Backend` defaults, built from the vocabulary below.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .backend import Backend


class NumpyBackend(Backend):
    """numpy implementation of the backend vocabulary (CPU, float32)."""

    name = "numpy"

    def asarray(self, x: Any, dtype: str = "float32") -> np.ndarray:
        if hasattr(x, "detach"):  # a torch tensor from another backend
            x = x.detach()
            if x.is_meta:
                raise ValueError("a meta tensor holds no data; materialise it (e.g. load the weights) first")
            x = (x.float() if x.is_floating_point() else x).cpu().numpy()  # bfloat16 has no numpy dtype
        elif type(x).__module__.startswith("mlx") and "bfloat16" in str(getattr(x, "dtype", "")):
            x = x.astype(sys.modules["mlx.core"].float32)  # mlx is loaded: x is one of its arrays
        return np.asarray(x, dtype=np.dtype(dtype))

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def is_native(self, x: Any) -> bool:
        return isinstance(x, np.ndarray)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by the caller, with advice
            return np.matmul(a, b)

    def transpose_last(self, x: np.ndarray) -> np.ndarray:
        return np.swapaxes(x, -1, -2)

    def softmax(self, x: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # inf - inf from overflowed logits: NaN, reported by the caller
            shifted = (x - np.max(x, axis=axis, keepdims=True)).astype(np.float32)
        e = np.exp(shifted)
        # GPUs (and MLX/torch CPU kernels) flush subnormal results to zero; do the same, so that
        # underflowed attention ties exactly at 0 on every backend and tie-breaking agrees.
        e[e < np.finfo(np.float32).tiny] = 0.0
        return (e / np.sum(e, axis=axis, keepdims=True)).astype(np.float32)

    def cumsum(self, x: np.ndarray, axis: int = -1, reverse: bool = False) -> np.ndarray:
        if not reverse:
            return np.cumsum(x, axis=axis, dtype=np.float32)
        # A real reverse scan: flip, scan, flip back. Each entry is a sum of non-negative
        # terms, so it can never dip below zero the way `total - prefix` can.
        return np.flip(np.cumsum(np.flip(x, axis=axis), axis=axis, dtype=np.float32), axis=axis)

    def sqrt(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(x)

    def sum(self, x: np.ndarray, axis: int) -> np.ndarray:
        return np.sum(x, axis=axis, dtype=np.float32)

    def mean(self, x: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(x, axis=axis, dtype=np.float32)

    def argsort(self, x: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.argsort(x, axis=axis, kind="stable")

    def take_along_axis(self, x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
        return np.take_along_axis(x, idx, axis=axis)

    def max_pool1d(self, x: np.ndarray, kernel: int) -> np.ndarray:
        half = kernel // 2
        padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, kernel - 1 - half)], constant_values=-np.inf)
        windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=-1)
        return windows.max(axis=-1)

    def repeat_heads(self, x: np.ndarray, groups: int) -> np.ndarray:
        return np.repeat(x, groups, axis=0)

    def group_sum(self, x: np.ndarray, groups: int) -> np.ndarray:
        return x.reshape(x.shape[0] // groups, groups, *x.shape[1:]).sum(axis=1, dtype=np.float32)

    def describe(self) -> str:
        return f"numpy {np.__version__} (CPU, reference)"
