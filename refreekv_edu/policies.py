"""Eviction policies: :class:`ReFreeKV` (threshold-free), :class:`FixedBudget` (baselines), :class:`FullCache`.

All three share one interface, ``decide_layer(queries, keys) -> LayerDecision``, and one
pipeline, :meth:`Policy.decide_layer`, which is the whole ReFreeKV algorithm read top to
bottom (steps 1-7 of the design). The policies differ only in step 6, *how many*
candidates to evict (:meth:`Policy.num_evicted`):

- ReFreeKV: the largest count whose loss of attention norm stays within the threshold;
- FixedBudget: whatever keeps a fixed share of the prompt;
- FullCache: none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import Array, Backend, backend_for_arrays, default_scale, get_backend
from .decision import LayerDecision
from .halting import check_threshold, cut_from_ratio, ratio_curve
from .ranking import check_ranking, rank_scores

GQA_MODES = ("group", "expand")


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _dtype_name(x: Any) -> str:
    return str(getattr(x, "dtype", type(x).__name__))


class Policy:
    """What every policy shares: the protected window, the ranking and the GQA mode.

    Subclasses are frozen dataclasses with these fields (plus their own):

    Attributes:
        window: ``w``, the last ``w`` prompt positions, always kept; their queries observe the rest.
        ranking: ``"h2o"`` (default), ``"snapkv"`` or ``"position"``.
        gqa: ``"group"`` (default; one kept set per KV head, frees real memory) or ``"expand"``
            (the official code: one kept set per query head, keys repeated to ``Hq`` heads first).
    """

    window: int
    ranking: str
    gqa: str
    name = "policy"

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, (int, np.integer)) or self.window < 1:
            raise ValueError(f"window must be an int >= 1 (the paper uses 8), got {self.window!r}")
        check_ranking(self.ranking)
        if self.gqa not in GQA_MODES:
            raise ValueError(f"unknown gqa mode {self.gqa!r}; choose one of: {', '.join(GQA_MODES)}")

    @property
    def threshold(self) -> float | None:
        """The halting threshold (``None`` for policies that do not halt on the curve)."""
        return None

    @property
    def compresses(self) -> bool:
        """False when the policy never evicts (integrations may then skip the decision pass)."""
        return True

    def num_evicted(self, ratio: np.ndarray, prompt_len: int, window: int) -> int:
        """Step 6: how many candidates each head evicts, given the ratio curve ``(n,)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the algorithm
    def decide_layer(
        self,
        queries: Any,
        keys: Any,
        scale: float | None = None,
        backend: str | Backend = "numpy",
        layer: int | None = None,
    ) -> LayerDecision:
        """Decide which prompt positions one layer keeps.

        Args:
            queries: ``(Hq, m, D)`` post-RoPE queries of the last ``m`` prompt positions (``m >= min(w, L)``;
                only the last ``w`` rows are used). A leading batch axis of size 1 is accepted.
            keys: ``(Hkv, L, D)`` post-RoPE keys of the whole prompt (batch axis of size 1 accepted).
            scale: attention scale; ``None`` means ``1/sqrt(D)``.
            backend: ``"numpy"`` (reference), ``"torch"``, ``"mlx"``, ``"auto"`` (by the arrays' type) or a
                :class:`~refreekv_edu.backend.Backend`.
            layer: the layer index, recorded in the decision.

        Returns:
            A :class:`~refreekv_edu.decision.LayerDecision`; ``kept`` is ``(Hkv, n_kept)`` for ``gqa="group"``
            and ``(Hq, n_kept)`` for ``gqa="expand"``.
        """
        be = backend_for_arrays(queries, keys) if backend == "auto" else get_backend(backend)
        queries, keys = self._validate(queries, keys, be)
        num_q_heads, _, head_dim = _shape_of(queries)
        num_kv_heads, length, _ = _shape_of(keys)
        groups = num_q_heads // num_kv_heads
        owners = num_kv_heads if self.gqa == "group" else num_q_heads
        scale = default_scale(head_dim) if scale is None else float(scale)

        # Step 1 - protect the window: the last w positions are always kept; the rest are candidates.
        window = min(self.window, length)
        n = length - window
        window_pos = np.arange(n, length, dtype=np.int64)
        if n <= 0:
            return self._decision(
                kept=np.broadcast_to(window_pos, (owners, window)).copy(),
                order=np.zeros((owners, 0), np.int64),
                scores=np.zeros((owners, 0), np.float32),
                last_attn=np.zeros((num_q_heads, 0), np.float32),
                curve=np.zeros(0, np.float32),
                n_evicted=0,
                length=length,
                window=window,
                layer=layer,
                groups=groups,
            )

        # Step 2 - window attention P = softmax(scale * Q K^T + causal mask), reduced on the fly to
        # the window rows' column sums and the last row, both (Hq, n). Query head h reads KV head h // G.
        q = queries[:, queries.shape[1] - window :, :]  # the observation window: the last w queries
        col_sum, last_attn = be.window_scores(q, keys, scale, window)

        # Step 3 - rank the candidates, least important first (stable sort: ties evict older first).
        scores = rank_scores(self.ranking, col_sum, be)  # (Hq, n)
        if self.gqa == "group" and groups > 1:
            scores = be.group_sum(scores, groups)  # (Hkv, n): a KV head ranks by its G query heads together
        order = be.argsort(scores, axis=-1)  # (H, n)

        # Step 4 - the halting signal a = P[:, w-1, :n], ordered by each query head's (KV head's) order.
        order_q = be.repeat_heads(order, groups) if order.shape[0] != num_q_heads else order
        a_sorted = be.take_along_axis(last_attn, order_q, axis=-1)  # (Hq, n)

        # Step 5 - the curve: R(e) = mean_h sqrt(sum_{k>=e} a_sorted[h, k]^2), ratio(e) = (R(0) - R(e)) / R(0).
        last_attn_np = be.to_numpy(last_attn).astype(np.float32)
        ratio = ratio_curve(a_sorted, be, float(last_attn_np.max()))

        # Step 6 - how many to evict (ReFreeKV: the largest e with ratio(e) <= threshold).
        n_evicted = self.num_evicted(ratio, length, window)

        # Step 7 - keep the candidates not among the e* least important, plus the window, in position order.
        order_np = be.to_numpy(order).astype(np.int64)
        kept_candidates = np.sort(order_np[:, n_evicted:], axis=1)
        kept = np.concatenate([kept_candidates, np.broadcast_to(window_pos, (owners, window))], axis=1)
        return self._decision(
            kept=kept,
            order=order_np,
            scores=be.to_numpy(scores).astype(np.float32),
            last_attn=last_attn_np,
            curve=ratio,
            n_evicted=n_evicted,
            length=length,
            window=window,
            layer=layer,
            groups=groups,
        )

    # ------------------------------------------------------------------ helpers
    def _decision(self, *, kept, order, scores, last_attn, curve, n_evicted, length, window, layer, groups):
        return LayerDecision(
            kept=kept,
            order=order,
            scores=scores,
            last_attn=last_attn,
            curve=curve,
            n_evicted=int(n_evicted),
            prompt_len=int(length),
            window=int(window),
            threshold=self.threshold,
            policy=self.name,
            ranking=self.ranking,
            gqa=self.gqa,
            layer=layer,
            group_size=int(groups),
        )

    def _validate(self, queries: Any, keys: Any, be: Backend) -> tuple[Array, Array]:
        """Check shapes, dtypes and values; drop a batch axis of size 1; convert to float32 arrays of ``be``.

        Raises ValueError/TypeError saying what was wrong and what to do.
        """
        for label, x in (("queries", queries), ("keys", keys)):
            if not hasattr(x, "shape"):
                raise TypeError(f"{label} must be an array (numpy, torch or mlx), got {type(x).__name__}")
            if "float" not in _dtype_name(x):
                raise TypeError(f"{label} must hold floating-point values, got dtype {_dtype_name(x)}")
        if len(queries.shape) == 4 or len(keys.shape) == 4:
            for label, x in (("queries", queries), ("keys", keys)):
                if len(x.shape) == 4 and x.shape[0] != 1:
                    raise ValueError(
                        f"{label} has batch size {x.shape[0]}; decisions are made per sequence (batch 1). "
                        "Call decide_layer once per sequence."
                    )
            queries = queries[0] if len(queries.shape) == 4 else queries
            keys = keys[0] if len(keys.shape) == 4 else keys
        if len(queries.shape) != 3 or len(keys.shape) != 3:
            raise ValueError(
                f"expected queries (Hq, m, D) and keys (Hkv, L, D); got shapes {_shape_of(queries)} and {_shape_of(keys)}"
            )
        hq, m, d = _shape_of(queries)
        hkv, length, dk = _shape_of(keys)
        if d != dk:
            raise ValueError(f"head dim mismatch: queries have D={d}, keys have D={dk}")
        if hkv == 0 or hq % hkv:
            raise ValueError(
                f"query heads ({hq}) must be a multiple of key/value heads ({hkv}) (GQA groups); "
                "did you pass (L, H, D) instead of (H, L, D)?"
            )
        if length == 0:
            raise ValueError("keys hold no positions (L = 0); there is nothing to decide")
        if m < min(self.window, length) or m > length:
            raise ValueError(
                f"queries must hold the last m positions with min(window, L)={min(self.window, length)} <= m <= L={length}, got m={m}"
            )
        queries, keys = be.asarray(queries), be.asarray(keys)  # float32 on this backend from here on
        if not be.all_finite(queries) or not be.all_finite(keys):
            raise ValueError("queries or keys contain NaN or inf; check the model's prefill (overflow in float16?)")
        return queries, keys


