"""How fast is float32 matmul in the Linux ``mlx[cpu]`` wheel, and how much does preloading OpenBLAS help?

The Linux CPU wheel of MLX links the *reference* BLAS it bundles (``mlx_cpu.libs/libblas-*.so``: plain
Fortran loops, one thread), so ``mx.matmul`` on the CPU is many times slower than numpy's OpenBLAS.
MLX calls ``cblas_sgemm`` through the dynamic linker, so a library loaded first with ``LD_PRELOAD`` that
exports ``cblas_sgemm`` (OpenBLAS) takes over those calls, with no change to MLX or to this project.

One run of this script measures, side by side on the same machine:

1. numpy (its bundled OpenBLAS) - the yardstick;
2. MLX as installed (in this process);
3. MLX with an OpenBLAS preloaded (the same script re-run as a child process with ``LD_PRELOAD``),
   if one is found: ``$REFREEKV_OPENBLAS``, Debian/Ubuntu's ``libopenblas0-pthread``, Fedora's
   ``openblas``, or the ``cmeel-openblas`` wheel.

and prints times and ratios (``mlx / numpy``; below 1 means MLX is faster). Usage::

    python bench/mlx_cpu_blas.py            # all three
    python bench/mlx_cpu_blas.py --reps 5   # fewer repetitions

The numbers depend on the machine and on whatever else runs on it; the header names the machine.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: (name, A shape, B shape): a square GEMM, the shapes of one SmolLM2-135M decode/prefill step, and the
#: attention a decision reads against 2048 keys: the official script's 8 window rows per query head, and the
#: paper's single last row, as ``Backend.window_scores`` multiplies them (the G = 3 query heads of a KV head
#: stacked as rows: 3 KV heads x 3 rows x 64 dims).
SHAPES = [
    ("square 512", (512, 512), (512, 512)),
    ("square 1024", (1024, 1024), (1024, 1024)),
    ("prefill MLP 256x576 @ 576x1536", (256, 576), (576, 1536)),
    ("decode MLP 1x576 @ 576x1536", (1, 576), (576, 1536)),
    ("window attn 9x8x64 @ 9x64x2048", (9, 8, 64), (9, 64, 2048)),
    ("paper last row 3x3x64 @ 3x64x2048", (3, 3, 64), (3, 64, 2048)),
]

OPENBLAS_CANDIDATES = [
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",  # Debian/Ubuntu: libopenblas0-pthread
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",  # Fedora: openblas
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def loaded_blas() -> list[str]:
    """Shared libraries with 'blas' in their name mapped into this process (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    names = {line.split()[-1] for line in maps if "blas" in line.lower() and "/" in line}
    return sorted(names)


def find_openblas() -> str | None:
    """The first OpenBLAS that exports ``cblas_sgemm`` (``$REFREEKV_OPENBLAS`` first)."""
    candidates = [os.environ.get("REFREEKV_OPENBLAS", "")] + OPENBLAS_CANDIDATES
    site = Path(np.__file__).parent.parent
    candidates.append(str(site / "cmeel.prefix" / "lib" / "libopenblas.so.0"))  # pip install cmeel-openblas
    for path in candidates:
        if path and Path(path).exists():
            try:
                if hasattr(ctypes.CDLL(path), "cblas_sgemm"):
                    return path
            except OSError:
                continue
    return None


def best_time(fn, reps: int) -> float:
    fn()  # warm-up (and MLX graph compilation)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(reps: int, with_numpy: bool) -> dict[str, dict[str, float]]:
    import mlx.core as mx

    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    for name, sa, sb in SHAPES:
        a = rng.standard_normal(sa, dtype=np.float32)
        b = rng.standard_normal(sb, dtype=np.float32)
        ma, mb = mx.array(a), mx.array(b)
        mx.eval(ma, mb)
        row = {"mlx": best_time(lambda ma=ma, mb=mb: mx.eval(ma @ mb), reps)}
        if with_numpy:
            row["numpy"] = best_time(lambda a=a, b=b: a @ b, reps)
        row["max_abs_err"] = float(np.abs(np.array(ma @ mb) - a @ b).max())  # vs numpy, same process
        results[name] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per shape (median reported)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # re-run under LD_PRELOAD: MLX only, results as JSON on stdout
        results = measure(args.reps, with_numpy=False)  # imports MLX first, so its BLAS shows up below
        print(json.dumps({"blas": loaded_blas(), "results": results}))
        return

    import mlx.core as mx

    print(f"machine: {machine()}")
    print(f"mlx {mx.__version__} (device {mx.default_device()}), numpy {np.__version__}")
    print(
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}, load average {os.getloadavg()[0]:.1f}"
    )
    base = measure(args.reps, with_numpy=True)
    print("BLAS in this process:", ", ".join(Path(p).name for p in loaded_blas()))

    preload = find_openblas()
    pre: dict[str, dict[str, float]] | None = None
    if preload is None:
        print(
            "no OpenBLAS with cblas_sgemm found: install libopenblas0-pthread (Debian/Ubuntu) or set REFREEKV_OPENBLAS"
        )
    else:
        env = dict(os.environ, LD_PRELOAD=preload)
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--reps", str(args.reps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        child = json.loads(out.stdout)
        pre = child["results"]
        print(f"LD_PRELOAD={preload}")
        print("BLAS in the preloaded child:", ", ".join(Path(p).name for p in child["blas"]))

    print()
    header = f"{'shape':34s} {'numpy ms':>9s} {'mlx ms':>9s} {'mlx/numpy':>10s}"
    if pre is not None:
        header += f" {'mlx+OpenBLAS ms':>16s} {'(mlx+OB)/numpy':>15s} {'speed-up':>9s}"
    print(header)
    for name, *_ in SHAPES:
        r = base[name]
        line = f"{name:34s} {r['numpy'] * 1e3:9.3f} {r['mlx'] * 1e3:9.3f} {r['mlx'] / r['numpy']:10.2f}"
        if pre is not None:
            p = pre[name]["mlx"]
            line += f" {p * 1e3:16.3f} {p / r['numpy']:15.2f} {r['mlx'] / p:8.1f}x"
        print(line)
    worst = max(r["max_abs_err"] for r in base.values())
    print(f"\nmax |mlx - numpy| over all shapes: {worst:.2e} as installed", end="")
    if pre is not None:
        print(f", {max(r['max_abs_err'] for r in pre.values()):.2e} with OpenBLAS preloaded", end="")
    print(" (float32)")


if __name__ == "__main__":
    main()
