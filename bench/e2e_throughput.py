"""End-to-end throughput on the bundled model: full cache vs compressed caches, side by side in one run.

For each prompt length this runs ``refreekv_edu.generate`` with ``FullCache()``, ``ReFreeKV()`` (the paper's
preset), ``ReFreeKV.preset("official-script")`` and the eval harness's ``recency@matched`` (a fixed recency
budget with the paper's sinks and full layers, whose mean over layers equals the paper preset's budget),
interleaved (full, paper, official, matched, full, ...) so that background load hits all of them alike, and
reports:

- prefill throughput (prompt tokens / prefill seconds; the compressed runs also capture the queries they need),
- decide + compaction seconds (zero for the full cache),
- decode throughput (new tokens / decode seconds; the compressed cache is shorter, so attention reads less),
- end-to-end seconds, and each compressed/full ratio,
- memory: KV MiB held after compaction, and the highest resident memory during the call above the resident memory
  before it (``/proc/self/statm`` sampled every 5 ms; see :mod:`refreekv_edu.eval.speed`, which the evaluation's
  ``--speed-length`` step shares).

Decoding is greedy for a fixed number of steps (end-of-sequence ignored) so every method decodes the same
count. The best of ``--repeats`` runs is kept (least noisy under load). The machine is named in the output.

Usage::

    python bench/e2e_throughput.py [--lengths 1024 2048 4096] [--new-tokens 32] [--repeats 3] [--backend torch] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.eval.methods import matched_budget, parse_method  # noqa: E402
from refreekv_edu.eval.runner import set_threads, token_counter  # noqa: E402
from refreekv_edu.eval.speed import RssSampler  # noqa: E402
from refreekv_edu.eval.tasks import passkey  # noqa: E402


def run_once(model, tok, prompt, policy, new_tokens: int, backend: str) -> dict[str, float]:
    kwargs = {"stop_at_eos": False} if backend == "torch" else {}
    start = time.perf_counter()
    with RssSampler() as mem:
        out = rk.generate(model, tok, prompt, policy=policy, max_new_tokens=new_tokens, **kwargs)
    total = time.perf_counter() - start
    s = out.stats
    return {
        "L": s["prompt_tokens"],
        "new": s["new_tokens"],
        "prefill_s": s["prefill_s"],
        "decide_s": s["decide_s"],
        "decode_s": s["decode_s"],
        "total_s": total,
        "kv_kept": out.kv_kept_fraction,
        "kv_mib": (s.get("kv_bytes_kept") or 0) / 2**20,
        "rss_mib": mem.delta_mb,
        "budget": out.trace.mean_budget if out.trace.layers else 1.0,
        "matched": matched_budget(out.trace.mean_budget, len(out.trace.layers),
                                  sum(d.full_layer for d in out.trace.layers)) if out.trace.layers else 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own; 1 on a loaded 2-core box)")
    args = ap.parse_args(argv)
    if args.threads:
        set_threads(args.threads, args.backend)

    model, tok = rk.load_model(args.model, backend=args.backend)
    print(f"machine: {machine()}")
    print(f"backend: {rk.get_backend(args.backend).describe()}")
    try:
        import torch

        print(f"torch threads: {torch.get_num_threads()}")
    except ImportError:
        pass
    print(f"model: {args.model}; {args.new_tokens} greedy decode steps; best of {args.repeats}\n")
    count = token_counter(tok)
    header = f"{'L':>6} {'method':<18} {'kv kept':>8} {'prefill tok/s':>13} {'decide s':>9} {'decode tok/s':>12} {'total s':>8} {'KV MiB':>7} {'RSS+ MiB':>8}   speed vs full (prefill, decode, end-to-end)"
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        prompt = passkey(length, 0.5, seed=0, count=count).prompt
        rk.generate(model, tok, prompt, policy=rk.FullCache(), max_new_tokens=2)  # warm-up (allocator, kernels)
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            matched = 1.0
            for name in ("full", "paper", "official-script", "recency@matched"):
                spec = parse_method(name)
                policy = spec.policy(matched_budget=matched) if spec.kind == "matched" else spec.policy()
                r = run_once(model, tok, prompt, policy, args.new_tokens, args.backend)
                if name == "paper":
                    matched = r["matched"]  # the fixed baseline keeps the same mean budget, uniform over pruned layers
                if name not in best or r["total_s"] < best[name]["total_s"]:
                    best[name] = r
        full = best["full"]
        for name, r in best.items():
            pre = r["L"] / r["prefill_s"]
            dec = r["new"] / r["decode_s"] if r["decode_s"] > 0 else float("nan")
            ratios = ""
            if name != "full":
                ratios = (f"   x{pre / (full['L'] / full['prefill_s']):.2f}, x{dec / (full['new'] / full['decode_s']):.2f}, "
                          f"x{full['total_s'] / r['total_s']:.2f}")
            print(f"{r['L']:>6} {name:<18} {100 * r['kv_kept']:>7.1f}% {pre:>13.0f} {r['decide_s']:>9.3f} {dec:>12.1f} {r['total_s']:>8.2f} {r['kv_mib']:>7.1f} "
                  f"{(r['rss_mib'] if r['rss_mib'] is not None else float('nan')):>8.0f}{ratios}")
    print("\nspeed ratios: > 1 means faster than the full cache. The compressed prefill includes capturing the observation\n"
          "window; end-to-end includes decide + compaction. Background load on this machine shifts all rows alike (interleaved).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
