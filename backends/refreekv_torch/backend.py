"""The PyTorch backend: the array vocabulary in torch ops, the two fused ops in Triton when possible.

Which implementation of the fused ops (``window_scores``, ``retained_norms``) runs is decided per call:

=====================  =====================================================================
``kernels=``           what runs
=====================  =====================================================================
``"auto"`` (default)   Triton kernels for CUDA tensors (or for any tensor when the process was
                       started with ``TRITON_INTERPRET=1``, Triton's CPU interpreter); torch ops otherwise
``"triton"``           always the Triton kernels (errors on CPU tensors without the interpreter)
``"torch"``            always the torch-op versions (the :class:`~refreekv_edu.backend.Backend` defaults)
=====================  =====================================================================

The environment variable ``REFREEKV_TORCH_KERNELS`` sets the default for backends created without
an explicit ``kernels=`` (e.g. by ``get_backend("torch")``).

The backend holds no mutable state: the kernel mode and the device are fixed when it is made, and
everything else is decided per call. Devices: torch tensors stay on their device; numpy arrays and
lists go to the backend's ``device`` (the CPU when none was given). The core builds small helper arrays
(position scores) from numpy, so integrations pin a backend to the model's device with :meth:`TorchBackend.on`;
ops that combine a helper with a model tensor (``take_along_axis``) move the helper to the tensor.
A Triton kernel that fails in ``"auto"`` mode falls back to the torch ops for that call only, with a warning.

The CUDA path (compiled Triton kernels) has not been executed yet: this project was built on CPUs
(kernels checked with the Triton interpreter). ``bench/gpu_check.py`` verifies it on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from refreekv_edu.backend import Backend, BackendConfigError

KERNEL_MODES = ("auto", "triton", "torch")
#: Environment variable with the default ``kernels`` mode.
KERNELS_ENV = "REFREEKV_TORCH_KERNELS"

_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def triton_installed() -> bool:
    """True when the ``triton`` package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreter_on() -> bool:
    """True when Triton runs (or, once imported, will run) its CPU interpreter in this process.

    The interpreter must be requested with ``TRITON_INTERPRET=1`` before triton is first imported;
    after that, the variable only counts while it is still set.
    """
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on", "yes"):
        return False
    if "triton" not in sys.modules:
        return True
    from . import triton_kernels

    return triton_kernels.interpreter_active()


