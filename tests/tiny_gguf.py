"""A tiny random llama written as a float32 GGUF (llama.cpp tensor names and metadata), for the MLX loader tests."""

from __future__ import annotations

from pathlib import Path


def write_tiny_llama_gguf(path: str | Path, seed: int = 0, layers: int = 2):
    """Write the GGUF to ``path``; return the source ``mlx_lm`` llama model (hidden 32, 4 / 2 heads, vocab 50)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from refreekv_mlx.gguf_loader import _GGUF_TO_MLX

    mx.random.seed(seed)
    args = llama.ModelArgs(
        model_type="llama", hidden_size=32, num_hidden_layers=layers, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, vocab_size=50, rope_theta=1e5, rope_traditional=True,
        max_position_embeddings=256,
    )  # fmt: skip
    model = llama.Model(args)
    mx.eval(model.parameters())
    inverse = {mlx.format(i=i): gguf.format(i=i) for gguf, mlx in _GGUF_TO_MLX.items() for i in range(layers)}
    tensors = {}
    for name, value in tree_flatten(model.parameters()):
        module, _, param = name.rpartition(".")
        tensors[f"{inverse[module]}.{param}"] = value
    meta = {
        "general.architecture": "llama",
        **{f"llama.{k}": mx.array(v) for k, v in {
            "attention.head_count": 4, "attention.head_count_kv": 2, "block_count": layers, "embedding_length": 32,
            "feed_forward_length": 48, "rope.dimension_count": 8, "rope.freq_base": 1e5,
            "attention.layer_norm_rms_epsilon": 1e-5, "vocab_size": 50, "context_length": 256,
        }.items()},
    }  # fmt: skip
    mx.save_gguf(str(path), tensors, meta)
    return model
