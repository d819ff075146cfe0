"""How much does a ReFreeKV decision cost, next to the attention the layer computes anyway?

For one layer and prompt lengths L = 1k / 4k / 8k this measures, side by side in one run on this CPU:

- the layer's full causal prefill attention, ``softmax(Q K^T / sqrt(D)) V`` over all ``L`` queries
  (torch ``scaled_dot_product_attention``, the cost the model pays with or without ReFreeKV);
- one ``decide_layer`` of a ReFreeKV preset (``--preset``, default the paper's ``ReFreeKV()``: one query
  row, all ``L`` columns) with the numpy reference, with the torch backend's torch ops, and
  (at the smallest L only: it is slow) with the Triton kernels in Triton's CPU interpreter.

It prints each decision's time as a share of that attention, and the numpy/torch speed ratio.
Shapes default to the bundled SmolLM2-135M (Hq=9, Hkv=3, D=64); ``--shape llama8b`` uses 32/8/128.
GPU timings of the Triton kernels are in ``bench/gpu_check.py``.

Usage::

    python bench/decide_backends.py [--lengths 1024 4096 8192] [--shape smollm2|llama8b] [--repeats 5]
                                    [--preset paper|sinks-in-metric|h2o-ranking|official-script]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

# Only for the interpreted-Triton row; it has to be set before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
from refreekv_torch import TorchBackend  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.policies import PRESETS  # noqa: E402
from refreekv_edu.reference import NumpyBackend  # noqa: E402

SHAPES = {"smollm2": (9, 3, 64), "llama8b": (32, 8, 128)}


def best_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best (minimum) wall-clock milliseconds of each ``fn()``, after one warm-up call each.

    The calls are interleaved (round-robin), so that load from other processes hits every variant
    alike, and the minimum is kept, not the median: other processes only ever add time.
    """
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], 1e3 * (time.perf_counter() - t0))
    return best


def layer_inputs(hq: int, hkv: int, length: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random post-RoPE ``q (Hq, L, D)``, ``k (Hkv, L, D)``, ``v (Hkv, L, D)`` for one layer."""
    rng = np.random.default_rng(length)
    q = rng.standard_normal((hq, length, dim), dtype=np.float32)
    k = rng.standard_normal((hkv, length, dim), dtype=np.float32)
    v = rng.standard_normal((hkv, length, dim), dtype=np.float32)
    return q, k, v


def table_row(length: int, hq: int, hkv: int, dim: int, repeats: int, with_triton: bool, preset: str) -> str:
    """Measure one prompt length and format its table row."""
    policy = rk.ReFreeKV.preset(preset)
    numpy_be, torch_be, triton_be = NumpyBackend(), TorchBackend(kernels="torch"), TorchBackend(kernels="triton")
    q, k, v = layer_inputs(hq, hkv, length, dim)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    rows = policy.query_rows  # decide_layer only needs the last query_rows queries (1 for the paper, w for H2O)
    q_win, tq_win = q[:, -rows:], tq[:, -rows:]
    ms = best_ms(
        {
            "attention": lambda: torch.nn.functional.scaled_dot_product_attention(
                tq[None], tk[None], tv[None], is_causal=True, enable_gqa=True
            ),
            "numpy": lambda: policy.decide_layer(q_win, k, backend=numpy_be),
            "torch": lambda: policy.decide_layer(tq_win, tk, backend=torch_be),
        },
        repeats,
    )
    attention_ms, numpy_ms, torch_ms = ms["attention"], ms["numpy"], ms["torch"]
    row = (
        f"{length:>6} {attention_ms:>13.2f} {numpy_ms:>9.2f} {numpy_ms / attention_ms:>7.1%} "
        f"{torch_ms:>9.2f} {torch_ms / attention_ms:>7.1%} {numpy_ms / torch_ms:>11.2f}x"
    )
    if not with_triton:
        return row + f" {'(skipped)':>17} {'':>7}"
    triton_ms = best_ms({"triton": lambda: policy.decide_layer(tq_win, tk, backend=triton_be)}, 1)["triton"]
    return row + f" {triton_ms:>17.1f} {triton_ms / attention_ms:>7.1%}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", choices=list(PRESETS), default="paper")
    args = parser.parse_args(argv)
    hq, hkv, dim = SHAPES[args.shape]
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(torch uses {torch.get_num_threads()} threads); numpy {np.__version__}, torch {torch.__version__}, "
        f"triton {triton.__version__} (interpreted)"
    )
    print(
        f"one layer, shape {args.shape}: Hq={hq}, Hkv={hkv}, D={dim}, float32, {rk.ReFreeKV.preset(args.preset)!r}; "
        f"best of {args.repeats} interleaved runs"
    )
    print("decide time as a share of the layer's full causal prefill attention (lower is better)\n")
    print(
        f"{'L':>6} {'attention ms':>13} {'numpy ms':>9} {'share':>7} {'torch ms':>9} {'share':>7} {'numpy/torch':>12} {'triton-interp ms':>17} {'share':>7}"
    )
    smallest = min(args.lengths)
    for length in sorted(args.lengths):
        print(table_row(length, hq, hkv, dim, args.repeats, with_triton=length == smallest, preset=args.preset))
    print(
        "\nThe interpreted-Triton column checks the kernels' code path; its speed says nothing about a GPU "
        "(see bench/gpu_check.py)."
    )


if __name__ == "__main__":
    main()
