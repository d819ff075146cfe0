"""``ReFreeKVPress``: the ReFreeKV decision as a kvpress press (the ``kvpress`` extra; kvpress pins transformers < 5.3).

kvpress hooks every attention layer's forward and, at the end of prefill, asks its press to ``compress`` that
layer's keys and values. This press answers with the rows the policy keeps (``rk.ReFreeKV()`` by default, or any
preset): the same rows for every KV head of a layer (``gqa="group"``, checked), gathered into smaller tensors, so
the memory is really freed. Each layer gets its own budget, an output of the rule, not an input: read it after
prefill from :attr:`ReFreeKVPress.trace` (the package's :class:`~refreekv_edu.decision.Trace`) and
:attr:`ReFreeKVPress.compression_ratio` (``1 -`` rows kept / rows seen, over the layers compressed so far;
``None`` before a prefill), which is what kvpress's ``ComposedPress`` reads.

Two things differ from kvpress's own presses, both because layers end up with different lengths:

- **The attention mask.** transformers builds one mask per forward, sized from layer 0. After this press the
  model's attention is switched to the package's mask-fitting wrapper (:mod:`~.hf_attention`), which gives every
  layer the causal mask of its own key count; the switch stays on after the ``with press(model)`` block (the
  pipeline asks the question after it) until :meth:`ReFreeKVPress.restore_attention`. On an uncompressed cache
  the wrapper gives the ordinary causal mask, so leaving it on changes nothing there.
- **Positions.** kvpress's pipeline passes the positions of the question and the answer itself. ``model.generate``
  takes them from layer 0's length, which is right for the presets that keep layer 0 whole (the paper's
  ``full_layers=(0, 1)``); for a preset that prunes layer 0 the press warns.

What the last prompt token means: ReFreeKV reads the last prefill position's attention. In kvpress's pipeline the
prefill is the context alone (the question comes after the compressed context), so the halting signal is the
context's own last token, not the question: the rule keeps what the end of the context attends to.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from kvpress import BasePress

from refreekv_edu.backend import get_backend
from refreekv_edu.decision import LayerDecision, Trace
from refreekv_edu.integration import shared_positions

from . import hf_adapter
from .hf_attention import FittedAttention


def _default_policy() -> Any:
    from refreekv_edu.policies import ReFreeKV

    return ReFreeKV()


@dataclass
class ReFreeKVPress(BasePress):
    """A kvpress press that prunes each layer's cache with a refreekv policy at the end of prefill.

    Args:
        policy: ``rk.ReFreeKV()`` (default), any preset (``rk.ReFreeKV.preset("official-script")``) or a
            ``FixedBudget``; its ``gqa`` must be ``"group"`` (one kept set per KV head group frees memory).

    Example::

        from kvpress import pipeline
        from refreekv_torch.kvpress_press import ReFreeKVPress

        press = ReFreeKVPress()
        pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
        answer = pipe(context, question=question, press=press)["answer"]
        press.trace.budgets        # the budget the rule chose for each layer
    """

    policy: Any = field(default_factory=_default_policy)
    _decisions: dict[int, LayerDecision] = field(default_factory=dict, init=False, repr=False)
    _rows: dict[int, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    _layers: dict[int, Any] = field(default_factory=dict, init=False, repr=False)
    _attention: FittedAttention | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if getattr(self.policy, "gqa", "group") != "group":
            raise ValueError(
                f"ReFreeKVPress needs gqa='group' (the same rows for every KV head of a layer, so memory is freed); "
                f"got {self.policy!r}: pass e.g. rk.ReFreeKV(gqa='group')"
            )
        if not hasattr(self.policy, "decide_layer"):
            raise TypeError(f"policy must be a refreekv policy (rk.ReFreeKV(), a preset, FixedBudget), got {self.policy!r}")

    # ------------------------------------------------------------------ what a reader asks after prefill
    @property
    def compression_ratio(self) -> float | None:
        """``1 -`` rows kept / rows seen over the layers compressed in the last prefill; ``None`` before one."""
        if not self._rows:
            return None
        kept = sum(k for k, _ in self._rows.values())
        seen = sum(n for _, n in self._rows.values())
        return 1.0 - kept / seen if seen else 0.0

    @compression_ratio.setter
    def compression_ratio(self, value: Any) -> None:
        raise AttributeError("ReFreeKVPress.compression_ratio is an output of the rule (read-only), not a setting")

    @property
    def trace(self) -> Trace:
        """The last prefill's per-layer decisions, in layer order (empty before a prefill)."""
        return Trace(layers=[self._decisions[i] for i in sorted(self._decisions)])

    def restore_attention(self) -> None:
        """Put the model's own attention implementation back (do it once no compressed cache is in use)."""
        if self._attention is not None:
            self._attention.restore()

    # ------------------------------------------------------------------ kvpress's hooks
    def post_init_from_model(self, model: Any) -> None:
        self._layers = {layer.index: layer for layer in hf_adapter.attention_layers(model)}
        if self._attention is None or self._attention.model is not model:
            self._attention = FittedAttention(model)  # checks sdpa/eager before any prefill
        if self.policy.compresses and self.policy.prunes_layer(0):
            warnings.warn(
                f"{self.policy!r} prunes layer 0: model.generate takes positions from layer 0's length, so decode "
                "positions would shift; use kvpress's pipeline (it passes positions) or a preset that keeps layer 0",
                UserWarning,
                stacklevel=3,
            )

    def compress(
        self, module: Any, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, attentions: Any,
        kwargs: dict,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the policy's rows of this layer: ``(1, Hkv, L, D) -> (1, Hkv, n_kept, D)`` keys and values."""
        index = int(module.layer_idx)
        if index in self._rows:  # a layer seen again: a new prefill, forget the last one
            self._decisions, self._rows = {}, {}
        layer = self._layers[index]
        if keys.shape[0] != 1:
            raise ValueError(f"ReFreeKVPress supports batch size 1, got {keys.shape[0]}")
        length = int(keys.shape[2])
        if not self.policy.compresses or not layer.compressible or not self.policy.prunes_layer(index):
            if self.policy.compresses and layer.compressible:
                self._decisions[index] = self.policy.full_layer_decision(
                    length, layer.num_heads, layer.num_kv_heads, index
                )
            self._rows[index] = (length, length)
            return keys, values
        rows = max(1, int(self.policy.query_rows))  # the queries the decision reads (1 for the paper)
        cos, sin = kwargs["position_embeddings"]
        queries = hf_adapter.recompute_queries(layer, hidden_states[:, -rows:], (cos[:, -rows:], sin[:, -rows:]))
        backend = get_backend("numpy")
        decision = self.policy.decide_layer(
            queries.detach().cpu().numpy(), keys[0].detach().float().cpu().numpy(), scale=layer.scale,
            backend=backend, layer=index,
        )
        positions = shared_positions(decision.kept)  # group mode: one kept set for every KV head
        if positions is None:
            raise RuntimeError(f"layer {index}: the policy kept different rows per KV head; ReFreeKVPress needs gqa='group'")
        kept = torch.as_tensor(positions, dtype=torch.long, device=keys.device)
        self._decisions[index] = decision
        self._rows[index] = (int(kept.numel()), length)
        if kept.numel() < length:
            assert self._attention is not None
            self._attention.use()  # layers now hold different row counts: each needs its own mask
        return keys.index_select(2, kept).contiguous(), values.index_select(2, kept).contiguous()
