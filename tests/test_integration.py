"""The integration skeleton (refreekv_edu.integration) on a toy numpy model: a third backend needs only its pieces.

``ToyAdapter`` below is everything a new framework supplies: layer specs, a prefill that records the last
``policy.query_rows`` queries of the pruned layers, the decision inputs, the compaction of one layer, one
decode forward and the byte/row counts. Prompt encoding, id and context checks, choosing the decision
backend, the ``gqa="expand"`` refusal, sampling, the decode loop with ``first_logits``, the stats and the
``Trace.meta`` schema all come from the core, the same code the torch and MLX integrations run.
"""

from __future__ import annotations

import numpy as np
import pytest

import refreekv_edu as rk
from refreekv_edu.generate import STATS_KEYS
from refreekv_edu.integration import (
    TRACE_META_KEYS,
    LayerSpec,
    ModelAdapter,
    Sampler,
    check_token_ids,
    encode_prompt,
    eos_ids,
    generate,
    shared_positions,
)

VOCAB, HIDDEN, HEADS, KV_HEADS, DIM, LAYERS, CONTEXT = 50, 32, 4, 2, 8, 4, 128


class ToyModel:
    """A 4-layer attention-only language model in numpy (no positions: enough to test the plumbing)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
        self.wq = (rng.normal(size=(LAYERS, HIDDEN, HEADS * DIM)) / np.sqrt(HIDDEN)).astype(np.float32)
        self.wk = (rng.normal(size=(LAYERS, HIDDEN, KV_HEADS * DIM)) / np.sqrt(HIDDEN)).astype(np.float32)
        self.wv = (rng.normal(size=(LAYERS, HIDDEN, KV_HEADS * DIM)) / np.sqrt(HIDDEN)).astype(np.float32)
        self.wo = (rng.normal(size=(LAYERS, HEADS * DIM, HIDDEN)) / np.sqrt(HEADS * DIM)).astype(np.float32)

    def queries(self, layer: int, h: np.ndarray) -> np.ndarray:  # (N, hidden) -> (Hq, N, D)
        return (h @ self.wq[layer]).reshape(len(h), HEADS, DIM).transpose(1, 0, 2)

    def kv(self, layer: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # -> 2 x (Hkv, N, D)
        k = (h @ self.wk[layer]).reshape(len(h), KV_HEADS, DIM).transpose(1, 0, 2)
        v = (h @ self.wv[layer]).reshape(len(h), KV_HEADS, DIM).transpose(1, 0, 2)
        return k, v

    def attend(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
        k, v = np.repeat(k, HEADS // KV_HEADS, axis=0), np.repeat(v, HEADS // KV_HEADS, axis=0)
        logits = q @ k.transpose(0, 2, 1) * np.float32(DIM**-0.5)  # (Hq, N, rows), float32
        if causal:  # the N new rows are the last N cached ones
            n, rows = logits.shape[1:]
            logits = np.where(np.arange(rows)[None, :] <= np.arange(rows - n, rows)[:, None], logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        out = (probs / probs.sum(-1, keepdims=True)) @ v  # (Hq, N, D)
        return out.transpose(1, 0, 2).reshape(q.shape[1], HEADS * DIM) @ self.wo[layer]


class ToyAdapter(ModelAdapter):
    """The framework pieces for :class:`ToyModel`; the cache is a list of ``(keys, values)`` per layer."""

    name = "numpy"

    def __init__(self, model: ToyModel, policy) -> None:
        super().__init__(policy)
        self.model, self.cache, self.recorded, self.forwards = model, [], {}, 0

    def layers(self) -> list[LayerSpec]:
        return [LayerSpec(i, HEADS, KV_HEADS, DIM, 1 / np.sqrt(DIM), compressible=True) for i in range(LAYERS)]

    def vocab_size(self) -> int:
        return VOCAB

    def context_length(self) -> int:
        return CONTEXT

    def describe(self) -> dict[str, str]:
        return {"model": "toy", "model_type": "toy"}

    def prefill(self, ids, progress=False) -> np.ndarray:
        self.forwards += 1
        rows = self.policy.query_rows
        h = self.model.embed[ids]
        self.cache = []
        for i in range(LAYERS):
            q = self.model.queries(i, h)
            if self.policy.compresses and self.policy.prunes_layer(i):
                self.recorded[i] = q[:, -rows:]
            k, v = self.model.kv(i, h)
            self.cache.append((k, v))
            h = h + self.model.attend(i, q, k, v, causal=True)
        return (h[-1] @ self.model.embed.T).astype(np.float32)

    def decision_inputs(self, layer):
        return self.recorded[layer.index], self.cache[layer.index][0]

    def compact(self, layer, decision) -> None:
        keys, values = self.cache[layer.index]
        kept = decision.kept  # (Hkv, n_kept)
        self.cache[layer.index] = tuple(np.take_along_axis(a, kept[:, :, None], axis=1) for a in (keys, values))

    def forward(self, token) -> np.ndarray:
        self.forwards += 1
        h = self.model.embed[[token]]
        for i in range(LAYERS):
            k, v = self.model.kv(i, h)
            keys, values = (np.concatenate([old, new], axis=1) for old, new in zip(self.cache[i], (k, v)))
            self.cache[i] = (keys, values)
            h = h + self.model.attend(i, self.model.queries(i, h), keys, values, causal=False)
        return (h[-1] @ self.model.embed.T).astype(np.float32)

    def layer_rows(self, layer) -> int:
        return self.cache[layer.index][0].shape[1]

    def layer_bytes(self, layer) -> int:
        return sum(a.nbytes for a in self.cache[layer.index])


class Letters:
    """A tokenizer: one id per lowercase letter, a chat template that wraps the user's text in id 27 .. 28."""

    chat_template = "toy"
    eos_token_id = 49

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") + 1 for c in text if c.isalpha()]

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return [27, *(t for m in messages for t in self.encode(m["content"])), 28]

    def decode(self, ids, skip_special_tokens=False) -> str:
        return " ".join(map(str, ids))