class TorchBackend(Backend):
    """PyTorch implementation of the backend vocabulary; Triton kernels for the fused ops.

    Args:
        kernels: ``"auto"``, ``"triton"`` or ``"torch"`` (see the module docstring); ``None`` reads
            ``$REFREEKV_TORCH_KERNELS`` and defaults to ``"auto"``.
        device: where numpy inputs go (``"cpu"``, ``"cuda"``, ...); ``None``: the CPU (torch inputs keep theirs).
    """

    name = "torch"

    def __init__(self, kernels: str | None = None, device: str | torch.device | None = None) -> None:
        mode = kernels if kernels is not None else os.environ.get(KERNELS_ENV, "auto")
        if mode not in KERNEL_MODES:
            if kernels is not None:
                raise ValueError(f"kernels must be one of {', '.join(KERNEL_MODES)}, got {mode!r}")
            raise BackendConfigError(
                f"the environment variable {KERNELS_ENV} must be one of {', '.join(KERNEL_MODES)} "
                f"(or unset, meaning auto), got {mode!r}"
            )
        if mode == "triton" and not triton_installed():
            raise ValueError("kernels='triton' needs the triton package: pip install 'refreekv_edu[triton]'")
        self.kernels = mode
        self.device = torch.device(device) if device is not None else None

    def set_threads(self, n: int) -> int | None:
        """``torch.set_num_threads(n)`` (intra-op CPU threads, process-wide: it is torch's own setting)."""
        torch.set_num_threads(int(n))
        return torch.get_num_threads()

    def next_to(self, x: Any) -> TorchBackend:
        """See :meth:`refreekv_edu.backend.Backend.next_to`: pinned to ``x``'s (any shape) device unless ``device`` was given."""
        if self.device is not None or not isinstance(x, torch.Tensor):
            return self
        return self.on(x.device)

    def on(self, device: str | torch.device) -> TorchBackend:
        """This backend with numpy inputs going to ``device`` (``self`` when it already does): a new, equal backend."""
        device = torch.device(device)
        if self.device == device:
            return self
        return TorchBackend(kernels=self.kernels, device=device)

    # ------------------------------------------------------------------ vocabulary
    def asarray(self, x: Any, dtype: str = "float32") -> torch.Tensor:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if isinstance(x, torch.Tensor):
            return x.to(device=self.device or x.device, dtype=_DTYPES[dtype])
        # numpy, lists, or another backend's array (mlx arrays convert through numpy).
        return torch.as_tensor(np.asarray(x), dtype=_DTYPES[dtype], device=self.device or "cpu")

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # numpy has no bfloat16
        return x.detach().cpu().numpy()

    def is_native(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def all_finite(self, x: torch.Tensor) -> bool:
        if x.numel() == 0 or not x.is_floating_point():
            return True
        # min/max propagate NaN and see +-inf, in one reduction pass: ~10x faster than isfinite(x).all().
        low, high = torch.aminmax(x)
        return bool(torch.isfinite(low)) and bool(torch.isfinite(high))

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)

    def transpose_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)

    def softmax(self, x: torch.Tensor, axis: int = -1) -> torch.Tensor:
        return torch.softmax(x, dim=axis)

    def cumsum(self, x: torch.Tensor, axis: int = -1, reverse: bool = False) -> torch.Tensor:
        if not reverse:
            return torch.cumsum(x, dim=axis)
        # Flip, scan, flip back: each output is a sum of the entries at and after it, never total - prefix.
        return torch.flip(torch.cumsum(torch.flip(x, dims=(axis,)), dim=axis), dims=(axis,))

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)

    def sum(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        return torch.sum(x, dim=axis)

    def mean(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        return torch.mean(x, dim=axis)

    def argsort(self, x: torch.Tensor, axis: int = -1) -> torch.Tensor:
        # stable=True: equal scores keep position order, so ties evict the older position first.
        return torch.sort(x, dim=axis, stable=True).indices

    def take_along_axis(self, x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
        # idx may come from a helper built from numpy (the recency order): it goes where x is.
        return torch.take_along_dim(x, torch.as_tensor(idx, device=x.device), dim=axis)

    def max_pool1d(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        half = kernel // 2
        # Pad with -inf (never the max), then take the max of every length-`kernel` window: same size out.
        padded = F.pad(x, (half, kernel - 1 - half), value=float("-inf"))
        return padded.unfold(-1, kernel, 1).amax(dim=-1)

    def causal_window_mask(self, window: int, length: int) -> torch.Tensor:
        device = self.device or torch.device("cpu")
        rows = torch.arange(length - window, length, device=device)[:, None]
        cols = torch.arange(length, device=device)[None, :]
        zero = torch.zeros((), device=device)
        return torch.where(cols <= rows, zero, torch.full((), float("-inf"), device=device))

    def repeat_heads(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        return x if groups == 1 else torch.repeat_interleave(x, groups, dim=0)

    def group_sum(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        return x.reshape(x.shape[0] // groups, groups, *x.shape[1:]).sum(dim=1)

    # --------------------------------------------------------------- fused ops
    def kernel_path(self, x: torch.Tensor) -> tuple[str, str]:
        """Which implementation the fused ops use for tensors like ``x``: ``("triton" | "torch", reason)``.

        ``x`` may have any shape and dtype: only its device is read (CUDA tensors go to Triton in ``"auto"`` mode).
        """
        if self.kernels == "torch":
            return "torch", "kernels='torch' requested"
        if self.kernels == "triton":
            return "triton", "kernels='triton' requested"
        if not triton_installed():
            return "torch", "triton is not installed"
        if x.device.type == "cuda":
            return "triton", "CUDA tensors"
        if triton_interpreter_on():
            return "triton", "TRITON_INTERPRET=1 (Triton's CPU interpreter, slow, for checking kernels)"
        return "torch", f"tensors on {x.device.type} (Triton compiles for GPUs; set TRITON_INTERPRET=1 to interpret)"

    def _run_fused(self, op: str, x: torch.Tensor, *args: Any) -> Any:
        """Run fused op ``op`` with the Triton kernels or the torch-op default, as :meth:`kernel_path` says.

        The torch-op default runs on a backend pinned to ``x``'s device (its helper arrays, the causal mask,
        are made there). In ``"auto"`` mode a kernel that fails (a Triton or driver version the kernels were
        never run with, say) falls back to the torch ops *for this call only*, with a warning each time;
        ``kernels="triton"`` raises.
        """
        torch_ops = getattr(super(TorchBackend, self.on(x.device)), op)
        if self.kernel_path(x)[0] == "torch":
            return torch_ops(x, *args)
        from . import triton_kernels

        try:
            return getattr(triton_kernels, op)(x, *args)
        except triton_kernels.KernelInputError:
            raise  # bad input: the caller's problem, not the kernel's
        except Exception as exc:
            if self.kernels == "triton":
                raise
            warnings.warn(
                f"refreekv_torch: Triton kernel {op!r} failed ({type(exc).__name__}: {exc}); this call uses torch "
                "ops instead, and the next call tries the kernel again. Please report this with the output of "
                "bench/gpu_check.py.",
                RuntimeWarning,
                stacklevel=3,
            )
            return torch_ops(x, *args)

    def window_scores(
        self, queries: torch.Tensor, keys: torch.Tensor, scale: float, window: int, n_cols: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`refreekv_edu.backend.Backend.window_scores`: ``(Hq, r, D), (Hkv, L, D) -> 2 x (Hq, n_cols)``."""
        n = keys.shape[1] - window if n_cols is None else n_cols
        if n <= 0:  # no candidates: nothing to launch
            empty = keys.new_zeros((queries.shape[0], 0), dtype=torch.float32)
            return empty, empty.clone()
        # n_cols = L - r for the window rankings (H2O, SnapKV); n_cols = L, r = 1 for the paper's recency ranking.
        return self._run_fused("window_scores", queries.float(), keys.float(), scale, window, n)

    def retained_norms(self, a_sorted: torch.Tensor) -> torch.Tensor:
        """See :meth:`refreekv_edu.backend.Backend.retained_norms`: ``(Hq, n) -> (n,)``."""
        return self._run_fused("retained_norms", a_sorted.float())

    # ------------------------------------------------------- model integration
    def load_model(self, name_or_path: str, **kwargs: Any) -> tuple[Any, Any]:
        """Load a transformers ``(model, tokenizer)``; see :func:`refreekv_torch.loading.load_model`."""
        from .loading import load_model

        return load_model(name_or_path, **kwargs)

    def owns_model(self, model: Any) -> bool:
        # A transformers model is an nn.Module with a config; checked without importing transformers.
        return isinstance(model, torch.nn.Module) and hasattr(model, "config")

    def generate(self, model: Any, tokenizer: Any, prompt: Any, policy: Any, **kwargs: Any) -> Any:
        """Prefill -> decide -> compact -> decode; see :func:`refreekv_torch.generation.generate`."""
        from .generation import generate

        return generate(model, tokenizer, prompt, policy, **kwargs)

    def has_cuda(self) -> bool:
        """True when torch sees a CUDA GPU."""
        return torch.cuda.is_available()

    # ---------------------------------------------------------------- info
    def describe(self) -> str:
        device = self.device or torch.device("cuda" if self.has_cuda() else "cpu")
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        path, reason = self.kernel_path(torch.empty(0, device=device))
        kernels = "Triton kernels" if path == "triton" else "torch ops"
        return f"torch {torch.__version__} on {device} ({where}); fused ops: {kernels} [{reason}]"
