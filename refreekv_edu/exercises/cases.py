"""The graded inputs of every exercise: a small readable case first, then random ones, then traps.

Each ``*_cases(rng)`` returns a list of :class:`~refreekv_edu.exercises.grading.Case`, each in a group (basic, edge, adversarial). Traps are
built on purpose so that a typical mistake gives a visibly wrong answer (ties that an unstable sort
breaks the wrong way, attention tails that ``total - prefix`` turns negative, a threshold hit exactly...).
"""

from __future__ import annotations

import numpy as np

from .grading import Case, grouped

# --------------------------------------------------------------------------------------------- helpers


def attention_like(rng: np.random.Generator, heads: int, n: int, spare: int = 8) -> np.ndarray:
    """``(heads, n)`` float32 non-negative rows that look like attention on ``n`` candidates (rows sum to < 1)."""
    weights = rng.dirichlet(np.full(n + spare, 0.3), size=heads)  # spiky, like real attention
    return weights[:, :n].astype(np.float32)


def random_order(rng: np.random.Generator, heads: int, n: int) -> np.ndarray:
    """``(heads, n)`` int64: a random permutation of the candidates per head (least important first)."""
    return np.argsort(rng.random((heads, n)), axis=1, kind="stable").astype(np.int64)


def qk(rng: np.random.Generator, heads: int, window: int, length: int, dim: int, spread: float = 1.0):
    """Random float32 queries ``(heads, window, dim)`` and keys ``(heads, length, dim)``."""
    q = (spread * rng.normal(size=(heads, window, dim))).astype(np.float32)
    k = rng.normal(size=(heads, length, dim)).astype(np.float32)
    return q, k


def _tail_goes_negative(a: np.ndarray, order: np.ndarray) -> bool:
    """True when ``total - prefix`` (instead of a reverse scan) gives a negative tail in float32 and in float64."""
    for dtype in (np.float32, np.float64):
        sq = np.take_along_axis(a, order, axis=1).astype(dtype) ** 2
        tail = sq.sum(axis=1, keepdims=True) - np.cumsum(sq, axis=1) + sq
        if not (tail < 0).any():
            return False
    return True


