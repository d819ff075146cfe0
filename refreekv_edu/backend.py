"""The backend protocol, the backend registry and ``auto`` selection.

The ReFreeKV algorithm is written once (``policies.py``) over a small *array
vocabulary* that every backend supplies: numpy (the reference, in
``reference.py``), torch (+ Triton), MLX (+ Metal). A backend is a subclass of
:class:`Backend` that implements the vocabulary; it may also override the two
*fused operations* (``window_scores`` and ``retained_norms``) with kernels.
The defaults build them from the vocabulary (:mod:`refreekv_edu.fused_ops`, the
math of Eq. 1 and Eq. 2, which imports neither this module nor the algorithm's),
so a new backend is correct as soon as its vocabulary is.

Backends are discovered through the ``refreekv_edu.backends`` entry-point group
(name -> ``"module:Class"``), so adding one (JAX, say) needs no edit here.

A backend may also integrate with a model library (transformers, mlx-lm). It then
overrides :meth:`Backend.load_model`, :meth:`Backend.owns_model` and
:meth:`Backend.generate`, which :func:`refreekv_edu.load_model` and
:func:`refreekv_edu.generate` dispatch to.

Shapes used throughout: ``Hq`` query heads, ``Hkv`` key/value heads, ``L`` prompt
length, ``m`` sinks, ``w`` protected window, ``n = L - m - w`` candidates, ``D`` head dim.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import platform
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import fused_ops

ENTRY_POINT_GROUP = "refreekv_edu.backends"

#: Array type of a backend (np.ndarray, torch.Tensor, mx.array, ...).
Array = Any


class Backend:
    """Base class of every backend: the array vocabulary and the two fused ops.

    All arrays handed to and returned by these methods are the backend's own
    array type, float32 unless stated (integer index arrays are int64 or the
    backend's natural index dtype). The core converts to numpy only for the small
    per-head results (orders, curves, kept sets).
    """

    #: Registry name, e.g. ``"numpy"``.
    name: str = "base"

    # ------------------------------------------------------------------ vocabulary
    def asarray(self, x: Any, dtype: str = "float32") -> Array:
        """Convert ``x`` (numpy, list, or another backend's array; any shape) to this backend, same shape; dtype ``"float32"`` or ``"int64"``."""
        raise NotImplementedError

    def to_numpy(self, x: Array) -> np.ndarray:
        """Copy a backend array (any shape) to a numpy array of the same shape and dtype family."""
        raise NotImplementedError

    def is_native(self, x: Any) -> bool:
        """True when ``x`` is already this backend's array type (used by ``backend="auto"``)."""
        return False

    def next_to(self, x: Array) -> Backend:
        """This backend with the arrays it creates (e.g. from numpy) placed where ``x`` (any shape) lives.

        Single-device backends return ``self``; torch returns a copy pinned to ``x``'s device unless it
        already has an explicit device. A decision calls it once, on the keys.
        """
        return self

    def all_finite(self, x: Array) -> bool:
        """True when ``x`` (any shape) holds no NaN or inf (used to reject bad input with a clear error)."""
        return bool(np.isfinite(self.to_numpy(x)).all())

    def matmul(self, a: Array, b: Array) -> Array:
        """Batched matrix product over the last two axes: ``(..., m, k) @ (..., k, n) -> (..., m, n)``."""
        raise NotImplementedError

    def transpose_last(self, x: Array) -> Array:
        """Swap the last two axes."""
        raise NotImplementedError

    def softmax(self, x: Array, axis: int = -1) -> Array:
        """Numerically stable softmax along ``axis`` (``-inf`` entries become 0)."""
        raise NotImplementedError

    def cumsum(self, x: Array, axis: int = -1, reverse: bool = False) -> Array:
        """Inclusive cumulative sum along ``axis`` (same shape); ``reverse=True`` scans from the end (a true reverse scan, never ``total - prefix``)."""
        raise NotImplementedError

    def sqrt(self, x: Array) -> Array:
        """Elementwise square root (same shape)."""
        raise NotImplementedError

    def sum(self, x: Array, axis: int) -> Array:
        """Sum along ``axis`` (that axis is removed), float32."""
        raise NotImplementedError

    def mean(self, x: Array, axis: int) -> Array:
        """Mean along ``axis`` (that axis is removed), float32."""
        raise NotImplementedError

    def argsort(self, x: Array, axis: int = -1) -> Array:
        """*Stable* ascending argsort along ``axis`` (same shape; equal values keep index order, so ties evict the older position first)."""
        raise NotImplementedError

    def take_along_axis(self, x: Array, idx: Array, axis: int) -> Array:
        """Gather ``x`` at ``idx`` along ``axis`` (the result has ``idx``'s shape)."""
        raise NotImplementedError

    def max_pool1d(self, x: Array, kernel: int) -> Array:
        """Max-pool along the last axis, stride 1, output the same size (windows clipped at the edges)."""
        raise NotImplementedError

    def causal_window_mask(self, window: int, length: int) -> Array:
        """Additive mask ``(window, length)``: row ``i`` (absolute position ``length - window + i``) sees keys ``<= that position``; others ``-inf``."""
        rows = np.arange(length - window, length)[:, None]
        cols = np.arange(length)[None, :]
        return self.asarray(np.where(cols <= rows, 0.0, -np.inf).astype(np.float32))

    def repeat_heads(self, x: Array, groups: int) -> Array:
        """``(Hkv, L, D) -> (Hkv * groups, L, D)``, each head repeated ``groups`` times consecutively (like ``repeat_kv``)."""
        raise NotImplementedError

    def group_sum(self, x: Array, groups: int) -> Array:
        """``(Hkv * groups, n) -> (Hkv, n)``: sum each block of ``groups`` consecutive rows."""
        raise NotImplementedError

    # --------------------------------------------------------------- fused ops
    def window_scores(
        self, queries: Array, keys: Array, scale: float, window: int, n_cols: int | None = None
    ) -> tuple[Array, Array]:
        """Fused op for Eq. 1 (and the window ranking): ``(col_sum, last_row)``, both ``(Hq, n_cols)`` float32.

        Args:
            queries: ``(Hq, r, D)`` float32 post-RoPE queries of the last ``r = window`` prompt positions.
            keys: ``(Hkv, L, D)`` float32 post-RoPE keys; query head ``h`` reads KV head ``h // G``.
            scale: attention scale (usually ``1/sqrt(D)``).
            window: ``r``, the number of query rows (row ``i`` is prompt position ``L - r + i``; causal mask).
            n_cols: how many leading key positions to report, ``1 <= n_cols <= L``; default ``L - r``.

        The default is the algorithm's own version, :func:`refreekv_edu.fused_ops.window_attention`, written with
        this vocabulary; kernel backends override it (Triton, Metal) and must match it.
        """
        return fused_ops.window_attention(self, queries, keys, scale, window, n_cols)

    def retained_norms(self, a_sorted: Array) -> Array:
        """Fused op for Eq. 2: ``R(e)`` ``(n,)`` float32 for ``e = 0 .. n-1`` from ``a_sorted`` ``(Hq, n)``.

        The default is :func:`refreekv_edu.fused_ops.retained_norms` (a reverse scan in this vocabulary); kernel
        backends override it and must match it.
        """
        return fused_ops.retained_norms(self, a_sorted)

    # ------------------------------------------------------- model integration
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple[Any, Any]:
        """Load ``(model, tokenizer)``; backends without a model library raise."""
        raise BackendUnavailableError(f"backend {self.name!r} has no model integration; use backend='torch' or 'mlx'")

    def owns_model(self, model: Any) -> bool:
        """True when ``model`` belongs to this backend's model library (used by :func:`refreekv_edu.generate`)."""
        return False

    def generate(self, model: Any, tokenizer: Any, prompt: Any, policy: Any, **kwargs: Any) -> Any:
        """Prefill -> decide -> compact -> decode; returns :class:`refreekv_edu.generate.GenerationResult`."""
        raise BackendUnavailableError(f"backend {self.name!r} cannot generate")

    def set_threads(self, n: int) -> int | None:
        """Ask the backend's library to compute on ``n`` CPU threads; the count now in use (``None``: no such knob)."""
        return None

    # ---------------------------------------------------------------- info
    def describe(self) -> str:
        """One line: library versions and the device this backend computes on."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class BackendUnavailableError(RuntimeError):
    """A backend was asked for but cannot be used here (not installed, no device, ...)."""


class BackendConfigError(ValueError):
    """A backend is installed but configured wrongly (a bad environment variable, say).

    Unlike an unavailable backend it is never skipped silently: ``auto`` selection, :func:`backend_for_arrays`
    and :func:`refreekv_edu.generate` let it through, so the message (which names the setting and its valid
    values) reaches the user.
    """


@dataclass(frozen=True)
class BackendInfo:
    """What the registry knows about one backend name."""

    name: str
    target: str  # "module:Class"
    available: bool
    reason: str  # why it is (not) available


def _entry_points() -> dict[str, str]:
    found = {"numpy": "refreekv_edu.reference:NumpyBackend"}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


_cache: dict[str, Backend] = {}


def _load(name: str, target: str) -> Backend:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls()


def available_backends() -> list[BackendInfo]:
    """Every registered backend name with whether it imports here, and why not when it does not."""
    infos = []
    for name, target in sorted(_entry_points().items()):
        try:
            backend = get_backend(name)
            infos.append(BackendInfo(name, target, True, backend.describe()))
        except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
            infos.append(BackendInfo(name, target, False, f"{type(exc).__name__}: {exc}"))
    return infos


def get_backend(name: str | Backend = "numpy") -> Backend:
    """Return the backend registered as ``name`` (instances pass through; ``"auto"`` picks one).

    Raises:
        ValueError: unknown name (the message lists the registered names).
        BackendUnavailableError: the name is registered but its libraries do not import here.
    """
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend instance, got {type(name).__name__}")
    if name == "auto":
        return get_backend(auto_backend_name()[0])
    if name in _cache:
        return _cache[name]
    targets = _entry_points()
    if name not in targets:
        raise ValueError(f"unknown backend {name!r}; registered backends: {', '.join(sorted(targets))} (or 'auto')")
    try:
        backend = _load(name, targets[name])
    except ImportError as exc:
        extra = {"torch": "torch", "mlx": "mlx"}.get(name, name)
        raise BackendUnavailableError(
            f"backend {name!r} is registered but cannot be imported ({exc}); "
            f"install it with: pip install 'refreekv_edu[{extra}]'"
        ) from exc
    _cache[name] = backend
    return backend


def backend_for_arrays(*arrays: Any) -> Backend:
    """The backend whose native array type the inputs are (numpy for numpy arrays and lists)."""
    kinds = {type(a).__module__.split(".")[0] for a in arrays}
    if kinds <= {"numpy", "builtins"}:
        return get_backend("numpy")
    for info_name in _entry_points():
        try:
            backend = get_backend(info_name)
        except BackendConfigError:
            raise  # installed but misconfigured: say so rather than "no backend takes these arrays"
        except Exception:  # noqa: BLE001
            continue
        if all(backend.is_native(a) for a in arrays):
            return backend
    raise TypeError(f"no installed backend takes arrays of types {sorted(kinds)}; convert them to numpy")


def auto_backend_name() -> tuple[str, str]:
    """Pick the backend ``"auto"`` means on this machine and say why.

    Preference: MLX on Apple silicon with Metal; torch when CUDA is available; torch on CPU;
    MLX on CPU; numpy (reference, no model integration) as the last resort.

    Returns:
        ``(name, reason)``.
    """
    names = _entry_points()

    def usable(name: str) -> Backend | None:
        if name not in names:
            return None
        try:
            return get_backend(name)
        except BackendConfigError:
            raise
        except Exception:  # noqa: BLE001
            return None

    on_apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    mlx = usable("mlx") if on_apple else None
    if mlx is not None and getattr(mlx, "has_metal", lambda: False)():
        return "mlx", "Apple silicon with Metal: MLX runs on the GPU"
    torch_be = usable("torch")
    if torch_be is not None and getattr(torch_be, "has_cuda", lambda: False)():
        return "torch", "CUDA GPU found: torch + Triton kernels"
    if torch_be is not None:
        return "torch", "no GPU backend usable; torch runs on the CPU (fast BLAS, transformers integration)"
    mlx = mlx or usable("mlx")
    if mlx is not None:
        return "mlx", "torch not usable here; MLX runs on the CPU"
    return (
        "numpy",
        "neither torch nor mlx usable here (see `refreekv-edu info`); numpy reference only, no model integration",
    )


def default_scale(head_dim: int) -> float:
    """The usual attention scale ``1/sqrt(D)``."""
    return 1.0 / math.sqrt(head_dim)
