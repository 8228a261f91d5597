"""Launch plumbing shared by the attention kernels: Triton availability, dispatch, launch
configurations and input checks.

Kernels run compiled on CUDA tensors. When TRITON_INTERPRET=1 was set before triton was imported
(the CPU tests do this), they run in Triton's interpreter instead, on CPU or CUDA tensors (float32
and float16 only: the interpreter computes bfloat16 wrongly). Triton fixes that choice for its own
library at import time, so one process cannot both interpret and compile; TRITON_INTERPRETED
records which it is. A launcher given inputs its kernel cannot serve raises (require_triton); the
engine picks kernel or reference beforehand, in one place (dispatch.KernelChoice).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch

try:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    TRITON_AVAILABLE = True
except ImportError:  # CPU-only installs: kernel definitions still import, launchers use the references.
    tl = SimpleNamespace(constexpr="constexpr")  # only ever read as a parameter annotation
    TRITON_AVAILABLE = False

LOG2E = 1.4426950408889634  # log2(e): softmax in base 2, exp(x) = exp2(x * LOG2E)
LN2 = 0.6931471805599453    # ln(2): a base-2 log-sum-exp times LN2 is in natural units

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes (tokens) and scheduling of one kernel launch."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Small tiles make tiny test shapes span several blocks; larger ones would leave blocks unsplit,
# smaller ones slow the interpreter (its cost grows with the number of tile iterations).
INTERPRETER_CONFIG = LaunchConfig(block_m=32, block_n=32, num_warps=1, num_stages=1)


# Triton's own library functions (tl.cdiv, ...) are interpreted iff TRITON_INTERPRET was set when
# triton.language was imported; our kernels must match them.
TRITON_INTERPRETED = TRITON_AVAILABLE and isinstance(tl.cdiv, InterpretedFunction)


def _kernel_constant(value: float):
    """`value` as compiled kernel bodies may read a global (a tl.constexpr), or the plain float
    that interpreted bodies and host code use."""
    return tl.constexpr(value) if TRITON_AVAILABLE and not TRITON_INTERPRETED else value


KERNEL_LOG2E = _kernel_constant(LOG2E)   # LOG2E and LN2 for use inside kernel bodies
KERNEL_LN2 = _kernel_constant(LN2)


def triton_runs_on(t: torch.Tensor) -> bool:
    """Whether the Triton kernels (rather than the PyTorch references) serve inputs like `t`.

    Compiled: CUDA tensors. Interpreted (TRITON_INTERPRETED): CPU or CUDA tensors except bfloat16.
    """
    if not TRITON_AVAILABLE:
        return False
    if TRITON_INTERPRETED:
        return t.device.type in ("cpu", "cuda") and t.dtype != torch.bfloat16
    return t.device.type == "cuda"


def triton_serves(t: torch.Tensor, *dtypes: torch.dtype) -> bool:
    """`triton_runs_on(t)`, with no bfloat16 among `dtypes` (other tensors', e.g. an output's) when interpreting."""
    return triton_runs_on(t) and not (TRITON_INTERPRETED and torch.bfloat16 in dtypes)


def require_triton(t: torch.Tensor, *dtypes: torch.dtype, what: str) -> None:
    """Launchers run their kernel or fail: which of a kernel and its reference serves the engine is
    decided once, by kernels.dispatch.KernelChoice. Raises where Triton cannot serve `t` here."""
    if not triton_serves(t, *dtypes):
        raise ValueError(f"{what}: Triton cannot run on {t.dtype} tensors on {t.device} in this process (compiled: "
                         f"CUDA tensors; interpreted with TRITON_INTERPRET=1: no bfloat16); call {what}_reference, "
                         "or pick with KernelChoice('auto' or 'reference')")


class LazyKernel:
    """A Triton kernel body, built on first launch as a compiled JITFunction or, in an interpreted
    process (TRITON_INTERPRETED), as an InterpretedFunction.

    Kernels wrapped this way may call device functions made by `triton_helper` (and tl's own).
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._kernel = None

    def __getitem__(self, grid):
        """The kernel launcher for `grid`, as triton's kernel[grid](...)."""
        if not TRITON_AVAILABLE:
            raise RuntimeError("triton is not installed; use the PyTorch reference instead")
        if self._kernel is None:
            self._kernel = InterpretedFunction(self.fn) if TRITON_INTERPRETED else JITFunction(self.fn)
        return self._kernel[grid]


def triton_kernel(fn: Callable) -> LazyKernel:
    """Decorator: wrap a Triton kernel body as a LazyKernel."""
    return LazyKernel(fn)


def triton_helper(fn: Callable):
    """Decorator: a Triton device function that kernels call (the tutorial's `_attn_fwd_inner`
    pattern), built now as a JITFunction, or an InterpretedFunction in an interpreted process; the
    plain function where triton is missing (then no kernel launches). Global names a helper reads
    must be helpers too or constexpr values."""
    if not TRITON_AVAILABLE:
        return fn
    return InterpretedFunction(fn) if TRITON_INTERPRETED else JITFunction(fn)


def launch_config(gpu_config: LaunchConfig) -> LaunchConfig:
    """`gpu_config` when compiling, the small interpreter configuration when interpreting."""
    return INTERPRETER_CONFIG if TRITON_INTERPRETED else gpu_config


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact fp32 products for fp32 inputs (tf32 would cost ~1e-3 relative)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised output buffer; every element is written by the kernel that fills it."""
    return torch.empty(shape, dtype=dtype, device=device)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, what: str) -> None:
    """Validate attention inputs q [B, Lq, H, D] and k, v [B, Lk, H, D] (same dtype and device)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{what}: {name} must be [B, L, H, D], got shape {tuple(t.shape)}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{what}: q must be float32, float16 or bfloat16, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{what}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"{what}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"{what}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    b, _, h, d = q.shape
    if k.shape[0] != b or k.shape[2] != h or k.shape[3] != d:
        raise ValueError(f"{what}: k/v [B, Lk, H, D] must match q's B={b}, H={h}, D={d}, got {tuple(k.shape)}")
    if q.shape[1] == 0 or k.shape[1] == 0:
        raise ValueError(f"{what}: empty sequence (q {tuple(q.shape)}, k {tuple(k.shape)})")


def check_head_dim(q: torch.Tensor, *, what: str) -> None:
    """The Triton kernels keep head_dim a compile-time power of two."""
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{what}: head_dim must be one of {SUPPORTED_HEAD_DIMS} for the Triton kernels, got {d}")


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its last dimension is contiguous, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()
