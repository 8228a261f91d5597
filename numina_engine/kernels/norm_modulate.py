"""LayerNorm of the float32 residual stream, optionally affine and modulated, written in the
compute dtype, in one pass:

    out[b, l] = ((x[b, l] - mean) / sqrt(var + eps) [* weight + bias]) [* (1 + scale[b]) + shift[b]]

Statistics and arithmetic are float32 (mean, then the mean squared deviation from it, both over
registers); x is read once as float32 and out written once in float32, float16 or bfloat16
(6 bytes per element at bf16, where the unfused PyTorch ops move ~34).

The launcher reads no tensor values: a call can be captured in a CUDA graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._rows import RowLaunch, check_per_batch, check_per_channel, check_tokens, row_launch
from ._triton import new_output, next_power_of_2, require_triton, tl, triton_kernel

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# D = 1536 (padded to 2048) float32 in, bf16 out: one token per program, 8 warps (8 elements a thread).
GPU_LAUNCH = RowLaunch(rows=1, num_warps=8)


@triton_kernel
def _layer_norm_modulate_kernel(
    X, Out, Weight, Bias, Scale, Shift,
    stride_xb, stride_xl, stride_ob, stride_ol, stride_scale_b, stride_shift_b,
    seq_len, dim, eps,
    AFFINE: tl.constexpr, MODULATE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program: BLOCK_ROWS tokens of batch element b, whole rows of BLOCK_D >= dim channels.
    b = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    mask = (rows < seq_len)[:, None] & col_ok[None, :]

    x = tl.load(X + b.to(tl.int64) * stride_xb + rows[:, None] * stride_xl + cols[None, :], mask=mask, other=0.0)
    mean = tl.sum(x, axis=1) / dim
    centered = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(centered * centered, axis=1) / dim
    y = centered * tl.rsqrt(var + eps)[:, None]
    if AFFINE:
        weight = tl.load(Weight + cols, mask=col_ok, other=0.0)
        bias = tl.load(Bias + cols, mask=col_ok, other=0.0)
        y = y * weight[None, :] + bias[None, :]
    if MODULATE:
        scale = tl.load(Scale + b * stride_scale_b + cols, mask=col_ok, other=0.0)
        shift = tl.load(Shift + b * stride_shift_b + cols, mask=col_ok, other=0.0)
        y = y * (1.0 + scale[None, :]) + shift[None, :]
    tl.store(Out + b.to(tl.int64) * stride_ob + rows[:, None] * stride_ol + cols[None, :],
             y.to(Out.dtype.element_ty), mask=mask)


def _check_args(x, weight, bias, scale, shift, out_dtype, *, what: str) -> None:
    """Shape/dtype/device checks only (no tensor values are read)."""
    check_tokens(x, "x", what=what)
    if x.dtype != torch.float32:
        raise TypeError(f"{what}: x must be float32 (the residual stream), got {x.dtype}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{what}: out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if (weight is None) != (bias is None):
        raise ValueError(f"{what}: give weight and bias together (an affine LayerNorm) or neither")
    if (scale is None) != (shift is None):
        raise ValueError(f"{what}: give scale and shift together (modulation) or neither")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_per_channel(t, name, x, what=what)
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            check_per_batch(t, name, x, what=what)


def layer_norm_modulate(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    *,
    eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """LayerNorm over the last dimension, then the optional affine map and modulation, in one pass.

    Args:
        x: float32 [B, L, D], last dimension contiguous (the residual stream).
        weight, bias: float32 [D] each, or both None (no affine map).
        scale, shift: float32 [B, D] each (last dimension contiguous), or both None (no modulation).
        eps: added to the variance.
        out_dtype: float32, float16 or bfloat16.
    Returns:
        [B, L, D] in out_dtype: (LayerNorm(x) * weight + bias) * (1 + scale[b]) + shift[b], in float32
        and rounded once.
    """
    what = "layer_norm_modulate"
    _check_args(x, weight, bias, scale, shift, out_dtype, what=what)
    require_triton(x, out_dtype, what=what)
    batch, seq_len, dim = x.shape
    out = new_output((batch, seq_len, dim), out_dtype, x.device)
    launch = row_launch(GPU_LAUNCH)
    affine, modulate = weight is not None, scale is not None
    grid = (math.ceil(seq_len / launch.rows), batch)
    _layer_norm_modulate_kernel[grid](
        x, out, weight if affine else x, bias if affine else x, scale if modulate else x, shift if modulate else x,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        scale.stride(0) if modulate else 0, shift.stride(0) if modulate else 0,
        seq_len, dim, eps,
        AFFINE=affine, MODULATE=modulate, BLOCK_ROWS=launch.rows, BLOCK_D=next_power_of_2(dim),
        num_warps=launch.num_warps,
    )
    return out


def layer_norm_modulate_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    *,
    eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Plain-PyTorch layer_norm_modulate (same contract): F.layer_norm, then `* (1 + scale) + shift`
    as separate float32 ops, then the cast."""
    _check_args(x, weight, bias, scale, shift, out_dtype, what="layer_norm_modulate_reference")
    out = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    if scale is not None:
        out = out * (1 + scale[:, None]) + shift[:, None]
    return out.to(out_dtype)
