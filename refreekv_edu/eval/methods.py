"""The methods an evaluation compares, named by short strings.

- ``full``: the full cache, the reference every other method is measured against.
- A ReFreeKV preset by name (:data:`refreekv_edu.policies.PRESETS`): ``paper`` (the paper's method,
  ``ReFreeKV()``), ``official-script``, ``sinks-in-metric``, ``h2o-ranking``. ``<preset>@<T>`` sets another
  threshold, e.g. ``paper@0.02``. ``refreekv`` is another name for ``paper`` (``refreekv@0.1`` = ``paper@0.1``).
- ``<ranking>@oracle``: the *oracle budget* of the sample: the smallest fixed budget (per pruned layer, found by
  binary search to :data:`ORACLE_TOLERANCE`) whose greedy output equals the full cache's. The record holds the run
  at that budget; compare its ``mean_budget`` with the paper preset's to see how far ReFreeKV's budget sits above
  what the input needed. The search assumes that a larger budget never breaks an output a smaller one kept (not
  guaranteed; each probe is one generation, about 7 per sample).
- ``sweep``: every preset at T = 0.1%, 0.3%, 1%, 3% and 10% (:data:`SWEEP_THRESHOLDS`); the report plots each
  preset's mean budget against its fidelity to the full cache.
- ``<ranking>@<budget>``: a fixed budget, e.g. ``recency@0.5``, ``h2o@0.5``, ``snapkv@0.2``; rankings
  ``recency``, ``h2o``, ``snapkv``.
- ``<ranking>@matched``: a fixed budget whose mean over layers equals the *paper* preset's mean budget on the
  same sample (``trace.mean_budget``). This is the fair comparison: the same memory, spread uniformly over the
  pruned layers, so any difference comes from *where* ReFreeKV spends the budget (per layer and per input).
- ``<ranking>@matched-set``: ONE fixed budget for every sample of the run, whose mean over layers equals the
  paper preset's mean budget averaged over *all* samples of the run (every task and length; a plain mean of
  the per-sample ``mean_budget``). This is the paper's claim in its own terms: a fixed budget at the same
  average memory, which cannot give a demanding input more than a redundant one. It runs after the paper
  preset has run on every sample (the runner's second phase).

- ``kvpress:<press>@matched``: a kvpress press (the ``kvpress`` extra, transformers models only) whose
  compression ratio is ``1 - `` the paper preset's mean budget on the same sample, so it keeps the same share of
  the whole cache: ``streamingllm``, ``snapkv``, ``tova``, ``knorm``, ``expected_attention``, ``adakv``
  (:data:`KVPRESS_PRESSES`). kvpress compresses every layer by the same ratio (layers 0 and 1 too, no sinks
  unless the press keeps them) and runs at the end of prefill over the whole prompt, like ReFreeKV here.
  ``adakv`` (AdaKV over SnapKV's scores) spreads each layer's budget over its heads adaptively, the way ReFreeKV
  spreads the model's budget over layers; it masks keys instead of removing rows, so it frees no memory.

Every fixed budget keeps what the paper's method protects: the first 4 positions (sinks) and layers 0 and 1
whole. ``recency`` protects no window (``w = 0``, like the paper); ``h2o`` and ``snapkv`` score candidates by the
last ``w`` queries' attention (``--window``, default 8) and keep those ``w`` positions. ``<ranking>@<b>`` keeps
``b`` of the rows in every pruned layer; its mean over all layers is therefore a little above ``b``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..policies import PRESETS
from ..ranking import RANKINGS

#: The preset every ``@matched`` baseline is matched to.
MATCH_PRESET = "paper"
_NUMBER = r"[0-9]*\.?[0-9]+(?:e-?[0-9]+)?"
_FIXED = re.compile(rf"^([a-z0-9_-]+)@(matched-set|matched|oracle|{_NUMBER})$")
_PRESET = re.compile(rf"^([a-z0-9_-]+)(?:@({_NUMBER}))?$")
_KVPRESS = re.compile(r"^kvpress:([a-z_]+)@matched$")
#: The kvpress presses ``kvpress:<press>@matched`` can name (class names in kvpress: StreamingLLMPress, ...).
KVPRESS_PRESSES = ("streamingllm", "snapkv", "tova", "knorm", "expected_attention", "adakv")
#: Those that mask keys per head instead of removing rows: they free no memory.
KVPRESS_MASKING = ("adakv",)
#: Fields of the fixed baselines that copy the paper preset's protections.
FIXED_SINKS = PRESETS["paper"]["sinks"]
FIXED_FULL_LAYERS = tuple(PRESETS["paper"]["full_layers"])

#: What ``--methods default`` means.
DEFAULT_METHODS = ("full", "paper", "official-script", "recency@matched", "h2o@matched", "snapkv@matched")
#: The ablations and fixed budgets at 0.2/0.5/0.8 too (``--methods all``).
ALL_METHODS = DEFAULT_METHODS + ("sinks-in-metric", "h2o-ranking") + tuple(
    f"{r}@{b}" for r in RANKINGS for b in ("0.2", "0.5", "0.8")
)
#: The binary search of ``<ranking>@oracle`` stops when the budget interval is this narrow (6 probes + 1);
#: ``EvalConfig.oracle_tolerance`` / ``--oracle-tolerance`` sets another.
ORACLE_TOLERANCE = 1 / 64
#: Kinds whose budget is known only after the paper preset ran (per sample, or over the whole run).
MATCHED_KINDS = ("matched", "matched-set")
#: The thresholds of ``--methods sweep`` (0.1% to 10%, like the paper's Figures 2-3).
SWEEP_THRESHOLDS = (0.001, 0.003, 0.01, 0.03, 0.1)
#: ``--methods sweep``: every preset at every sweep threshold (a preset's own threshold keeps its bare name).
SWEEP_METHODS = tuple(f"{p}@{t:g}" for p in PRESETS for t in SWEEP_THRESHOLDS)


@dataclass(frozen=True)
class KvpressBaseline:
    """What a ``kvpress:<press>@matched`` method runs: a kvpress press keeping ``budget`` of every layer's rows.

    Not a :mod:`refreekv_edu` policy: the runner hands it to ``refreekv_torch.kvpress_baselines`` (kvpress
    applies it); the record reads ``ranking``, ``threshold`` and ``budget`` like a policy's.
    """

    press: str
    budget: float  # kept share of every layer = 1 - kvpress's compression_ratio
    threshold: None = None

    @property
    def ranking(self) -> str:
        """``"kvpress:<press>"``, as a record's ``ranking`` column shows it."""
        return f"kvpress:{self.press}"

    @property
    def compression_ratio(self) -> float:
        """What kvpress takes: the share of every layer's rows it removes, ``1 - budget``."""
        return 1.0 - self.budget


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name.

    Attributes:
        name: the canonical name (``"paper"``, ``"paper@0.02"``, ``"h2o@0.5"``, ``"recency@matched"``).
        kind: ``"full"``, ``"refreekv"`` (a preset), ``"fixed"``, ``"matched"``, ``"matched-set"``, ``"oracle"``
            or ``"kvpress"``.
        preset: the ReFreeKV preset (``kind == "refreekv"``).
        ranking: the fixed baseline's ranking (``"fixed"``/``"matched"``).
        threshold: the preset's threshold, or ``None`` for the preset's own.
        budget: fixed budget in ``(0, 1]`` (``None`` for matched: known only after the paper preset ran).
    """

    name: str
    kind: str
    preset: str | None = None
    ranking: str | None = None
    threshold: float | None = None
    budget: float | None = None

    def policy(self, window: int = 8, gqa: str = "group", matched_budget: float | None = None) -> Any:
        """The :mod:`refreekv_edu` policy for this method.

        Args:
            window: ``w`` of the ``h2o``/``snapkv`` fixed baselines (presets keep their own window).
            gqa: the GQA mode of every method.
            matched_budget: the per-pruned-layer budget of a ``matched``/``matched-set`` method (see
                :func:`matched_budget`), the budget an ``oracle`` search probes, or for ``kvpress`` the paper
                preset's mean budget over all layers.
        """
        from ..policies import FixedBudget, FullCache, ReFreeKV

        if self.kind == "kvpress":
            if matched_budget is None:
                raise ValueError(f"method {self.name!r} needs the {MATCH_PRESET!r} preset's mean budget on the sample")
            return KvpressBaseline(str(self.ranking), float(min(1.0, max(1e-3, matched_budget))))
        if self.kind == "full":
            return FullCache(gqa=gqa)
        if self.kind == "refreekv":
            overrides: dict[str, Any] = {"gqa": gqa}
            if self.threshold is not None:
                overrides["threshold"] = self.threshold
            return ReFreeKV.preset(self.preset, **overrides)
        budget = self.budget if self.kind == "fixed" else matched_budget
        if budget is None and self.kind == "oracle":
            raise ValueError(f"method {self.name!r} needs the budget to probe (the runner's binary search gives it)")
        if budget is None:
            raise ValueError(f"method {self.name!r} needs the {MATCH_PRESET!r} preset's budget on the sample; run "
                             f"{MATCH_PRESET!r} first")
        return FixedBudget(budget=min(1.0, float(budget)), ranking=self.ranking,
                           window=0 if self.ranking == "recency" else window, sinks=FIXED_SINKS,
                           full_layers=FIXED_FULL_LAYERS, gqa=gqa)


def matched_budget(mean_budget: float, num_layers: int, full_layers: int) -> float:
    """The budget per pruned layer whose mean over all ``num_layers`` equals ``mean_budget``.

    ``full_layers`` layers count at 100%, so a budget ``b`` on the others has mean ``(F + (N - F) b) / N``;
    solving for ``mean_budget`` gives ``b = (N B - F) / (N - F)``, kept in ``[0.001, 1]``.

    Example:
        >>> round(matched_budget(0.6, num_layers=30, full_layers=2), 4)
        0.5714
    """
    if not np.isfinite(mean_budget):
        raise ValueError(f"mean_budget must be a number, got {mean_budget!r}")
    if num_layers <= full_layers:
        return 1.0
    b = (num_layers * float(mean_budget) - full_layers) / (num_layers - full_layers)
    return float(min(1.0, max(1e-3, b)))


def _threshold(text: str, name: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise ValueError(f"method {name!r}: a threshold must lie in (0, 1), e.g. 'paper@0.02', got {value:g}")
    return value


def parse_method(name: str) -> MethodSpec:
    """Parse ``"full"``, ``"<preset>[@T]"``, ``"refreekv[@T]"``, ``"<ranking>@<budget>"``, ``"<ranking>@matched"``,
    ``"<ranking>@matched-set"`` or ``"<ranking>@oracle"``."""
    text = name.strip().lower()
    if text == "full":
        return MethodSpec("full", "full")
    m = _PRESET.match(text)
    if m and (m.group(1) in PRESETS or m.group(1) == "refreekv"):
        preset = MATCH_PRESET if m.group(1) == "refreekv" else m.group(1)
        if m.group(2) is None:
            return MethodSpec(preset, "refreekv", preset=preset)
        threshold = _threshold(m.group(2), name)
        if threshold == PRESETS[preset]["threshold"]:  # the preset itself: one name, so it runs once
            return MethodSpec(preset, "refreekv", preset=preset)
        return MethodSpec(f"{preset}@{threshold:g}", "refreekv", preset=preset, threshold=threshold)
    m = _FIXED.match(text)
    if m and m.group(1) in RANKINGS:
        ranking, budget = m.groups()
        if budget in ("matched", "matched-set", "oracle"):
            return MethodSpec(text, budget, ranking=ranking)
        value = float(budget)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"method {name!r}: a fixed budget must lie in (0, 1], got {value:g}")
        return MethodSpec(f"{ranking}@{value:g}", "fixed", ranking=ranking, budget=value)
    m = _KVPRESS.match(text)
    if text.startswith("kvpress:"):
        if m and m.group(1) in KVPRESS_PRESSES:
            return MethodSpec(text, "kvpress", ranking=m.group(1))
        raise ValueError(f"unknown kvpress method {name!r}; use 'kvpress:<press>@matched' with press in "
                         f"{', '.join(KVPRESS_PRESSES)}")
    hint = ""
    if text.startswith("position"):
        hint = " (the 'position' ranking is gone: 'recency' evicts oldest first and keeps the 4 sinks)"
    raise ValueError(
        f"unknown method {name!r}{hint}; use 'full', a preset ({', '.join(PRESETS)}) optionally with a threshold "
        f"('paper@0.02'), '<ranking>@<budget>' (e.g. 'h2o@0.5'), '<ranking>@matched', '<ranking>@matched-set' or "
        f"'<ranking>@oracle', with "
        f"ranking in "
        f"{', '.join(RANKINGS)}"
    )


def parse_methods(names: list[str] | tuple[str, ...] | str) -> list[MethodSpec]:
    """Parse a list (or comma-separated string, or ``"default"``/``"all"``/``"sweep"``) of method names.

    ``full`` always runs first (it is the fidelity reference); the ``paper`` preset is added, before the
    baselines, when an ``@matched`` method needs its budget. Then the presets, then the fixed budgets.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    expanded: list[str] = []
    for n in names:
        key = n.strip().lower()
        groups = {"default": DEFAULT_METHODS, "all": ALL_METHODS, "sweep": SWEEP_METHODS}
        expanded.extend(groups.get(key, [n]))
    if not expanded:
        raise ValueError("no methods given; e.g. --methods full paper recency@matched")
    specs: dict[str, MethodSpec] = {}
    for n in expanded:
        spec = parse_method(n)
        specs.setdefault(spec.name, spec)
    if any(s.kind in (*MATCHED_KINDS, "kvpress") for s in specs.values()) and MATCH_PRESET not in specs:
        specs = {MATCH_PRESET: parse_method(MATCH_PRESET), **specs}
    ordered = [parse_method("full")] + [s for s in specs.values() if s.kind == "refreekv"]
    ordered += [s for s in specs.values() if s.kind in {"fixed", "matched", "oracle", "kvpress"}]
    ordered += [s for s in specs.values() if s.kind == "matched-set"]  # last: they need every sample's paper run
    return ordered
