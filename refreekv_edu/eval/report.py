"""From per-sample records to summaries, markdown tables, plots and ``docs/results.md``.

Summaries are per (task, length, method): mean and worst task score, the share of samples on which the
method *keeps full-cache performance* (its score is at least the full cache's on that sample), the
fidelity metrics (token agreement, exact match with the full-cache output, first-token KL) and the KV
memory kept: :mod:`.summary`. Paired comparisons: :mod:`.comparisons`; the findings text:
:mod:`.findings_text`; the plots: :mod:`.plots`. This module writes the files: ``summary.md`` and ``docs/results.md``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .comparisons import _keeps, oracle_comparisons, paired_comparisons
from .findings_text import findings, speed_line
from .layer_losses import UNIFORM, layer_losses, layer_losses_table, plot_layer_losses
from .plots import make_plots
from .summary import _fmt, _pct, _pct_ci, bootstrap_interval, markdown_table, summarize, task_label, timing_table
from .sweep import sweep_groups


# ---------------------------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def environment(model: Any = None, backend: str | None = None) -> dict[str, Any]:
    """Machine, load, library versions, and (when given) the model class and the backend's own description."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("refreekv_edu", "numpy", "torch", "transformers", "kvpress", "mlx", "mlx-lm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    env = {
        "machine": f"{_cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "versions": versions,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if hasattr(os, "getloadavg"):  # timings on a shared machine are only comparable within one run
        env["load_average"] = round(os.getloadavg()[0], 2)
    if model is not None:
        env["model_class"] = f"{type(model).__module__}.{type(model).__name__}"
    if backend is not None:
        from ..backend import get_backend

        try:
            env["backend"] = get_backend(backend).describe()
        except Exception as exc:  # noqa: BLE001 - the report must not fail on an unusable backend
            env["backend"] = f"{backend} ({type(exc).__name__})"
    return env


def write_summary(records: Sequence[dict[str, Any]], out_dir: str | Path) -> Path:
    """``<out>/summary.md``: the table and the findings."""
    rows = summarize(records)
    path = Path(out_dir) / "summary.md"
    path.write_text("\n".join(["# Summary", "", markdown_table(rows), "", *[f"- {f}" for f in findings(rows, records)], ""]))
    return path


def read_speed(path: str | Path) -> dict[str, Any] | None:
    """``<out>/speed.json`` of the speed step, or ``None`` when there is none (or it is unreadable, with a warning)."""
    import json
    import warnings

    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: unreadable speed results ({exc}); left out of the report", UserWarning, stacklevel=2)
        return None
    return data if isinstance(data, dict) and "best" in data else None


