"""Where the question sits: ReFreeKVPress inside kvpress's pipeline against ReFreeKV on the whole prompt.

ReFreeKV's halting signal is the attention of the last prefill position. kvpress's pipeline prefills the
*context* alone, compresses it, and only then feeds the question, so there the rule keeps what the end of the
context attends to. ``rk.generate`` on the whole prompt decides at its last token, after the question. This
script measures the difference on the same token sequence (the pipeline's own chat framing: the context ids, then
the question ids) for the needle tasks of ``refreekv-edu eval``, where the question names what must survive:

- ``full``: the whole sequence with the full cache (``rk.generate``, greedy): the reference answer;
- ``pipeline full``: kvpress's pipeline with no press (a check that the framing matches ``full``);
- ``pipeline ReFreeKV``: kvpress's pipeline with :class:`refreekv_torch.kvpress_press.ReFreeKVPress` (paper preset):
  the context is compressed before the question is seen;
- ``whole prompt ReFreeKV``: ``rk.generate`` with ``rk.ReFreeKV()`` on the whole sequence: the question is seen.

Printed per task and length: the share of the rows kept (mean over layers, of the rows the decision saw), the task
score (the needle in the answer) and how often the answer equals the full cache's. Quality, not speed: one run
each, greedy. Needs the kvpress extra. Usage::

    python bench/kvpress_question_position.py [--samples 10] [--lengths 512 1024] [--tasks passkey multi_needle]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_for_kvpress  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.eval.config import EvalConfig, build_samples  # noqa: E402
from refreekv_edu.eval.runner import sample_score, token_counter  # noqa: E402

METHODS = ("full", "pipeline full", "pipeline ReFreeKV", "whole prompt ReFreeKV")


def split_prompt(prompt: str) -> tuple[str, str]:
    """``(context, question)``: the needle tasks end their prompt with one question paragraph."""
    context, question = prompt.rsplit("\n\n", 1)
    return context, question


def run_sample(pipe: Any, model: Any, tok: Any, sample: Any) -> dict[str, dict[str, Any]]:
    """The four methods on one sample: ``{method: {"text", "kept", "score"}}``."""
    from refreekv_torch.kvpress_press import ReFreeKVPress

    context, question = split_prompt(sample.prompt)
    steps = sample.max_new_tokens
    framed = pipe.preprocess(context, [question], answer_prefix="", max_context_length=10**9)
    context_ids = framed["context_ids"][0].tolist()
    whole = context_ids + framed["questions_ids"][0][0].tolist()
    out: dict[str, dict[str, Any]] = {}
    full = rk.generate(model, tok, whole, rk.FullCache(), max_new_tokens=steps)
    out["full"] = {"text": full.text.strip(), "kept": 1.0, "cache": 1.0}
    plain = pipe(context, question=question, press=None, max_new_tokens=steps)["answer"]
    out["pipeline full"] = {"text": plain.strip(), "kept": 1.0, "cache": 1.0}
    press = ReFreeKVPress()
    answer = pipe(context, question=question, press=press, max_new_tokens=steps)["answer"]
    press.restore_attention()
    asked = len(whole) - len(context_ids)  # the question's rows, appended whole after the compressed context
    cache = sum(d.n_kept + asked for d in press.trace.layers) / (len(press.trace.layers) * len(whole))
    out["pipeline ReFreeKV"] = {"text": answer.strip(), "kept": press.trace.mean_budget, "cache": cache}
    whole_run = rk.generate(model, tok, whole, rk.ReFreeKV(), max_new_tokens=steps)
    out["whole prompt ReFreeKV"] = {"text": whole_run.text.strip(), "kept": whole_run.trace.mean_budget,
                                    "cache": whole_run.trace.mean_budget}
    for r in out.values():
        r["score"] = sample_score(sample, r["text"])
        r["same"] = float(r["text"] == out["full"]["text"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10, help="samples per task and length (seeds as in eval)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--tasks", nargs="+", default=["passkey", "multi_needle"], choices=["passkey", "multi_needle"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a loaded 2-core box)")
    args = ap.parse_args(argv)
    if args.samples < 1 or any(n < 64 for n in args.lengths):
        ap.error("--samples must be at least 1 and every length at least 64 tokens")
    loaded = load_for_kvpress(args.threads)
    if loaded is None:
        return 2
    model, tok = loaded
    from transformers import pipeline

    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok)
    samples = build_samples(EvalConfig(tasks=tuple(args.tasks), lengths=tuple(args.lengths), samples=args.samples),
                            token_counter(tok))
    print(f"{len(samples)} samples ({', '.join(args.tasks)} at {', '.join(map(str, args.lengths))} tokens), greedy\n")
    groups: dict[str, list[dict[str, dict[str, Any]]]] = {}
    start = time.perf_counter()
    for i, sample in enumerate(samples, 1):
        res = run_sample(pipe, model, tok, sample)
        groups.setdefault(f"{sample.task} @{sample.meta.get('length')}", []).append(res)
        print(f"[{i}/{len(samples)}] {sample.id}: pipeline kept {100 * res['pipeline ReFreeKV']['kept']:.1f}%, "
              f"whole prompt {100 * res['whole prompt ReFreeKV']['kept']:.1f}%; scores "
              + ", ".join(f"{m} {res[m]['score']:.2f}" for m in METHODS), flush=True)
    groups["all"] = [r for key in list(groups) for r in groups[key]]

    header = f"\n{'group':<20} {'n':>3}  " + "  ".join(f"{m:>22}" for m in METHODS)
    print(header)
    print("-" * len(header.strip()))
    for name, rows in groups.items():
        def mean(method: str, key: str, rows: list = rows) -> float:
            return sum(r[method][key] for r in rows) / len(rows)

        for key, label in (("kept", "kept"), ("cache", "cache"), ("score", "score"), ("same", "= full")):
            cells = "  ".join(f"{(100 * mean(m, key)):>21.1f}%" for m in METHODS)
            print(f"{(name if key == 'kept' else ''):<20} {len(rows) if key == 'kept' else '':>3}  {cells}   {label}")
    print(f"\nkept: rows kept / rows the decision saw, mean over layers (the pipeline's decision sees the context only);"
          f"\ncache: rows in the cache / tokens of the whole sequence when the answer starts (the pipeline adds the"
          f"\nquestion's rows whole); score: the needle(s) in the answer; = full: the answer equals the full cache's."
          f"\n{time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
