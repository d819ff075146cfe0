"""The evaluation loop: every sample x every method -> one JSON line, resumable.

For each sample the full cache runs first: its greedy tokens and first decode logits are the
reference for the fidelity metrics, and are kept in ``<out>/refs/`` so a resumed run does not redo
it. The ReFreeKV presets run next: the ``paper`` preset's average budget (``trace.mean_budget``) sets the
budget of every ``<ranking>@matched`` baseline on that sample (see :func:`~.methods.matched_budget`). Each finished (sample, method) pair is appended to
``<out>/samples.jsonl`` at once; a rerun with the same output directory skips the pairs already there (a torn
last line from an interrupted write is cut off first, so the next record starts on a line of its own; lines that
are not records are skipped with a warning; an unreadable reference in ``refs/`` is rebuilt by running the full
cache again).

Phase two runs the ``<ranking>@matched-set`` baselines: one budget for every sample, the paper preset's mean
budget over the whole run, known only once phase one is done. With ``speed_length`` set, the speed step
(:mod:`.speed`) runs first and writes ``<out>/speed.json``.

The loop only needs ``generate(model, tokenizer, prompt, policy=..., max_new_tokens=...)`` returning a
:class:`refreekv_edu.GenerationResult`; it defaults to :func:`refreekv_edu.generate`, so it runs on any
backend with model integration (torch, mlx).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .datasets import DATASETS, load_dataset_samples
from .methods import DEFAULT_METHODS, MATCH_PRESET, ORACLE_TOLERANCE, MethodSpec, matched_budget, parse_methods
from .speed import speed_check
from .tasks import TASKS, Sample, TokenCounter, make_samples

SAMPLES_FILE = "samples.jsonl"


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        tasks: offline task names (:data:`~refreekv_edu.eval.tasks.TASKS`) and/or dataset names
            (:data:`~refreekv_edu.eval.datasets.DATASETS`, which need ``data_dir`` or a network).
        lengths: target prompt lengths in tokens (``short`` and datasets ignore them; datasets are
            truncated in the middle to the largest length).
        methods: method names (see :mod:`refreekv_edu.eval.methods`); ``full`` is always added.
        samples: samples per task and length.
        seed: seeds the prompts (passkeys, haystack order).
        model: model name or path for :func:`refreekv_edu.load_model`.
        backend: ``"torch"``, ``"mlx"`` or ``"auto"``.
        out_dir: where ``samples.jsonl``, ``refs/`` and the report go.
        window: ``w`` of the ``h2o``/``snapkv`` fixed baselines (>= 1; the presets keep their own window).
        gqa: the GQA mode of every method (``"group"`` or ``"expand"``).
        data_dir: local dataset files (see :mod:`refreekv_edu.eval.datasets`).
        haystack: ``"docs"`` (stdlib docstrings) or ``"procedural"``.
        max_new_tokens: overrides each sample's own decode length when set (an int >= 1).
        progress: tqdm bars.
        oracle_tolerance: the ``<ranking>@oracle`` binary search stops when the budget interval is this narrow
            (default :data:`~.methods.ORACLE_TOLERANCE`; ``1/32`` takes one probe fewer per sample).
        threads: ``torch.set_num_threads(threads)`` before running (``None``: leave torch's default). On a
            loaded 2-core machine 1 thread is several times faster than 2 (threads spin-waiting on each other).
        speed_length: when set (e.g. ``4096``), the speed step: a passkey prompt of about this many tokens runs
            with the full cache and the paper preset side by side (interleaved) before the evaluation, and
            ``<out>/speed.json`` gets decode tokens/s of each and their ratio (see :mod:`.speed`).
        speed_new_tokens: decode steps of the speed step (the same for both; end-of-sequence ignored).
        speed_repeats: runs of each method in the speed step (the fastest decode is kept).
    """

    tasks: list[str] = field(default_factory=lambda: ["passkey", "multi_needle", "short", "reading", "continuation", "repeat"])
    lengths: list[int] = field(default_factory=lambda: [1024])
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    samples: int = 2
    seed: int = 0
    model: str = "smollm2-135m"
    backend: str = "auto"
    out_dir: str = "results/eval"
    window: int = 8
    gqa: str = "group"
    data_dir: str | None = None
    haystack: str = "docs"
    max_new_tokens: int | None = None
    progress: bool = True
    oracle_tolerance: float = ORACLE_TOLERANCE
    threads: int | None = None
    speed_length: int | None = None
    speed_new_tokens: int = 32
    speed_repeats: int = 2

    def validate(self) -> None:
        """Check the config before any model is loaded; return nothing if it is usable.

        Raises:
            ValueError: a task that is neither an offline task nor a dataset, no lengths or a length
                below 64 tokens, ``samples < 1``, a method name :func:`~refreekv_edu.eval.methods.parse_methods`
                does not accept, ``window < 1``, an unknown ``gqa`` or haystack, or ``max_new_tokens < 1``.
        """
        from ..policies import GQA_MODES

        unknown = [t for t in self.tasks if t not in TASKS and t not in DATASETS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; offline tasks: {', '.join(TASKS)}; datasets: {', '.join(DATASETS)}")
        if not self.lengths or any(int(n) < 64 for n in self.lengths):
            raise ValueError(f"lengths must be token counts >= 64, got {self.lengths}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {self.samples!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an int >= 1 (the h2o/snapkv baselines score candidates by the last w "
                             f"queries; the official script uses 8), got {self.window!r}")
        if self.max_new_tokens is not None and (
            isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1
        ):
            raise ValueError(f"max_new_tokens must be an int >= 1 (or None: each task's own), got {self.max_new_tokens!r}")
        if self.gqa not in GQA_MODES:
            raise ValueError(f"gqa must be one of {', '.join(GQA_MODES)}, got {self.gqa!r}")
        if self.haystack not in ("docs", "procedural"):
            raise ValueError(f"haystack must be 'docs' or 'procedural', got {self.haystack!r}")
        if not 0.0 < float(self.oracle_tolerance) < 0.5:
            raise ValueError(f"oracle_tolerance must lie in (0, 0.5), e.g. 1/64, got {self.oracle_tolerance!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an int >= 1 (or None: the backend's default), got {self.threads!r}")
        if self.speed_length is not None and int(self.speed_length) < 64:
            raise ValueError(f"speed_length must be a token count >= 64 (e.g. 4096), got {self.speed_length!r}")
        for name in ("speed_new_tokens", "speed_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        parse_methods(self.methods)  # raises on a bad name


def check_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and parents) and check that a file can be written there, before any model loads.

    Raises:
        OSError: with the directory named, when it cannot be created or written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write to the output directory {str(out)!r} ({exc.strerror or exc}); choose another --out") from exc
    return out


def token_counter(tokenizer: Any) -> TokenCounter:
    """Count tokens with the model's tokenizer (no special tokens)."""

    def count(text: str) -> int:
        try:
            return len(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:  # tokenizers whose encode has no add_special_tokens (some mlx-lm wrappers)
            return len(tokenizer.encode(text))

    return count


def build_samples(config: EvalConfig, count_tokens: TokenCounter | None = None) -> list[Sample]:
    """All samples of a config, in a fixed order (tasks, then lengths, then index)."""
    out: list[Sample] = []
    for task in config.tasks:
        if task in DATASETS:
            out += load_dataset_samples(task, config.data_dir, n=config.samples, max_tokens=max(config.lengths), count_tokens=count_tokens)
        elif task in ("short", "reading"):
            out += make_samples(task, 0, config.samples, config.seed)
        else:
            for length in config.lengths:
                out += make_samples(task, int(length), config.samples, config.seed, count_tokens, source=config.haystack)
    return out


def prompt_digest(sample: Sample) -> str:
    """A short hash of what the model sees, to refuse resuming over a different prompt under the same id."""
    return hashlib.sha1(f"{sample.chat}\x00{sample.prompt}".encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


#: Keys every record needs for the report; a line without them is skipped with a warning.
RECORD_KEYS = ("sample_id", "task", "method", "score", "token_agreement", "exact_match_full", "kv_kept", "mean_budget")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``samples.jsonl``, one per (sample, method): the last line wins when a pair appears twice.

    A torn last line (an interrupted run) is ignored silently; any other line that is not JSON, not a JSON object
    (``null``, ``[1, 2]``) or lacks a key in :data:`RECORD_KEYS` (``{}``) is skipped with a :class:`UserWarning`
    naming the file and line, so a damaged file never ends up in a table unnoticed.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                warnings.warn(f"{path}:{number}: not JSON, skipped: {line[:60]!r}", UserWarning, stacklevel=2)
            continue
        if not isinstance(row, dict) or any(k not in row for k in RECORD_KEYS):
            missing = "not a JSON object" if not isinstance(row, dict) else f"missing {[k for k in RECORD_KEYS if k not in row]}"
            warnings.warn(f"{path}:{number}: not an eval record ({missing}), skipped: {line[:60]!r}", UserWarning, stacklevel=2)
            continue
        rows.pop((str(row["sample_id"]), str(row["method"])), None)
        rows[(str(row["sample_id"]), str(row["method"]))] = row
    return list(rows.values())


def repair_torn_tail(path: str | Path) -> bool:
    """Make ``path`` end with a newline before appending, so a new record is never glued onto a torn last line.

    A last line without its newline that is valid JSON gets the newline; one that is not (an interrupted write)
    is cut off. Returns whether the file changed.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:].decode("utf-8"))
        with open(path, "ab") as f:
            f.write(b"\n")
    except (json.JSONDecodeError, UnicodeDecodeError):
        warnings.warn(f"{path}: dropped a torn last line from an interrupted run ({len(data) - start} bytes)", UserWarning, stacklevel=2)
        with open(path, "r+b") as f:
            f.truncate(start)
    return True


def sample_score(sample: Sample, text: str) -> float:
    """The task metric of one prediction."""
    return metrics.score(sample.metric, text, sample.references, **sample.meta)


def needle_kept(trace: Any, needle: str) -> float | None:
    """Share of the pruned layers' (layer, head) kept sets that still hold every token of ``needle``.

    Full layers (``full_layers``, kept whole by construction) are left out; ``None`` when the needle is not found,
    ``1.0`` when nothing was pruned.
    """
    if not trace.layers or not trace.tokens:
        return None if not trace.tokens else 1.0
    pos = trace.positions_of(needle)
    if not pos:
        return None
    pruned = [i for i, d in enumerate(trace.layers) if not d.full_layer]
    if not pruned:
        return 1.0
    return float((trace.kept_share(pos)[pruned] == 1.0).mean())


@dataclass
class _Reference:
    tokens: list[int]
    first_logits: np.ndarray | None


class Runner:
    """Runs samples x methods with one loaded model and writes records to ``out_dir``.

    Args:
        config: :class:`EvalConfig`.
        model, tokenizer: an already loaded model (else :func:`refreekv_edu.load_model` is called).
        generate_fn: ``(model, tokenizer, prompt, policy=..., max_new_tokens=...) -> GenerationResult``;
            defaults to :func:`refreekv_edu.generate`.
    """

    def __init__(self, config: EvalConfig, model: Any = None, tokenizer: Any = None, generate_fn: Callable[..., Any] | None = None):
        config.validate()
        self.config = config
        self.out = check_writable(config.out_dir)  # before the model loads: a bad --out fails in a second
        if config.threads is not None:
            set_threads(config.threads, config.backend)
        if model is None:
            from ..models import load_model

            model, tokenizer = load_model(config.model, backend=config.backend)
        self.model, self.tokenizer = model, tokenizer
        if generate_fn is None:
            from ..generate import generate as generate_fn
        self.generate_fn = generate_fn
        self.methods: list[MethodSpec] = parse_methods(config.methods)
        (self.out / "refs").mkdir(exist_ok=True)
        self.records_path = self.out / SAMPLES_FILE

    # ------------------------------------------------------------------ one generation
    def _prompt(self, sample: Sample) -> Any:
        if sample.chat:
            return sample.prompt
        return list(self.tokenizer.encode(sample.prompt))  # raw text: token ids, so no chat template is applied

    def _generate(self, sample: Sample, policy: Any) -> Any:
        steps = self.config.max_new_tokens or sample.max_new_tokens
        return self.generate_fn(self.model, self.tokenizer, self._prompt(sample), policy=policy, max_new_tokens=steps)

    def _ref_path(self, sample: Sample) -> Path:
        return self.out / "refs" / f"{_safe(sample.id)}.npz"

    def _load_reference(self, sample: Sample) -> _Reference | None:
        path = self._ref_path(sample)
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                if str(data["digest"]) != prompt_digest(sample):
                    return None
                logits = data["first_logits"] if data["first_logits"].size else None
                return _Reference([int(t) for t in data["tokens"]], logits)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warnings.warn(f"{path}: unreadable full-cache reference ({type(exc).__name__}: {exc}); the full cache runs "
                          "again to rebuild it", UserWarning, stacklevel=2)
            return None

    def _save_reference(self, sample: Sample, result: Any) -> _Reference:
        logits = np.zeros(0, np.float32) if result.first_logits is None else np.asarray(result.first_logits, np.float32).reshape(-1)
        np.savez_compressed(self._ref_path(sample), tokens=np.asarray(result.tokens, np.int64), first_logits=logits,
                            digest=np.asarray(prompt_digest(sample)))
        return _Reference(list(result.tokens), logits if logits.size else None)

    def record(self, sample: Sample, method: MethodSpec, policy: Any, result: Any, ref: _Reference, matched: float | None,
               wall_s: float) -> dict[str, Any]:
        """The JSON record of one (sample, method) run."""
        text = result.text.strip()
        stats = dict(result.stats)
        full_bytes = int(stats.get("kv_bytes_full") or 0)
        kept_bytes = int(stats.get("kv_bytes_kept", full_bytes) or 0)
        kl = None
        trace = result.trace
        if ref.first_logits is not None and result.first_logits is not None:
            kl = metrics.first_token_kl(ref.first_logits, np.asarray(result.first_logits))
        return {
            "sample_id": sample.id,
            "task": sample.task,
            "length": sample.meta.get("length") or 0,
            "method": method.name,
            "kind": method.kind,
            "preset": method.preset,
            "ranking": policy.ranking,
            "policy": repr(policy),
            "threshold": policy.threshold,
            "budget_target": policy.budget if method.kind in ("fixed", "matched", "matched-set", "oracle") else None,
            "digest": prompt_digest(sample),
            "prompt_tokens": int(stats.get("prompt_tokens", 0)),
            "new_tokens": int(stats.get("new_tokens", len(result.tokens))),
            "output": text,
            "references": sample.references,
            "metric": sample.metric,
            "score": sample_score(sample, text),
            "token_agreement": metrics.token_agreement(result.tokens, ref.tokens),
            "prefix_agreement": metrics.prefix_agreement(result.tokens, ref.tokens),
            "exact_match_full": float(list(result.tokens) == list(ref.tokens)),
            "first_token_kl": kl,
            "needle_kept": needle_kept(trace, sample.meta["needle"]) if sample.meta.get("needle") else None,
            "mean_budget": trace.mean_budget if trace.layers else 1.0,
            "layer_budgets": [round(float(b), 5) for b in trace.budgets] if trace.layers else [],
            "full_layers": [i for i, d in enumerate(trace.layers) if d.full_layer],
            "kv_bytes_full": full_bytes,
            "kv_bytes_kept": kept_bytes,
            "kv_kept": kept_bytes / full_bytes if full_bytes else 1.0,
            "prefill_s": float(stats.get("prefill_s", 0.0)),
            "decide_s": float(stats.get("decide_s", 0.0)),
            "decode_s": float(stats.get("decode_s", 0.0)),
            "wall_s": wall_s,
            "meta": {k: v for k, v in sample.meta.items() if k not in {"incorrect", "all_classes"}},
        }

    # ------------------------------------------------------------------ the loop
    def run(self, samples: Iterable[Sample] | None = None) -> list[dict[str, Any]]:
        """Run everything not already in ``samples.jsonl``; return all records (old and new) of these samples."""
        if samples is None:
            count = token_counter(self.tokenizer) if self.tokenizer is not None else None
            samples = build_samples(self.config, count)
        samples = list(samples)
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise ValueError("sample ids must be unique; two samples share an id")
        done = {(r["sample_id"], r["method"]): r for r in read_records(self.records_path)}
        by_id = {s.id: s for s in samples}
        for (sid, _), r in done.items():
            if sid in by_id and r.get("digest") != prompt_digest(by_id[sid]):
                raise ValueError(
                    f"{self.records_path} already holds sample {sid!r} made from a different prompt (other Python "
                    "version, haystack or model tokenizer?); use a new --out directory"
                )
        per_sample = [m for m in self.methods if m.kind != "matched-set"]
        set_methods = [m for m in self.methods if m.kind == "matched-set"]
        if self.config.speed_length:  # first, so an interrupted evaluation still has it (reused on resume)
            self.speed()
        todo = [(s, m) for s in samples for m in self.methods if (s.id, m.name) not in done]
        bar = _progress(len(todo), f"eval {self.out.name}", self.config.progress)
        repair_torn_tail(self.records_path)
        with open(self.records_path, "a", encoding="utf-8") as sink:
            for sample in samples:
                if all((sample.id, m.name) in done for m in per_sample):
                    continue
                ref = self._load_reference(sample)  # full cache's tokens + logits, saved by an earlier run
                matched = _matched_from(done.get((sample.id, MATCH_PRESET)))
                for method in per_sample:  # "full" comes first, then "refreekv", then the baselines
                    recorded = (sample.id, method.name) in done
                    rebuild_ref = method.kind == "full" and ref is None  # reference lost: rerun full, record nothing new
                    if recorded and not rebuild_ref:
                        continue
                    if method.kind == "matched" and matched is None:
                        raise RuntimeError(f"no {MATCH_PRESET!r} budget for sample {sample.id!r}; {MATCH_PRESET!r} must run "
                                           f"before {method.name!r}")
                    bar.set_postfix_str(f"{sample.id} {method.name}")
                    start = time.perf_counter()
                    probes = None
                    if method.kind == "oracle":
                        policy, result, probes = self._oracle(sample, method, ref)
                    else:
                        policy = method.policy(self.config.window, self.config.gqa, matched_budget=matched)
                        result = self._generate(sample, policy)
                    wall = time.perf_counter() - start
                    if method.kind == "full":
                        ref = self._save_reference(sample, result)
                    if method.name == MATCH_PRESET:  # the paper preset sets the matched baselines' budget
                        t = result.trace
                        matched = matched_budget(t.mean_budget, len(t.layers), sum(d.full_layer for d in t.layers)) if t.layers else 1.0
                    if recorded:
                        continue
                    rec = self.record(sample, method, policy, result, ref, matched, wall)
                    if probes is not None:
                        rec["oracle_probes"] = probes
                    done[(sample.id, method.name)] = rec
                    sink.write(json.dumps(rec) + "\n")
                    sink.flush()
                    bar.update(1)
            if set_methods:
                self._run_set(samples, set_methods, done, sink, bar)
        bar.close()
        return [done[(s.id, m.name)] for s in samples for m in self.methods if (s.id, m.name) in done]

    def set_budget(self, samples: list[Sample], done: dict[tuple[str, str], dict[str, Any]]) -> tuple[float, float]:
        """``(per-pruned-layer budget, mean budget)`` of the ``@matched-set`` baselines: the paper preset's
        ``mean_budget`` averaged over every sample of the run, spread uniformly over the pruned layers."""
        papers = [done.get((s.id, MATCH_PRESET)) for s in samples]
        if any(p is None for p in papers):
            missing = [s.id for s, p in zip(samples, papers) if p is None][:3]
            raise RuntimeError(f"the {MATCH_PRESET!r} preset has not run on every sample (e.g. {missing}); "
                               "@matched-set needs its mean budget over the whole set")
        mean = float(np.mean([p["mean_budget"] for p in papers]))
        shaped = next((p for p in papers if p.get("layer_budgets")), None)
        if shaped is None:
            return 1.0, mean
        return matched_budget(mean, len(shaped["layer_budgets"]), len(shaped.get("full_layers", []))), mean

    def _run_set(self, samples: list[Sample], methods: list[MethodSpec], done: dict[tuple[str, str], dict[str, Any]],
                 sink: Any, bar: Any) -> None:
        """Phase two: the ``@matched-set`` baselines, one budget for all samples (known once phase one is done).

        A recorded ``@matched-set`` run made at another budget (the set changed since: more samples or tasks) is
        run again with a warning; :func:`read_records` keeps the newer line.
        """
        budget, mean = self.set_budget(samples, done)
        for sample in samples:
            ref = None
            for method in methods:
                old = done.get((sample.id, method.name))
                if old is not None and old.get("budget_target") is not None and abs(old["budget_target"] - budget) < 1e-9:
                    continue
                if old is not None:
                    warnings.warn(f"{sample.id} {method.name}: recorded at budget {old.get('budget_target')}, the set's "
                                  f"budget is now {budget:.6f}; running it again", UserWarning, stacklevel=2)
                ref = ref or self._load_reference(sample)
                if ref is None:  # a lost reference: the full cache runs again (not re-recorded)
                    ref = self._save_reference(sample, self._generate(sample, MethodSpec("full", "full").policy(gqa=self.config.gqa)))
                bar.set_postfix_str(f"{sample.id} {method.name}")
                policy = method.policy(self.config.window, self.config.gqa, matched_budget=budget)
                start = time.perf_counter()
                result = self._generate(sample, policy)
                rec = self.record(sample, method, policy, result, ref, budget, time.perf_counter() - start)
                rec["set_mean_budget"] = mean
                done[(sample.id, method.name)] = rec
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
                bar.update(1)

    def speed(self) -> dict[str, Any]:
        """The speed step (``config.speed_length``): full cache vs the paper preset side by side; see :mod:`.speed`."""
        c = self.config
        return speed_check(self.model, self.tokenizer, self.generate_fn, self.out / "speed.json", length=int(c.speed_length),
                           new_tokens=c.speed_new_tokens, repeats=c.speed_repeats, seed=c.seed, haystack=c.haystack,
                           model_name=c.model, progress=c.progress)

    def _oracle(self, sample: Sample, method: MethodSpec, ref: _Reference) -> tuple[Any, Any, list[list[float]]]:
        """Binary search for the smallest budget whose greedy output equals the full cache's.

        Returns the policy and result at that budget and the probes ``[[budget, same_as_full], ...]``.
        Budget 1.0 keeps every row and is taken to reproduce the full cache (it is run only if no probe did).
        """
        def probe(budget: float) -> tuple[Any, Any, bool]:
            policy = method.policy(self.config.window, self.config.gqa, matched_budget=budget)
            result = self._generate(sample, policy)
            return policy, result, list(result.tokens) == list(ref.tokens)

        lo, hi, best, probes = 0.0, 1.0, None, []
        while hi - lo > self.config.oracle_tolerance:
            mid = (lo + hi) / 2
            policy, result, same = probe(mid)
            probes.append([round(mid, 6), float(same)])
            if same:
                hi, best = mid, (policy, result)
            else:
                lo = mid
        if best is None:
            policy, result, same = probe(1.0)
            probes.append([1.0, float(same)])
            best = (policy, result)
        return best[0], best[1], probes

    def write_run_info(self, argv: list[str] | None = None) -> Path:
        """``<out>/run.json``: the config, the command line and the machine (read by the report)."""
        from .report import environment

        info = {"config": asdict(self.config), "argv": argv if argv is not None else sys.argv, "environment": environment(self.model, self.config.backend)}
        path = self.out / "run.json"
        path.write_text(json.dumps(info, indent=1))
        return path


def set_threads(n: int, backend: str = "auto") -> int | None:
    """CPU threads for the model backend (torch: ``torch.set_num_threads``); the count now in use, ``None`` if the
    backend has no such setting or does not import here."""
    from ..backend import get_backend

    try:
        return get_backend(backend).set_threads(int(n))
    except Exception:  # noqa: BLE001 - backend not installed: nothing to set
        return None


def _matched_from(record: dict[str, Any] | None) -> float | None:
    """The matched baselines' per-layer budget from a recorded ``paper`` run (``None`` without one)."""
    if not record:
        return None
    layers = record.get("layer_budgets") or []
    if not layers:
        return 1.0
    return matched_budget(record["mean_budget"], len(layers), len(record.get("full_layers", [])))


class _NoBar:
    def __init__(self, total: int, desc: str):
        self.total, self.n, self.desc = total, 0, desc

    def set_postfix_str(self, text: str) -> None:
        pass

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar(total, desc)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar(total, desc)
    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr)


def run_eval(config: EvalConfig, model: Any = None, tokenizer: Any = None, generate_fn: Callable[..., Any] | None = None,
             argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run an evaluation and return its records (see :class:`Runner`)."""
    runner = Runner(config, model, tokenizer, generate_fn)
    runner.write_run_info(argv)
    return runner.run()
