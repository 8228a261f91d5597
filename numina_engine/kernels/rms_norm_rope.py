"""q/k RMSNorm over the full width (all heads together) and rotary position embedding, in one pass:

    y = x * rsqrt(mean(x^2) + eps) * weight                    (over the D = H * head_dim channels)
    out[b, l, h, 2i]   = y[2i] cos[l, i] - y[2i+1] sin[l, i]
    out[b, l, h, 2i+1] = y[2i] sin[l, i] + y[2i+1] cos[l, i]   (i < head_dim / 2, same table for every head)

x (a q or k projection) is read once in its dtype and out written once in the same dtype; the
arithmetic is float32. Either step can be left out: no weight, no normalisation (q/k without
RMSNorm); no tables, no rotation (cross-attention q/k). The tables carry whatever axis split the
caller's RoPE uses (Wan's frame/height/width split is built in the model).

The launcher reads no tensor values: a call can be captured in a CUDA graph.
"""
from __future__ import annotations

import math

import torch

from ._rows import RowLaunch, check_per_channel, check_tokens, row_launch
from ._triton import new_output, next_power_of_2, require_triton, tl, triton_kernel

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# D = 1536 (768 channel pairs, padded to 1024) bf16 in and out: one token per program, 8 warps.
GPU_LAUNCH = RowLaunch(rows=1, num_warps=8)


@triton_kernel
def _qk_norm_rope_kernel(
    X, Out, Weight, Cos, Sin,
    stride_xb, stride_xl, stride_ob, stride_ol, stride_cos_l, stride_sin_l,
    seq_len, dim, half_head_dim, eps,
    NORM: tl.constexpr, ROPE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_PAIRS: tl.constexpr,
):
    # One program: BLOCK_ROWS tokens of batch element b, as [rows, channel pairs, 2] tiles.
    b = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    pairs = tl.arange(0, BLOCK_PAIRS)
    channels = 2 * pairs[:, None] + tl.arange(0, 2)[None, :]                     # [BLOCK_PAIRS, 2]
    row_ok = rows < seq_len
    pair_ok = pairs < dim // 2
    mask = row_ok[:, None, None] & pair_ok[None, :, None]                        # [rows, pairs, 1]

    x = tl.load(X + b.to(tl.int64) * stride_xb + rows[:, None, None] * stride_xl + channels[None, :, :],
                mask=mask, other=0.0).to(tl.float32)
    if NORM:
        mean_square = tl.sum(tl.sum(x * x, axis=2), axis=1) / dim
        weight = tl.load(Weight + channels, mask=pair_ok[:, None], other=0.0)
        x = x * tl.rsqrt(mean_square + eps)[:, None, None] * weight[None, :, :]
    if ROPE:
        x_even, x_odd = tl.split(x)                                              # [rows, pairs] each
        angle = pairs % half_head_dim                                            # pair index within its head
        table_mask = row_ok[:, None] & pair_ok[None, :]
        cos = tl.load(Cos + rows[:, None] * stride_cos_l + angle[None, :], mask=table_mask, other=0.0)
        sin = tl.load(Sin + rows[:, None] * stride_sin_l + angle[None, :], mask=table_mask, other=0.0)
        x = tl.join(x_even * cos - x_odd * sin, x_even * sin + x_odd * cos)
    tl.store(Out + b.to(tl.int64) * stride_ob + rows[:, None, None] * stride_ol + channels[None, :, :],
             x.to(Out.dtype.element_ty), mask=mask)


def _check_args(x, weight, cos, sin, num_heads, *, what: str) -> None:
    """Shape/dtype/device checks only (no tensor values are read)."""
    check_tokens(x, "x", what=what)
    if x.dtype not in DTYPES:
        raise TypeError(f"{what}: x must be one of {DTYPES}, got {x.dtype}")
    _, seq_len, dim = x.shape
    if num_heads <= 0 or dim % num_heads or (dim // num_heads) % 2:
        raise ValueError(f"{what}: D = {dim} must split into num_heads = {num_heads} heads of an even size")
    if weight is not None:
        check_per_channel(weight, "weight", x, what=what)
    if (cos is None) != (sin is None):
        raise ValueError(f"{what}: give cos and sin together (RoPE) or neither")
    for name, t in (("cos", cos), ("sin", sin)):
        if t is None:
            continue
        expected = (seq_len, dim // num_heads // 2)
        if t.dtype != torch.float32 or tuple(t.shape) != expected:
            raise ValueError(f"{what}: {name} must be float32 [L, head_dim/2] = {list(expected)}, "
                             f"got {t.dtype} {tuple(t.shape)}")
        if t.device != x.device or t.stride(-1) != 1:
            raise ValueError(f"{what}: {name} must be on {x.device} with a contiguous last dimension, got "
                             f"{t.device} strides {t.stride()}")


def qk_norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    num_heads: int,
    eps: float,
) -> torch.Tensor:
    """RMSNorm over all D channels, split into heads, rotate channel pairs (2i, 2i+1) of each head.

    Args:
        x: [B, L, D] float32, float16 or bfloat16, last dimension contiguous (a q or k projection).
        weight: float32 [D] RMSNorm weight, or None: no normalisation.
        cos, sin: float32 [L, head_dim/2] each (last dimension contiguous), or both None: no rotation.
        num_heads: H, with D = H * head_dim and head_dim even.
        eps: added to the mean square.
    Returns:
        [B, L, H, head_dim] in x.dtype, computed in float32 and rounded once.
    """
    what = "qk_norm_rope"
    _check_args(x, weight, cos, sin, num_heads, what=what)
    require_triton(x, x.dtype, what=what)
    batch, seq_len, dim = x.shape
    out = new_output((batch, seq_len, num_heads, dim // num_heads), x.dtype, x.device)
    launch = row_launch(GPU_LAUNCH)
    norm, rope = weight is not None, cos is not None
    grid = (math.ceil(seq_len / launch.rows), batch)
    _qk_norm_rope_kernel[grid](
        x, out, weight if norm else x, cos if rope else x, sin if rope else x,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        cos.stride(0) if rope else 0, sin.stride(0) if rope else 0,
        seq_len, dim, dim // num_heads // 2, eps,
        NORM=norm, ROPE=rope, BLOCK_ROWS=launch.rows, BLOCK_PAIRS=next_power_of_2(dim // 2),
        num_warps=launch.num_warps,
    )
    return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of every head of x by the table angles.

    x: [B, L, H, D] float32; cos, sin: [L, D/2] float32. Returns [B, L, H, D] float32.
    """
    x_even, x_odd = x.unflatten(-1, (-1, 2)).unbind(-1)          # [B, L, H, D/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1).flatten(-2)


def qk_norm_rope_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    num_heads: int,
    eps: float,
) -> torch.Tensor:
    """Plain-PyTorch qk_norm_rope (same contract), one float32 op at a time."""
    _check_args(x, weight, cos, sin, num_heads, what="qk_norm_rope_reference")
    y = x.float()
    if weight is not None:
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + eps) * weight
    y = y.unflatten(-1, (num_heads, -1))
    if cos is not None:
        y = apply_rope(y, cos, sin)
    return y.to(x.dtype)
