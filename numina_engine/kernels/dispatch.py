"""The one place that picks a Triton kernel or its PyTorch reference: `KernelChoice`.

The engine holds one KernelChoice (`WanDiT.kernels`) and every fused call goes through its `pick`:

- "auto": the kernels on CUDA tensors outside autograd (they have no backward), for inputs they
  serve (the attention kernels: head sizes in SUPPORTED_HEAD_DIMS); the references elsewhere, on
  the CPU included (Triton's interpreter is for the kernel tests, not for generating videos);
- "triton": always the kernels; an input that Triton cannot run here is an error (compiled: CUDA
  tensors; interpreted, TRITON_INTERPRET=1: CPU or CUDA tensors, no bfloat16);
- "reference": always the PyTorch references.

It also carries which self-attention the DiT's plain self-attention calls use (`attention`): "bf16",
SDPA in the model's compute dtype, or "fp8", kernels/fp8_attention.py (e4m3 Q/K/V/P; its reference
is the same quantisation in torch). NUMINA's extraction call is exact whichever is chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ._triton import SUPPORTED_HEAD_DIMS, triton_runs_on
from .centre_rows import centre_rows, centre_rows_reference
from .cross_attention_column_bias import cross_attention_with_column_bias, cross_attention_with_column_bias_reference
from .cross_attention_noun_maps import cross_attention_with_noun_maps, cross_attention_with_noun_maps_reference
from .frame_attention import (
    attention_with_frame_lse,
    attention_with_frame_lse_reference,
    frame_attention_maps,
    frame_attention_maps_reference,
)
from .fp8_attention import FP8_HEAD_DIMS, fp8_attention, fp8_attention_reference
from .gated_residual import gated_residual_add, gated_residual_add_reference
from .norm_modulate import layer_norm_modulate, layer_norm_modulate_reference
from .rms_norm_rope import qk_norm_rope, qk_norm_rope_reference

KERNEL_CHOICES = ("auto", "triton", "reference")
ATTENTION_CHOICES = ("bf16", "fp8")

# Each kernel's PyTorch reference (same signature and contract).
REFERENCES: dict[Callable, Callable] = {
    attention_with_frame_lse: attention_with_frame_lse_reference,
    frame_attention_maps: frame_attention_maps_reference,
    cross_attention_with_noun_maps: cross_attention_with_noun_maps_reference,
    cross_attention_with_column_bias: cross_attention_with_column_bias_reference,
    layer_norm_modulate: layer_norm_modulate_reference,
    qk_norm_rope: qk_norm_rope_reference,
    gated_residual_add: gated_residual_add_reference,
    centre_rows: centre_rows_reference,
    fp8_attention: fp8_attention_reference,
}
# Kernels over [B, L, H, D] attention inputs and the head sizes they serve ("auto" falls back to the
# reference for others).
_ATTENTION_HEAD_DIMS = {attention_with_frame_lse: SUPPORTED_HEAD_DIMS, frame_attention_maps: SUPPORTED_HEAD_DIMS,
                        cross_attention_with_noun_maps: SUPPORTED_HEAD_DIMS,
                        cross_attention_with_column_bias: SUPPORTED_HEAD_DIMS, fp8_attention: FP8_HEAD_DIMS}


@dataclass(frozen=True)
class KernelChoice:
    """Which implementation serves the engine's fused calls: "auto", "triton" or "reference"; and which
    self-attention the plain self-attention calls use: "bf16" (SDPA) or "fp8"."""
    mode: str = "auto"
    attention: str = "bf16"

    def __post_init__(self) -> None:
        if self.mode not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {self.mode!r}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {self.attention!r}")

    def use_kernels(self, x: torch.Tensor) -> bool:
        """Whether fused work on `x` runs in the Triton kernels (else in the PyTorch references)."""
        if self.mode == "reference":
            return False
        if self.mode == "auto":
            return x.is_cuda and not torch.is_grad_enabled()
        if not triton_runs_on(x):
            raise ValueError(f"kernels='triton', but Triton cannot run on {x.dtype} tensors on {x.device} in this "
                             "process (compiled: CUDA tensors; interpreted with TRITON_INTERPRET=1: no bfloat16); "
                             "use kernels='auto' or 'reference'")
        return True

    def pick(self, kernel: Callable, x: torch.Tensor) -> Callable:
        """`kernel` or its reference (same signature) for inputs like `x`."""
        if kernel not in REFERENCES:
            raise KeyError(f"{getattr(kernel, '__name__', kernel)} is not a kernel with a registered reference")
        use = self.use_kernels(x)
        if use and self.mode == "auto" and x.shape[-1] not in _ATTENTION_HEAD_DIMS.get(kernel, (x.shape[-1],)):
            use = False
        return kernel if use else REFERENCES[kernel]


AUTO = KernelChoice("auto")
