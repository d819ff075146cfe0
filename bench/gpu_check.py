"""One prepared check for a lent NVIDIA GPU: are the Triton kernels right, and are they faster?

1. Correctness: the Triton kernels (``window_scores`` on both paths a decision takes: the paper's
   last row over all keys, ``r = 1, n_cols = L``, and the official script's window, ``r = 8,
   n_cols = L - 8``; ``retained_norms``) and whole ``decide_layer`` calls of the ``"paper"`` and
   ``"official-script"`` presets on fresh random inputs, against the numpy reference.
2. Timing (CUDA only): Triton kernels vs the torch-op path of the same backend, measured with CUDA
   events side by side in this run, at L = 4k / 16k / 64k with Hq = 32, Hkv = 8, D = 128
   (a Llama-3-8B-like layer). Also the peak extra GPU memory each path allocates.

Without a GPU the script runs part 1 at small sizes in Triton's CPU interpreter (it sets
``TRITON_INTERPRET=1`` itself), so the script is known to work before a GPU is spent on it.

Usage::

    python bench/gpu_check.py                 # everything that this machine can run
    python bench/gpu_check.py --lengths 4096  # fewer sizes

Exit status 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

if not torch.cuda.is_available():
    # Must happen before triton is first imported: Triton builds its language for the interpreter then.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
from refreekv_torch import TorchBackend, triton_kernels  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.reference import NumpyBackend  # noqa: E402

REF = NumpyBackend()


def machine() -> str:
    if torch.cuda.is_available():
        where = f"GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        where = "no GPU: CPU with Triton's interpreter"
    return (
        f"{where}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}"
    )


def random_layer(hq: int, hkv: int, length: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries ``(Hq, w=8, D)`` and keys ``(Hkv, L, D)`` with some structure: a few keys stand out."""
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((hkv, length, dim)).astype(np.float32)
    queries = rng.standard_normal((hq, 8, dim)).astype(np.float32)
    hot = rng.choice(length - 8, size=min(16, length - 8), replace=False)
    g = hq // hkv
    queries += 0.5 * np.repeat(keys[:, hot].mean(axis=1, keepdims=True), g, axis=0)  # attend to "hot" keys
    return queries, keys


def kept_mismatch(a: np.ndarray, b: np.ndarray) -> int:
    """Positions kept in one decision but not in the other, summed over heads (0 when identical)."""
    if a.shape != b.shape:
        return max(a.size, b.size)
    return sum(len(np.setdiff1d(x, y)) for x, y in zip(a, b))


#: The two decisions checked and timed: the paper's method (r = 1 query row, n_cols = L) and the official script's.
POLICIES = {"paper": rk.ReFreeKV(), "official": rk.ReFreeKV.preset("official-script")}


