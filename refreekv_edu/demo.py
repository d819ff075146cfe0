"""The demo: four different prompts, the full cache against ReFreeKV, its official script and a matched fixed budget.

The paper's claim is that one threshold gives every input the budget it needs. The demo shows it, or not, on
the bundled SmolLM2-135M (16 generations of 43 to ~1k prompt tokens; aimed at about 90 s on an idle 2-core CPU once
the model is cached; no network after the first fetch):

1. four prompts from the evaluation tasks (:mod:`refreekv_edu.eval.tasks`), chosen by design, not by result:
   a short factual question, a question over a paragraph, a long redundant text to continue (one paragraph
   copied again and again), and a pass key in ~1k tokens of prose as the stress case (oldest-first eviction is
   expected to lose a key once it is older than the kept share);
2. each runs with the **full cache**, **ReFreeKV()** (the paper's preset), **ReFreeKV.preset("official-script")**
   and a **fixed budget at ReFreeKV's mean budget over the set** (recency ranking, the same 4 sinks and full
   layers 0-1 as the paper, so the two differ only in how the budget is spread over inputs and layers);
3. one table: the answer, whether it is right, whether it equals the full cache's greedy answer, the budget
   each input got, the KV bytes kept and the per-layer budgets; failures are printed as failures with a reason;
4. files (named when the demo starts): a per-input x per-layer budget plot, ``summary.json``, and each
   prompt's ReFreeKV trace (open it with ``rk.widgets.DecisionExplorer(rk.Trace.load(path))``).

Run it with ``refreekv-edu demo`` or ``python -m refreekv_edu.demo``, or from Python::

    from refreekv_edu.demo import run_demo
    result = run_demo(out_dir="refreekv-demo-out")

The prompts are the ones :func:`demo_samples` builds; they were fixed once, before any compressed run, keeping
the task kinds the bundled model answers correctly with the full cache (it cannot say in which town a person
lives, but it can say the colour of their house). They are not tuned to make any policy look good.

The set (prompts, methods, run records) is in :mod:`refreekv_edu.demo_setup`; the printed report, ``summary.json``,
the traces and the plot in :mod:`refreekv_edu.demo_report`.

This module imports only the standard library and numpy; the model backend and matplotlib load when the demo runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .demo_report import failure_reason, format_report, write_outputs
from .demo_setup import METHODS, PROMPT_LABELS, DemoResult, DemoRun, demo_policies, demo_samples, method_label
from .dir_lock import folder_lock
from .eval.methods import matched_budget
from .eval.tasks import Sample

#: Where the demo writes when ``--out`` is not given (relative to the working directory, named when it starts).
DEFAULT_OUT = "refreekv-demo-out"


# ---------------------------------------------------------------------------------------------- output directory
def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` and check that a file can be written there; return its absolute path.

    Raises:
        ValueError: the directory cannot be created or written (says which, and what to pass instead).
    """
    path = Path(out_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot write to the output directory {path} ({exc.strerror or exc}); pass --out with a writable directory"
        ) from None
    return path


