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

import importlib
import json
import re
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import progress_bar
from . import metrics
from .config import EvalConfig, build_samples, token_counter
from .methods import MATCH_PRESET, KvpressBaseline, MethodSpec, matched_budget, parse_methods
from .records import SAMPLES_FILE, _Reference, _safe, check_writable, prompt_digest, read_records, repair_torn_tail
from .speed import speed_check
from .tasks import Sample


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
        if isinstance(policy, KvpressBaseline):  # a kvpress press: transformers models, the kvpress extra
            press_generate = kvpress_generate()
            return press_generate(self.model, self.tokenizer, self._prompt(sample), policy, max_new_tokens=steps)
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
            "budget_target": policy.budget if method.kind in ("fixed", "matched", "matched-set", "oracle", "kvpress")
            else None,
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
            "mean_budget": float(stats["mean_budget"]) if "mean_budget" in stats
            else (trace.mean_budget if trace.layers else 1.0),
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
        todo = [(s, m) for s in samples for m in self.methods if (s.id, m.name) not in done and self.applies(s, m)]
        bar = progress_bar(len(todo), f"eval {self.out.name}", self.config.progress)
        repair_torn_tail(self.records_path)
        with open(self.records_path, "a", encoding="utf-8") as sink:
            for sample in samples:
                if all((sample.id, m.name) in done for m in per_sample if self.applies(sample, m)):
                    continue
                ref = self._load_reference(sample)  # full cache's tokens + logits, saved by an earlier run
                matched = _matched_from(done.get((sample.id, MATCH_PRESET)))
                paper_mean = (done.get((sample.id, MATCH_PRESET)) or {}).get("mean_budget")
                for method in per_sample:  # "full" comes first, then "refreekv", then the baselines
                    if not self.applies(sample, method):
                        continue
                    recorded = (sample.id, method.name) in done
                    rebuild_ref = method.kind == "full" and ref is None  # reference lost: rerun full, record nothing new
                    if recorded and not rebuild_ref:
                        continue
                    if method.kind in ("matched", "kvpress") and matched is None:
                        raise RuntimeError(f"no {MATCH_PRESET!r} budget for sample {sample.id!r}; {MATCH_PRESET!r} must run "
                                           f"before {method.name!r}")
                    bar.set_postfix_str(f"{sample.id} {method.name}")
                    start = time.perf_counter()
                    probes = None
                    if method.kind == "oracle":
                        policy, result, probes = self._oracle(sample, method, ref)
                    else:
                        budget = paper_mean if method.kind == "kvpress" else matched
                        policy = method.policy(self.config.window, self.config.gqa, matched_budget=budget)
                        result = self._generate(sample, policy)
                    wall = time.perf_counter() - start
                    if method.kind == "full":
                        ref = self._save_reference(sample, result)
                    if method.name == MATCH_PRESET:  # the paper preset sets the matched baselines' budget
                        t = result.trace
                        matched = matched_budget(t.mean_budget, len(t.layers), sum(d.full_layer for d in t.layers)) if t.layers else 1.0
                        paper_mean = t.mean_budget if t.layers else 1.0
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

    def applies(self, sample: Sample, method: MethodSpec) -> bool:
        """Whether ``method`` runs on ``sample``: with ``config.sweep_samples`` set, every ReFreeKV method except
        the paper preset itself (the one the main tables and the matched baselines use) runs only on the first
        ``sweep_samples`` samples of each task and length (sample ids end in ``-i<index>``)."""
        limit = self.config.sweep_samples
        if limit is None or method.kind != "refreekv" or method.name == MATCH_PRESET:
            return True
        index = re.search(r"-i(\d+)$", sample.id)
        return index is None or int(index.group(1)) < limit

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


def kvpress_generate() -> Callable[..., Any]:
    """``refreekv_torch.kvpress_baselines.generate_with_press``, or a clear error when kvpress is not installed."""
    try:  # by name, like the backend registry: the core never imports a backend package itself
        module = importlib.import_module("refreekv_torch.kvpress_baselines")
    except ImportError as exc:
        raise RuntimeError(
            f"kvpress methods need the kvpress extra and the torch backend ({exc}): "
            'pip install -e ".[torch,kvpress]" (kvpress pins transformers<5.3)'
        ) from None
    return module.generate_with_press


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


def run_eval(config: EvalConfig, model: Any = None, tokenizer: Any = None, generate_fn: Callable[..., Any] | None = None,
             argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run an evaluation and return its records (see :class:`Runner`)."""
    runner = Runner(config, model, tokenizer, generate_fn)
    runner.write_run_info(argv)
    return runner.run()
