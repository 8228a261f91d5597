"""Fused Triton kernels, each beside its plain-PyTorch reference: NUMINA's attention kernels, and
the DiT block's fused elementwise work (modulated LayerNorm, q/k RMSNorm + RoPE, gated residual add).

Importable without triton: the launchers then (and for CPU tensors unless TRITON_INTERPRET=1)
run the references.
"""
from ._triton import TRITON_AVAILABLE, triton_runs_on
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
from .gated_residual import gated_residual_add, gated_residual_add_reference
from .norm_modulate import layer_norm_modulate, layer_norm_modulate_reference
from .rms_norm_rope import apply_rope, qk_norm_rope, qk_norm_rope_reference



def kernel_or_reference(kernel, use_kernel: bool):
    """`kernel` when `use_kernel`, else its PyTorch reference (same signature, `<name>_reference` here)."""
    return kernel if use_kernel else globals()[kernel.__name__ + "_reference"]


__all__ = [
    "MAX_BIAS_COLUMNS",
    "TRITON_AVAILABLE",
    "apply_rope",
    "attention_with_frame_lse",
    "attention_with_frame_lse_reference",
    "cross_attention_with_column_bias",
    "cross_attention_with_column_bias_reference",
    "cross_attention_with_noun_maps",
    "cross_attention_with_noun_maps_reference",
    "frame_attention_maps",
    "frame_attention_maps_reference",
    "gated_residual_add",
    "gated_residual_add_reference",
    "kernel_or_reference",
    "layer_norm_modulate",
    "layer_norm_modulate_reference",
    "qk_norm_rope",
    "qk_norm_rope_reference",
    "triton_runs_on",
]
