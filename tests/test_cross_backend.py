"""The MLX path and the torch path make the same decisions on the bundled model.

Both load the same Q4_1 GGUF: torch (transformers) dequantizes it to float32, MLX keeps it
quantized and multiplies with the packed weights. Their activations therefore differ by float
rounding only, and ReFreeKV's per-layer budget is a discrete cut on a curve: a layer whose curve
crosses the threshold right at a cut can land one candidate apart. We require identical kept counts
on at least 90% of the layers and the same greedy answer.

Slow: two MLX prefills of ~150 tokens with the Linux CPU wheel (about 30 s each on an idle 2-core
machine, several times that under load) plus two torch runs.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install 'refreekv_edu[mlx]')")
pytest.importorskip("transformers", reason="transformers is not installed (pip install 'refreekv_edu[torch]')")

import refreekv_edu as rk  # noqa: E402

WORDS = "apple river stone cloud pencil garden window silver orange candle forest mirror".split()


def passkey_prompt(seed: int = 0, sentences: int = 8) -> str:
    rng = np.random.default_rng(seed)
    filler = " ".join(" ".join(rng.choice(WORDS, 12)) + "." for _ in range(sentences))
    return f"The secret number is 68217. {filler}\nWhat is the secret number?"


@pytest.fixture(scope="module")
def models():
    try:
        rk.fetch_model("smollm2-135m", quiet=True)
    except RuntimeError as exc:
        pytest.skip(f"bundled model not available: {exc}")
    try:
        mlx_model = rk.load_model("smollm2-135m", backend="mlx")
        torch_model = rk.load_model("smollm2-135m", backend="torch")
    except rk.backend.BackendUnavailableError as exc:
        pytest.skip(f"both backends are needed: {exc}")
    return {"mlx": mlx_model, "torch": torch_model}


def _run(models, backend: str, policy) -> rk.GenerationResult:
    model, tokenizer = models[backend]
    return rk.generate(model, tokenizer, passkey_prompt(), policy=policy, max_new_tokens=10)


def test_full_cache_answers_agree(models):
    mlx_out, torch_out = _run(models, "mlx", rk.FullCache()), _run(models, "torch", rk.FullCache())
    assert mlx_out.stats["prompt_tokens"] == torch_out.stats["prompt_tokens"]
    assert mlx_out.tokens == torch_out.tokens
    assert "68217" in mlx_out.text
    # The first decode step's distributions agree closely (quantized vs dequantized weights).
    p, q = (np.exp(x - x.max()) / np.exp(x - x.max()).sum() for x in (mlx_out.first_logits, torch_out.first_logits))
    assert float(np.abs(p - q).sum()) < 0.05


@pytest.mark.parametrize("preset", ["paper", "official-script"])
def test_refreekv_decisions_agree(models, preset):
    policy = rk.ReFreeKV.preset(preset)
    mlx_out, torch_out = _run(models, "mlx", policy), _run(models, "torch", policy)
    mlx_kept, torch_kept = mlx_out.stats["kept_per_layer"], torch_out.stats["kept_per_layer"]
    assert len(mlx_kept) == len(torch_kept) == 30
    same = sum(a == b for a, b in zip(mlx_kept, torch_kept))
    mismatches = [(i, a, b) for i, (a, b) in enumerate(zip(mlx_kept, torch_kept)) if a != b]
    print(f"kept counts agree on {same}/30 layers; mismatches (layer, mlx, torch): {mismatches}")
    assert same >= 27, f"kept counts differ on {30 - same} layers: {mismatches}"
    assert mlx_out.tokens == torch_out.tokens
    assert mlx_out.stats["kv_bytes_full"] == torch_out.stats["kv_bytes_full"]
