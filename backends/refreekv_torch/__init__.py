"""refreekv_torch: the PyTorch backend of refreekv_edu (torch ops, Triton kernels, transformers integration).

Registered as the ``torch`` backend (entry point ``refreekv_torch:TorchBackend``). Importing this
package imports torch but neither triton nor transformers; both load on first use.
"""

from .backend import TorchBackend

__all__ = ["TorchBackend"]
