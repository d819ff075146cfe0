"""Triton kernels for the two fused operations of the backend protocol.

1. **Window scores** (Eq. 1 and the window rankings). For every query head we need, over the first
   ``n_cols`` key positions, the attention of the last ``r`` prompt positions' queries summed over
   those ``r`` rows (``col_sum``) and the last row's attention (``last_row``). Two calls matter:
   the paper's recency ranking reads one row over every key (``r = 1``, ``n_cols = L``); the
   official script's H2O ranking reads ``r = w = 8`` rows over the positions before them
   (``n_cols = L - w``). A softmax row needs its maximum and its sum of exponentials over *all*
   ``L`` keys before any probability is known, so the kernel runs in two passes:

   - pass 1, :func:`_window_stats_body`: each program streams one chunk of keys in blocks of
     ``BLOCK_L`` and keeps an *online* (running) max and sum-exp per window row (the causal mask
     inside the window is applied here). Chunks of one head run in parallel ("split-K"); torch
     merges the per-chunk statistics into one ``max`` and one ``sum`` of exponentials per row.
   - pass 2, :func:`_window_probs_body`: each program recomputes the logits of the ``r`` query
     rows against one block of the first ``n_cols`` keys, turns them into probabilities with
     ``exp(logit - max) / sum``, and writes the column sums and the last row. Columns at or after
     ``L - r`` are the query rows' own positions: the causal mask applies there too.

   Neither pass materialises more than a ``(r, BLOCK_L)`` tile of the ``(r, L)`` attention block.

2. **Halting curve** (step 5). :func:`_reverse_norm_scan_body` computes, per head, the reverse
   cumulative sum of the squared attention, block by block from the end, carrying the total of the
   blocks already seen. It is a real reverse scan: every output is a sum of non-negative terms, so
   the ``sqrt`` that follows never sees a negative number. The mean over heads stays in torch.

Compilation is *lazy*: the kernel bodies below are plain Python functions, turned into Triton
kernels on first use (:func:`compiled`), for the GPU compiler or for Triton's CPU interpreter.
The interpreter is on when ``TRITON_INTERPRET=1`` was set before ``triton`` was first imported
(:func:`interpreter_active`); it runs the same kernels on CPU tensors, slowly, for testing.

Verified: results against the numpy reference in the interpreter (tests/torch/test_triton_kernels.py),
and compilation to CUDA binaries for sm_90 and sm_80 without a GPU (:func:`compile_offline`). Not
yet verified: *running* the compiled kernels on an NVIDIA GPU; ``bench/gpu_check.py`` does that.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import triton
import triton.language as tl

#: Key positions per program tile. 64 keeps a (16 x 64) fp32 logits tile plus a (64 x 128) key
#: tile well inside the register file for D = 128.
BLOCK_L = 64
#: Elements per step of the per-head reverse scan.
SCAN_BLOCK = 1024
#: Smallest normal float32; exp results below it are flushed to 0 (see ``_window_probs_body``).
FLOAT32_TINY = tl.constexpr(1.1754943508222875e-38)  # constexpr: kernels may only read constexpr globals
#: Keys per pass-1 program; a head of L keys is split into ceil(L / STATS_CHUNK) parallel programs,
#: so that even a few heads keep a GPU's ~100 multiprocessors busy (32 heads x 64 chunks at L = 64k).
STATS_CHUNK = 1024


class KernelInputError(ValueError):
    """The arrays handed to a launcher have the wrong shapes (the caller's mistake, not the kernel's)."""


# ----------------------------------------------------------------------------- kernel bodies
def _window_stats_body(
    q_ptr,  # (Hq, w, D) float32
    k_ptr,  # (Hkv, L, D) float32; query head h reads KV head h // groups
    max_ptr,  # out (Hq, chunks, w) float32: running max of each window row over the chunk
    sumexp_ptr,  # out (Hq, chunks, w) float32: sum of exp(logit - max) over the chunk
    stride_qh,
    stride_qw,
    stride_qd,
    stride_kh,
    stride_kl,
    stride_kd,
    groups,  # G = Hq / Hkv
    length,  # L
    window,  # w
    head_dim,  # D
    scale,
    chunk_len,  # keys per program (a multiple of BLOCK_L)
    BLOCK_W: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    head = tl.program_id(0).to(tl.int64)  # int64: head * stride can pass 2**31 for long prompts
    chunk = tl.program_id(1)
    num_chunks = tl.num_programs(1)
    rows = tl.arange(0, BLOCK_W)
    dims = tl.arange(0, BLOCK_D)
    q = tl.load(
        q_ptr + head * stride_qh + rows[:, None] * stride_qw + dims[None, :] * stride_qd,
        mask=(rows[:, None] < window) & (dims[None, :] < head_dim),
        other=0.0,
    )
    row_pos = length - window + rows  # absolute position of each window query
    run_max = tl.full([BLOCK_W], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_W], tl.float32)
    start = chunk * chunk_len
    stop = tl.minimum(start + chunk_len, length)
    for col0 in range(start, stop, BLOCK_L):
        cols = col0 + tl.arange(0, BLOCK_L)
        k = tl.load(
            k_ptr + (head // groups) * stride_kh + cols[:, None] * stride_kl + dims[None, :] * stride_kd,
            mask=(cols[:, None] < stop) & (dims[None, :] < head_dim),
            other=0.0,
        )
        # "ieee": full float32 products. The default would use TF32 on recent GPUs, whose 10-bit
        # mantissa can reorder near-tied candidates compared with the float32 reference.
        logits = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        visible = (cols[None, :] < stop) & (cols[None, :] <= row_pos[:, None])  # causal inside the window
        logits = tl.where(visible, logits, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        # A row that has seen no visible key yet keeps max = -inf; shift by 0 there to avoid inf - inf.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(logits - shift[:, None]), axis=1)
        run_max = new_max
    out = (head * num_chunks + chunk) * window + rows
    tl.store(max_ptr + out, run_max, mask=rows < window)
    tl.store(sumexp_ptr + out, run_sum, mask=rows < window)


def _window_probs_body(
    q_ptr,  # (Hq, r, D) float32
    k_ptr,  # (Hkv, L, D) float32; query head h reads KV head h // groups
    row_max_ptr,  # (Hq, r) float32 contiguous: each query row's max logit over all L keys
    row_sum_ptr,  # (Hq, r) float32 contiguous: each query row's sum of exp(logit - max)
    col_sum_ptr,  # out (Hq, n_cols) float32 contiguous
    last_row_ptr,  # out (Hq, n_cols) float32 contiguous
    stride_qh,
    stride_qw,
    stride_qd,
    stride_kh,
    stride_kl,
    stride_kd,
    groups,  # G = Hq / Hkv
    n_cols,  # columns reported: the first n_cols key positions (L - r for H2O, L for the paper)
    length,  # L
    window,  # r, the query rows
    head_dim,
    scale,
    BLOCK_W: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    head = tl.program_id(0).to(tl.int64)  # int64: head * stride can pass 2**31 for long prompts
    block = tl.program_id(1)
    rows = tl.arange(0, BLOCK_W)
    dims = tl.arange(0, BLOCK_D)
    cols = block * BLOCK_L + tl.arange(0, BLOCK_L)
    q = tl.load(
        q_ptr + head * stride_qh + rows[:, None] * stride_qw + dims[None, :] * stride_qd,
        mask=(rows[:, None] < window) & (dims[None, :] < head_dim),
        other=0.0,
    )
    k = tl.load(
        k_ptr + (head // groups) * stride_kh + cols[:, None] * stride_kl + dims[None, :] * stride_kd,
        mask=(cols[:, None] < n_cols) & (dims[None, :] < head_dim),
        other=0.0,
    )
    logits = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    # Row i is the query of position L - r + i: it sees keys up to its own position. Only columns at or
    # after L - r can be hidden (never when n_cols <= L - r); masking before exp keeps a future key's
    # logit, which may exceed the row's max, from overflowing.
    row_pos = length - window + rows
    visible = (rows[:, None] < window) & (cols[None, :] < n_cols) & (cols[None, :] <= row_pos[:, None])
    logits = tl.where(visible, logits, float("-inf"))
    row_max = tl.load(row_max_ptr + head * window + rows, mask=rows < window, other=0.0)
    row_sum = tl.load(row_sum_ptr + head * window + rows, mask=rows < window, other=1.0)
    unnormalised = tl.exp(logits - row_max[:, None])  # exp(-inf) = 0 for hidden and padded entries
    # Flush subnormal results to exactly 0, as GPU exp does and the numpy reference mimics, so that
    # fully underflowed candidates tie at 0 on every backend (and ties break the same way).
    unnormalised = tl.where(unnormalised < FLOAT32_TINY, 0.0, unnormalised)
    probs = unnormalised / row_sum[:, None]
    col_sum = tl.sum(probs, axis=0)
    last_row = tl.sum(tl.where(rows[:, None] == window - 1, probs, 0.0), axis=0)
    tl.store(col_sum_ptr + head * n_cols + cols, col_sum, mask=cols < n_cols)
    tl.store(last_row_ptr + head * n_cols + cols, last_row, mask=cols < n_cols)


def _reverse_norm_scan_body(
    a_ptr,  # (H, n) float32 contiguous, each row ordered least important first
    out_ptr,  # out (H, n) float32: sqrt(sum_{k >= e} a[h, k]^2)
    n,
    BLOCK: tl.constexpr,
):
    head = tl.program_id(0).to(tl.int64)  # int64: head * stride can pass 2**31 for long prompts
    num_blocks = tl.cdiv(n, BLOCK)
    carry = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)  # sum of squares of the blocks to the right
    for i in range(0, num_blocks):
        offs = (num_blocks - 1 - i) * BLOCK + tl.arange(0, BLOCK)
        a = tl.load(a_ptr + head * n + offs, mask=offs < n, other=0.0)
        squares = a * a
        tail = tl.cumsum(squares, axis=0, reverse=True) + carry
        tl.store(out_ptr + head * n + offs, tl.sqrt(tail), mask=offs < n)
        carry += tl.sum(squares, axis=0)


# ----------------------------------------------------------------------------- compilation
def interpreter_active() -> bool:
    """True when Triton runs kernels in its CPU interpreter in this process.

    The interpreter has to be chosen *before* ``triton`` is first imported (environment variable
    ``TRITON_INTERPRET=1``): the helpers of ``triton.language`` (``tl.sum``, ``tl.cumsum``, ...) are
    themselves Triton functions, built once at import for either the compiler or the interpreter.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.sum, InterpretedFunction)


