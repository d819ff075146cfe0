"""The methods an evaluation compares, named by short strings.

- ``full``: the full cache, the reference every other method is measured against.
- ``refreekv``: ReFreeKV at the default threshold (0.05); ``refreekv@0.1`` sets another threshold.
- ``<ranking>@<budget>``: a fixed budget, e.g. ``h2o@0.5``, ``snapkv@0.2``, ``position@0.8``.
- ``<ranking>@matched``: a fixed budget equal to the *average* budget ReFreeKV kept on the same sample
  (``trace.mean_budget``). This is the fair comparison: same memory, uniform across layers, so any
  difference comes from *where* ReFreeKV spends the budget (per layer) and *when* it stops.

Rankings: ``h2o``, ``snapkv``, ``position``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RANKINGS = ("h2o", "snapkv", "position")
_FIXED = re.compile(r"^(h2o|snapkv|position)@(matched|[0-9]*\.?[0-9]+)$")
_REFREE = re.compile(r"^refreekv(?:@([0-9]*\.?[0-9]+))?$")

#: What ``--methods default`` means.
DEFAULT_METHODS = ("full", "refreekv", "h2o@matched", "snapkv@matched", "position@matched")
#: Every fixed budget at 0.2/0.5/0.8 too (``--methods all``).
ALL_METHODS = DEFAULT_METHODS + tuple(f"{r}@{b}" for r in RANKINGS for b in ("0.2", "0.5", "0.8"))


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name.

    Attributes:
        name: the canonical name (``"h2o@0.5"``).
        kind: ``"full"``, ``"refreekv"``, ``"fixed"`` or ``"matched"``.
        ranking: ranking for the policy (ReFreeKV ranks with h2o, as the paper's code does).
        threshold: ReFreeKV's halting threshold.
        budget: fixed budget in ``(0, 1]`` (``None`` for matched: known only after ReFreeKV ran).
    """

    name: str
    kind: str
    ranking: str = "h2o"
    threshold: float | None = None
    budget: float | None = None

    def policy(self, window: int = 8, gqa: str = "group", matched_budget: float | None = None):
        """The :mod:`refreekv_edu` policy object for this method (``matched_budget`` is required for ``matched``)."""
        from ..policies import FixedBudget, FullCache, ReFreeKV

        if self.kind == "full":
            return FullCache(window=window, gqa=gqa)
        if self.kind == "refreekv":
            return ReFreeKV(threshold=self.threshold, window=window, ranking=self.ranking, gqa=gqa)
        budget = self.budget if self.kind == "fixed" else matched_budget
        if budget is None:
            raise ValueError(f"method {self.name!r} needs ReFreeKV's average budget on the sample; run 'refreekv' first")
        return FixedBudget(budget=min(1.0, float(budget)), ranking=self.ranking, window=window, gqa=gqa)


def parse_method(name: str) -> MethodSpec:
    """Parse ``"full"``, ``"refreekv[@t]"``, ``"<ranking>@<budget>"`` or ``"<ranking>@matched"``."""
    text = name.strip().lower()
    if text == "full":
        return MethodSpec("full", "full")
    m = _REFREE.match(text)
    if m:
        threshold = float(m.group(1)) if m.group(1) else 0.05
        return MethodSpec("refreekv" if m.group(1) is None else f"refreekv@{m.group(1)}", "refreekv", "h2o", threshold)
    m = _FIXED.match(text)
    if m:
        ranking, budget = m.groups()
        if budget == "matched":
            return MethodSpec(text, "matched", ranking)
        value = float(budget)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"method {name!r}: a fixed budget must lie in (0, 1], got {value}")
        return MethodSpec(text, "fixed", ranking, budget=value)
    raise ValueError(
        f"unknown method {name!r}; use 'full', 'refreekv' (or 'refreekv@0.1'), '<ranking>@<budget>' "
        f"(e.g. 'h2o@0.5') or '<ranking>@matched', with ranking in {', '.join(RANKINGS)}"
    )


def parse_methods(names: list[str] | tuple[str, ...] | str) -> list[MethodSpec]:
    """Parse a list (or comma-separated string, or ``"default"``/``"all"``) of method names.

    ``full`` is always run first (it is the fidelity reference) and ``refreekv`` is added before any
    ``@matched`` method that needs its budget.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    expanded: list[str] = []
    for n in names:
        key = n.strip().lower()
        expanded.extend(DEFAULT_METHODS if key == "default" else ALL_METHODS if key == "all" else [n])
    specs: dict[str, MethodSpec] = {}
    for n in expanded:
        spec = parse_method(n)
        specs.setdefault(spec.name, spec)
    if any(s.kind == "matched" for s in specs.values()) and "refreekv" not in specs:
        specs = {"refreekv": parse_method("refreekv"), **specs}
    ordered = [parse_method("full")] + [s for s in specs.values() if s.kind == "refreekv"]
    ordered += [s for s in specs.values() if s.kind in {"fixed", "matched"}]
    return ordered
