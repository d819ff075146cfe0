"""Eviction policies: :class:`ReFreeKV` (threshold-free), :class:`FixedBudget` (baselines), :class:`FullCache`.

All three share one interface, ``decide_layer(queries, keys) -> LayerDecision``, and one pipeline,
:meth:`Policy.decide_layer`, which is the whole ReFreeKV algorithm read top to bottom in the paper's
order (arXiv 2502.16886, section 2.2-2.3, Algorithm 1, Appendix B). The policies differ only in
*how many* candidates they evict (:meth:`Policy.num_evicted`):

- ReFreeKV: the largest count whose loss of attention norm stays within the threshold ``T``;
- FixedBudget: whatever keeps a fixed share of the prompt;
- FullCache: none.

The paper's method is the default, ``ReFreeKV()``. Every other configuration is a *named preset* of
the same pipeline (:data:`PRESETS`), built with ``ReFreeKV.preset(name, **overrides)``:

=====================  =========================================================================
preset                 what it is
=====================  =========================================================================
``"paper"``            4 sinks kept and left out of the metric, oldest-first eviction, the last
                       row's L2 norm at T = 1%, layers 0 and 1 never pruned (the default)
``"sinks-in-metric"``  the paper, but the sinks count in the norm: Algorithm 1 read literally
``"h2o-ranking"``      the paper, but ranked by H2O window attention (w = 8): Table 5's ablation
``"official-script"``  the official repository's default script: no sinks, no full layers, the last
                       8 positions protected, H2O ranking, T = 5%
=====================  =========================================================================
"""

# This file stays whole (about 500 lines) on purpose: it is the one algorithm file. The pipeline
# (Policy.decide_layer, read top to bottom in the paper's order), the three policies that differ only in
# num_evicted, and the presets (named field values of ReFreeKV) are read together; splitting them would send
# a reader back and forth between files. Eq. 1 and Eq. 2 themselves live in fused_ops.py (re-exported here),
# which backend.py's default fused ops also import, so that backend.py never imports this file (no cycle).

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .backend import Array, Backend, backend_for_arrays, default_scale, get_backend
from .decision import LayerDecision
from .fused_ops import retained_norms, window_attention  # noqa: F401 - Eq. 1 and 2, re-exported here
from .halting import check_threshold, cut_from_ratio, ratio_curve
from .ranking import WINDOW_RANKINGS, check_ranking, rank_scores

GQA_MODES = ("group", "expand")

#: The named configurations of :class:`ReFreeKV`; each is the same pipeline with other field values.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "threshold": 0.01,
        "sinks": 4,
        "window": 0,
        "ranking": "recency",
        "full_layers": (0, 1),
        "sinks_in_metric": False,
    },
    "sinks-in-metric": {
        "threshold": 0.01,
        "sinks": 4,
        "window": 0,
        "ranking": "recency",
        "full_layers": (0, 1),
        "sinks_in_metric": True,
    },
    "h2o-ranking": {
        "threshold": 0.01,
        "sinks": 4,
        "window": 8,
        "ranking": "h2o",
        "full_layers": (0, 1),
        "sinks_in_metric": False,
    },
    "official-script": {
        "threshold": 0.05,
        "sinks": 0,
        "window": 8,
        "ranking": "h2o",
        "full_layers": (),
        "sinks_in_metric": False,
    },
}

#: Where each preset comes from (shown by ``refreekv-edu info`` and the docs).
PRESET_SOURCES: dict[str, str] = {
    "paper": "arXiv 2502.16886 v3/v4, section 2.2-2.3, Eq. 1-3, Algorithm 1, Appendix B (T = 1%, Table 2)",
    "sinks-in-metric": "Algorithm 1 read literally: the norm over the whole last row, sinks included",
    "h2o-ranking": "Table 5 ablation: attention (H2O) ranking instead of position, at T = 1%",
    "official-script": "the official repository's default script: --method h2o --dynamic --threshold 0.05, window 8",
}


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _dtype_name(x: Any) -> str:
    return str(getattr(x, "dtype", type(x).__name__))