PROMPT = [int(t) for t in np.random.default_rng(1).integers(1, 45, 40)]


def test_a_numpy_toy_backend_generates_through_the_skeleton():
    policy = rk.ReFreeKV.preset("official-script", threshold=0.3)
    adapter = ToyAdapter(ToyModel(), policy)
    out = generate(adapter, None, PROMPT, max_new_tokens=6, stop_at_eos=False)
    assert len(out.tokens) == 6 and adapter.forwards == 6  # one prefill, five decode steps
    assert set(STATS_KEYS) <= set(out.stats) and set(out.trace.meta) == set(TRACE_META_KEYS)
    assert out.trace.meta["backend"] == out.trace.meta["decide_backend"] == "numpy"
    assert out.trace.meta["model_type"] == "toy" and out.trace.meta["prompt_tokens"] == len(PROMPT)
    decisions = out.trace.layers
    assert [d.layer for d in decisions] == list(range(LAYERS)) and any(d.n_evicted for d in decisions)
    # the caches hold exactly the kept rows, then the five decoded ones
    assert out.stats["kept_per_layer"] == [d.n_kept for d in decisions]
    assert [adapter.layer_rows(spec) for spec in adapter.layers()] == [d.n_kept + 5 for d in decisions]
    row_bytes = 2 * KV_HEADS * DIM * 4
    assert out.stats["kv_bytes_full"] == LAYERS * len(PROMPT) * row_bytes
    assert out.stats["kv_bytes_kept"] == sum(out.stats["kept_per_layer"]) * row_bytes
    assert out.first_logits.shape == (VOCAB,) and out.first_logits.dtype == np.float32