def kernel_errors(q: np.ndarray, k: np.ndarray, device: str, rows: int, n_cols: int) -> tuple[float, float]:
    """Max abs error of the Triton ``window_scores`` (last ``rows`` queries, ``n_cols`` columns) vs the reference."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    q_rows = np.ascontiguousarray(q[:, -rows:])
    col, last = triton_kernels.window_scores(  # keys stay at Hkv heads; the query view is strided on purpose
        torch.from_numpy(q).to(device)[:, -rows:], torch.from_numpy(k).to(device), scale, rows, n_cols
    )
    ref_col, ref_last = REF.window_scores(q_rows, k, scale, rows, n_cols=n_cols)
    return float(np.abs(col.cpu().numpy() - ref_col).max()), float(np.abs(last.cpu().numpy() - ref_last).max())


def check_one(device: str, hq: int, hkv: int, length: int, dim: int, exact: bool) -> bool:
    """Kernels and whole decisions vs the numpy reference at one size; prints one line per path, returns ok."""
    q, k = random_layer(hq, hkv, length, dim, seed=length)
    errors = {"paper": kernel_errors(q, k, device, 1, length), "official": kernel_errors(q, k, device, 8, length - 8)}
    a_sorted = np.sort(REF.window_scores(q, k, 1.0 / np.sqrt(dim), 8)[1], axis=1)
    curve = triton_kernels.retained_norms(torch.from_numpy(a_sorted).to(device)).cpu().numpy()
    ref_curve = REF.retained_norms(a_sorted)
    err_curve = float(np.abs(curve - ref_curve).max() / max(ref_curve.max(), 1e-30))

    ok = True
    for name, policy in POLICIES.items():
        ref_dec = policy.decide_layer(q, k, backend=REF)
        dec = policy.decide_layer(
            torch.from_numpy(q).to(device), torch.from_numpy(k).to(device), backend=TorchBackend(kernels="triton")
        )
        diff = kept_mismatch(dec.kept, ref_dec.kept)
        # With tens of thousands of candidates, two scores a float32 rounding apart can sit on either side
        # of the cut; large sizes may differ by such swaps (at most 0.1% of the kept rows) and e* by one.
        if exact:
            same = dec.n_evicted == ref_dec.n_evicted and diff == 0
        else:
            same = abs(dec.n_evicted - ref_dec.n_evicted) <= 1 and diff <= 0.001 * dec.kept.size
        err_col, err_last = errors[name]
        good = err_col < 1e-5 and err_last < 1e-5 and err_curve < 1e-5 and same
        ok &= good
        print(
            f"  {name:<8} Hq={hq:>2} Hkv={hkv} L={length:>6} D={dim:>3}: col_sum {err_col:.1e}  last_row {err_last:.1e}  "
            f"curve (rel) {err_curve:.1e}  e* {dec.n_evicted}/{ref_dec.n_evicted}  kept rows differing: {diff}"
            f"{'' if exact else ' (near-ties allowed)'}  -> {'ok' if good else 'FAIL'}"
        )
    return ok


def check_correctness(device: str, sizes: list[tuple[int, int, int, int, bool]]) -> bool:
    """Run :func:`check_one` for every ``(Hq, Hkv, L, D, exact)``; an exception counts as a failure."""
    print(
        "correctness vs numpy reference (max abs error of the kernels; decisions of the presets): "
        "paper = window_scores(r=1, n_cols=L) + ReFreeKV(); official = window_scores(r=8, n_cols=L-8) + "
        "ReFreeKV.preset('official-script')"
    )
    ok = True
    for size in sizes:
        try:
            ok &= check_one(device, *size)
        except Exception as exc:  # noqa: BLE001 - report and go on, so one GPU run shows everything
            print(f"  {size}: FAIL with {type(exc).__name__}: {exc}")
            ok = False
    return ok


def median_ms(fn, device: str, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``: CUDA events on a GPU, ``perf_counter`` otherwise."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def peak_extra_mib(fn, device: str) -> float:
    """GPU memory ``fn()`` allocates beyond what is already held, in MiB (NaN off the GPU)."""
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_length(length: int, hq: int, hkv: int, dim: int, device: str, repeats: int) -> None:
    """Print the table rows (window_scores on both paths, retained_norms, both decisions) for one prompt length."""
    paths = {"triton": TorchBackend(kernels="triton"), "torch": TorchBackend(kernels="torch")}
    q, k = random_layer(hq, hkv, length, dim, seed=length)
    q_d, k_d = torch.from_numpy(q).to(device), torch.from_numpy(k).to(device)
    q_last = q_d[:, -1:]
    scale = 1.0 / np.sqrt(dim)
    a_sorted = torch.sort(paths["torch"].window_scores(q_d, k_d, scale, 8)[1], dim=-1).values
    ops = {
        "scores r=1,n=L": lambda be: be.window_scores(q_last, k_d, scale, 1, length),
        "scores r=8,n=L-8": lambda be: be.window_scores(q_d, k_d, scale, 8),
        "retained_norms": lambda be: be.retained_norms(a_sorted),
        "decide paper": lambda be: POLICIES["paper"].decide_layer(q_last, k_d, backend=be, layer=2),
        "decide official": lambda be: POLICIES["official"].decide_layer(q_d, k_d, backend=be),
    }
    for op_name, op in ops.items():
        try:
            ms = {name: median_ms(lambda be=be, op=op: op(be), device, repeats) for name, be in paths.items()}
            mib = {name: peak_extra_mib(lambda be=be, op=op: op(be), device) for name, be in paths.items()}
        except Exception as exc:  # noqa: BLE001 - keep timing the other sizes
            print(f"{length:>7} {op_name:<17} FAILED: {type(exc).__name__}: {exc}")
            continue
        print(
            f"{length:>7} {op_name:<17} {ms['triton']:>10.3f} {ms['torch']:>10.3f} {ms['torch'] / ms['triton']:>12.2f}x"
            f" {mib['triton']:>11.1f} {mib['torch']:>10.1f}"
        )


def time_paths(lengths: list[int], device: str, hq: int = 32, hkv: int = 8, dim: int = 128, repeats: int = 20) -> None:
    """Print a table: Triton vs torch ops for each fused op and the whole decision, per prompt length."""
    clock = "CUDA events" if device == "cuda" else "perf_counter, Triton INTERPRETED: checks the code path, not speed"
    print(f"\ntiming ({clock}; median of {repeats}): Hq={hq}, Hkv={hkv}, D={dim}, float32")
    print(
        f"{'L':>7} {'operation':<17} {'triton ms':>10} {'torch ms':>10} {'torch/triton':>13} {'MiB triton':>11} {'MiB torch':>10}"
    )
    for length in lengths:
        time_length(length, hq, hkv, dim, device, repeats)
        if device == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536], help="prompt lengths to time")
    parser.add_argument(
        "--cpu-timing-dry-run", action="store_true", help="without a GPU, run the timing code once at a tiny size"
    )
    args = parser.parse_args(argv)
    print(machine())
    print(f"default torch backend: {TorchBackend().describe()}")
    t0 = time.perf_counter()
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        # Odd sizes too: not multiples of the 64-key block, several 1024-key chunks per head.
        sizes = [(4, 4, 9, 16, True), (9, 3, 1500, 64, True), (32, 8, 4096, 128, False), (32, 8, 70_001, 128, False)]
        ok = check_correctness("cuda", sizes)
    else:
        ok = check_correctness("cpu", [(4, 2, 9, 16, True), (4, 2, 300, 32, True), (8, 2, 1500, 64, True)])
    if on_gpu:
        time_paths(args.lengths, "cuda")
    elif args.cpu_timing_dry_run:
        time_paths([200], "cpu", hq=4, hkv=2, dim=32, repeats=2)
    else:
        print("\ntiming skipped: no CUDA GPU here (the interpreter's speed says nothing about the GPU's)")
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