def oracle_table(records: Sequence[dict[str, Any]]) -> str:
    """Per oracle method and group: the paper's budget against the oracle's (see :class:`OracleComparison`)."""
    lines = ["| oracle | group | n | paper budget | oracle budget | gap (paper - oracle) | paper above | paper below "
             "| within resolution | paper output = full | below and still = full |", "|" + "---|" * 11]
    for name in sorted({r["method"] for r in records if r["method"].endswith("@oracle")}):
        for c in oracle_comparisons(records, name):
            lines.append(f"| {name} | {c.group} | {c.n} | {_pct(c.paper_budget, '.1f')} | {_pct(c.oracle_budget, '.1f')} "
                         f"| {_fmt(100 * c.gap, '+.1f')} [{_fmt(100 * c.gap_ci[0], '+.1f')}, {_fmt(100 * c.gap_ci[1], '+.1f')}] pts "
                         f"| {_pct(c.above)} | {_pct(c.below)} | {_pct(c.inside)} | {_pct(c.paper_exact)} | {c.below_but_same} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def matched_table(records: Sequence[dict[str, Any]]) -> str:
    """Per matched baseline and group: the paper vs the fixed budget at the same mean, paired over samples."""
    lines = ["| fixed budget | group | n | budget paper / fixed | keeps full: paper / fixed | difference [95% CI] "
             "| only paper / only fixed | exact = full: paper / fixed | difference [95% CI] |", "|" + "---|" * 9]
    for base in sorted({r["method"] for r in records if r["method"].endswith(("@matched", "@matched-set"))}):
        for c in paired_comparisons(records, base):
            lines.append(f"| {base} | {c.group} | {c.n} | {_pct(c.paper_budget, '.1f')} / {_pct(c.base_budget, '.1f')} "
                         f"| {_pct(c.paper_keeps)} / {_pct(c.base_keeps)} | {_fmt(100 * c.diff_keeps, '+.0f')} "
                         f"[{_fmt(100 * c.diff_keeps_ci[0], '+.0f')}, {_fmt(100 * c.diff_keeps_ci[1], '+.0f')}] pts "
                         f"| {c.only_paper} / {c.only_baseline} | {_pct(c.paper_exact)} / {_pct(c.base_exact)} "
                         f"| {_fmt(100 * c.diff_exact, '+.0f')} [{_fmt(100 * c.diff_exact_ci[0], '+.0f')}, "
                         f"{_fmt(100 * c.diff_exact_ci[1], '+.0f')}] pts |")
    return "\n".join(lines) if len(lines) > 2 else ""


def sweep_table(records: Sequence[dict[str, Any]]) -> str:
    """Per preset and threshold: mean budget and identical-output rate over the samples the sweep covered
    (:func:`~.sweep.sweep_samples`), with 95% intervals."""
    groups = sweep_groups(records)
    if len({p for p, _ in groups}) == len(groups):  # no preset at two thresholds
        return ""
    lines = ["| preset | T | n | mean budget | KV kept | exact = full | keeps full | token agree |", "|" + "---|" * 8]
    full = {r["sample_id"]: r for r in records if r["method"] == "full"}
    for (preset, t), rs in sorted(groups.items()):
        b = [r["mean_budget"] for r in rs]
        kv = [r["kv_kept"] for r in rs]
        ex = [r["exact_match_full"] for r in rs]
        keep = [_keeps(r, full[r["sample_id"]]) for r in rs if r["sample_id"] in full]
        ta = [r["token_agreement"] for r in rs]
        lines.append(f"| {preset} | {100 * t:g}% | {len(rs)} | {_pct_ci(np.mean(b), bootstrap_interval(b), '.1f')} "
                     f"| {_pct_ci(np.mean(kv), bootstrap_interval(kv), '.1f')} | {_pct_ci(np.mean(ex), bootstrap_interval(ex))} "
                     f"| {_pct_ci(np.mean(keep), bootstrap_interval(keep)) if keep else '-'} "
                     f"| {_fmt(np.mean(ta), '.2f')} [{_fmt(bootstrap_interval(ta)[0], '.2f')}, {_fmt(bootstrap_interval(ta)[1], '.2f')}] |")
    return "\n".join(lines)


def speed_table(speed: dict[str, Any]) -> str:
    """The speed step's kept runs: stage seconds, decode tokens/s, KV bytes and memory."""
    lines = ["| method | L (tok) | decode steps | prefill s | decide s | decode s | decode tok/s | KV held | RSS peak above start "
             "| process max RSS |", "|" + "---|" * 10]
    for name, r in speed.get("best", {}).items():
        mb = r.get("kv_bytes_kept", 0) / 2**20
        lines.append(f"| {name} | {r.get('prompt_tokens')} | {r.get('new_tokens')} | {_fmt(r.get('prefill_s'), '.2f')} "
                     f"| {_fmt(r.get('decide_s'), '.3f')} | {_fmt(r.get('decode_s'), '.2f')} | {_fmt(r.get('decode_tok_s'), '.1f')} "
                     f"| {mb:.1f} MiB ({_pct(r.get('kv_bytes_kept', 0) / max(1, r.get('kv_bytes_full', 1)), '.1f')}) "
                     f"| {_fmt(r.get('rss_peak_delta_mb'), '.0f')} MiB | {_fmt(r.get('maxrss_mb'), '.0f')} MiB |")
    return "\n".join(lines)


def write_results_md(records: Sequence[dict[str, Any]], run_info: dict[str, Any], path: str | Path,
                     plots_dir: str | Path | None = None, speed: dict[str, Any] | None = None) -> Path:
    """Write ``docs/results.md``: the command first, then computed findings, the comparison tables, the threshold
    sweep, the oracle budgets, the speed step, the full table with intervals, machine and versions, plots.

    Plots go to ``plots_dir`` (default ``<path's folder>/assets/results``) and are linked relatively.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots_dir = Path(plots_dir) if plots_dir else path.parent / "assets" / "results"
    plots = make_plots(records, plots_dir)
    rows = summarize(records)
    env = run_info.get("environment", {})
    cfg = run_info.get("config", {})
    argv = run_info.get("argv") or []
    cmd = "refreekv-edu " + shlex.join(argv[1:]) if argv and Path(argv[0]).name == "refreekv-edu" else shlex.join(argv)
    total_s = sum(r.get("wall_s", 0.0) for r in records)
    n_samples = len({r["sample_id"] for r in records})
    per_group = defaultdict(set)
    for r in records:
        per_group[task_label(r["task"], int(r.get("length") or 0))].add(r["sample_id"])
    sweep_png = next((p for p in plots if p.stem == "threshold_sweep"), None)

    def img(p: Path) -> str:
        return f"![{p.stem.replace('_', ' ')}]({os.path.relpath(p, path.parent)})"

    lines = [
        "# Results",
        "",
        "<!-- Generated by `refreekv-edu eval`; do not edit by hand. Rerun the command below to regenerate. -->",
        "",
        "Generated by this one command (from the repository root; it resumes from its `--out` folder, so on a finished "
        "run it only rebuilds this page and its plots):",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"{len(records)} generations on {n_samples} samples ("
        + ", ".join(f"{g}: {len(ids)}" for g, ids in sorted(per_group.items())) + "). Every compressed run is compared with "
        "the full-cache run of the same prompt (greedy decoding). Brackets are 95% percentile-bootstrap intervals over "
        "samples (2000 resamples, seed 0); comparisons between methods are paired by sample.",
        "",
        "## Findings (computed from the tables below)",
        "",
        *[f"- {f}" for f in findings(rows, records, speed)],
        "",
    ]
    mt = matched_table(records)
    if mt:
        lines += ["## ReFreeKV against fixed budgets at the same mean", "",
                  "`<ranking>@matched` keeps the same share in every pruned layer (sinks and layers 0-1 kept, like the "
                  "paper) so that its mean over layers equals the budget the paper preset chose **on that sample**; "
                  "`<ranking>@matched-set` uses **one** budget for every sample: the paper preset's mean budget over the "
                  "whole run. `kvpress:<press>@matched` runs that kvpress press at compression ratio 1 - the paper preset's mean "
                  "budget on the sample: the same share of rows in **every** layer (layers 0-1 included), chosen by the "
                  "press's own scores. `kvpress:adakv@matched` (AdaKV over SnapKV's scores) keeps that share of each layer "
                  "but spreads it over the layer's heads adaptively, as ReFreeKV spreads the model's budget over layers; "
                  "it masks the keys it drops instead of removing them, so it frees no memory. *keeps full*: task score "
                  "at least the full cache's; *only paper / only fixed*: samples where just one of the two kept it.",
                  "", mt, ""]
    ll = layer_losses(records)
    if ll is not None and ll.lost:
        lines += ["## Where the rule cut on the samples it lost", "",
                  "Per layer, the paper preset's mean budget on the samples whose task score fell below the full cache's "
                  "(*lost*) and on the others (*kept*), next to the uniform share per pruned layer that "
                  f"`{UNIFORM}` gave the lost samples (the same mean over layers). Layers 0-1 are kept whole by every "
                  "method.", "", img(plot_layer_losses(ll, plots_dir / "layer_losses.png")), "", layer_losses_table(ll), ""]
    ot = oracle_table(records)
    if ot:
        lines += ["## The paper's budget against the oracle budget", "",
                  "The oracle budget of a sample is the smallest uniform fixed budget (same ranking, sinks and full layers) "
                  "whose greedy output equals the full cache's, found by binary search "
                  f"(resolution {_fmt(cfg.get('oracle_tolerance'), '.4g')} of a layer's rows; it assumes that more budget "
                  "never breaks an output a smaller one kept). Budgets are shares of the prompt's rows, averaged over all "
                  "layers; *above*/*below* compare the paper's budget, spread uniformly over the pruned layers, with the "
                  "search's bracket.", "", ot, ""]
    st = sweep_table(records)
    if st or sweep_png:
        lines += ["## Threshold sweep", "", "Mean budget against fidelity at T = 0.1%..10% (the paper's Figures 2-3).", ""]
        if sweep_png:
            lines += [img(sweep_png), ""]
        if st:
            lines += [st, ""]
    if speed:
        lines += ["## Speed and memory at a long prompt", "",
                  f"Decode speed, {speed_line(speed)}. Full cache and paper preset ran interleaved in one process "
                  f"({speed.get('settings', {}).get('repeats', '?')} runs each; the fastest decode kept; torch threads "
                  f"{speed.get('torch_threads', '-')}; load average {speed.get('load_average', '-')}). *KV held*: bytes of "
                  "the prompt's K/V after compaction. *RSS peak above start*: highest resident memory during the call "
                  "(sampled every 5 ms) minus the resident memory before it; it is dominated by the prefill's attention, "
                  "which both methods share, and memory the allocator kept from earlier runs is not counted again. "
                  "*process max RSS*: `getrusage` peak of the process so far (weights included).", "", speed_table(speed), ""]
    lines += [
        "## Summary per task x method",
        "",
        "*score* is the task metric (passkey/needles: answer found; continuation: ROUGE-L against the true text; "
        "short and reading: answer found; repeat: share of the output that continues the copied text word for word); "
        "*keeps full* is the share of samples whose score is at least the full cache's; "
        "*exact = full* the share of greedy outputs identical to the full cache's; "
        "*token agree* the share of the full cache's greedy tokens reproduced at the same positions; *KL 1st tok* is "
        "KL(full || method) in nats of the first decode step that reads the compressed cache; *KV kept* is bytes of "
        "prompt K/V held after compaction; *needle kept* is the share of the pruned layers' (layer, KV head) kept sets "
        "that still hold every token of the asked needle.",
        "",
        markdown_table(rows),
        "",
        "### Seconds per record",
        "",
        "Wall-clock stages of each generation on a shared machine: comparable within this run only.",
        "",
        timing_table(rows),
        "",
        "## Plots",
        "",
    ]
    for p in plots:
        if p != sweep_png:
            lines += [img(p), ""]
    lines += [
        "## Machine and versions",
        "",
        f"- date: {env.get('date_utc', '-')}",
        f"- machine: {env.get('machine', '-')}" + (f"; load average {env['load_average']} when the run started" if "load_average" in env else ""),
        f"- python {env.get('python', '-')}; " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        f"- backend: {env.get('backend', '-')}",
        f"- model: `{cfg.get('model', '-')}` on backend `{cfg.get('backend', '-')}` ({env.get('model_class', '-')}), "
        f"window {cfg.get('window', '-')}, gqa `{cfg.get('gqa', '-')}`, seed {cfg.get('seed', '-')}, haystack `{cfg.get('haystack', '-')}`"
        + (f", torch threads {cfg['threads']}" if cfg.get("threads") else ""),
        f"- {total_s / 60:.1f} minutes of generation time in all (runs resume, so records may come from earlier "
        "invocations; on a machine shared with other jobs timings are indicative only)",
        "",
    ]
    path.write_text("\n".join(lines))
    return path
