"""Metal kernels for the two fused operations, run through ``mx.fast.metal_kernel``.

The kernel sources live in ``kernels/*.metal``. Each is the *body* of a Metal kernel function:
``mx.fast.metal_kernel`` generates the signature from the input/output names (``const device float* q``,
``device float* col_sum``, ...) and from the thread attributes the body mentions.

Two kernels (see the comments in each ``.metal`` file for the algorithm):

- ``window_scores``: ``(Hq, r, D)`` queries x ``(Hkv, L, D)`` keys -> ``col_sum (Hq, n)``, ``last_row (Hq, n)``
  on the first ``n = n_cols`` key positions (default ``L - r``; the paper asks ``r = 1``, ``n = L``);
  one threadgroup per query head, two-pass softmax over the ``r`` rows, never storing the ``r x L`` block.
- ``retained_norms``: ``(H, n)`` sorted last-row attention -> ``R(e) (n,)``; one threadgroup, chunked reverse scan.

The same bodies compile as C++ through :mod:`refreekv_mlx.cpu_shim`, which runs every simulated GPU thread
on a CPU thread with real barriers: that is how they are tested on Linux, where there is no Metal. The launch
geometry (grid, threadgroup, output shapes, scalar inputs) is computed once here, by :func:`window_scores_launch`
and :func:`retained_norms_launch`, and used by both the Metal path and the shim, so the shim runs the very launch
the GPU would.

This module imports ``mlx`` only inside the functions that call Metal, so the kernel specs and the shim work
without MLX installed.

Status: the Metal path is **unverified on a GPU** by this project's CI (no Mac there); the kernel logic is
verified through the CPU shim. ``tests/mlx/test_metal_gpu.py`` checks the real kernels when run on a Mac.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

KERNEL_DIR = Path(__file__).parent / "kernels"

#: Must match ``kernels/common.metal``.
MAX_HEAD_DIM = 512
MAX_THREADS = 1024
#: Threads per threadgroup used by default (a power of two, needed by the window kernel's tree reduction).
DEFAULT_THREADS = 256


@dataclass(frozen=True)
class KernelSpec:
    """Everything needed to build one kernel, for Metal or for the CPU shim.

    Attributes:
        name: kernel name (also the Metal function name).
        inputs: ``(name, dtype)`` pairs in call order; dtype ``"float32"`` or ``"int32"``.
        outputs: ``(name, dtype)`` pairs in call order.
        source: the kernel body (text of ``kernels/<name>.metal``).
        header: text placed before the kernel function (``kernels/common.metal``).
    """

    name: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    source: str
    header: str


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the geometry and the small extra inputs (numpy) besides the big arrays.

    Attributes:
        grid: total threads per axis ``(x, y, z)`` (MLX uses Metal's ``dispatchThreads`` convention).
        threadgroup: threads per threadgroup ``(x, y, z)``; ``grid`` is a multiple of it here.
        output_shapes: one shape per output of the spec.
        extra_inputs: int32/float32 numpy arrays appended after the big inputs (``dims``, ``params``).
    """

    grid: tuple[int, int, int]
    threadgroup: tuple[int, int, int]
    output_shapes: tuple[tuple[int, ...], ...]
    extra_inputs: tuple[np.ndarray, ...]


def _read(name: str) -> str:
    return (KERNEL_DIR / name).read_text()


@cache
def window_scores_spec() -> KernelSpec:
    """The ``window_scores`` kernel (``kernels/window_scores.metal``)."""
    return KernelSpec(
        name="refreekv_window_scores",
        inputs=(("q", "float32"), ("k", "float32"), ("dims", "int32"), ("params", "float32")),
        outputs=(("col_sum", "float32"), ("last_row", "float32")),
        source=_read("window_scores.metal"),
        header=_read("common.metal"),
    )


@cache
def retained_norms_spec() -> KernelSpec:
    """The ``retained_norms`` kernel (``kernels/retained_norms.metal``)."""
    return KernelSpec(
        name="refreekv_retained_norms",
        inputs=(("a", "float32"), ("dims", "int32")),
        outputs=(("curve", "float32"),),
        source=_read("retained_norms.metal"),
        header=_read("common.metal"),
    )


def _check_threads(threads: int, power_of_two: bool) -> int:
    if not isinstance(threads, (int, np.integer)) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an int in [1, {MAX_THREADS}], got {threads!r}")
    if power_of_two and threads & (threads - 1):
        raise ValueError(f"threads must be a power of two (the kernel reduces in a binary tree), got {threads}")
    return int(threads)