def gqa_trap(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hq=4, Hkv=2: KV head 0 holds 6 recent keys aligned with its own query heads (0 and 1), KV head 1 is
    nearly uniform. Reading the wrong KV head (interleaved heads) changes the signal completely."""
    q = (2.0 * rng.normal(size=(4, 1, 8))).astype(np.float32)
    k = 0.3 * rng.normal(size=(2, 32, 8))
    mean_q = q[:2, -1, :].mean(axis=0)
    k[0, -6:, :] += 2.0 * mean_q / np.linalg.norm(mean_q) * np.sqrt(8)
    return q, k.astype(np.float32)


# --------------------------------------------------------------------------------------------- exercises


def window_scores_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``window_scores(queries (Hq, w, D), keys (Hq, L, D), scale, window)``."""
    cases = []
    q, k = qk(rng, 1, 2, 5, 2)
    cases.append(
        Case(
            "tiny",
            "1 head, w=2, L=5 (n=3 candidates), D=2: small enough to check by hand",
            (q, k, 1 / np.sqrt(2), 2),
            "write out the (w, L) logits, mask the entries above the diagonal of the window, softmax each row.",
        )
    )
    q, k = qk(rng, 4, 8, 40, 16)
    cases.append(Case("typical", "Hq=4, w=8, L=40, D=16, scale 1/sqrt(D)", (q, k, 0.25, 8)))
    q, k = qk(rng, 2, 4, 12, 8)
    cases.append(
        Case(
            "other-scale",
            "Hq=2, w=4, L=12, with a non-default scale 0.7",
            (q, k, 0.7, 4),
            "multiply the logits Q K^T by the scale argument before the softmax (do not assume 1/sqrt(D)).",
        )
    )
    q, k = qk(rng, 3, 1, 9, 8)
    cases.append(Case("window-1", "w=1: only the last query observes; col_sum equals last_row", (q, k, 0.35, 1)))
    q, k = qk(rng, 2, 6, 7, 4)
    cases.append(Case("one-candidate", "L = w + 1: a single candidate (n=1)", (q, k, 0.5, 6)))
    q, k = qk(rng, 2, 4, 16, 8, spread=40.0)
    cases.append(
        Case(
            "large-logits",
            "logits in the hundreds: exp() overflows unless the softmax subtracts the row max",
            (q, k, 0.35, 4),
            "compute softmax as exp(x - max(x)) / sum(exp(x - max(x))) along the key axis.",
        )
    )
    return grouped(cases, edge=["other-scale", "window-1", "one-candidate"], adversarial=["large-logits"])


def snapkv_pool_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``snapkv_pool(scores (H, n), kernel)``."""
    peaks = np.zeros((1, 12), np.float32)
    peaks[0, 5] = 1.0
    peaks[0, 0] = 0.5
    cases = [
        Case(
            "one-peak",
            "one head, a peak at 5 and a smaller one at 0, kernel 7: each spreads 3 positions each way",
            (peaks, 7),
            "out[i] = max of scores[i-3 .. i+3], clipped to the array: a peak at 5 lifts positions 2..8.",
        ),
        Case("typical", "Hq=3, n=40 random scores, kernel 7", (attention_like(rng, 3, 40) * 8, 7)),
        Case("kernel-3", "kernel 3: the window is i-1 .. i+1", (attention_like(rng, 2, 15) * 8, 3)),
        Case(
            "short",
            "n=4 < kernel 7: every window is clipped at both ends",
            (attention_like(rng, 2, 4) * 8, 7),
            "clip each window to [0, n) instead of padding with zeros or shrinking the output.",
        ),
        Case("kernel-1", "kernel 1 leaves the scores unchanged", (attention_like(rng, 2, 9) * 8, 1)),
    ]
    return grouped(cases, edge=["kernel-3", "kernel-1"], adversarial=["short"])


def expand_kv_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``expand_kv(keys (Hkv, L, D), group_size)``."""
    # KV head h is filled with the value h, so the output shows which KV head each query head reads.
    labelled = np.arange(2, dtype=np.float32)[:, None, None] + np.zeros((2, 3, 2), np.float32)
    cases = [
        Case(
            "labelled",
            "Hkv=2, G=3, each KV head filled with its own index: the output heads must read 0,0,0,1,1,1",
            (labelled, 3),
        ),
        Case(
            "smollm2",
            "SmolLM2's shape: Hkv=3 KV heads serve Hq=9 query heads (G=3)",
            (rng.normal(size=(3, 10, 4)).astype(np.float32), 3),
        ),
        Case(
            "no-gqa",
            "G=1 (multi-head attention): nothing to repeat",
            (rng.normal(size=(4, 6, 4)).astype(np.float32), 1),
        ),
        Case("multi-query", "Hkv=1 (multi-query attention), G=4", (rng.normal(size=(1, 5, 3)).astype(np.float32), 4)),
    ]
    return grouped(cases, edge=["no-gqa", "multi-query"], adversarial=["labelled"])


def group_scores_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``group_scores(scores (Hq, n), group_size)``."""
    labelled = np.repeat(np.arange(6, dtype=np.float32)[:, None], 4, axis=1)  # query head h scores h everywhere
    cases = [
        Case(
            "labelled",
            "Hq=6, G=2, query head h scores h: KV head 0 sums heads 0+1=1, head 1 sums 2+3=5, head 2 sums 4+5=9",
            (labelled, 2),
        ),
        Case("smollm2", "Hq=9 query heads in 3 groups of G=3", (attention_like(rng, 9, 20), 3)),
        Case("no-gqa", "G=1: every query head is its own KV head", (attention_like(rng, 4, 10), 1)),
        Case("multi-query", "Hq=4, G=4: one KV head sums all four", (attention_like(rng, 4, 10), 4)),
    ]
    return grouped(cases, edge=["no-gqa", "multi-query"], adversarial=["labelled"])


def rank_candidates_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``rank_candidates(scores (H, n))``."""
    small = np.array([[0.3, 0.1, 0.3, 0.05, 0.2]], np.float32)
    ties = rng.integers(0, 4, size=(3, 300)).astype(np.float32)  # few distinct values: long runs of ties
    cases = [
        Case(
            "small",
            "one head, 5 candidates with one tie (positions 0 and 2 both score 0.3)",
            (small,),
            "least important first: the answer starts with the lowest score; the tie puts position 0 before 2.",
        ),
        Case("typical", "Hq=4, n=50 distinct random scores", (attention_like(rng, 4, 50),)),
        Case(
            "ties",
            "3 heads, 300 candidates with only 4 distinct scores: ties must keep position order (older first)",
            (ties,),
            "use a stable sort (np.argsort(..., kind='stable')); the default quicksort reorders equal scores.",
        ),
        Case(
            "one-candidate",
            "n = 1 in each of 2 heads: the only order is [0]",
            (np.array([[0.2], [0.0]], np.float32),),
            "the order has the same shape as the scores: (H, n), here (2, 1).",
        ),
    ]
    return grouped(cases, edge=["one-candidate"], adversarial=["ties"])


def halting_curve_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``halting_curve(last_attn (H, n), order (H, n))``."""
    cases = [
        Case(
            "hand",
            "one head, a = [0.1, 0.0, 0.7, 0.2], order [1, 0, 3, 2]: ratio = 1 - sqrt(tail of a^2) / sqrt(0.54)",
            (np.array([[0.1, 0.0, 0.7, 0.2]], np.float32), np.array([[1, 0, 3, 2]], np.int64)),
            "a_sorted = [0.0, 0.1, 0.2, 0.7]; R(0) = sqrt(0 + 0.01 + 0.04 + 0.49); R(1) = sqrt(0.54) too; R(2) = sqrt(0.53) ...",
        ),
    ]
    a = attention_like(rng, 3, 30)
    cases.append(Case("typical", "3 heads, 30 candidates, each head with its own order", (a, random_order(rng, 3, 30))))
    a = attention_like(rng, 4, 20)
    a[0] *= 10.0  # one head with a much larger norm than the others
    cases.append(
        Case(
            "uneven-heads",
            "4 heads, one with 10x the attention mass: average the norms, then take the ratio",
            (a, random_order(rng, 4, 20)),
            "ratio(e) = (R(0) - R(e)) / R(0) with R(e) = mean over heads of r_h(e), not the mean of per-head ratios.",
        )
    )
    for _ in range(200):  # build a tail that `total - prefix` really drives below zero (the trap is not hypothetical)
        a = attention_like(rng, 6, 64)
        order = random_order(rng, 6, 64)
        np.put_along_axis(a, order[:, -12:], 0.0, axis=1)  # the 12 top-ranked candidates get no last-row attention
        if _tail_goes_negative(a, order):
            break
    cases.append(
        Case(
            "zero-tail",
            "6 heads, 64 candidates whose 12 most important get zero last-row attention: the tail sums "
            "are exactly 0 at the end",
            (a, order),
            "a tail sum of non-negative squares can never be negative: compute it with a reverse scan, "
            "np.flip(np.cumsum(np.flip(sq, 1), 1), 1).",
        )
    )
    cases.append(
        Case(
            "silent-heads",
            "no candidate gets any attention, so R(0) = 0: the ratio is defined as 0 everywhere",
            (np.zeros((2, 5), np.float32), random_order(rng, 2, 5)),
            "guard the division: if R(0) == 0 return zeros (0/0 would be NaN).",
        )
    )
    return grouped(cases, edge=["uneven-heads", "silent-heads"], adversarial=["zero-tail"])


def halting_cut_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``halting_cut(last_attn (H, n), order (H, n), threshold)``."""
    hand = (np.array([[0.1, 0.0, 0.7, 0.2]], np.float32), np.array([[1, 0, 3, 2]], np.int64))
    zeros_first = np.array([[0.0, 0.0, 0.0, 0.5, 0.3, 0.2]], np.float32)
    half = np.array([[0.0, 1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0, 1.0]], np.float32)  # R(4) = R(0) / 2 exactly
    a = attention_like(rng, 3, 40)
    order = random_order(rng, 3, 40)
    cases = [
        Case(
            "hand",
            "the docstring example: a = [0.1, 0.0, 0.7, 0.2], order [1, 0, 3, 2], threshold 0.02 -> e* = 2",
            (*hand, 0.02),
            "evicting 0.0 and 0.1 loses 0.9% of the norm (<= 2%); evicting 0.2 too would lose 4.7%.",
        ),
        Case("typical", "3 heads, 40 candidates, threshold 0.05 (the paper's default)", (a, order, 0.05)),
        Case("larger-threshold", "the same heads, threshold 0.3", (a, order, 0.3)),
        Case(
            "zero-threshold",
            "three candidates with zero attention, threshold 0: losing nothing allows e* = 3",
            (zeros_first, np.arange(6)[None, :].astype(np.int64), 0.0),
            "the rule is ratio(e) <= threshold (less than OR EQUAL): evicting zero-attention candidates loses exactly 0.",
        ),
        Case(
            "exact-threshold",
            "ratio(4) is exactly 0.5 and the threshold is 0.5: equality counts as allowed",
            (half, np.tile(np.arange(5), (2, 1)).astype(np.int64), 0.5),
            "use <= threshold, not < threshold.",
        ),
        Case(
            "almost-everything",
            "threshold 0.9: everything but the strongest candidate may go, and one always stays",
            (*hand, 0.9),
            "e ranges over 0 .. n-1 only: at least one candidate always stays.",
        ),
        Case(
            "silent-heads",
            "no candidate gets any attention (R(0) = 0): nothing can be lost, so e* = n - 1",
            (np.zeros((2, 5), np.float32), np.tile(np.arange(5), (2, 1)).astype(np.int64), 0.05),
            "when R(0) == 0 the ratio is defined as 0 for every e (0/0 would be NaN, and NaN <= t is False).",
        ),
        Case(
            "one-candidate",
            "n = 1: nothing can be evicted (e* = 0)",
            (np.array([[0.4]], np.float32), np.zeros((1, 1), np.int64), 0.05),
        ),
    ]
    return grouped(
        cases,
        edge=["zero-threshold", "almost-everything", "silent-heads", "one-candidate"],
        adversarial=["exact-threshold"],
    )


def kept_positions_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``kept_positions(order (H, n), n_evicted, prompt_len, window)``."""
    small = np.array([[2, 0, 3, 1]], np.int64)
    order = random_order(rng, 3, 24)
    cases = [
        Case(
            "small",
            "one head, L=6, w=2, order [2, 0, 3, 1], evict 2 -> keep candidates {1, 3} and the window {4, 5}",
            (small, 2, 6, 2),
            "keep order[:, e:] (the most important), sorted, then append the window positions L-w .. L-1.",
        ),
        Case("typical", "3 heads, L=32, w=8, evict 10 of 24 candidates per head", (order, 10, 32, 8)),
        Case("evict-none", "e* = 0: keep every position", (order, 0, 32, 8)),
        Case("evict-most", "e* = n - 1: one candidate plus the window", (order, 23, 32, 8)),
        Case("window-1", "w = 1: only the last position is protected", (random_order(rng, 2, 9), 4, 10, 1)),
    ]
    return grouped(cases, edge=["evict-none", "window-1"], adversarial=["evict-most"])


def official_script_layer_cases(rng: np.random.Generator) -> list[Case]:
    """Cases for ``official_script_layer(queries (Hq, w, D), keys (Hkv, L, D), threshold, window)``."""
    cases = []
    for name, about, (hq, hkv, length, dim, window, threshold) in [
        ("mha", "4 heads without GQA, L=24, w=4, threshold 0.05", (4, 4, 24, 8, 4, 0.05)),
        ("smollm2", "SmolLM2's GQA shape (Hq=9, Hkv=3), L=48, w=8, threshold 0.05", (9, 3, 48, 16, 8, 0.05)),
        ("strict", "threshold 0.01: fewer evictions", (6, 2, 40, 8, 8, 0.01)),
        ("loose", "threshold 0.5: most candidates go", (6, 2, 40, 8, 8, 0.5)),
    ]:
        q = rng.normal(size=(hq, window, dim)).astype(np.float32) * 2.0
        k = rng.normal(size=(hkv, length, dim)).astype(np.float32)
        cases.append(Case(name, about, (q, k, threshold, window)))
    q, k = gqa_trap(rng)
    cases.append(
        Case(
            "gqa-groups",
            "Hq=4, Hkv=2, w=1, threshold 0.05: KV head 0 serves query heads 0 and 1 and holds their recent keys",
            (q, k, 0.05, 1),
            "query head h reads KV head h // G (np.repeat(keys, G, axis=0)); sum the scores of each KV head's G heads.",
        )
    )
    return grouped(cases, edge=["strict"], adversarial=["gqa-groups"])
