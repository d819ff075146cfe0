"""refreekv_torch: the PyTorch backend of refreekv_edu (torch ops, Triton kernels, transformers integration).

Registered as the ``torch`` backend (entry point ``refreekv_torch:TorchBackend``). Importing this
package imports torch but neither triton nor transformers; both load on first use.

The transformers integration is ``compress(model, policy)`` (a context manager) and ``apply``,
from ``hf_compress``::

    with refreekv_torch.compress(model, rk.ReFreeKV()) as press:
        model.generate(**inputs, max_new_tokens=64)
    press.trace, press.stats
"""

from typing import Any

from .backend import TorchBackend

__all__ = ["TorchBackend", "compress", "apply", "Compressor", "PrunedLayer"]


def __getattr__(name: str) -> Any:
    if name in {"compress", "apply", "Compressor", "PrunedLayer"}:
        from . import hf_compress

        return getattr(hf_compress, name)
    raise AttributeError(f"module 'refreekv_torch' has no attribute {name!r}")