def window_scores_launch(
    num_heads: int,
    length: int,
    head_dim: int,
    window: int,
    scale: float,
    threads: int = DEFAULT_THREADS,
    groups: int = 1,
    n_cols: int | None = None,
) -> Launch:
    """Launch geometry of ``window_scores`` for queries ``(Hq, r, D)`` and keys ``(Hq / groups, L, D)``.

    Args:
        window: ``r``, the query rows (row ``i`` is position ``L - r + i``), ``1 <= r <= L``.
        n_cols: columns reported, ``1 <= n_cols <= L``; default ``L - r`` (the positions before the rows).

    Raises:
        ValueError: no rows or no columns (``n_cols < 1``, e.g. the default with ``r = L``: the caller must not
            ask), ``r > L``, ``n_cols > L``, ``D > MAX_HEAD_DIM``, or a bad ``threads``.
    """
    threads = _check_threads(threads, power_of_two=True)
    if not 1 <= window <= length:
        raise ValueError(f"window_scores needs 1 <= window <= L query rows; got window={window}, L={length}")
    n = length - window if n_cols is None else int(n_cols)
    if not 1 <= n <= length:
        raise ValueError(
            f"window_scores needs 1 <= n_cols <= L columns; got n_cols={n} (L={length}, window={window}"
            f"{', default n_cols = L - window' if n_cols is None else ''})"
        )
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {head_dim} exceeds the kernel's MAX_HEAD_DIM={MAX_HEAD_DIM}; use the MLX-op path")
    return Launch(
        grid=(threads, num_heads, 1),
        threadgroup=(threads, 1, 1),
        output_shapes=((num_heads, n), (num_heads, n)),
        extra_inputs=(
            np.array([num_heads, length, head_dim, window, groups, n], dtype=np.int32),
            np.array([scale], dtype=np.float32),
        ),
    )


def retained_norms_launch(num_heads: int, n: int, threads: int = DEFAULT_THREADS) -> Launch:
    """Launch geometry of ``retained_norms`` for ``a_sorted`` of shape ``(H, n)``, ``n >= 1``."""
    threads = _check_threads(threads, power_of_two=False)
    if n < 1 or num_heads < 1:
        raise ValueError(f"retained_norms needs at least one head and one candidate, got shape ({num_heads}, {n})")
    return Launch(
        grid=(threads, 1, 1),
        threadgroup=(threads, 1, 1),
        output_shapes=((n,),),
        extra_inputs=(np.array([num_heads, n], dtype=np.int32),),
    )


# ---------------------------------------------------------------------------------------------- Metal
@cache
def _metal_kernel(spec: KernelSpec) -> Any:
    import mlx.core as mx

    return mx.fast.metal_kernel(
        name=spec.name,
        input_names=[name for name, _ in spec.inputs],
        output_names=[name for name, _ in spec.outputs],
        source=spec.source,
        header=spec.header,
    )


def _run_metal(spec: KernelSpec, arrays: list[Any], launch: Launch) -> list[Any]:
    import mlx.core as mx

    inputs = [*arrays, *(mx.array(x) for x in launch.extra_inputs)]
    return _metal_kernel(spec)(
        inputs=inputs,
        grid=launch.grid,
        threadgroup=launch.threadgroup,
        output_shapes=list(launch.output_shapes),
        output_dtypes=[mx.float32] * len(spec.outputs),
    )


def metal_window_scores(
    queries: Any, keys: Any, scale: float, window: int, threads: int = DEFAULT_THREADS, n_cols: int | None = None
):
    """``window_scores`` on the GPU: ``queries (Hq, r, D)``, ``keys (Hkv, L, D)`` mx arrays -> ``(col_sum, last_row)``,
    both ``(Hq, n_cols)`` (default ``n_cols = L - r``).

    Unverified here (no Mac in CI); the same body is tested through the CPU shim.
    """
    import mlx.core as mx

    num_heads = int(queries.shape[0])
    kv_heads, length, head_dim = (int(s) for s in keys.shape)
    launch = window_scores_launch(
        num_heads, length, head_dim, window, scale, threads, groups=num_heads // kv_heads, n_cols=n_cols
    )
    q = queries.astype(mx.float32)
    k = keys.astype(mx.float32)
    col_sum, last_row = _run_metal(window_scores_spec(), [q, k], launch)
    return col_sum, last_row


def metal_retained_norms(a_sorted: Any, threads: int = DEFAULT_THREADS):
    """``retained_norms`` on the GPU: ``a_sorted (H, n)`` mx array -> ``R (n,)``.

    Unverified here (no Mac in CI); the same body is tested through the CPU shim.
    """
    import mlx.core as mx

    num_heads, n = (int(s) for s in a_sorted.shape)
    launch = retained_norms_launch(num_heads, n, threads)
    (curve,) = _run_metal(retained_norms_spec(), [a_sorted.astype(mx.float32)], launch)
    return curve
