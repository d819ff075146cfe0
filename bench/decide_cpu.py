"""Cost of one ReFreeKV decision on the numpy reference, relative to the layer's own prefill attention.

For each prompt length L, on random inputs with realistic shapes (Hq=32, Hkv=8, D=128, w=8):
- ``decide``: ``ReFreeKV().decide_layer`` on the reference backend (window attention, ranking, curve, cut);
- ``prefill attention``: the causal attention of the same layer over the whole prompt,
  ``softmax(Q K^T / sqrt(D) + mask) V`` for all L queries (computed in 512-row chunks, as a
  real prefill would, so it fits in memory), also in numpy float32.
Both are timed side by side in one run; the printed ratio is what matters on a noisy machine.

    python bench/decide_cpu.py [--lengths 2048 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, machine  # noqa: E402

import refreekv_edu as rk  # noqa: E402


def prefill_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Causal attention of all ``L`` queries: q ``(Hq, L, D)``, k/v ``(Hkv, L, D)`` -> ``(Hq, L, D)``."""
    hq, length, d = q.shape
    g = hq // k.shape[0]
    out = np.empty_like(q)
    kt = np.swapaxes(k, 1, 2)
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        qc = q[:, start:stop].reshape(k.shape[0], g * (stop - start), d)
        logits = (qc @ kt[:, :, :stop]).reshape(hq, stop - start, stop) / np.sqrt(d)
        rows = np.arange(start, stop)[:, None]
        logits = np.where(np.arange(stop)[None, :] <= rows, logits, -np.inf)
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        out[:, start:stop] = (p.reshape(k.shape[0], g * (stop - start), stop) @ v[:, :stop]).reshape(
            hq, stop - start, d
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    hq, hkv, d, w = 32, 8, 128, 8
    rng = np.random.default_rng(0)
    policy = rk.ReFreeKV()
    print(f"machine: {machine()}")
    print(f"numpy {np.__version__}; Hq={hq}, Hkv={hkv}, D={d}, w={w}; best of {args.repeats}")
    print(f"{'L':>6} | {'decide (s)':>10} | {'prefill attn (s)':>16} | {'decide / prefill attn':>21} | budget")
    for length in args.lengths:
        q = rng.standard_normal((hq, length, d), dtype=np.float32)
        k = rng.standard_normal((hkv, length, d), dtype=np.float32)
        v = rng.standard_normal((hkv, length, d), dtype=np.float32)
        dec = policy.decide_layer(q[:, -w:], k)
        t_decide = best_time(lambda q=q, k=k: policy.decide_layer(q[:, -w:], k), args.repeats)
        t_attn = best_time(lambda q=q, k=k, v=v: prefill_attention(q, k, v), max(1, args.repeats - 1))
        print(f"{length:>6} | {t_decide:>10.4f} | {t_attn:>16.3f} | {t_decide / t_attn:>20.2%} | {dec.budget:.3f}")


if __name__ == "__main__":
    main()