@functools.cache
def compiled(interpreted: bool) -> SimpleNamespace:
    """The three kernels, decorated for the GPU compiler or for the CPU interpreter (cached per mode).

    Decorating here rather than at import keeps this module importable, and its kernels
    inspectable, whichever mode Triton was imported in.
    """
    if interpreted:
        # What ``triton.jit`` itself returns under TRITON_INTERPRET=1.
        from triton.runtime.interpreter import InterpretedFunction

        wrap: Callable[[Any], Any] = InterpretedFunction
    else:
        wrap = triton.jit
    return SimpleNamespace(
        window_stats=wrap(_window_stats_body),
        window_probs=wrap(_window_probs_body),
        reverse_norm_scan=wrap(_reverse_norm_scan_body),
    )


#: Argument types of each kernel, for compiling without a GPU (see :func:`compile_offline`).
_SIGNATURES = {
    "window_stats": ["*fp32"] * 4 + ["i32"] * 10 + ["fp32", "i32"],
    "window_probs": ["*fp32"] * 6 + ["i32"] * 11 + ["fp32"],
    "reverse_norm_scan": ["*fp32", "*fp32", "i32"],
}


def compile_offline(capability: int = 90, head_dim: int = 128, window: int = 8) -> dict[str, Any]:
    """Compile the three kernels for an NVIDIA GPU of compute capability ``capability`` without one.

    Triton ships its compiler and ``ptxas``, so this runs on any machine (it does not *run* the
    kernels). Useful to check that they compile, and to read the generated code:
    ``compile_offline()["window_probs"].asm["ptx"]``. Needs Triton in compiler mode (no TRITON_INTERPRET).

    Returns:
        Kernel name -> Triton ``CompiledKernel`` (with ``.asm["ttir" | "ttgir" | "llir" | "ptx" | "cubin"]``).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreter_active():
        raise RuntimeError("compile_offline needs Triton in compiler mode: run it without TRITON_INTERPRET=1")
    kernels = compiled(interpreted=False)
    tiles = {"BLOCK_W": _pow2_at_least(window), "BLOCK_L": BLOCK_L, "BLOCK_D": _pow2_at_least(head_dim)}
    constants = {"window_stats": tiles, "window_probs": tiles, "reverse_norm_scan": {"BLOCK": SCAN_BLOCK}}
    target = GPUTarget("cuda", capability, 32)
    out = {}
    for name, types in _SIGNATURES.items():
        fn = getattr(kernels, name)
        params = [p for p in fn.arg_names if p not in constants[name]]
        signature = dict(zip(params, types, strict=True)) | dict.fromkeys(constants[name], "constexpr")
        out[name] = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants[name]), target=target)
    return out


def _kernels_for(x: torch.Tensor) -> SimpleNamespace:
    if interpreter_active():
        return compiled(interpreted=True)  # the interpreter takes CPU and CUDA tensors alike
    if x.device.type == "cuda":
        return compiled(interpreted=False)
    raise RuntimeError(
        f"Triton kernels need CUDA tensors (got tensors on {x.device}) or Triton's CPU interpreter; "
        "start Python with TRITON_INTERPRET=1 set (before triton is imported), or use TorchBackend(kernels='torch')"
    )


def _pow2_at_least(x: int, floor: int = 16) -> int:
    # tl.arange needs powers of two; tl.dot on GPUs needs every tile side >= 16.
    return max(floor, triton.next_power_of_2(x))


# ----------------------------------------------------------------------------- launchers
def window_scores(
    queries: torch.Tensor, keys: torch.Tensor, scale: float, window: int, n_cols: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :meth:`refreekv_edu.backend.Backend.window_scores`.

    Args:
        queries: ``(Hq, r, D)`` float32, the queries of the last ``r`` prompt positions.
        keys: ``(Hkv, L, D)`` float32 on the same device, ``r <= L``, ``Hq`` a multiple of ``Hkv``
            (query head ``h`` reads KV head ``h // G``; keys are never copied ``G`` times).
        scale: attention scale.
        window: ``r``.
        n_cols: columns to report, ``1 <= n_cols <= L``; default ``L - r``.

    Returns:
        ``(col_sum, last_row)``, both ``(Hq, n_cols)`` float32.
    """
    heads, w, head_dim = queries.shape
    length = keys.shape[1]
    n = length - window if n_cols is None else int(n_cols)
    kv_heads = keys.shape[0]
    shapes_ok = w == window and 0 < window <= length and kv_heads > 0 and heads % kv_heads == 0
    if not shapes_ok or keys.shape[2] != head_dim or not 0 < n <= length:
        raise KernelInputError(
            f"window_scores expects queries (Hq, r={window}, D) and keys (Hkv, L >= r, D) with Hkv dividing Hq "
            f"and 1 <= n_cols <= L; got {tuple(queries.shape)}, {tuple(keys.shape)} and n_cols={n}"
        )
    kernels = _kernels_for(keys)
    block_w, block_d = _pow2_at_least(window), _pow2_at_least(head_dim)
    chunk_len = STATS_CHUNK if length > STATS_CHUNK else BLOCK_L * math.ceil(length / BLOCK_L)
    chunks = math.ceil(length / chunk_len)

    stats_shape = (heads, chunks, window)
    run_max = torch.empty(stats_shape, dtype=torch.float32, device=keys.device)
    run_sum = torch.empty(stats_shape, dtype=torch.float32, device=keys.device)
    kernels.window_stats[(heads, chunks)](
        queries, keys, run_max, run_sum,
        *queries.stride(), *keys.stride(), heads // kv_heads,
        length, window, head_dim, float(scale), chunk_len,
        BLOCK_W=block_w, BLOCK_L=BLOCK_L, BLOCK_D=block_d,
    )  # fmt: skip
    # Merge the chunks' online statistics: one max and one sum of exponentials per query row.
    row_max = run_max.amax(dim=1).contiguous()  # (Hq, r); finite, since key 0 is visible to every row
    row_sum = (run_sum * torch.exp(run_max - row_max[:, None, :])).sum(dim=1).contiguous()

    col_sum = torch.empty((heads, n), dtype=torch.float32, device=keys.device)
    last_row = torch.empty((heads, n), dtype=torch.float32, device=keys.device)
    kernels.window_probs[(heads, triton.cdiv(n, BLOCK_L))](
        queries, keys, row_max, row_sum, col_sum, last_row,
        *queries.stride(), *keys.stride(), heads // kv_heads,
        n, length, window, head_dim, float(scale),
        BLOCK_W=block_w, BLOCK_L=BLOCK_L, BLOCK_D=block_d,
    )  # fmt: skip
    return col_sum, last_row


