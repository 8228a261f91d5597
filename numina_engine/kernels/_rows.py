"""Launch plumbing shared by the row-wise (per-token) kernels: layer_norm_modulate, qk_norm_rope and
gated_residual_add.

Each of them is memory-bound: a program takes `rows` consecutive tokens of one batch element, holds
each token's whole feature row (padded to a power of two) in registers, and reads and writes every
element once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._triton import TRITON_INTERPRETED


@dataclass(frozen=True)
class RowLaunch:
    """Tokens per program and warps per program of one row-wise kernel launch."""
    rows: int
    num_warps: int


# Several rows per program, so that the small test shapes end in a partial block of rows.
INTERPRETER_ROWS = RowLaunch(rows=4, num_warps=1)


def row_launch(gpu_launch: RowLaunch) -> RowLaunch:
    """`gpu_launch` when compiling, INTERPRETER_ROWS when interpreting."""
    return INTERPRETER_ROWS if TRITON_INTERPRETED else gpu_launch


def check_tokens(x: torch.Tensor, name: str, *, what: str) -> None:
    """x must be [B, L, D] with a contiguous last dimension (the kernels address rows by strides)."""
    if x.dim() != 3:
        raise ValueError(f"{what}: {name} must be [B, L, D], got shape {tuple(x.shape)}")
    if x.stride(-1) != 1:
        raise ValueError(f"{what}: {name}'s last dimension must be contiguous, got strides {x.stride()}")


def check_per_batch(t: torch.Tensor, name: str, x: torch.Tensor, *, what: str) -> None:
    """t (a modulation or gate vector) must be float32 [B, D] on x's device, last dimension contiguous."""
    batch, _, dim = x.shape
    if t.dtype != torch.float32 or tuple(t.shape) != (batch, dim):
        raise ValueError(f"{what}: {name} must be float32 [B, D] = [{batch}, {dim}], got {t.dtype} {tuple(t.shape)}")
    if t.device != x.device or t.stride(-1) != 1:
        raise ValueError(f"{what}: {name} must be on {x.device} with a contiguous last dimension, got {t.device} "
                         f"strides {t.stride()}")


def check_per_channel(t: torch.Tensor, name: str, x: torch.Tensor, *, what: str) -> None:
    """t (a norm weight or bias) must be float32 [D], contiguous, on x's device."""
    dim = x.shape[-1]
    if t.dtype != torch.float32 or tuple(t.shape) != (dim,) or not t.is_contiguous() or t.device != x.device:
        raise ValueError(f"{what}: {name} must be contiguous float32 [{dim}] on {x.device}, got {t.dtype} "
                         f"{tuple(t.shape)} on {t.device}")
