"""Step 5 of the generation skeleton (:mod:`refreekv_edu.integration`): the next token from logits, and the
decode loop.

:class:`Sampler` picks a token from ``(vocab,)`` numpy logits (greedy at temperature 0, else seeded sampling with
top-p); :func:`decode` runs the loop through a compacted cache. Sampling happens in numpy for every backend, so
equal logits give equal tokens on torch and MLX. Numpy and the standard library only.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable

import numpy as np

from .generate import check_sampling


class Sampler:
    """Next token from ``(vocab,)`` numpy logits: argmax at ``temperature == 0``, else softmax sampling at that
    temperature (restricted to the smallest set of tokens holding ``top_p`` of the mass), seeded by ``seed``.

    Sampling happens in numpy for every backend, so equal logits give equal tokens on torch and MLX.
    """

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> None:
        check_sampling({"temperature": temperature, "seed": seed})
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64)
        if self.temperature == 0.0:
            return int(np.argmax(logits))
        z = logits / self.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if self.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            sorted_probs = probs[order]
            outside = np.cumsum(sorted_probs) - sorted_probs > self.top_p  # drop tokens once top_p is covered
            probs[order[outside]] = 0.0
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))


def decode(
    forward: Callable[[int], np.ndarray],
    last_logits: np.ndarray,
    sampler: Callable[[np.ndarray], int],
    max_new_tokens: int,
    eos: Iterable[int] = (),
    progress: bool = False,
) -> tuple[list[int], np.ndarray]:
    """Step 5: sample up to ``max_new_tokens`` tokens, the first from ``last_logits``, each next one after ``forward``.

    Returns:
        ``(tokens, first_logits)``: the generated ids (ending with the EOS id when one came) and the ``(vocab,)``
        float32 logits of the first decode step, i.e. the first prediction through the compacted cache; with
        ``max_new_tokens == 1`` or an EOS first there is none and ``last_logits`` are returned.
    """
    eos = set(eos)
    steps: Iterable[int] = range(max_new_tokens)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="decode", leave=False)
    tokens: list[int] = []
    logits, first_logits = last_logits, None
    for step in steps:
        token = sampler(logits)
        tokens.append(token)
        if token in eos or step == max_new_tokens - 1:
            break
        logits = forward(token)
        if first_logits is None:
            first_logits = logits
    return tokens, np.asarray(last_logits if first_logits is None else first_logits, dtype=np.float32)
