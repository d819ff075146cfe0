"""The graded inputs of the paper's method (sinks out of the metric, recency keep, model budget, the layer
decision); the official script's pieces and the shared input makers are in :mod:`~refreekv_edu.exercises.cases`.
"""

from __future__ import annotations

import numpy as np

from .cases import gqa_trap
from .grading import Case, grouped


def last_row_like(
    rng: np.random.Generator, heads: int, length: int, sinks: int, sink_mass: tuple[float, float] = (0.3, 0.8)
) -> np.ndarray:
    """``(heads, length)`` float32 rows summing to 1, like a real last row: the sinks take a large share
    (drawn per head from ``sink_mass``), the rest is spiky attention on the other positions."""
    rows = np.zeros((heads, length), np.float64)
    rest = rng.dirichlet(np.full(length - sinks, 0.3), size=heads)
    if sinks:
        mass = rng.uniform(*sink_mass, size=(heads, 1))
        rows[:, :sinks] = mass * rng.dirichlet(np.full(sinks, 0.5), size=heads)
        rows[:, sinks:] = (1.0 - mass) * rest
    else:
        rows[:] = rest
    return rows.astype(np.float32)


def candidate_curve_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``candidate_curve(last_row (H, L), sinks)``."""
    hand = np.array([[0.5, 0.1, 0.0, 0.05, 0.1, 0.05, 0.2]], np.float32)
    silent = np.zeros((2, 6), np.float32)
    silent[:, :2] = [[0.7, 0.3], [0.9, 0.1]]
    cases = [
        Case(
            "hand",
            "one head, L=7, m=2: a = [0.5, 0.1 | 0.0, 0.05, 0.1, 0.05, 0.2]; the candidates are positions 2..6",
            (hand, 2),
            "slice the sinks off first (a = last_row[:, m:], n = 5), then the curve of a in position order: "
            "R(0) = sqrt(0 + 0.0025 + 0.01 + 0.0025 + 0.04), R(1) the same, R(2) = sqrt(0.0525) ...",
        ),
        Case(
            "typical",
            "4 heads, L=40, m=4; the sinks take 30-80% of each head's attention (a different share per head)",
            (last_row_like(rng, 4, 40, 4), 4),
        ),
        Case(
            "sink-dominated",
            "3 heads, L=64, m=4, the sinks take over 95% of the attention, as in real models",
            (last_row_like(rng, 3, 64, 4, sink_mass=(0.95, 0.99)), 4),
            "the sinks' attention must not enter the norm: with it, every candidate looks negligible.",
        ),
        Case("no-sinks", "m=0: every position is a candidate", (last_row_like(rng, 2, 12, 0), 0)),
        Case(
            "one-candidate",
            "L = m + 1: the single candidate always stays, ratio = [0]",
            (last_row_like(rng, 2, 5, 4), 4),
        ),
        Case(
            "silent-candidates",
            "all the attention is on the sinks (R(0) = 0 over the candidates): the ratio is 0 everywhere",
            (silent, 2),
            "guard the division: if R(0) == 0 over the candidates, return zeros.",
        ),
    ]
    return grouped(cases, edge=["no-sinks", "one-candidate", "silent-candidates"], adversarial=["sink-dominated"])


def recency_keep_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``recency_keep(last_row (H, L), sinks, threshold)``."""
    hand = np.array([[0.55, 0.1, 0.05, 0.0, 0.05, 0.2, 0.05, 0.0]], np.float32)
    newest_strong = np.array([[0.5, 0.1, 0.0, 0.05, 0.1, 0.05, 0.2]], np.float32)
    zeros_first = np.array([[0.6, 0.0, 0.0, 0.0, 0.2, 0.2], [0.3, 0.0, 0.0, 0.0, 0.3, 0.4]], np.float32)
    half = np.array([[0.5, 0.0, 0.5, 0.5, 0.5, 0.5]], np.float32)  # R(4) = R(0) / 2 over the candidates, exactly
    row = last_row_like(rng, 4, 48, 4)
    cases = [
        Case(
            "hand",
            "one head, L=8, m=3, T=0.05: evicting position 3 (0.0) loses nothing, position 4 (0.05) too loses 2.8%, "
            "position 5 (0.2) as well would lose 76%: e* = 2",
            (hand, 3, 0.05),
            "kept = the sinks [0, m) then the candidates [m + e*, L): here [0, 1, 2] + [5, 6, 7].",
        ),
        Case(
            "sink-dominated",
            "3 heads, L=64, m=4, the sinks take over 95% of the attention, T = 0.01",
            (last_row_like(rng, 3, 64, 4, sink_mass=(0.95, 0.99)), 4, 0.01),
            "the sinks are kept but out of the norm: compute the curve on last_row[:, m:] only.",
        ),
        Case("typical", "4 heads, L=48, m=4, the paper's T = 0.01", (row, 4, 0.01)),
        Case("loose", "the same heads at T = 0.3", (row, 4, 0.3)),
        Case(
            "zero-threshold",
            "2 heads, L=6, m=1; candidates 1..3 get no attention at all, T = 0: losing nothing allows e* = 3",
            (zeros_first, 1, 0.0),
            "the rule is ratio(e) <= T (less than OR EQUAL): evicting zero-attention candidates loses exactly 0.",
        ),
        Case(
            "exact-threshold",
            "L=6, m=1, ratio(4) is exactly 0.5 and T = 0.5: equality counts as allowed",
            (half, 1, 0.5),
            "use <= threshold, not < threshold.",
        ),
        Case(
            "almost-everything",
            "L=7, m=2, T = 0.9, the newest candidate is the strongest: every candidate but the newest may go",
            (newest_strong, 2, 0.9),
            "e ranges over 0 .. n-1: the newest candidate, position L - 1, is always kept.",
        ),
    ]
    return grouped(
        cases, edge=["zero-threshold", "almost-everything"], adversarial=["sink-dominated", "exact-threshold"]
    )