def _check_count(name: str, value: Any, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} ({hint}), got {value!r}")
    return int(value)


def _check_layer(layer: Any) -> int | None:
    """A layer index as an int (numpy integers accepted), or ``None``; a string, bool, float or negative is refused."""
    if layer is None:
        return None
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)) or layer < 0:
        raise ValueError(
            f"layer must be a layer index (an int >= 0, e.g. 5) or None (decide regardless of full_layers), "
            f"got {layer!r} ({type(layer).__name__})"
        )
    return int(layer)


def _check_full_layers(value: Any) -> tuple[int, ...]:
    try:
        layers = tuple(value)
    except TypeError:
        raise TypeError(f"full_layers must be a tuple of layer indices, e.g. (0, 1), got {value!r}") from None
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
            raise ValueError(f"full_layers must hold layer indices >= 0, e.g. (0, 1); got {value!r}")
    return tuple(sorted({int(layer) for layer in layers}))


# --------------------------------------------------------------------------- the policies
class Policy:
    """What every policy shares: sinks, the protected window, full layers, the ranking and the GQA mode.

    Subclasses are frozen dataclasses with these fields (plus their own):

    Attributes:
        sinks: ``m``, the first ``m`` prompt positions (attention sinks): always kept, never candidates.
        window: ``w``, the last ``w`` prompt positions: always kept. A ranking that reads the window's
            attention (``h2o``, ``snapkv``) also uses their queries, so it needs ``w >= 1``.
        ranking: ``"recency"`` (oldest evicted first, one order for all heads), ``"h2o"`` or ``"snapkv"``.
        full_layers: layer indices that keep their whole cache (budget 100%).
        gqa: ``"group"`` (one kept set per KV head, frees real memory) or ``"expand"`` (the official code:
            one kept set per query head, keys repeated to ``Hq`` heads first).
    """

    sinks: int
    window: int
    ranking: str
    full_layers: tuple[int, ...]
    gqa: str
    name = "policy"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sinks", _check_count("sinks", self.sinks, 0, "the paper keeps 4"))
        object.__setattr__(self, "window", _check_count("window", self.window, 0, "the official script uses 8"))
        check_ranking(self.ranking)
        if self.ranking in WINDOW_RANKINGS and self.window < 1:
            raise ValueError(
                f"ranking {self.ranking!r} scores candidates by the window queries' attention, so it needs "
                "window >= 1 (the official script uses 8); use ranking='recency' for window=0"
            )
        object.__setattr__(self, "full_layers", _check_full_layers(self.full_layers))
        if self.gqa not in GQA_MODES:
            raise ValueError(f"unknown gqa mode {self.gqa!r}; choose one of: {', '.join(GQA_MODES)}")

    @property
    def threshold(self) -> float | None:
        """The halting threshold (``None`` for policies that do not halt on the curve)."""
        return None

    @property
    def sinks_in_metric(self) -> bool:
        """Whether the sinks' attention counts in the norm (only the ``"sinks-in-metric"`` ablation)."""
        return False

    @property
    def compresses(self) -> bool:
        """False when the policy never evicts (integrations may then skip the decision pass)."""
        return True

    @property
    def query_rows(self) -> int:
        """How many of the last prompt positions' queries a decision needs: ``w`` for a window ranking, else 1."""
        return self.window if self.ranking in WINDOW_RANKINGS else 1

    def prunes_layer(self, layer: int | None) -> bool:
        """False for the layers in ``full_layers`` (a standalone decision, ``layer=None``, always prunes).

        Raises:
            ValueError: ``layer`` is not ``None`` or an int >= 0 (numpy integers are ints; ``True`` and ``"1"`` are not).
        """
        layer = _check_layer(layer)
        return layer is None or layer not in self.full_layers

    def num_evicted(self, ratio: np.ndarray, prompt_len: int, protected: int) -> int:
        """Eq. 3: how many candidates each head evicts, given ``ratio`` ``(n,)`` and ``protected = m + w`` rows."""
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
            queries: ``(Hq, r, D)`` post-RoPE queries of the last ``r`` prompt positions, ``r >= min(query_rows, L)``
                (only the last ``query_rows`` rows are read: one for the paper). A batch axis of size 1 is accepted.
            keys: ``(Hkv, L, D)`` post-RoPE keys of the whole prompt (batch axis of size 1 accepted).
            scale: attention scale; ``None`` means ``1/sqrt(D)``.
            backend: ``"numpy"`` (reference), ``"torch"``, ``"mlx"``, ``"auto"`` (by the arrays' type) or a
                :class:`~refreekv_edu.backend.Backend`.
            layer: the layer index, an int >= 0 (numpy integers accepted); a layer in ``full_layers`` keeps
                everything (``None``: always decide). A string, a bool, a float or a negative index is refused.

        Returns:
            A :class:`~refreekv_edu.decision.LayerDecision`; ``kept`` is ``(Hkv, n_kept)`` for ``gqa="group"``
            and ``(Hq, n_kept)`` for ``gqa="expand"``.
        """
        layer = _check_layer(layer)
        be = backend_for_arrays(queries, keys) if backend == "auto" else get_backend(backend)
        queries, keys = self._validate(queries, keys, be, scale)
        be = be.next_to(keys)  # arrays the pipeline creates (recency scores, ...) live where the keys live
        num_q_heads, _, head_dim = _shape_of(queries)
        num_kv_heads, length, _ = _shape_of(keys)
        groups = num_q_heads // num_kv_heads
        owners = num_kv_heads if self.gqa == "group" else num_q_heads
        scale = default_scale(head_dim) if scale is None else float(scale)
        everything = np.broadcast_to(np.arange(length, dtype=np.int64), (owners, length)).copy()

        # Step 0 - full layers (Appendix B): layers 0 and 1 keep their whole cache; nothing to compute.
        if not self.prunes_layer(layer):
            return self.full_layer_decision(length, num_q_heads, num_kv_heads, layer)

        # Step 1 - sinks [0, m) and the protected window [L - w, L) are kept; the candidates are [m, L - w).
        sinks = min(self.sinks, length)
        window = min(self.window, length - sinks)
        n = length - sinks - window
        if n <= 0:
            return self._decision(kept=everything, length=length, sinks=sinks, window=window, layer=layer,
                                  groups=groups)

        # Eq. 1 - the attention of the last prompt position over all L keys, a = softmax(scale * q K^T), (Hq, L - w)
        # (be.window_scores: fused_ops.window_attention, or a kernel). A window ranking also sums the other window rows.
        rows = min(self.query_rows, length)
        q = queries[:, queries.shape[1] - rows :, :]
        col_sum, last_row = be.window_scores(q, keys, scale, rows, n_cols=length - window)
        self._check_attention(be, q, keys, col_sum, last_row)
        last_attn = last_row[:, sinks:]  # (Hq, n): the halting signal, on the candidates only

        # Step 2 - rank the candidates, least important first (stable sort: ties evict the older first).
        # Recency gives one order for every head: oldest first, so the newest candidates go last.
        scores = rank_scores(self.ranking, col_sum[:, sinks:], be)  # (Hq, n), higher = more important
        if self.gqa == "group" and groups > 1:
            scores = be.group_sum(scores, groups)  # (Hkv, n): a KV head ranks by its G query heads together
        order = be.argsort(scores, axis=-1)  # (H, n) candidate indices; position = m + index

        # Step 3 - the signal in eviction order, a_sorted[h, k] = a[h, order[h, k]]  (Hq, n).
        order_q = be.repeat_heads(order, groups) if order.shape[0] != num_q_heads else order
        a_sorted = be.take_along_axis(last_attn, order_q, axis=-1)
        last_attn_np = be.to_numpy(last_attn).astype(np.float32)
        sink_attn_np = be.to_numpy(last_row[:, :sinks]).astype(np.float32)  # (Hq, m), kept for the widgets
        peak = float(last_attn_np.max())
        if self.sinks_in_metric and sinks:
            # The literal reading of Algorithm 1: the sinks sit at the end of the order, always counted, never evicted.
            a_sorted = be.asarray(np.concatenate([be.to_numpy(a_sorted), sink_attn_np], axis=1))
            peak = max(peak, float(sink_attn_np.max()))

        # Eq. 2 - the curve: R(e) = mean_h sqrt(sum_{k >= e} a_sorted[h, k]^2) (be.retained_norms: a reverse scan,
        # fused_ops.retained_norms or a kernel),
        # ratio(e) = (R(0) - R(e)) / R(0): the share of the norm lost by evicting the first e candidates.
        ratio = ratio_curve(a_sorted, be, peak)[:n]

        # Eq. 3 - halt: e* = max { e in [0, n-1] : ratio(e) <= T } (a fixed budget counts instead).
        n_evicted = self.num_evicted(ratio, length, sinks + window)

        # Step 4 - keep the sinks, the candidates not among the first e*, and the window, in position order.
        order_np = be.to_numpy(order).astype(np.int64)
        kept_candidates = np.sort(order_np[:, n_evicted:], axis=1) + sinks
        ends = (np.arange(sinks, dtype=np.int64), np.arange(length - window, length, dtype=np.int64))
        kept = np.concatenate(
            [np.broadcast_to(ends[0], (owners, sinks)), kept_candidates, np.broadcast_to(ends[1], (owners, window))],
            axis=1,
        )
        return self._decision(
            kept=kept,
            order=order_np,
            scores=be.to_numpy(scores).astype(np.float32),
            last_attn=last_attn_np,
            sink_attn=sink_attn_np,
            curve=ratio,
            n_evicted=n_evicted,
            length=length,
            sinks=sinks,
            window=window,
            layer=layer,
            groups=groups,
        )

    def full_layer_decision(self, prompt_len: int, num_q_heads: int, num_kv_heads: int, layer: int | None) -> LayerDecision:
        """The decision of a layer that keeps everything (``full_layer=True``), from shapes alone: no arrays needed.

        Integrations call it for ``full_layers`` so that those layers' keys are never read.
        """
        layer = _check_layer(layer)
        owners = num_kv_heads if self.gqa == "group" else num_q_heads
        everything = np.broadcast_to(np.arange(prompt_len, dtype=np.int64), (owners, prompt_len)).copy()
        return self._decision(kept=everything, length=prompt_len, sinks=0, window=0, layer=layer,
                              groups=num_q_heads // num_kv_heads, full_layer=True)

    # ------------------------------------------------------------------ helpers
    def _decision(self, *, kept, length, sinks, window, layer, groups, order=None, scores=None, last_attn=None,
                  sink_attn=None, curve=None, n_evicted=0, full_layer=False) -> LayerDecision:
        owners, num_q_heads = kept.shape[0], kept.shape[0] if self.gqa == "expand" else kept.shape[0] * groups
        return LayerDecision(
            kept=kept,
            order=np.zeros((owners, 0), np.int64) if order is None else order,
            scores=np.zeros((owners, 0), np.float32) if scores is None else scores,
            last_attn=np.zeros((num_q_heads, 0), np.float32) if last_attn is None else last_attn,
            curve=np.zeros(0, np.float32) if curve is None else curve,
            n_evicted=int(n_evicted),
            prompt_len=int(length),
            window=int(window),
            threshold=self.threshold,
            policy=self.name,
            ranking=self.ranking,
            gqa=self.gqa,
            layer=layer,
            group_size=int(groups),
            sinks=int(sinks),
            sink_attn=np.zeros((num_q_heads, sinks), np.float32) if sink_attn is None else sink_attn,
            sinks_in_metric=bool(self.sinks_in_metric),
            full_layer=bool(full_layer),
        )

    def _check_attention(self, be: Backend, q: Array, keys: Array, col_sum: Array, last_row: Array) -> None:
        """Raise a ValueError when the attention a decision read holds NaN or inf, naming the cause.

        The last row sees every key and the window sums see every query row used, so a NaN or inf in those inputs,
        or logits beyond float32, always shows up here; only then are the inputs scanned to say which it was.
        """
        window_ok = self.ranking not in WINDOW_RANKINGS or be.all_finite(col_sum)
        if window_ok and be.all_finite(last_row):
            return
        if not be.all_finite(q) or not be.all_finite(keys):
            raise ValueError("queries or keys contain NaN or inf; check the model's prefill (overflow in float16?)")
        raise ValueError(
            "the attention logits overflow float32 (scale * q.k beyond ~3.4e38), so softmax gives NaN; "
            "pass post-RoPE queries and keys of a normal magnitude (and the model's attention scale)"
        )

    def _validate(self, queries: Any, keys: Any, be: Backend, scale: Any) -> tuple[Array, Array]:
        """Check shapes, dtypes, values and the scale; drop a batch axis of size 1; convert to float32 on ``be``.

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
                f"expected queries (Hq, r, D) and keys (Hkv, L, D); got shapes {_shape_of(queries)} and {_shape_of(keys)}"
            )
        hq, m, d = _shape_of(queries)
        hkv, length, dk = _shape_of(keys)
        if d != dk:
            raise ValueError(f"head dim mismatch: queries have D={d}, keys have D={dk}")
        if d == 0 or hq == 0:
            raise ValueError(f"queries need at least one head and one dimension, got shape {_shape_of(queries)}")
        if hkv == 0 or hq % hkv:
            raise ValueError(
                f"query heads ({hq}) must be a multiple of key/value heads ({hkv}) (GQA groups); "
                "did you pass (L, H, D) instead of (H, L, D)?"
            )
        if length == 0:
            raise ValueError("keys hold no positions (L = 0); there is nothing to decide")
        need = min(self.query_rows, length)
        if m < need or m > length:
            raise ValueError(
                f"queries must hold the last r prompt positions with {need} <= r <= L={length} "
                f"(this policy reads the last {self.query_rows}), got r={m}"
            )
        if scale is not None:
            try:
                scale_value = float(scale)
            except (TypeError, ValueError):
                raise TypeError(f"scale must be a number (usually 1/sqrt(D)) or None, got {scale!r}") from None
            if not math.isfinite(scale_value) or scale_value <= 0:
                raise ValueError(f"scale must be a finite number > 0 (usually 1/sqrt(D)), got {scale!r}")
        # float32 on this backend from here on. Finiteness is checked on the attention the decision computes
        # (one pass over (Hq, L) instead of two over the inputs): see _check_attention.
        return be.asarray(queries), be.asarray(keys)


