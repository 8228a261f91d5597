"""Fused Triton kernels, each beside its plain-PyTorch reference: NUMINA's attention kernels, and
the DiT block's fused elementwise work (modulated LayerNorm, q/k RMSNorm + RoPE, gated residual add),
and the opt-in FP8 self-attention (fp8_attention).

Importable without triton. Which of a kernel and its reference serves the engine is decided in
one place, `dispatch.KernelChoice` ("auto" | "triton" | "reference").
"""
from ._triton import TRITON_AVAILABLE, triton_runs_on
from .centre_rows import centre_rows, centre_rows_reference
from .cross_attention_column_bias import (
    MAX_BIAS_COLUMNS,
    cross_attention_with_column_bias,
    cross_attention_with_column_bias_reference,
)
from .cross_attention_noun_maps import cross_attention_with_noun_maps, cross_attention_with_noun_maps_reference
from .frame_attention import (
    attention_with_frame_lse,
    attention_with_frame_lse_reference,
    frame_attention_maps,
    frame_attention_maps_reference,
)
from .fp8_attention import fp8_attention, fp8_attention_reference
from .gated_residual import gated_residual_add, gated_residual_add_reference
from .norm_modulate import layer_norm_modulate, layer_norm_modulate_reference
from .rms_norm_rope import apply_rope, qk_norm_rope, qk_norm_rope_reference
from .dispatch import ATTENTION_CHOICES, KERNEL_CHOICES, KernelChoice  # noqa: E402  (after the kernels it maps)


__all__ = [
    "ATTENTION_CHOICES",
    "KERNEL_CHOICES",
    "KernelChoice",
    "MAX_BIAS_COLUMNS",
    "TRITON_AVAILABLE",
    "apply_rope",
    "attention_with_frame_lse",
    "attention_with_frame_lse_reference",
    "centre_rows",
    "centre_rows_reference",
    "cross_attention_with_column_bias",
    "cross_attention_with_column_bias_reference",
    "cross_attention_with_noun_maps",
    "cross_attention_with_noun_maps_reference",
    "fp8_attention",
    "fp8_attention_reference",
    "frame_attention_maps",
    "frame_attention_maps_reference",
    "gated_residual_add",
    "gated_residual_add_reference",
    "layer_norm_modulate",
    "layer_norm_modulate_reference",
    "qk_norm_rope",
    "qk_norm_rope_reference",
    "triton_runs_on",
]