# ---------------------------------------------------------------------------------------------- the run
def run_demo(
    backend: str = "auto",
    out_dir: str | Path = DEFAULT_OUT,
    model: str = "smollm2-135m",
    plot: bool = True,
    save_traces: bool = True,
    progress: bool = True,
    out: Any = None,
    samples: Sequence[Sample] | None = None,
) -> DemoResult:
    """Run every demo prompt with every method; print the table; write the plot, ``summary.json`` and traces.

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"mlx"`` (the model backend).
        out_dir: output directory, created and checked writable before the model loads (after ``model`` is
            checked: a bad name leaves no folder behind). One demo at a time writes there: a second one raises
            :class:`~refreekv_edu.dir_lock.FolderBusyError` before loading the model. A run that fails removes the
            folders it created while they are still empty.
        model: a bundled model name or a path/hub id the backend can load.
        plot: write ``budgets.png`` (needs matplotlib).
        save_traces: write each prompt's ReFreeKV (paper) trace as JSON.
        progress: print a line per generation.
        out: a text stream for the report (default ``sys.stdout``).
        samples: other prompts (default :func:`demo_samples`, built with the model's tokenizer); a set of four is
            labelled with :data:`PROMPT_LABELS`, any other by sample id.
    """
    from .models import check_local_gguf, check_model_name

    out = out or sys.stdout
    started = time.perf_counter()
    if backend not in ("auto", "torch", "mlx"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'mlx', got {backend!r}")
    check_model_name(model)  # a name that cannot load fails before any folder is created
    if str(model).endswith(".gguf"):
        check_local_gguf(Path(model).expanduser())
    requested = Path(out_dir).expanduser().resolve()
    created = [p for p in (requested, *requested.parents) if not p.exists()]
    path = prepare_out_dir(out_dir)
    try:
        with folder_lock(path, "demo"):  # a second demo on the same --out says so and stops here
            print(f"refreekv-edu demo: output directory {path}", file=out, flush=True)
            return _run_locked(path, backend, model, plot, save_traces, progress, out, samples, started)
    except BaseException:
        for folder in created:  # remove only the folders this run created, and only while they are empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _run_locked(path: Path, backend: str, model: str, plot: bool, save_traces: bool, progress: bool, out: Any,
                samples: Sequence[Sample] | None, started: float) -> DemoResult:
    """The demo's body, run while this process holds ``path``'s lock (arguments as :func:`run_demo`'s)."""
    from .backend import auto_backend_name
    from .eval.config import token_counter
    from .eval.runner import sample_score
    from .generate import generate
    from .models import load_model

    def say(msg: str) -> None:
        if progress:
            print(msg, file=out, flush=True)

    name = auto_backend_name()[0] if backend == "auto" else backend
    say(f"loading {model} on the {name} backend ...")
    start = time.perf_counter()
    model_obj, tokenizer = load_model(model, backend=name)
    load_s = time.perf_counter() - start
    kv_dtype = str(getattr(model_obj, "dtype", "model dtype")).replace("torch.", "").replace("mlx.core.", "")
    say(f"  loaded in {load_s:.1f}s")
    samples = list(samples) if samples is not None else demo_samples(token_counter(tokenizer))
    labels = list(PROMPT_LABELS) if len(samples) == len(PROMPT_LABELS) else [s.id for s in samples]

    policies = demo_policies()
    runs: dict[tuple[int, str], DemoRun] = {}
    traces: dict[tuple[int, str], Any] = {}
    prompt_tokens = [0] * len(samples)
    total = len(samples) * len(METHODS)
    step = 0

    def run_one(i: int, method: str, policy: Any) -> None:
        nonlocal step
        step += 1
        sample = samples[i]
        run = DemoRun(labels[i], method, method_label(method, policy))
        prompt = sample.prompt if sample.chat else list(tokenizer.encode(sample.prompt))
        t0 = time.perf_counter()
        try:
            result = generate(model_obj, tokenizer, prompt, policy=policy, max_new_tokens=sample.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - a failure is reported as a failure, and the demo goes on
            run.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        else:
            stats, trace = result.stats, result.trace
            run.answer, run.tokens = result.text.strip(), list(result.tokens)
            run.correct = sample_score(sample, run.answer) >= 1.0
            run.layer_budgets = [float(b) for b in trace.budgets] if trace.layers else []
            run.budget = float(trace.mean_budget) if trace.layers else 1.0
            run.kv_bytes_full = int(stats.get("kv_bytes_full") or 0)
            run.kv_bytes_kept = int(stats.get("kv_bytes_kept", run.kv_bytes_full) or 0)
            prompt_tokens[i] = int(stats.get("prompt_tokens", 0))
            traces[(i, method)] = trace
        run.seconds = time.perf_counter() - t0
        runs[(i, method)] = run
        state = "FAILED" if run.error else f"{run.budget:6.1%} kept"
        say(f"[{step:>2d}/{total}] {labels[i]:<17} {run.label:<27} {run.seconds:5.1f}s  {state}")

    for i in range(len(samples)):
        for method in METHODS[:-1]:
            run_one(i, method, policies[method])
    paper = [runs[(i, "paper")] for i in range(len(samples)) if runs[(i, "paper")].error is None]
    fixed = None
    if paper:
        first = next(i for i in range(len(samples)) if runs[(i, "paper")].error is None)
        trace = traces[(first, "paper")]
        n_full = sum(d.full_layer for d in trace.layers)
        fixed = matched_budget(float(np.mean([r.budget for r in paper])), len(trace.layers), n_full)
        policy = demo_policies(fixed)["matched"]
        for i in range(len(samples)):
            run_one(i, "matched", policy)
    else:
        for i in range(len(samples)):
            runs[(i, "matched")] = DemoRun(labels[i], "matched", method_label("matched"),
                                           error="not run: no ReFreeKV budget to match (every paper run failed)")

    for i, sample in enumerate(samples):
        full = runs[(i, "full")]
        for method in METHODS:
            run = runs[(i, method)]
            if method != "full" and run.error is None and full.error is None:
                run.same_as_full = run.tokens == full.tokens
            elif method == "full" and run.error is None:
                run.same_as_full = True
            run.reason = failure_reason(sample, run, full, traces.get((i, method)))

    ordered = [runs[(i, m)] for i in range(len(samples)) for m in METHODS]
    files = write_outputs(path, samples, labels, prompt_tokens, ordered, traces, fixed, kv_dtype, model, plot,
                          save_traces)
    total_s = time.perf_counter() - started
    result = DemoResult(samples, labels, prompt_tokens, ordered, name, kv_dtype, fixed, path, files, load_s, total_s,
                        {(labels[i], m): t for (i, m), t in traces.items()})
    print(format_report(result), file=out, flush=True)
    return result



# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's command-line options (the CLI's ``demo`` subcommand reuses these)."""
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "mlx"],
                        help="model backend (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output directory for the plot, summary.json and traces; created if missing and checked "
                             "writable before the model loads (default: ./%(default)s)")
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, local path or hub id (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="skip budgets.png (default: write it)")
    parser.add_argument("--no-traces", action="store_true", help="skip the per-prompt trace JSON files (default: write them)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; exit code 0 when every run finished and the full cache was right."""
    result = run_demo(backend=args.backend, out_dir=args.out, model=args.model, plot=not args.no_plot,
                      save_traces=not args.no_traces)
    full_ok = all(r.correct for r in result.runs if r.method == "full")
    return 0 if full_ok and not result.crashed else 1


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="refreekv-edu demo", description=__doc__.splitlines()[0]))
    try:
        return run_from_args(parser.parse_args(argv))
    except ValueError as exc:
        print(f"refreekv-edu demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "DEFAULT_OUT", "METHODS", "PROMPT_LABELS", "DemoResult", "DemoRun", "add_arguments", "demo_policies", "demo_samples",
    "main", "method_label", "prepare_out_dir", "run_demo",
]
