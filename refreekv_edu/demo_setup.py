"""The demo's set: its four prompts, its methods and their policies, and the records of a run (:class:`DemoRun`,
:class:`DemoResult`). :mod:`refreekv_edu.demo` runs them; :mod:`refreekv_edu.demo_report` prints and plots them.

This module imports only the standard library and numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .eval import tasks
from .eval.methods import parse_method
from .eval.tasks import Sample

#: The methods, in the order they run on each prompt (``matched`` runs last: it needs the paper's budgets).
METHODS = ("full", "paper", "official-script", "matched")
#: How each prompt of the set is labelled in the table.
PROMPT_LABELS = ("short fact", "paragraph QA", "redundant text", "passkey (stress)")


def demo_samples(count_tokens: Callable[[str], int] | None = None) -> list[Sample]:
    """The demo's four prompts, built by the evaluation tasks (deterministic; lengths use ``count_tokens``).

    - a short factual question (``short``, the capital-city kind, ~45 tokens);
    - a question over a made-up paragraph (``reading``, the house-colour question, ~140 tokens);
    - one stdlib-docstring paragraph copied to ~768 tokens, then begun again and cut (``repeat``): continue it;
    - a five-digit pass key at 50% depth of ~1k tokens of generated prose filler (``passkey``; :mod:`refreekv_edu.eval.prose`): the stress case.
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


__all__ = ["METHODS", "PROMPT_LABELS", "DemoResult", "DemoRun", "demo_policies", "demo_samples", "method_label"]
