"""What a policy decided: :class:`LayerDecision` per layer, :class:`Trace` per prompt.

Both are plain dataclasses of numpy arrays and round-trip through JSON, so a trace
saved on a GPU machine can be explored in a notebook with no model installed.
A decision stores the attention it was made from (``scores``, ``last_attn``), which
lets widgets and the threshold playground re-decide at any threshold instantly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

_ARRAY_FIELDS = {
    "kept": np.int64,
    "order": np.int64,
    "scores": np.float32,
    "last_attn": np.float32,
    "curve": np.float32,
    "sink_attn": np.float32,
}


def _check_positions(positions: Any, prompt_len: int) -> np.ndarray:
    """``positions`` as a non-empty 1-D int array inside ``[0, prompt_len)``, or a clear error."""
    pos = np.asarray(positions)
    if pos.ndim != 1 or pos.size == 0 or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"positions must be a non-empty 1-D list of ints, got shape {pos.shape} ({pos.dtype})")
    if pos.min() < 0 or pos.max() >= prompt_len:
        raise ValueError(
            f"positions must lie in [0, {prompt_len}) (the prompt's length), got {int(pos.min())}..{int(pos.max())}"
        )
    return pos


@dataclass
class LayerDecision:
    """One layer's eviction decision.

    Shapes: ``H`` is the number of heads that own a kept set: ``Hkv`` for ``gqa="group"``, ``Hq`` for
    ``gqa="expand"`` (and for non-GQA models, where both are equal). The prompt splits into ``m = sinks``
    sinks ``[0, m)``, ``n = L - m - w`` candidates ``[m, L - w)`` and the protected window ``[L - w, L)``;
    candidate index ``i`` is prompt position ``m + i``.

    Attributes:
        kept: ``(H, n_kept)`` int64, kept prompt positions per head, ascending; always starts with the sinks
            and ends with the window positions.
        order: ``(H, n)`` int64, candidate indices least important first (ties: older first).
        scores: ``(H, n)`` float32, the ranking score of each candidate (higher = more important).
        last_attn: ``(Hq, n)`` float32, the halting signal ``a``: last prompt token's attention on candidates.
        curve: ``(n,)`` float32, ``ratio(e)`` for ``e = 0 .. n-1`` (empty when ``n == 0`` or not computed).
        n_evicted: ``e*``, candidates evicted per head.
        prompt_len: ``L``.
        window: ``w`` actually protected.
        threshold: the halting threshold used (``None`` for fixed budgets / full cache).
        policy: policy name, e.g. ``"refreekv"``, ``"fixed"``, ``"full"``.
        ranking: ranking name.
        gqa: ``"group"`` or ``"expand"``.
        layer: layer index in the model (``None`` when decided standalone).
        group_size: ``G = Hq / Hkv``.
        sinks: ``m`` actually kept as sinks.
        sink_attn: ``(Hq, m)`` float32, the last prompt token's attention on the sinks (outside the metric
            unless ``sinks_in_metric``).
        sinks_in_metric: whether the sinks counted in the norm (the ``"sinks-in-metric"`` ablation).
        full_layer: True for a layer the policy never prunes (``full_layers``): everything kept, nothing computed.
    """

    kept: np.ndarray
    order: np.ndarray
    scores: np.ndarray
    last_attn: np.ndarray
    curve: np.ndarray
    n_evicted: int
    prompt_len: int
    window: int
    threshold: float | None
    policy: str
    ranking: str
    gqa: str
    layer: int | None = None
    group_size: int = 1
    sinks: int = 0
    sink_attn: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    sinks_in_metric: bool = False
    full_layer: bool = False

    @property
    def n_candidates(self) -> int:
        """``n = L - m - w`` (0 for a full layer)."""
        return 0 if self.full_layer else max(self.prompt_len - self.sinks - self.window, 0)

    @property
    def protected(self) -> int:
        """Rows kept whatever the metric says: ``m + w``."""
        return self.sinks + self.window

    def candidate_positions(self) -> np.ndarray:
        """``(H, n)`` int64: ``order`` as prompt positions (``sinks + index``), least important first."""
        return self.order + self.sinks

    def cut(self, threshold: float) -> int:
        """``e*`` this layer would evict at another ``threshold``, from the stored signal (no model needed)."""
        from .halting import halting_cut

        if self.n_candidates == 0:
            return 0
        always = self.sink_attn if self.sinks_in_metric and self.sinks else None
        return halting_cut(self.last_attn, self.order, threshold, always_kept=always)

    @property
    def n_kept(self) -> int:
        """Rows kept per head (candidates kept plus the window)."""
        return int(self.kept.shape[1])

    @property
    def budget(self) -> float:
        """Fraction of the prompt's rows kept: ``(m + n - e* + w) / L`` (1.0 for an empty prompt or a full layer)."""
        return self.n_kept / self.prompt_len if self.prompt_len else 1.0

    @property
    def num_heads(self) -> int:
        """``H``, the heads that own a kept set."""
        return int(self.kept.shape[0])

    def evicted_mask(self) -> np.ndarray:
        """``(H, L)`` bool, True where a position was evicted from that head."""
        mask = np.ones((self.num_heads, self.prompt_len), dtype=bool)
        np.put_along_axis(mask, self.kept, False, axis=1)
        return mask

    def kept_share(self, positions: Any) -> np.ndarray:
        """``(H,)`` share of the given prompt positions that each head kept (1.0 = all of them).

        Use it to follow one piece of the prompt, e.g. the tokens of a pass key, through the decision.

        Args:
            positions: 1-D int positions in ``[0, L)``, at least one.
        """
        pos = _check_positions(positions, self.prompt_len)
        return (~self.evicted_mask()[:, pos]).mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; arrays become nested lists (shapes as in the attributes)."""
        out = asdict(self)
        for name in _ARRAY_FIELDS:
            out[name] = np.asarray(out[name]).tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerDecision:
        """Inverse of :meth:`to_dict`: arrays come back with their dtypes and shapes."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for name, dtype in _ARRAY_FIELDS.items():
            if name in kwargs:  # (H, 0) arrays come back as [[], ...]: shape kept
                kwargs[name] = np.asarray(kwargs[name], dtype=dtype)
        return cls(**kwargs)

    def __repr__(self) -> str:
        if self.full_layer:
            return f"LayerDecision(layer={self.layer}, policy={self.policy!r}, L={self.prompt_len}, full layer, budget=1.000)"
        return (
            f"LayerDecision(layer={self.layer}, policy={self.policy!r}, L={self.prompt_len}, m={self.sinks}, "
            f"w={self.window}, heads={self.num_heads}, evicted={self.n_evicted}/{self.n_candidates}, "
            f"budget={self.budget:.3f})"
        )


