"""Row centring for head scoring: out[b, i, j] = maps[b, i, j] - mean[b, j], rounded once to out_dtype.

Head scoring (numina/head_scoring.py) iterates on a low-precision copy of each within-frame map
minus an estimate of its mean row; this writes that copy in one read of the float32 maps.
"""
from __future__ import annotations

import torch

from ._triton import new_output, next_power_of_2, require_triton, tl, triton_kernel

CENTRE_TILE = 8192           # elements per program (rows x power-of-2 columns)
CENTRE_WARPS = 8


@triton_kernel
def _centre_rows_kernel(maps_ptr, mean_ptr, out_ptr, total_rows, n, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program: ROWS x BLOCK_N elements; row = b * n + i.
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (row < total_rows)[:, None] & (col < n)[None, :]
    offsets = row.to(tl.int64)[:, None] * n + col[None, :]
    mean_offsets = (row // n).to(tl.int64)[:, None] * n + col[None, :]
    values = tl.load(maps_ptr + offsets, mask=mask, other=0.0)
    means = tl.load(mean_ptr + mean_offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, (values - means).to(out_ptr.dtype.element_ty), mask=mask)


def _check_centre_args(maps: torch.Tensor, mean: torch.Tensor, out_dtype: torch.dtype, *, what: str) -> None:
    if maps.dim() != 3 or maps.shape[-1] != maps.shape[-2] or maps.dtype != torch.float32:
        raise ValueError(f"{what}: maps must be float32 [B, N, N], got {maps.dtype} {tuple(maps.shape)}")
    expected = (maps.shape[0], 1, maps.shape[-1])
    if tuple(mean.shape) != expected or mean.dtype != torch.float32 or mean.device != maps.device:
        raise ValueError(f"{what}: mean must be float32 {expected} on {maps.device}, got {mean.dtype} "
                         f"{tuple(mean.shape)} on {mean.device}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{what}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")


def centre_rows(maps: torch.Tensor, mean: torch.Tensor, out_dtype: torch.dtype, *,
                tile: int = CENTRE_TILE) -> torch.Tensor:
    """maps [B, N, N] float32 minus mean [B, 1, N] float32 (a row per map), as a new [B, N, N]
    tensor in out_dtype; `tile` (a power of 2): elements per program."""
    what = "centre_rows"
    _check_centre_args(maps, mean, out_dtype, what=what)
    require_triton(maps, out_dtype, what=what)
    maps, mean = maps.contiguous(), mean.contiguous()
    batch, n, _ = maps.shape
    out = new_output(tuple(maps.shape), out_dtype, maps.device)
    block_n = min(next_power_of_2(n), tile)
    rows = max(1, tile // block_n)
    grid = (-(-batch * n // rows), -(-n // block_n))
    _centre_rows_kernel[grid](maps, mean, out, batch * n, n, ROWS=rows, BLOCK_N=block_n, num_warps=CENTRE_WARPS)
    return out


def centre_rows_reference(maps: torch.Tensor, mean: torch.Tensor, out_dtype: torch.dtype, *,
                          tile: int = CENTRE_TILE) -> torch.Tensor:
    """Plain-PyTorch centre_rows: the float32 difference rounded once to out_dtype (`tile` unused)."""
    _check_centre_args(maps, mean, out_dtype, what="centre_rows_reference")
    out = torch.empty(maps.shape, dtype=out_dtype, device=maps.device)
    return torch.sub(maps, mean, out=out)
