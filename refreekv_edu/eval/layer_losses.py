"""Where the rule cut on the samples it lost: the paper preset's per-layer budgets, lost samples against kept ones.

A sample is *lost* when the paper preset's task score is below the full cache's on it, *kept* otherwise. For each
layer the page shows the paper preset's mean budget (share of the prompt's rows kept) over the lost samples and
over the kept ones, next to the uniform budget ``recency@matched`` gave the same samples (one share for every
pruned layer, the same mean over layers). A layer where the lost samples' budget sits far below both is where the
rule spent less than a uniform budget would have, on exactly the inputs it then failed.

Everything is computed from the records (``layer_budgets``, ``score``, ``budget_target``); no model is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .methods import MATCH_PRESET

#: The uniform baseline the lost samples are compared with.
UNIFORM = "recency@matched"


@dataclass
class LayerLosses:
    """The paper preset's per-layer budgets split by outcome.

    Attributes:
        lost: sample ids the paper preset lost (score below the full cache's).
        kept: the other sample ids (with a full-cache record).
        lost_budget: ``(num_layers,)`` mean budget per layer over ``lost`` (NaN when none).
        kept_budget: ``(num_layers,)`` the same over ``kept``.
        uniform_budget: mean per-pruned-layer budget of :data:`UNIFORM` over ``lost`` (``None`` when it did not run).
        uniform_kept: how many of the lost samples :data:`UNIFORM` kept (``None`` when it did not run).
        full_layers: layers every method keeps whole.
    """

    lost: list[str]
    kept: list[str]
    lost_budget: np.ndarray
    kept_budget: np.ndarray
    uniform_budget: float | None
    uniform_kept: int | None
    full_layers: tuple[int, ...]

    def hardest(self, k: int = 3) -> list[int]:
        """The ``k`` pruned layers with the largest (kept minus lost) budget gap: where the lost samples were cut
        most compared with the samples that kept their score."""
        gap = self.kept_budget - self.lost_budget
        order = [int(i) for i in np.argsort(-np.nan_to_num(gap, nan=-np.inf)) if int(i) not in self.full_layers]
        return order[:k]


def layer_losses(records: Sequence[dict[str, Any]]) -> LayerLosses | None:
    """Split the paper preset's records into lost and kept samples; ``None`` without paper and full records."""
    full = {r["sample_id"]: r for r in records if r["method"] == "full"}
    paper = [r for r in records if r["method"] == MATCH_PRESET and r["sample_id"] in full and r.get("layer_budgets")]
    if not paper:
        return None
    lost = [r for r in paper if r["score"] < full[r["sample_id"]]["score"]]
    kept = [r for r in paper if r["score"] >= full[r["sample_id"]]["score"]]
    layers = len(paper[0]["layer_budgets"])

    def mean(rs: list[dict[str, Any]]) -> np.ndarray:
        if not rs:
            return np.full(layers, np.nan)
        return np.mean(np.asarray([r["layer_budgets"] for r in rs], dtype=float), axis=0)

    lost_ids = {r["sample_id"] for r in lost}
    uniform = [r for r in records if r["method"] == UNIFORM and r["sample_id"] in lost_ids]
    uniform_budget = float(np.mean([r["budget_target"] for r in uniform])) if uniform else None
    uniform_kept = sum(r["score"] >= full[r["sample_id"]]["score"] for r in uniform) if uniform else None
    return LayerLosses(
        lost=sorted(lost_ids), kept=sorted(r["sample_id"] for r in kept), lost_budget=mean(lost), kept_budget=mean(kept),
        uniform_budget=uniform_budget, uniform_kept=uniform_kept, full_layers=tuple(paper[0].get("full_layers") or ()),
    )


def layer_losses_table(ll: LayerLosses) -> str:
    """Markdown: one row per layer, the lost and kept samples' mean budget and their gap."""
    uniform = "-" if ll.uniform_budget is None else f"{100 * ll.uniform_budget:.1f}%"
    lines = [f"| layer | lost ({len(ll.lost)}) | kept ({len(ll.kept)}) | kept - lost | {UNIFORM} on the lost |",
             "|" + "---|" * 5]
    for i, (a, b) in enumerate(zip(ll.lost_budget, ll.kept_budget)):
        full = i in ll.full_layers
        gap = "-" if full or np.isnan(a) or np.isnan(b) else f"{100 * (b - a):+.1f} pts"
        lines.append(f"| {i}{' (full)' if full else ''} | {_pct(a)} | {_pct(b)} | {gap} | {'100%' if full else uniform} |")
    return "\n".join(lines)


def layer_losses_finding(ll: LayerLosses) -> str | None:
    """One sentence for the findings list (``None`` when the paper preset lost nothing)."""
    if not ll.lost:
        return None
    hard = ll.hardest()
    parts = ", ".join(f"layer {i} ({_pct(ll.lost_budget[i])} vs {_pct(ll.kept_budget[i])})" for i in hard)
    text = (f"**Where the rule cut on the samples it lost** ({len(ll.lost)} samples): the largest gaps between the "
            f"paper preset's budget on lost and on kept samples are in {parts}.")
    if ll.uniform_budget is not None and ll.uniform_kept is not None:
        pruned = [i for i in range(len(ll.lost_budget)) if i not in ll.full_layers]
        below = [i for i in pruned if ll.lost_budget[i] < ll.uniform_budget]
        text += (f" On those samples {UNIFORM} kept {ll.uniform_kept} of {len(ll.lost)} with a "
                 f"uniform {100 * ll.uniform_budget:.1f}% per pruned layer; the paper preset went below that share in "
                 f"{len(below)} of {len(pruned)} pruned layers"
                 + (f" (lowest: layer {min(below, key=lambda i: ll.lost_budget[i])} at "
                    f"{_pct(min(ll.lost_budget[i] for i in below))})" if below else "") + ".")
    return text


def plot_layer_losses(ll: LayerLosses, path: Path) -> Path:
    """Per-layer budget of the paper preset on lost vs kept samples, with the uniform matched budget."""
    from .plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(ll.lost_budget))
    ax.plot(x, 100 * ll.kept_budget, "o-", color="#1a7f37", label=f"paper, kept ({len(ll.kept)})")
    ax.plot(x, 100 * ll.lost_budget, "o-", color="#cf222e", label=f"paper, lost ({len(ll.lost)})")
    if ll.uniform_budget is not None:
        ax.axhline(100 * ll.uniform_budget, color="#555", ls="--", lw=1, label=f"{UNIFORM} on the lost")
    ax.set_xlabel("layer")
    ax.set_ylabel("budget (% of the prompt's rows)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Where the rule cut: samples the paper preset lost vs kept", fontsize=10)
    return save_figure(plt, fig, path)


def _pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.1f}%"
