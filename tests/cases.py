"""Named input cases shared by the reference tests and the backend conformance suite.

Each case is ``(queries (Hq, w, D), keys (Hkv, L, D))`` in float32, chosen to hit one
way an implementation can go wrong: GQA grouping, exact ties, zero attention, softmax
underflow (very peaked), near-uniform attention (very flat), tiny prompts.
"""

from __future__ import annotations

import numpy as np


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_case(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "gqa":
        return _rand(rng, 6, 8, 16), _rand(rng, 2, 50, 16)
    if name == "mha":
        return _rand(rng, 4, 8, 16), _rand(rng, 4, 40, 16)
    if name == "gqa_wide":  # G = 4, several blocks of 64/128 positions
        return _rand(rng, 8, 8, 32), _rand(rng, 2, 333, 32)
    if name == "ties":  # identical key rows give exactly equal scores -> the older one goes first
        q, k = _rand(rng, 4, 8, 16), _rand(rng, 2, 48, 16)
        k[:, 10:30] = k[:, 10:11]
        k[:, 30:38] = 0.0
        return q, k
    if name == "zeros":  # zero queries -> uniform attention, every candidate ties
        return np.zeros((4, 8, 16), np.float32), _rand(rng, 2, 30, 16)
    if name == "peaked":  # huge logits: softmax underflows to exact zeros except a few keys
        k = _rand(rng, 2, 64, 16)
        q = np.repeat(k[:, [5, 17]] * 40.0, 2, axis=0)  # (4, 2, 16) aimed at keys 5 and 17
        q = np.concatenate([q] * 4, axis=1)  # (4, 8, 16)
        return q.astype(np.float32), k
    if name == "flat":  # tiny logits: attention almost uniform
        return _rand(rng, 4, 8, 16, scale=1e-3), _rand(rng, 2, 60, 16, scale=1e-3)
    if name == "short":  # L < w: nothing is a candidate
        return _rand(rng, 4, 5, 16), _rand(rng, 2, 5, 16)
    if name == "equal":  # L == w
        return _rand(rng, 4, 8, 16), _rand(rng, 2, 8, 16)
    if name == "one_candidate":  # n = 1
        return _rand(rng, 4, 8, 16), _rand(rng, 2, 9, 16)
    raise KeyError(name)


CASES = ("gqa", "mha", "gqa_wide", "ties", "zeros", "peaked", "flat", "short", "equal", "one_candidate")
