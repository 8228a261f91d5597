"""Fused Triton attention kernels for NUMINA, each beside its plain-PyTorch reference.

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

__all__ = [
    "MAX_BIAS_COLUMNS",
    "TRITON_AVAILABLE",
    "attention_with_frame_lse",
    "attention_with_frame_lse_reference",
    "cross_attention_with_column_bias",
    "cross_attention_with_column_bias_reference",
    "cross_attention_with_noun_maps",
    "cross_attention_with_noun_maps_reference",
    "frame_attention_maps",
    "frame_attention_maps_reference",
    "triton_runs_on",
]