def _recent_heavy(length: int, sinks: int, power: float, heads: int = 2) -> np.ndarray:
    """``(heads, length)`` float32 rows: half the attention on the sinks, the rest growing with recency as
    ``(k + 1) ** power`` over the candidates (each head a little different), like a real layer."""
    cand = (np.arange(1, length - sinks + 1, dtype=np.float64)[None, :] ** power) * np.linspace(1.0, 1.5, heads)[
        :, None
    ]
    rows = np.concatenate([np.full((heads, sinks), 0.5 / max(sinks, 1)), 0.5 * cand / cand.sum(1, keepdims=True)], 1)
    return rows.astype(np.float32)


def model_budget_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``model_budget(last_rows (layers, H, L), sinks, threshold, full_layers)``."""
    hand = np.stack([_recent_heavy(10, 2, power) for power in (1.0, 2.0, 3.0, 1.5)])
    typical = np.stack([last_row_like(rng, 3, 40, 4) for _ in range(6)])
    cases = [
        Case(
            "hand",
            "4 layers, 2 heads, L=10, m=2, T=0.05, full layers (0, 1); newer candidates get more attention",
            (hand, 2, 0.05, (0, 1)),
            "layers 0 and 1 keep everything (budget 1.0); layers 2 and 3 keep (m + n - e*) / L; the mean is over "
            "all 4 layers.",
        ),
        Case(
            "typical",
            "6 layers, 3 heads, L=40, m=4, the paper's T = 0.01 and full layers (0, 1)",
            (typical, 4, 0.01, (0, 1)),
        ),
        Case("loose", "the same layers at T = 0.3", (typical, 4, 0.3, (0, 1))),
        Case(
            "other-full-layers",
            "full layers (0, 1, 4): any listed layer is kept whole, not only the first two",
            (typical, 4, 0.3, (0, 1, 4)),
            "test `layer in full_layers` for every layer.",
        ),
        Case("no-full-layers", "full_layers = (): every layer is pruned", (typical, 4, 0.3, ())),
    ]
    return grouped(cases, edge=["no-full-layers"], adversarial=["other-full-layers"])


def _with_sink(rng: np.random.Generator, queries: np.ndarray, keys: np.ndarray, strength: float = 1.5) -> np.ndarray:
    """Keys whose position 0 is an attention sink (about half the last row's attention, as in real models):
    aligned with the mean last query of its KV head's group."""
    keys = keys.copy()
    groups = queries.shape[0] // keys.shape[0]
    mean_q = queries[:, -1, :].reshape(keys.shape[0], groups, -1).mean(axis=1)
    keys[:, 0, :] = strength * mean_q / np.linalg.norm(mean_q, axis=1, keepdims=True) * np.sqrt(keys.shape[2])
    return keys.astype(np.float32)


def decide_layer_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for the capstone ``decide_layer(queries (Hq, r, D), keys (Hkv, L, D), threshold, sinks, layer)``."""
    cases = []
    for name, about, params in [
        (
            "layer-0",
            "layer 0 (Hq=4, Hkv=2, L=24, T=0.3): a full layer, every position stays although T=0.3 would prune",
            (4, 2, 1, 24, 8, 0.3, 4, 0),
        ),
        ("no-sinks", "m=0, no GQA, layer 4: every position is a candidate", (4, 4, 1, 30, 8, 0.3, 0, 4)),
        ("mha", "4 heads without GQA, L=32, m=4, T=0.05, layer 2", (4, 4, 1, 32, 8, 0.05, 4, 2)),
        (
            "smollm2",
            "SmolLM2's GQA shape (Hq=9, Hkv=3), L=48, m=4, the paper's T=0.01, layer 7",
            (9, 3, 1, 48, 16, 0.01, 4, 7),
        ),
        ("layer-1", "layer 1 is a full layer too", (6, 2, 1, 40, 8, 0.3, 4, 1)),
        ("loose", "T=0.3, layer 3: most candidates go", (6, 2, 1, 40, 8, 0.3, 4, 3)),
        (
            "several-rows",
            "queries of the last r=4 positions are given; the paper reads only the LAST one (T=0.3, layer 5)",
            (6, 2, 4, 40, 8, 0.3, 4, 5),
        ),
        ("gqa-groups", "", ()),
    ]:
        if name == "gqa-groups":
            q, k = gqa_trap(rng)
            cases.append(
                Case(
                    name,
                    "Hq=4, Hkv=2, T=0.05, layer 3: KV head 0 serves query heads 0 and 1 and holds their recent keys",
                    (q, k, 0.05, 4, 3),
                    "query head h reads KV head h // G (np.repeat(keys, G, axis=0)).",
                )
            )
            continue
        hq, hkv, rows, length, dim, threshold, sinks, layer = params
        q = (2.0 * rng.normal(size=(hq, rows, dim))).astype(np.float32)
        k = _with_sink(rng, q, rng.normal(size=(hkv, length, dim)).astype(np.float32))
        cases.append(Case(name, about, (q, k, threshold, sinks, layer)))
    return grouped(cases, edge=["layer-0", "no-sinks", "layer-1"], adversarial=["several-rows", "gqa-groups"])
