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

This module imports only the standard library and numpy; the model backend and matplotlib load when the demo runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .eval import tasks
from .eval.methods import matched_budget, parse_method
from .eval.tasks import Sample

#: Where the demo writes when ``--out`` is not given (relative to the working directory, named when it starts).
DEFAULT_OUT = "refreekv-demo-out"
#: The methods, in the order they run on each prompt (``matched`` runs last: it needs the paper's budgets).
METHODS = ("full", "paper", "official-script", "matched")
#: How each prompt of the set is labelled in the table.
PROMPT_LABELS = ("short fact", "paragraph QA", "redundant text", "passkey (stress)")
_SPARK = "▁▂▃▄▅▆▇█"


def demo_samples(count_tokens: Callable[[str], int] | None = None) -> list[Sample]:
    """The demo's four prompts, built by the evaluation tasks (deterministic; lengths use ``count_tokens``).

    - a short factual question (``short``, the capital-city kind, ~45 tokens);
    - a question over a made-up paragraph (``reading``, the house-colour question, ~140 tokens);
    - one stdlib-docstring paragraph copied to ~768 tokens, then begun again and cut (``repeat``): continue it;
    - a five-digit pass key at 50% depth of ~1k tokens of docstring prose (``passkey``): the stress case.
    """
    count = count_tokens or tasks.approx_tokens
    return [
        tasks.short_instruction(seed=0, index=1),
        tasks.reading(seed=0, index=1),
        tasks.repeat(768, seed=0, index=0, count=count),
        tasks.passkey(1024, 0.5, seed=0, index=0, count=count),
    ]


def demo_policies(fixed_budget: float | None = None) -> dict[str, Any]:
    """The policy of each method (``matched`` only when ``fixed_budget`` is known), as the eval harness builds them.

    ``matched`` is the harness's ``recency@matched``: ``FixedBudget(fixed_budget, ranking="recency", sinks=4,
    window=0, full_layers=(0, 1))``, the paper's protections with a uniform budget on the pruned layers.
    """
    out: dict[str, Any] = {m: parse_method(m).policy() for m in ("full", "paper", "official-script")}
    if fixed_budget is not None:
        out["matched"] = parse_method("recency@matched").policy(matched_budget=fixed_budget)
    return out


def method_label(method: str, policy: Any = None) -> str:
    """A short table label: ``ReFreeKV() paper T=0.01``, ``fixed recency 57.1%``."""
    if method == "full":
        return "full cache"
    if method == "paper":
        return f"ReFreeKV() paper T={policy.threshold:g}" if policy is not None else "ReFreeKV() paper"
    if method == "official-script":
        return f"official-script T={policy.threshold:g}" if policy is not None else "official-script"
    return f"fixed recency {100 * policy.budget:.1f}%" if policy is not None else "fixed recency (matched)"


@dataclass
class DemoRun:
    """One (prompt, method) generation of the demo.

    Attributes:
        prompt: the prompt's label (:data:`PROMPT_LABELS`).
        method: a name in :data:`METHODS`.
        label: the table's label (with threshold or budget).
        answer: the generated text (stripped); empty when the run failed.
        tokens: the generated token ids.
        correct: the task metric says the answer is right (``score == 1``).
        same_as_full: the greedy tokens equal the full cache's (``None`` when either run failed).
        budget: mean share of the prompt's rows kept over layers (1.0 for the full cache).
        layer_budgets: per-layer budgets (empty for the full cache).
        kv_bytes_kept, kv_bytes_full: the prompt's K and V bytes held after compaction and uncompressed.
        seconds: wall time of the generation.
        error: ``"ExcType: message"`` when the generation raised, else ``None``.
        reason: one line on why an answer is wrong or differs from the full cache (``None`` when it does not).
    """

    prompt: str
    method: str
    label: str
    answer: str = ""
    tokens: list[int] = field(default_factory=list)
    correct: bool = False
    same_as_full: bool | None = None
    budget: float = 1.0
    layer_budgets: list[float] = field(default_factory=list)
    kv_bytes_kept: int = 0
    kv_bytes_full: int = 0
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None

    @property
    def failed(self) -> bool:
        """The run raised, or its answer is wrong."""
        return self.error is not None or not self.correct


