"""Gated residual add into the float32 residual stream, in place:

    hidden[b, l] += y[b, l] * gate[b]        (or hidden[b, l] += y[b, l] without a gate)

y (a block branch's output in the compute dtype) is widened to float32 in registers; hidden is read
and written once (10 bytes per element for a bf16 y, where the unfused PyTorch ops move ~26).

The launcher reads no tensor values: a call can be captured in a CUDA graph.
"""
from __future__ import annotations

import math

import torch

from ._rows import RowLaunch, check_per_batch, check_tokens, row_launch
from ._triton import next_power_of_2, require_triton, tl, triton_kernel

Y_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# D = 1536 (padded to 2048): four tokens per program, 8 warps.
GPU_LAUNCH = RowLaunch(rows=4, num_warps=8)


@triton_kernel
def _gated_residual_add_kernel(
    Hidden, Y, Gate,
    stride_hb, stride_hl, stride_yb, stride_yl, stride_gate_b,
    seq_len, dim,
    GATED: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program: BLOCK_ROWS tokens of batch element b, whole rows of BLOCK_D >= dim channels.
    b = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    mask = (rows < seq_len)[:, None] & col_ok[None, :]

    h_ptrs = Hidden + b.to(tl.int64) * stride_hb + rows[:, None] * stride_hl + cols[None, :]
    hidden = tl.load(h_ptrs, mask=mask, other=0.0)
    y = tl.load(Y + b.to(tl.int64) * stride_yb + rows[:, None] * stride_yl + cols[None, :],
                mask=mask, other=0.0).to(tl.float32)
    if GATED:
        gate = tl.load(Gate + b * stride_gate_b + cols, mask=col_ok, other=0.0)
        y = y * gate[None, :]
    tl.store(h_ptrs, hidden + y, mask=mask)


def _check_args(hidden, y, gate, *, what: str) -> None:
    """Shape/dtype/device checks only (no tensor values are read)."""
    check_tokens(hidden, "hidden", what=what)
    check_tokens(y, "y", what=what)
    if hidden.dtype != torch.float32:
        raise TypeError(f"{what}: hidden must be float32 (the residual stream), got {hidden.dtype}")
    if y.dtype not in Y_DTYPES:
        raise TypeError(f"{what}: y must be one of {Y_DTYPES}, got {y.dtype}")
    if y.shape != hidden.shape or y.device != hidden.device:
        raise ValueError(f"{what}: y must match hidden's shape {tuple(hidden.shape)} and device {hidden.device}, "
                         f"got {tuple(y.shape)} on {y.device}")
    if gate is not None:
        check_per_batch(gate, "gate", hidden, what=what)


def gated_residual_add(hidden: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """hidden += y * gate[b] (y widened to float32), in place.

    Args:
        hidden: float32 [B, L, D], last dimension contiguous; updated in place.
        y: [B, L, D] float32, float16 or bfloat16, last dimension contiguous.
        gate: float32 [B, D] (last dimension contiguous), or None: hidden += y.
    Returns:
        hidden.
    """
    what = "gated_residual_add"
    _check_args(hidden, y, gate, what=what)
    require_triton(hidden, y.dtype, what=what)
    batch, seq_len, dim = hidden.shape
    launch = row_launch(GPU_LAUNCH)
    gated = gate is not None
    grid = (math.ceil(seq_len / launch.rows), batch)
    _gated_residual_add_kernel[grid](
        hidden, y, gate if gated else hidden,
        hidden.stride(0), hidden.stride(1), y.stride(0), y.stride(1), gate.stride(0) if gated else 0,
        seq_len, dim,
        GATED=gated, BLOCK_ROWS=launch.rows, BLOCK_D=next_power_of_2(dim),
        num_warps=launch.num_warps,
    )
    return hidden


def gated_residual_add_reference(hidden: torch.Tensor, y: torch.Tensor,
                                  gate: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch gated_residual_add (same contract): y.float() [* gate], then the in-place add."""
    _check_args(hidden, y, gate, what="gated_residual_add_reference")
    return hidden.add_(y.float() * gate[:, None] if gate is not None else y.float())
