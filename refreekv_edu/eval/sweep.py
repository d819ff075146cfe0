"""The threshold sweep's records: every preset at every threshold it ran at, over one common set of samples.

A run may sweep on fewer samples than its main tables (``--sweep-samples N``: the paper preset at its own
threshold runs on every sample, its other thresholds and the other presets on the first ``N`` of each task and
length). A curve whose points average different samples would mix the effect of the threshold with that of the
samples, so every point of every curve (and every fixed-budget marker drawn next to them) is computed over the
samples the sweep covered: those on which some preset ran at a threshold other than the paper preset's own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..policies import PRESETS
from .methods import MATCH_PRESET


def sweep_samples(records: Sequence[dict[str, Any]]) -> set[str]:
    """Ids of the samples the sweep covered (every sample when nothing but the paper preset ran)."""
    swept = {r["sample_id"] for r in records if r.get("kind") == "refreekv" and r["method"] != MATCH_PRESET}
    return swept or {r["sample_id"] for r in records}


def sweep_groups(records: Sequence[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """``(preset, threshold) -> records`` over :func:`sweep_samples`, sorted by preset then threshold."""
    ids = sweep_samples(records)
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        preset = r["method"].split("@")[0]
        if preset in PRESETS and r.get("threshold") is not None and r["sample_id"] in ids:
            groups[(preset, float(r["threshold"]))].append(r)
    return dict(sorted(groups.items()))