@dataclass
class DemoResult:
    """What :func:`run_demo` returns (and printed)."""

    samples: list[Sample]
    labels: list[str]
    prompt_tokens: list[int]
    runs: list[DemoRun]
    backend: str
    kv_dtype: str
    fixed_budget: float | None
    out_dir: Path
    files: list[Path]
    load_s: float
    total_s: float
    traces: dict[tuple[str, str], Any] = field(default_factory=dict)

    def run(self, prompt: str, method: str) -> DemoRun:
        """The run of ``method`` on the prompt labelled ``prompt``."""
        return next(r for r in self.runs if r.prompt == prompt and r.method == method)

    def trace(self, prompt: str, method: str = "paper") -> Any:
        """The :class:`~refreekv_edu.Trace` of ``method`` on the prompt labelled ``prompt`` (``None`` if it failed)."""
        return self.traces.get((prompt, method))

    def mean_budget(self, method: str) -> float:
        """The method's mean budget over the prompts it ran on without error."""
        values = [r.budget for r in self.runs if r.method == method and r.error is None]
        return float(np.mean(values)) if values else float("nan")

    @property
    def crashed(self) -> list[DemoRun]:
        return [r for r in self.runs if r.error is not None]


# ---------------------------------------------------------------------------------------------- text helpers
def sparkline(values: Sequence[float]) -> str:
    """One character per value in [0, 1] (``▁`` under 12.5% ... ``█`` from 87.5%).

    Example:
        >>> sparkline([0.0, 0.3, 0.6, 1.0])
        '▁▃▅█'
    """
    return "".join(_SPARK[min(len(_SPARK) - 1, max(0, int(float(v) * len(_SPARK))))] for v in values)


def budget_summary(budgets: Sequence[float]) -> str:
    """``min 2% med 41% max 100%`` of per-layer budgets ('' for none)."""
    if len(budgets) == 0:
        return ""
    b = 100 * np.asarray(budgets, dtype=float)
    return f"min {b.min():.0f}% med {np.median(b):.0f}% max {b.max():.0f}%"


def short_answer(text: str, width: int = 30) -> str:
    """The answer on one line, cut to ``width`` characters with ``...``."""
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 3] + "..."


