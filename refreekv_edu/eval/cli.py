"""``refreekv-edu eval``: arguments and entry point (wired into :mod:`refreekv_edu.cli`).

Examples::

    refreekv-edu eval                                    # the default suite (72 generations, most at ~1k tokens)
    refreekv-edu eval --tasks passkey --lengths 1024 2048 4096 --samples 3 --methods full paper paper@0.02 recency@matched
    refreekv-edu eval --methods all --results-md docs/results.md
    refreekv-edu eval --tasks longbench/qasper gsm8k --data-dir ~/data --lengths 4096
    refreekv-edu eval --report-only --out results/eval   # rebuild the table and plots from samples.jsonl
    refreekv-edu eval --tasks reading --samples 20 --methods paper recency@matched recency@matched-set --threads 1 \
        --speed-length 4096                              # plus the decode-speed ratio at ~4k tokens
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..policies import PRESETS
from .datasets import DATASETS
from .methods import DEFAULT_METHODS, ORACLE_TOLERANCE
from .tasks import TASKS

#: The default suite: 6 tasks x 2 samples x 6 methods = 72 generations, most at ~1k tokens (minutes on a 2-core CPU).
DEFAULT_TASKS = ["passkey", "multi_needle", "short", "reading", "continuation", "repeat"]
DEFAULT_LENGTHS = [1024]
DEFAULT_SAMPLES = 2


def _split(values: list[str]) -> list[str]:
    """Accept both ``--tasks a b`` and ``--tasks a,b``."""
    return [v for item in values for v in item.split(",") if v]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser``."""
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, metavar="TASK",
                        help=f"offline tasks ({', '.join(TASKS)}) and/or datasets ({', '.join(DATASETS)}); default: %(default)s")
    parser.add_argument("--lengths", nargs="+", type=int, default=DEFAULT_LENGTHS, metavar="TOKENS",
                        help="target prompt lengths in tokens (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["default"], metavar="METHOD",
                        help=f"'default' ({', '.join(DEFAULT_METHODS)}), 'all' (adds the ablation presets and fixed "
                             "budgets at 0.2/0.5/0.8), or names: full; a preset (" + ", ".join(PRESETS) + ") or "
                             "<preset>@<threshold> (paper@0.02); <ranking>@<budget> (recency@0.5, h2o@0.5, snapkv@0.2); "
                             "<ranking>@matched (a fixed budget with the paper preset's mean budget on each sample); "
                             "<ranking>@matched-set (one fixed budget for every sample: the paper preset's mean budget "
                             "over the whole run, run after the paper preset finished every sample); "
                             "<ranking>@oracle (the smallest fixed budget reproducing the full cache's output, by "
                             "binary search: ~7 generations per sample); 'sweep' (every preset at T = 0.1%%..10%%). "
                             "Validated before the model loads (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="samples per task and length (default: %(default)s)")
    parser.add_argument("--sweep-samples", type=int, default=None, metavar="N",
                        help="run ReFreeKV methods other than the paper preset itself (ablation presets, the sweep) on only the first N samples of each task and length")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated prompts (default: %(default)s)")
    parser.add_argument("--model", default="smollm2-135m", help="model name or path (default: the bundled %(default)s)")
    parser.add_argument("--backend", default="auto", help="torch | mlx | auto (default)")
    parser.add_argument("--out", default="results/eval", help="output directory; rerunning with it resumes (default: %(default)s)")
    parser.add_argument("--window", type=int, default=8,
                        help="observation window w of the h2o/snapkv fixed baselines, >= 1; presets keep their own "
                             "(default: %(default)s)")
    parser.add_argument("--gqa", default="group", choices=["group", "expand"], help="GQA mode (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="local dataset files for the paper's datasets (else the HF hub)")
    parser.add_argument("--haystack", default="prose", choices=["prose", "docs", "procedural"],
                        help="filler text source: prose (same on every machine), docs (stdlib docstrings: depend on the Python version), procedural (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="override every sample's decode length, >= 1 (default: each task's own)")
    parser.add_argument("--results-md", default=None, metavar="PATH",
                        help="also write this results page (e.g. docs/results.md; plots go to <its folder>/assets/results)")
    parser.add_argument("--report-only", action="store_true",
                        help="skip generation; rebuild the report from <out>/samples.jsonl (the methods of the last run, "
                             "from <out>/run.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own). On a loaded 2-core machine --threads 1 is several "
                             "times faster than 2")
    parser.add_argument("--oracle-tolerance", type=float, default=ORACLE_TOLERANCE,
                        help="width at which the <ranking>@oracle binary search stops (default 1/64: 6 probes; "
                             "1/32: 5 probes)")
    parser.add_argument("--speed-length", type=int, default=None, metavar="TOKENS",
                        help="also measure decode tokens/s of the paper preset vs the full cache side by side on a "
                             "passkey prompt of about this many tokens (e.g. 4096); written to <out>/speed.json")
    parser.add_argument("--speed-new-tokens", type=int, default=32, help="decode steps of the speed step (default: %(default)s)")
    parser.add_argument("--speed-repeats", type=int, default=2,
                        help="interleaved runs per method in the speed step; the fastest decode is kept (default: %(default)s)")


#: Decode steps left free under the context when ``--max-new-tokens`` is not given (the longest task default).
ANSWER_ROOM = 32


def check_context(config: Any) -> None:
    """Refuse, before the model loads, prompt lengths its context cannot hold (read from the model's own metadata:
    the GGUF header of the bundled model, see :func:`refreekv_edu.models.context_length`; unknown for hub ids)."""
    from ..models import context_length

    context = context_length(config.model)
    if context is None:
        return
    room = config.max_new_tokens or ANSWER_ROOM
    for option, length in [("--lengths", n) for n in config.lengths] + [("--speed-length", config.speed_length)]:
        if length is not None and int(length) + room > context:
            raise ValueError(
                f"{option} {length} does not fit: {config.model}'s context is {context} tokens (from its metadata), "
                f"prompt plus up to {room} answer tokens; use lengths up to {context - room}"
            )


def run_eval_from_args(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run ``refreekv-edu eval`` with parsed ``args``; prints the summary table and where files went."""
    from .config import EvalConfig
    from .findings_text import speed_line
    from .plots import make_plots
    from .records import check_writable, read_records
    from .report import read_speed, write_results_md, write_summary
    from .runner import Runner
    from .summary import markdown_table, summarize

    config = EvalConfig(
        tasks=_split(args.tasks),
        lengths=list(args.lengths),
        methods=_split(args.methods),
        samples=args.samples,
        seed=args.seed,
        model=args.model,
        backend=args.backend,
        out_dir=args.out,
        window=args.window,
        gqa=args.gqa,
        data_dir=args.data_dir,
        haystack=args.haystack,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
        oracle_tolerance=args.oracle_tolerance,
        threads=args.threads,
        speed_length=args.speed_length,
        speed_new_tokens=args.speed_new_tokens,
        speed_repeats=args.speed_repeats,
        sweep_samples=args.sweep_samples,
    )
    out = Path(config.out_dir)
    argv = list(sys.argv if argv is None else argv)
    if args.report_only:
        records = read_records(out / "samples.jsonl")
        if not records:
            raise ValueError(f"no records in {out / 'samples.jsonl'}; run without --report-only first")
        info = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
        methods = info.get("config", {}).get("methods")
        if methods:  # the same rows as the last run's own report: records of methods dropped since are left out
            from .methods import parse_methods

            names = {m.name for m in parse_methods(methods)}
            records = [r for r in records if r["method"] in names]
    else:
        config.validate()
        check_context(config)  # before the model loads: --lengths 100000 is refused here
        check_writable(out)  # before the model loads
        print(f"loading {config.model} on backend {config.backend} ...", file=sys.stderr, flush=True)
        runner = Runner(config)
        runner.write_run_info(argv)
        info = json.loads((out / "run.json").read_text())
        records = runner.run()
    summary = write_summary(records, out)
    plots = make_plots(records, out / "plots")
    print(markdown_table(summarize(records)))
    print(f"\nrecords: {out / 'samples.jsonl'}\nsummary: {summary}\nplots:   {', '.join(str(p) for p in plots)}")
    speed = read_speed(out / "speed.json")
    if speed:
        print(f"speed: {speed_line(speed)}")
    if args.results_md:
        print(f"results: {write_results_md(records, info, args.results_md, speed=speed)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m refreekv_edu.eval.cli``: the same as ``refreekv-edu eval``."""
    parser = argparse.ArgumentParser(prog="refreekv-edu eval", description="evaluate ReFreeKV vs full cache and fixed budgets")
    add_eval_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_eval_from_args(args, ["refreekv-edu", "eval", *(sys.argv[1:] if argv is None else argv)])
    except (ValueError, RuntimeError, OSError) as exc:  # one line, like `refreekv-edu eval`
        print(f"refreekv-edu eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