def _fields_repr(policy: Any, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{f.name}={getattr(policy, f.name)!r}" for f in fields(policy) if f.repr and f.name not in skip)


@dataclass(frozen=True, repr=False)
class ReFreeKV(Policy):
    """The threshold-free policy: evict oldest first while the attention norm lost stays within ``threshold``.

    ``ReFreeKV()`` is the paper's method (preset ``"paper"``): 4 sinks kept out of the metric, the other
    positions evicted oldest first, the last prompt token's attention norm at ``T = 0.01``, layers 0 and 1
    never pruned. The same ``T`` serves every input, layer and model; each layer's budget is an *output*.
    :meth:`preset` builds the other named configurations (:data:`PRESETS`).

    ``preset_name`` is the preset the fields are compared with (:attr:`changed`, the repr); :meth:`preset` sets it,
    and refuses a ``preset_name=`` override naming another preset. Given to the constructor it changes no field:
    ``ReFreeKV(preset_name="official-script")`` holds the paper's values, and its repr lists every field that
    differs from official-script's (build that preset with ``ReFreeKV.preset("official-script")``).

    Example:
        >>> import numpy as np, refreekv_edu as rk
        >>> rng = np.random.default_rng(0)
        >>> q, k = rng.normal(size=(4, 1, 16)), rng.normal(size=(2, 64, 16))     # Hq=4, Hkv=2, L=64, D=16
        >>> dec = rk.ReFreeKV().decide_layer(q.astype("float32"), k.astype("float32"), layer=5)
        >>> dec.kept.shape[0], dec.kept[0, :4].tolist(), bool(dec.kept[0, -1] == 63)   # sinks and newest kept
        (2, [0, 1, 2, 3], True)
    """

    threshold: float = 0.01
    sinks: int = 4
    window: int = 0
    ranking: str = "recency"
    full_layers: tuple[int, ...] = (0, 1)
    sinks_in_metric: bool = False
    gqa: str = "group"
    preset_name: str = field(default="paper", compare=False)
    name = "refreekv"

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        if not isinstance(self.sinks_in_metric, (bool, np.bool_)):
            raise TypeError(f"sinks_in_metric must be True or False, got {self.sinks_in_metric!r}")
        if self.preset_name not in PRESETS:
            raise ValueError(f"unknown preset {self.preset_name!r}; choose one of: {', '.join(PRESETS)}")
        super().__post_init__()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ReFreeKV:
        """The named configuration ``name`` (see :data:`PRESETS`), with any field overridden.

        Example:
            >>> import refreekv_edu as rk
            >>> rk.ReFreeKV.preset("official-script").threshold, rk.ReFreeKV.preset("paper", threshold=0.02).sinks
            (0.05, 4)
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown ReFreeKV field(s) {sorted(unknown)}; fields: {[f.name for f in fields(cls)]}")
        if overrides.get("preset_name", name) != name:
            raise ValueError(
                f"preset({name!r}, preset_name={overrides['preset_name']!r}) names two presets; the preset is the "
                f"first argument: ReFreeKV.preset({overrides['preset_name']!r}, ...)"
            )
        return cls(**{**PRESETS[name], **overrides, "preset_name": name})

    @property
    def changed(self) -> tuple[str, ...]:
        """The fields that differ from the preset this policy was built from."""
        return tuple(k for k, v in PRESETS[self.preset_name].items() if getattr(self, k) != v)

    def num_evicted(self, ratio: np.ndarray, prompt_len: int, protected: int) -> int:
        return cut_from_ratio(ratio, self.threshold)

    def __repr__(self) -> str:
        changed = f" changed {', '.join(self.changed)}" if self.changed else ""
        return f"ReFreeKV(preset={self.preset_name!r}{changed}: {_fields_repr(self, ('preset_name',))})"


@dataclass(frozen=True, repr=False)
class FixedBudget(Policy):
    """A fixed-budget baseline: every pruned layer keeps ``ceil(budget * L)`` rows (sinks and window included,
    at least one candidate).

    ``FixedBudget(budget=1.0)`` runs the whole pipeline and evicts nothing. ``FixedBudget(budget, "recency",
    sinks=4, window=0)`` is StreamingLLM's sinks-plus-recent cache at that budget.
    """

    budget: float = 0.5
    ranking: str = "h2o"
    window: int = 8
    sinks: int = 0
    full_layers: tuple[int, ...] = ()
    gqa: str = "group"
    name = "fixed"

    def __post_init__(self) -> None:
        if isinstance(self.budget, (bool, np.bool_)):
            raise TypeError(f"budget must be a number in (0, 1] (the share of the prompt's KV rows to keep), "
                            f"got {self.budget!r}, a bool; write FixedBudget(1.0) to keep everything")
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

    def num_evicted(self, ratio: np.ndarray, prompt_len: int, protected: int) -> int:
        n = prompt_len - protected
        keep_candidates = min(n, max(1, math.ceil(self.budget * prompt_len - 1e-9) - protected))
        return n - keep_candidates

    def __repr__(self) -> str:
        return f"FixedBudget({_fields_repr(self)})"


@dataclass(frozen=True, repr=False)
class FullCache(Policy):
    """Keep everything (the reference every compressed run is compared with)."""

    window: int = 8
    ranking: str = "h2o"
    sinks: int = 0
    full_layers: tuple[int, ...] = ()
    gqa: str = "group"
    name = "full"

    @property
    def compresses(self) -> bool:
        return False

    def num_evicted(self, ratio: np.ndarray, prompt_len: int, protected: int) -> int:
        return 0

    def __repr__(self) -> str:
        return "FullCache()"