def _size(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def _mib(num_bytes: int) -> float:
    return num_bytes / 2**20


def _expected(sample: Sample) -> str:
    return repr(short_answer(sample.references[0], 40))


def sink_share(trace: Any) -> np.ndarray:
    """``(num_layers,)`` position 0's share of the last row's squared attention (NaN for full layers).

    The row covers the positions the halting signal could see (sinks and candidates). When one position holds
    most of the sum of squares, evicting everything else barely moves the L2 norm the rule watches.
    """
    out = []
    for d in trace.layers:
        row = np.concatenate([np.asarray(d.sink_attn, np.float64), np.asarray(d.last_attn, np.float64)], axis=1)
        if d.full_layer or row.shape[1] == 0:
            out.append(float("nan"))
            continue
        a2 = row**2
        total = a2.sum(axis=1)
        out.append(float(np.mean(a2[:, 0] / np.where(total > 0, total, 1.0))))
    return np.asarray(out)


def failure_reason(sample: Sample, run: DemoRun, full: DemoRun | None, trace: Any = None) -> str | None:
    """One line on why ``run`` is wrong or differs from the full cache, from its answer and its trace."""
    if run.error is not None:
        return f"crashed: {run.error}"
    if run.method == "full":
        return None if run.correct else f"the full cache itself answers wrong (expected {_expected(sample)})"
    if run.correct and run.same_as_full is not False:
        return None
    parts = []
    if full is not None and full.error is None and run.same_as_full is False:
        k = next((i for i, (a, b) in enumerate(zip(run.tokens, full.tokens)) if a != b), min(len(run.tokens), len(full.tokens)))
        parts.append(f"diverges from the full cache at answer token {k + 1}")
    needle = sample.meta.get("needle")
    if needle and trace is not None and trace.layers and trace.tokens:
        positions = trace.positions_of(needle)
        if positions:
            pruned = [i for i, d in enumerate(trace.layers) if not d.full_layer]
            share = trace.kept_share(positions)  # (layers, heads)
            whole = sum(bool(share[i].min() >= 1.0) for i in pruned)
            parts.append(f"the key's rows were kept whole in {whole} of {len(pruned)} pruned layers")
    in_metric = trace is not None and any((d.sinks == 0 or d.sinks_in_metric) and not d.full_layer for d in trace.layers)
    if in_metric:  # only then can a sink dominate the norm the halting rule watches
        share = sink_share(trace)
        if np.isfinite(share).any() and np.nanmean(share) >= 0.5:
            parts.append(f"position 0 holds {100 * np.nanmean(share):.0f}% of the last row's squared attention, so "
                         "evicting the rest barely moves the norm")
    if not run.correct:
        parts.insert(0, f"wrong (expected {_expected(sample)})")
    else:
        parts.insert(0, "still right")
    return "; ".join(parts)


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
        out_dir: output directory, created and checked writable before the model loads.
        model: a bundled model name or a path/hub id the backend can load.
        plot: write ``budgets.png`` (needs matplotlib).
        save_traces: write each prompt's ReFreeKV (paper) trace as JSON.
        progress: print a line per generation.
        out: a text stream for the report (default ``sys.stdout``).
        samples: other prompts (default :func:`demo_samples`, built with the model's tokenizer); a set of four is
            labelled with :data:`PROMPT_LABELS`, any other by sample id.
    """
    from .backend import auto_backend_name
    from .eval.runner import sample_score, token_counter
    from .generate import generate
    from .models import load_model

    out = out or sys.stdout
    started = time.perf_counter()
    if backend not in ("auto", "torch", "mlx"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'mlx', got {backend!r}")
    path = prepare_out_dir(out_dir)
    print(f"refreekv-edu demo: output directory {path}", file=out, flush=True)

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


def write_outputs(path: Path, samples: Sequence[Sample], labels: Sequence[str], prompt_tokens: Sequence[int],
                  runs: Sequence[DemoRun], traces: dict[tuple[int, str], Any], fixed: float | None, kv_dtype: str,
                  model: str, plot: bool, save_traces: bool) -> list[Path]:
    """Write ``summary.json``, the paper traces and ``budgets.png`` into ``path``; return the files written."""
    files = []
    summary = {
        "model": model,
        "kv_dtype": kv_dtype,
        "fixed_budget": fixed,
        "fixed_policy": "FixedBudget(ranking='recency', sinks=4, window=0, full_layers=(0, 1)) at the budget whose "
                        "mean over layers equals ReFreeKV's mean budget over the set",
        "prompts": [{"label": label, "id": s.id, "task": s.task, "prompt_tokens": n, "references": s.references,
                     "prompt": s.prompt} for label, s, n in zip(labels, samples, prompt_tokens)],
        "runs": [{k: v for k, v in vars(r).items()} for r in runs],
    }
    files.append(path / "summary.json")
    files[-1].write_text(json.dumps(summary, indent=1))
    if save_traces:
        for (i, method), trace in sorted(traces.items()):
            if method == "paper" and trace.layers:
                files.append(trace.save(path / f"trace_{i + 1}_{samples[i].task}_paper.json"))
    if plot:
        rows = {m: [next((r.layer_budgets for r in runs if r.prompt == label and r.method == m), []) for label in labels]
                for m in ("paper", "official-script")}
        if any(b for m in rows.values() for b in m):
            names = [f"{label} ({n} tok)" for label, n in zip(labels, prompt_tokens)]
            files.append(plot_budget_grid(rows, names, path / "budgets.png", model))
    return files


def plot_budget_grid(rows: dict[str, list[list[float]]], names: Sequence[str], path: Path, model: str) -> Path:
    """Per-input x per-layer budgets, one heat map per method, saved as PNG.

    Args:
        rows: method -> one list of per-layer budgets per prompt (an empty list for a failed run).
        names: the prompts' labels (rows of each map).
        path: the PNG to write.
        model: named in the title.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    width = max((len(b) for m in rows.values() for b in m), default=1)
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.4 + 0.6 * len(names) * len(rows)), dpi=110, squeeze=False,
                             layout="constrained")
    image = None
    for ax, (method, budgets) in zip(axes[:, 0], rows.items()):
        grid = np.full((len(names), width), np.nan)
        for i, b in enumerate(budgets):
            grid[i, : len(b)] = 100 * np.asarray(b)
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto", interpolation="nearest")
        means = [f"{np.nanmean(g):.0f}%" if np.isfinite(g).any() else "failed" for g in grid]
        ax.set_yticks(range(len(names)), [f"{n}\nmean {m}" for n, m in zip(names, means)], fontsize=8)
        ax.set_xticks(range(0, width, 2))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{method}: share of the prompt's KV rows kept per layer", fontsize=9)
    axes[-1, 0].set_xlabel("layer")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="kept (%)", fraction=0.03, pad=0.01)
    fig.suptitle(f"ReFreeKV budgets per input and layer ({model})", fontsize=10)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- the report