def test_full_layers_are_decided_from_shapes_and_never_read():
    policy = rk.ReFreeKV(threshold=0.3)  # the paper: layers 0-1 full
    adapter = ToyAdapter(ToyModel(), policy)
    out = generate(adapter, None, PROMPT, max_new_tokens=2)
    assert sorted(adapter.recorded) == [2, 3]  # no queries recorded for the full layers
    assert [d.full_layer for d in out.trace.layers] == [True, True, False, False]
    assert out.stats["kept_per_layer"][:2] == [len(PROMPT)] * 2


def test_uncompressed_decoding_equals_plain_decoding():
    model = ToyModel()
    full = generate(ToyAdapter(model, rk.FullCache()), None, PROMPT, max_new_tokens=8, stop_at_eos=False)
    same = generate(ToyAdapter(model, rk.FixedBudget(budget=1.0)), None, PROMPT, max_new_tokens=8, stop_at_eos=False)
    assert full.tokens == same.tokens and full.trace.layers == []
    assert full.stats["kv_bytes_kept"] == full.stats["kv_bytes_full"]
    np.testing.assert_allclose(full.first_logits, same.first_logits, rtol=1e-5, atol=1e-5)


def test_prompts_sampling_and_eos_come_from_the_core():
    adapter = ToyAdapter(ToyModel(), rk.FullCache())
    out = generate(adapter, Letters(), "abc", max_new_tokens=3, stop_at_eos=False)
    assert out.stats["prompt_tokens"] == 5 and out.trace.tokens[0] == "27"  # the chat template applied
    assert encode_prompt(Letters(), "abc", chat_template=False) == [1, 2, 3]
    assert encode_prompt(Letters(), [{"role": "user", "content": "ab"}]) == [27, 1, 2, 28]
    assert encode_prompt(None, np.array([[3, 4]])) == [3, 4]
    a, b = (generate(adapter, None, PROMPT, max_new_tokens=5, temperature=1.0, seed=7) for _ in range(2))
    assert a.tokens == b.tokens
    assert eos_ids(Letters(), type("Config", (), {"eos_token_id": [2, 3]})()) == {49, 2, 3}


def test_bad_input_is_refused_before_the_forward_pass():
    adapter = ToyAdapter(ToyModel(), rk.ReFreeKV())
    cases = [
        ([VOCAB, 1], "token id 50 is out of range: the model's vocabulary has 50 tokens"),
        ([10**7, 5], "vocabulary has 50 tokens"),
        ([1] * (CONTEXT + 1), f"the prompt has {CONTEXT + 1} tokens but the model's context is {CONTEXT} tokens"),
        ([1] * CONTEXT, f"plus max_new_tokens=4 exceed the model's context of {CONTEXT}"),
    ]
    for prompt, match in cases:
        with pytest.raises(ValueError, match=match):
            generate(adapter, None, prompt, max_new_tokens=4)
    with pytest.raises(ValueError, match=">= 0"):
        check_token_ids([-1], VOCAB, CONTEXT)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        generate(adapter, Letters(), [{"role": "user"}])
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(adapter, Letters(), "", chat_template=False)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        generate(adapter, Letters(), "123", chat_template=False)
    for temperature in (float("nan"), "0.5", -1):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            generate(adapter, None, PROMPT, temperature=temperature)
    with pytest.raises(ValueError, match="top_p"):
        generate(adapter, None, PROMPT, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="gqa='group'"):
        generate(ToyAdapter(ToyModel(), rk.ReFreeKV(gqa="expand")), None, PROMPT)
    assert adapter.forwards == 0


def test_sampler_and_shared_positions():
    logits = np.array([0.0, 3.0, 1.0], np.float32)
    assert Sampler()(logits) == 1
    assert Sampler(temperature=1.0, top_p=1e-6, seed=3)(logits) == 1  # a vanishing nucleus is greedy
    draws = [Sampler(temperature=5.0, seed=s)(logits) for s in range(40)]
    assert set(draws) == {0, 1, 2}
    assert shared_positions(np.array([[0, 2], [0, 2]])).tolist() == [0, 2]
    assert shared_positions(np.array([[0, 2], [0, 3]])) is None
