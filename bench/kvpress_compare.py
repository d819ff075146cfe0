"""ReFreeKVPress next to kvpress's own presses on the bundled model: prefill and decode, side by side in one run.

For a few eval prompts (``refreekv_edu.eval`` tasks, the same builder as ``refreekv-edu eval``) this prefills with
``model.model`` under each press, the way kvpress's pipeline does, then decodes ``--new-tokens`` greedy steps
with explicit positions (a compressed cache holds fewer rows than the tokens seen). Methods:

- ``full``: no press (the full cache);
- ``refreekv``: :class:`refreekv_torch.kvpress_press.ReFreeKVPress` with the paper's preset;
- ``kvpress:<name>``: StreamingLLM, SnapKV, TOVA, Knorm and ExpectedAttention (as
  :func:`refreekv_torch.kvpress_baselines.make_press` builds them) at ReFreeKV's achieved compression ratio on the
  same prompt, so every press keeps the same share of the cache.

Runs are interleaved (full, refreekv, presses, full, ...) so background load hits every method alike; the best of
``--repeats`` is kept. Printed per prompt and as the geometric mean over prompts: the share of the cache kept,
prefill and decode seconds, and the ratios against the full cache and against ReFreeKVPress (> 1: faster).

Needs the kvpress extra (``pip install -e ".[torch,kvpress]"``, which gives transformers < 5.3). Usage::

    python bench/kvpress_compare.py [--prompts 4] [--length 1024] [--new-tokens 32] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_for_kvpress  # noqa: E402

from refreekv_edu.encoding import encode_prompt  # noqa: E402
from refreekv_edu.eval.config import EvalConfig, build_samples  # noqa: E402
from refreekv_edu.eval.runner import token_counter  # noqa: E402

PRESSES = ("streamingllm", "snapkv", "tova", "knorm", "expected_attention")


def run_once(model: Any, ids: list[int], press: Any, new_tokens: int) -> dict[str, float]:
    """Prefill ``ids`` through ``model.model`` under ``press`` (None: no press), then greedy-decode ``new_tokens``."""
    import contextlib

    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        start = time.perf_counter()
        with press(model) if press is not None else contextlib.nullcontext():
            hidden = model.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True).last_hidden_state
        token = int(model.lm_head(hidden[:, -1]).argmax(-1))
        prefill_s = time.perf_counter() - start
        rows = [layer.keys.shape[-2] for layer in cache.layers]
        start = time.perf_counter()
        for step in range(new_tokens):
            position = torch.tensor([[len(ids) + step]])
            logits = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True,
                           position_ids=position, cache_position=position[0]).logits
            token = int(logits[0, -1].argmax())
        decode_s = time.perf_counter() - start
    return {"prefill_s": prefill_s, "decode_s": decode_s, "kept": sum(rows) / (len(rows) * len(ids))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=4, help="pass-key prompts (seeds 0..n-1 of the eval task)")
    ap.add_argument("--length", type=int, default=1024, help="prompt length in tokens")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a loaded 2-core box)")
    args = ap.parse_args(argv)
    for name, value in (("--prompts", args.prompts), ("--length", args.length), ("--new-tokens", args.new_tokens),
                        ("--repeats", args.repeats)):
        if value < 1:
            ap.error(f"{name} must be at least 1, got {value}")
    loaded = load_for_kvpress(args.threads)
    if loaded is None:
        return 2
    model, tok = loaded
    from refreekv_torch.kvpress_baselines import make_press
    from refreekv_torch.kvpress_press import ReFreeKVPress

    config = EvalConfig(tasks=("passkey",), lengths=(args.length,), samples=args.prompts)
    samples = build_samples(config, token_counter(tok))
    print(f"model: smollm2-135m; {len(samples)} pass-key prompts at ~{args.length} tokens; prefill through model.model "
          f"as kvpress's pipeline does; {args.new_tokens} greedy decode steps; best of {args.repeats}\n")

    methods = ["full", "refreekv", *(f"kvpress:{p}" for p in PRESSES)]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for sample in samples:
        ids = encode_prompt(tok, sample.prompt)
        run_once(model, ids, None, 2)  # warm-up (allocator)
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            ratio = 0.0
            for method in methods:
                if method == "full":
                    press = None
                elif method == "refreekv":
                    press = ReFreeKVPress()
                else:
                    press = make_press(method.split(":", 1)[1], ratio)
                r = run_once(model, ids, press, args.new_tokens)
                if method == "refreekv":
                    ratio = float(press.compression_ratio or 0.0)  # every kvpress press keeps the same share
                    press.restore_attention()  # the next runs use the model's own attention
                if method not in best or r["prefill_s"] + r["decode_s"] < best[method]["prefill_s"] + best[method]["decode_s"]:
                    best[method] = r
        for method in methods:
            results[method].append(best[method])
        print(f"prompt {sample.id}: {len(ids)} tokens, ReFreeKV kept {100 * best['refreekv']['kept']:.1f}% of the rows")

    def geomean(values: list[float]) -> float:
        import math

        return math.exp(sum(math.log(v) for v in values) / len(values))

    def ratio(method: str, against: str, key: str) -> float:  # > 1: `method` is faster than `against`
        return geomean([a[key] / m[key] for m, a in zip(results[method], results[against])])

    header = (f"\n{'method':<28} {'kept':>6} {'prefill s':>9} {'decode s':>9}   vs full (prefill, decode)"
              f"   vs refreekv (prefill, decode)")
    print(header)
    print("-" * len(header.strip()))
    for method in methods:
        rs = results[method]
        kept = sum(r["kept"] for r in rs) / len(rs)
        print(f"{method:<28} {100 * kept:>5.1f}% {geomean([r['prefill_s'] for r in rs]):>9.3f} "
              f"{geomean([r['decode_s'] for r in rs]):>9.3f}   "
              f"x{ratio(method, 'full', 'prefill_s'):.2f}, x{ratio(method, 'full', 'decode_s'):.2f}"
              f"{'':>14}x{ratio(method, 'refreekv', 'prefill_s'):.2f}, x{ratio(method, 'refreekv', 'decode_s'):.2f}")
    print("\ntimes: geometric means over the prompts of each prompt's best run; ratios > 1 mean faster than the column's\n"
          "reference. ReFreeKVPress's prefill includes recomputing the last rows' queries and its decision; its decode\n"
          "uses the mask-fitting attention (layers of different lengths). Background load shifts all rows alike (interleaved).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