@dataclass(frozen=True)
class ReFreeKV(Policy):
    """The threshold-free policy: evict while the attention norm lost stays within ``threshold``.

    The same ``threshold`` (default 0.05, the paper's) serves every input, layer and model; the budget
    each layer ends up with is an *output*, not an input.

    Example:
        >>> import numpy as np, refreekv_edu as rk
        >>> rng = np.random.default_rng(0)
        >>> q, k = rng.normal(size=(4, 8, 16)), rng.normal(size=(2, 64, 16))     # Hq=4, Hkv=2, L=64, D=16
        >>> dec = rk.ReFreeKV().decide_layer(q.astype("float32"), k.astype("float32"))
        >>> dec.kept.shape[0], bool(dec.kept[0, -1] == 63)                        # per KV head; window kept
        (2, True)
    """

    threshold: float = 0.05
    window: int = 8
    ranking: str = "h2o"
    gqa: str = "group"
    name = "refreekv"

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        super().__post_init__()

    def num_evicted(self, ratio: np.ndarray, prompt_len: int, window: int) -> int:
        return cut_from_ratio(ratio, self.threshold)


@dataclass(frozen=True)
class FixedBudget(Policy):
    """A fixed-budget baseline: every layer keeps ``ceil(budget * L)`` rows (window included, at least one candidate).

    ``FixedBudget(budget=1.0)`` runs the whole pipeline and evicts nothing.
    """

    budget: float = 0.5
    ranking: str = "h2o"
    window: int = 8
    gqa: str = "group"
    name = "fixed"

    def __post_init__(self) -> None:
        try:
            value = float(self.budget)
        except (TypeError, ValueError):
            raise TypeError(f"budget must be a number in (0, 1], got {self.budget!r}") from None
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise ValueError(
                f"budget must lie in (0, 1] (the share of the prompt's KV rows to keep), got {self.budget!r}"
            )
        object.__setattr__(self, "budget", value)
        super().__post_init__()

    def num_evicted(self, ratio: np.ndarray, prompt_len: int, window: int) -> int:
        n = prompt_len - window
        keep_candidates = min(n, max(1, math.ceil(self.budget * prompt_len - 1e-9) - window))
        return n - keep_candidates


@dataclass(frozen=True)
class FullCache(Policy):
    """Keep everything (the reference every compressed run is compared with)."""

    window: int = 8
    ranking: str = "h2o"
    gqa: str = "group"
    name = "full"

    @property
    def compresses(self) -> bool:
        return False

    def num_evicted(self, ratio: np.ndarray, prompt_len: int, window: int) -> int:
        return 0