@dataclass
class Trace:
    """All layers' decisions for one prompt, plus what is needed to show them.

    Attributes:
        layers: one :class:`LayerDecision` per compressed layer, in model order (layers a policy leaves
            alone, e.g. Gemma 3 sliding-window layers, are absent; see each decision's ``layer``).
        tokens: the prompt's tokens as display strings, length ``L`` (may be empty).
        meta: free-form: model name, policy config, backend, ...
    """

    layers: list[LayerDecision] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def budgets(self) -> np.ndarray:
        """``(num_layers,)`` per-layer budgets."""
        return np.array([d.budget for d in self.layers], dtype=np.float64)

    @property
    def mean_budget(self) -> float:
        """Average fraction of prompt rows kept over layers (what a fair fixed-budget baseline should use)."""
        return float(self.budgets.mean()) if self.layers else 1.0

    def positions_of(self, text: str) -> list[int]:
        """Positions of the prompt tokens that overlap any occurrence of ``text`` in the joined ``tokens``.

        Finds a needle or pass key however the tokenizer split it (``" 123" + "45"`` spells ``"12345"``).
        Returns ascending positions, empty when ``text`` does not occur (or the trace holds no tokens).
        """
        joined = "".join(self.tokens)
        ends = np.cumsum([len(t) for t in self.tokens])  # token i covers characters [ends[i] - len_i, ends[i])
        starts = ends - np.array([len(t) for t in self.tokens], dtype=ends.dtype)
        hit = np.zeros(len(self.tokens), dtype=bool)
        at = joined.find(text) if text else -1
        while at >= 0:
            hit |= (starts < at + len(text)) & (ends > at)
            at = joined.find(text, at + 1)
        return np.flatnonzero(hit).tolist()

    def kept_share(self, positions: Any) -> np.ndarray:
        """``(num_layers, H)``: for each layer and head, the share of ``positions`` kept.

        ``trace.kept_share(trace.positions_of(key)).min(axis=1) == 1`` marks the layers where every head kept every one
        of them. All layers must have the same head count ``H``.
        """
        if not self.layers:
            return np.ones((0, 0))
        heads = {d.num_heads for d in self.layers}
        if len(heads) > 1:
            raise ValueError(f"layers differ in head count ({sorted(heads)}); call LayerDecision.kept_share per layer")
        return np.stack([d.kept_share(positions) for d in self.layers])

    def to_json(self) -> str:
        """The whole trace as a JSON string."""
        return json.dumps({"layers": [d.to_dict() for d in self.layers], "tokens": self.tokens, "meta": self.meta})

    @classmethod
    def from_json(cls, text: str) -> Trace:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(
            layers=[LayerDecision.from_dict(d) for d in data["layers"]],
            tokens=list(data.get("tokens", [])),
            meta=dict(data.get("meta", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path``; returns the path."""
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace written by :meth:`save`."""
        return cls.from_json(Path(path).read_text())

    def __repr__(self) -> str:
        return f"Trace(layers={len(self.layers)}, tokens={len(self.tokens)}, mean_budget={self.mean_budget:.3f})"
