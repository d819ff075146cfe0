"""The MLX backend: the refreekv_edu array vocabulary on ``mx.array``, plus Metal kernels for the fused ops.

MLX arrays are lazy: every op below only records a graph; :meth:`MLXBackend.to_numpy` evaluates it.
The two fused operations (``window_scores``, ``retained_norms``) run as Metal kernels
(:mod:`refreekv_mlx.metal_kernels`) when MLX computes on a Metal GPU, and as the MLX-op defaults of
:class:`refreekv_edu.backend.Backend` otherwise (Linux, or a Mac with the CPU as default device).

The model hooks (``load_model``, ``owns_model``, ``generate``) delegate to the mlx-lm integration in this
package and import it only when called.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

from refreekv_edu.backend import Backend

from . import metal_kernels

_DTYPES = {"float32": mx.float32, "int64": mx.int64, "int32": mx.int32}
_SIGN_BIT = 0x80000000


class MLXBackend(Backend):
    """refreekv_edu backend on MLX arrays.

    Args:
        kernels: ``"auto"`` (Metal kernels when :meth:`has_metal` and the GPU is MLX's default device,
            MLX ops otherwise), ``"metal"`` (always the kernels; raises where Metal is missing) or
            ``"ops"`` (always plain MLX ops, e.g. to compare against the kernels).
    """

    name = "mlx"

    def __init__(self, kernels: str = "auto") -> None:
        if kernels not in ("auto", "metal", "ops"):
            raise ValueError(f"kernels must be 'auto', 'metal' or 'ops', got {kernels!r}")
        self.kernels = kernels

    # ------------------------------------------------------------------ device
    def has_metal(self) -> bool:
        """True when MLX can use a Metal GPU here (Apple silicon)."""
        return bool(mx.metal.is_available())

    def uses_kernels(self) -> bool:
        """True when the fused ops run as Metal kernels with the current settings and default device."""
        if self.kernels == "ops":
            return False
        on_gpu = self.has_metal() and mx.default_device() == mx.gpu
        if self.kernels == "metal" and not on_gpu:
            raise RuntimeError(
                "MLXBackend(kernels='metal') needs a Metal GPU as MLX's default device; "
                "use kernels='auto' or 'ops' on this machine"
            )
        return on_gpu

    # ------------------------------------------------------------------ vocabulary
    def asarray(self, x: Any, dtype: str = "float32") -> mx.array:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if isinstance(x, mx.array):
            return x.astype(_DTYPES[dtype])
        if hasattr(x, "detach"):  # a torch tensor from another backend
            x = x.detach().cpu().float().numpy() if dtype == "float32" else x.detach().cpu().numpy()
        return mx.array(np.asarray(x, dtype=np.dtype(dtype)))

    def to_numpy(self, x: mx.array) -> np.ndarray:
        if not isinstance(x, mx.array):
            return np.asarray(x)
        if x.dtype in (mx.bfloat16,):  # numpy has no bfloat16
            x = x.astype(mx.float32)
        return np.array(x)  # evaluates the lazy graph and copies

    def is_native(self, x: Any) -> bool:
        return isinstance(x, mx.array)

    def all_finite(self, x: Any) -> bool:
        """True when ``x`` holds no NaN or inf."""
        x = self.asarray(x) if not isinstance(x, mx.array) else x
        return bool(mx.all(mx.isfinite(x)).item())

    def matmul(self, a: mx.array, b: mx.array) -> mx.array:
        return mx.matmul(a, b)

    def transpose_last(self, x: mx.array) -> mx.array:
        return mx.swapaxes(x, -1, -2)

    def softmax(self, x: mx.array, axis: int = -1) -> mx.array:
        # precise=True accumulates in float32 even for half inputs.
        return mx.softmax(x, axis=axis, precise=True)

    def cumsum(self, x: mx.array, axis: int = -1, reverse: bool = False) -> mx.array:
        # MLX has a native reverse scan: no flips, and never `total - prefix`.
        return mx.cumsum(x, axis=axis, reverse=reverse, inclusive=True)

    # MLX's own functions already have the vocabulary's signatures (x, axis=...).
    sqrt = staticmethod(mx.sqrt)
    sum = staticmethod(mx.sum)
    mean = staticmethod(mx.mean)

    def argsort(self, x: mx.array, axis: int = -1) -> mx.array:
        """Stable ascending argsort, whatever sort MLX runs underneath.

        MLX documents no stability guarantee for ``mx.argsort`` (its CPU sort happens to be stable; the GPU
        sort is a different algorithm). So ties are made impossible instead: each float32 value is mapped to
        a ``uint32`` that sorts in the same order (:func:`ordered_bits`), shifted into the high half of a
        ``uint64`` whose low half is the position. All keys differ, and ascending key order is "by value,
        then by position", i.e. exactly a stable sort.

        Returns:
            ``uint32`` indices, same shape as ``x``.
        """
        x = self.asarray(x)
        axis = axis % x.ndim
        positions = mx.arange(x.shape[axis], dtype=mx.uint64)
        positions = positions.reshape([-1 if i == axis else 1 for i in range(x.ndim)])
        keys = (ordered_bits(x).astype(mx.uint64) << 32) | positions
        return mx.argsort(keys, axis=axis)

    def take_along_axis(self, x: mx.array, idx: mx.array, axis: int) -> mx.array:
        return mx.take_along_axis(x, self._index(idx), axis=axis)

    def max_pool1d(self, x: mx.array, kernel: int) -> mx.array:
        """Same-size max-pool along the last axis: ``out[..., j] = max(x[..., j - kernel//2 : j + (kernel-1)//2 + 1])``."""
        if kernel < 1:
            raise ValueError(f"kernel must be >= 1, got {kernel}")
        left = kernel // 2
        right = kernel - 1 - left
        length = x.shape[-1]
        pad = [(0, 0)] * (x.ndim - 1) + [(left, right)]
        padded = mx.pad(x, pad, constant_values=-float("inf"))
        out = padded[..., 0:length]
        for shift in range(1, kernel):  # kernel is small (7): one elementwise max per offset
            out = mx.maximum(out, padded[..., shift : shift + length])
        return out

    def repeat_heads(self, x: mx.array, groups: int) -> mx.array:
        if groups == 1:
            return x
        return mx.repeat(x, groups, axis=0)

    def group_sum(self, x: mx.array, groups: int) -> mx.array:
        if x.shape[0] % groups:
            raise ValueError(f"{x.shape[0]} rows cannot be split into groups of {groups}")
        return x.reshape(x.shape[0] // groups, groups, *x.shape[1:]).sum(axis=1)

    def _index(self, idx: Any) -> mx.array:
        if isinstance(idx, mx.array):
            return idx
        return mx.array(np.asarray(idx, dtype=np.int32))

    # --------------------------------------------------------------- fused ops
    def window_scores(
        self, queries: mx.array, keys: mx.array, scale: float, window: int, n_cols: int | None = None
    ) -> tuple[mx.array, mx.array]:
        """Eq. 1 and the window ranking (see :meth:`refreekv_edu.backend.Backend.window_scores`); a Metal kernel on the GPU.

        Args:
            queries: ``(Hq, r, D)``, row ``i`` is position ``L - r + i``; keys: ``(Hkv, L, D)`` (query head ``h``
                reads KV head ``h // G``).
            window: ``r``.
            n_cols: columns reported (default ``L - r``); the paper asks ``r = 1``, ``n_cols = L``.

        Returns:
            ``(col_sum, last_row)``, both ``(Hq, n_cols)`` float32.
        """
        queries, keys = self.asarray(queries), self.asarray(keys)
        if self.uses_kernels() and keys.shape[-1] <= metal_kernels.MAX_HEAD_DIM:
            return metal_kernels.metal_window_scores(queries, keys, scale, window, n_cols=n_cols)
        return super().window_scores(queries, keys, scale, window, n_cols=n_cols)

    def retained_norms(self, a_sorted: mx.array) -> mx.array:
        """Step 5 (see :meth:`refreekv_edu.backend.Backend.retained_norms`); a Metal kernel on the GPU.

        Args:
            a_sorted: ``(Hq, n)``, each row least important first.

        Returns:
            ``(n,)`` float32 ``R(e)``.
        """
        a_sorted = self.asarray(a_sorted)
        if self.uses_kernels() and a_sorted.shape[-1] > 0:
            return metal_kernels.metal_retained_norms(a_sorted)
        return super().retained_norms(a_sorted)

    # ------------------------------------------------------- model integration
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple[Any, Any]:
        """Load ``(model, tokenizer)`` through mlx-lm (bundled GGUF names, local paths)."""
        from .gguf_loader import load_model

        return load_model(name_or_path, **kwargs)

    def owns_model(self, model: Any) -> bool:
        import mlx.nn as nn

        return isinstance(model, nn.Module)

    def generate(self, model: Any, tokenizer: Any, prompt: Any, policy: Any, **kwargs: Any) -> Any:
        """Prefill -> decide -> compact -> decode with mlx-lm; returns a ``GenerationResult``."""
        from .generation import generate

        return generate(model, tokenizer, prompt, policy, **kwargs)

    # ---------------------------------------------------------------- info
    def describe(self) -> str:
        device = mx.default_device()
        fused = "Metal kernels" if self.uses_kernels() else "MLX ops"
        return f"mlx {mx.__version__} on {device}, metal={'yes' if self.has_metal() else 'no'}, fused ops: {fused}"


def ordered_bits(x: mx.array) -> mx.array:
    """Map float32 values to ``uint32`` keys with the same order (the classic radix-sort trick).

    A float's bits, read as an unsigned int, sort correctly for positive numbers but backwards for negative
    ones. Flipping all bits of negatives and setting the sign bit of positives fixes both: the result
    increases with the float value (``-inf`` smallest, ``+inf`` largest). ``-0.0`` is first turned into
    ``+0.0`` (adding 0.0 does that) so the two zeros tie, as they compare equal.

    Args:
        x: float array (cast to float32); NaN is not supported.

    Returns:
        ``uint32`` array, same shape.
    """
    bits = mx.view(x.astype(mx.float32) + 0.0, mx.uint32)
    return mx.where(bits >= _SIGN_BIT, ~bits, bits | _SIGN_BIT)