def format_report(result: DemoResult) -> str:
    """The demo's printed report: one table, the set's means, the failures, the files."""
    header = (f"{'prompt':<17} {'method':<26} {'answer':<40} {'right':<5} {'=full':<5} {'budget':>7} "
              f"{'KV MiB (' + result.kv_dtype + ')':>16}  per-layer budgets (layer 0 ->)")
    lines = ["", header, "-" * len(header)]
    for label, n in zip(result.labels, result.prompt_tokens):
        head = [f"{label}", f"{n} tokens" if n else ""]
        for j, run in enumerate(r for r in result.runs if r.prompt == label):
            name = head[j] if j < len(head) else ""
            if run.error is not None:
                lines.append(f"{name:<17} {run.label:<26} {'FAILED':<40}")
                continue
            same = "ref" if run.method == "full" else {True: "yes", False: "NO", None: "?"}[run.same_as_full]
            kv = f"{_mib(run.kv_bytes_kept):.2f}/{_mib(run.kv_bytes_full):.2f}"
            layers = f"{sparkline(run.layer_budgets)} {budget_summary(run.layer_budgets)}" if run.layer_budgets else ""
            lines.append(f"{name:<17} {run.label:<26} {short_answer(run.answer, 40):<40} {'yes' if run.correct else 'NO':<5} "
                         f"{same:<5} {100 * run.budget:6.1f}% {kv:>16}  {layers}".rstrip())
        lines.append("")
    lines.append("Over the set (mean budget; answers right; answers equal to the full cache's):")
    for method in METHODS:
        rs = [r for r in result.runs if r.method == method]
        ok = [r for r in rs if r.error is None]
        label = method_label(method) if method != "matched" or result.fixed_budget is None else (
            f"fixed recency {100 * result.fixed_budget:.1f}% (matched)")
        lines.append(f"  {label:<34} {100 * result.mean_budget(method):5.1f}%   right {sum(r.correct for r in ok)}/{len(rs)}"
                     f"   = full {sum(bool(r.same_as_full) for r in ok)}/{len(rs)}")
    if result.fixed_budget is not None:
        lines.append(f"  (fixed: FixedBudget(ranking='recency', sinks=4, window=0, full_layers=(0, 1)) keeping "
                     f"{100 * result.fixed_budget:.1f}% in each pruned layer, so its mean over layers equals ReFreeKV's "
                     "mean over the set)")
    problems = [r for r in result.runs if r.reason]
    if problems:
        lines += ["", "Failures and differences from the full cache:"]
        for r in problems:
            tag = "FAIL" if r.failed else "diff"
            lines.append(f"  {tag} {r.prompt} / {r.label}: {r.reason}")
    if result.files:
        lines += ["", f"Wrote to {result.out_dir}:"] + [f"  {p.name} ({_size(p)})" for p in result.files]
    lines.append(f"Backend {result.backend}; model load {result.load_s:.1f}s; whole demo {result.total_s:.1f}s.")
    return "\n".join(lines)


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
    "DEFAULT_OUT", "METHODS", "PROMPT_LABELS", "DemoResult", "DemoRun", "add_arguments", "budget_summary",
    "demo_policies", "demo_samples", "failure_reason", "format_report", "method_label", "main",
    "plot_budget_grid", "prepare_out_dir", "run_demo", "short_answer", "sink_share", "sparkline", "write_outputs",
]
