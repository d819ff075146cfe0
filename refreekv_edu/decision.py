"""What a policy decided: :class:`LayerDecision` per layer, :class:`Trace` per prompt.

Both are plain dataclasses of numpy arrays and round-trip through JSON, so a trace
saved on a GPU machine can be explored in a notebook with no model installed.
A decision stores the attention it was made from (``scores``, ``last_attn``), which
lets widgets and the threshold playground re-decide at any threshold instantly.
"""

from __future__ import annotations

import json
import os
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


def _load_array(name: str, value: Any, dtype: type) -> np.ndarray:
    """A JSON list as a numpy array of ``dtype``, refusing ragged lists, floats for ints and non-finite numbers."""
    try:
        raw = np.asarray(value)
    except ValueError:
        raise ValueError(f"{name} must be a rectangular array (nested lists of equal length)") from None
    if raw.dtype == object or raw.dtype.kind in "USb" and raw.size:
        raise ValueError(f"{name} must hold numbers, got {raw.dtype} values")
    if np.issubdtype(dtype, np.integer) and raw.size and raw.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer positions, got {raw.dtype} values")
    arr = raw.astype(dtype)
    if raw.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinity")
    return arr


def _reject_constant(name: str) -> float:
    raise ValueError(f"a trace must not contain {name} (not valid JSON numbers)")


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
        """Inverse of :meth:`to_dict`: arrays come back with their dtypes and shapes.

        Everything is checked (types, shapes, ranges), so a hand-edited or corrupted trace gives a ValueError
        that names the field instead of a wrong picture in a widget.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a layer decision must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        missing = {"kept", "order", "scores", "last_attn", "curve", "n_evicted", "prompt_len", "window"} - set(kwargs)
        if missing:
            raise ValueError(f"layer decision lacks the field(s) {sorted(missing)}")
        for name, dtype in _ARRAY_FIELDS.items():
            if name in kwargs:  # (H, 0) arrays come back as [[], ...]: shape kept
                kwargs[name] = _load_array(name, kwargs[name], dtype)
        decision = cls(**kwargs)
        decision.validate()
        return decision

    def validate(self) -> None:
        """Raise a ValueError naming the first field that is inconsistent (shapes, ranges, counts)."""
        for name in ("n_evicted", "prompt_len", "window", "sinks", "group_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer))):
            raise ValueError(f"layer must be an int or null, got {self.layer!r}")
        for name in ("policy", "ranking", "gqa"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold < 1):
            raise ValueError(f"threshold must be null or a number in [0, 1), got {self.threshold!r}")
        length, n = self.prompt_len, self.n_candidates
        if self.kept.ndim != 2 or self.kept.shape[1] > length:
            raise ValueError(f"kept must be (H, n_kept) with n_kept <= prompt_len={length}, got {self.kept.shape}")
        if self.kept.size and (self.kept.min() < 0 or self.kept.max() >= length or np.any(np.diff(self.kept) <= 0)):
            raise ValueError(f"kept must hold ascending, unique positions in [0, {length})")
        heads = self.kept.shape[0]
        if self.order.shape != (heads, n) or (n and np.any(np.sort(self.order, axis=1) != np.arange(n))):
            raise ValueError(f"order must be ({heads}, {n}), each row a permutation of 0..{n - 1}")
        if self.scores.shape != (heads, n) or self.curve.shape not in {(n,), (0,)}:
            raise ValueError(f"scores must be ({heads}, {n}) and curve ({n},); got {self.scores.shape}, {self.curve.shape}")
        if self.last_attn.ndim != 2 or self.last_attn.shape[1] != n or np.any(self.last_attn < 0):
            raise ValueError(f"last_attn must be (Hq, {n}) non-negative attention, got shape {self.last_attn.shape}")
        if self.n_evicted > max(n - 1, 0) or self.kept.shape[1] != length - self.n_evicted:
            raise ValueError(
                f"n_evicted={self.n_evicted} does not fit: {n} candidates, {self.kept.shape[1]} kept of {length}"
            )

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
        layers: one :class:`LayerDecision` per full-attention layer, in model order. A policy's full layers
            (``full_layers``, e.g. 0 and 1 for the paper) are present with ``full_layer=True`` and budget 1.0, so
            :attr:`mean_budget` counts them at 100%. Layers no policy may touch (Gemma 3 sliding-window layers)
            are absent; see each decision's ``layer``.
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
        """Inverse of :meth:`to_json`; a malformed trace raises a ValueError that says what is wrong (and where)."""
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a trace: invalid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
            raise ValueError('not a trace: expected a JSON object with a "layers" list (written by Trace.save)')
        tokens, meta = data.get("tokens", []), data.get("meta", {})
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("trace tokens must be a list of strings")
        if not isinstance(meta, dict):
            raise ValueError("trace meta must be a JSON object")
        layers = []
        for i, d in enumerate(data["layers"]):
            try:
                layers.append(LayerDecision.from_dict(d))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"trace layer {i}: {exc}") from None
        return cls(layers=layers, tokens=list(tokens), meta=dict(meta))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (UTF-8) and return the path.

        The file is written next to ``path`` under a temporary name and renamed into place, so a reader (or a second
        writer) never sees half a trace.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.to_json(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace written by :meth:`save`.

        Raises:
            ValueError: the file is not UTF-8 text, not JSON or not a trace (the message says which).
            OSError: the file cannot be read (missing, a directory, no permission).
        """
        data = Path(path).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path} is not a trace: its bytes are not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); "
                "a trace is the JSON file written by Trace.save"
            ) from None
        return cls.from_json(text)

    def __repr__(self) -> str:
        return f"Trace(layers={len(self.layers)}, tokens={len(self.tokens)}, mean_budget={self.mean_budget:.3f})"