def per_head_norms(a_sorted: torch.Tensor) -> torch.Tensor:
    """``(H, n) -> (H, n)``: ``r_h(e) = sqrt(sum_{k >= e} a_sorted[h, k]^2)`` by a per-head reverse scan."""
    a_sorted = a_sorted.contiguous()
    heads, n = a_sorted.shape
    out = torch.empty_like(a_sorted)
    if n:
        block = min(SCAN_BLOCK, _pow2_at_least(n, floor=2))
        _kernels_for(a_sorted).reverse_norm_scan[(heads,)](a_sorted, out, n, BLOCK=block)
    return out


def retained_norms(a_sorted: torch.Tensor) -> torch.Tensor:
    """Triton version of :meth:`refreekv_edu.backend.Backend.retained_norms`: ``(H, n) -> (n,)`` mean retained norm."""
    return per_head_norms(a_sorted).mean(dim=0)


def halting_cut(mean_norms: torch.Tensor, threshold: float) -> int:
    """``e* = max { e : ratio(e) <= threshold }`` from ``R`` ``(n,)``, computed on the device (one scalar copied back).

    Same definition as :func:`refreekv_edu.halting.cut_from_ratio`: the *last* index within the
    threshold (0 when none is), and ``n - 1`` when ``R(0) == 0`` (no attention, nothing to lose).
    """
    n = mean_norms.shape[0]
    if n == 0:
        return 0
    first = mean_norms[0]
    ratio = torch.where(first > 0, (first - mean_norms) / first, torch.zeros_like(mean_norms))
    index = torch.arange(n, device=mean_norms.device)
    return max(int(torch.where(ratio <= threshold, index, -1).max().item()), 0)
