"""Cross-attention with an additive logit bias on a few key columns (NUMINA's layout modulation).

The bias is given compactly, as bias [Lq, T] on the key positions bias_columns [T] (T <= 64),
never as a dense [Lq, Lk] tensor. Inside the kernel, the key blocks between the first and the
last biased column get their bias tile scattered onto their columns by a one-hot matrix product on
the tensor cores: bias [BLOCK_M, T] @ onehot [T, BLOCK_N], with the float32 bias split into two
float16 halves (hi + lo) so that the product is exact to ~2^-22 relative; the other key blocks run
as plain attention. A column listed twice gets both biases.

The launcher reads no tensor values and picks every launch parameter from shapes alone, so a call
can be captured in a CUDA graph.
"""
from __future__ import annotations

import math

import torch

from ._attention_loop import (
    attend_key_blocks,
    head_pointer,
    load_key_block,
    online_softmax_update,
    query_block,
    store_query_rows,
)
from ._triton import (
    KERNEL_LOG2E,
    LOG2E,
    LaunchConfig,
    check_head_dim,
    check_qkv,
    dot_precision,
    last_dim_contiguous,
    launch_config,
    new_output,
    next_power_of_2,
    tl,
    require_triton,
    triton_kernel,
)
from .tiles import gpu_tiles

MAX_BIAS_COLUMNS = 64
# Natural-log units; larger magnitudes saturate the softmax anyway and would overflow float16 halves.
BIAS_LIMIT = 30000.0



@triton_kernel
def _cross_attention_column_bias_kernel(
    Q, K, V, Out, BiasColumns, Bias,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_ob, stride_ol, stride_oh,
    stride_bias_q, stride_bias_t,
    num_heads, q_len, kv_len, num_columns, bias_batch,
    qk_scale, bias_limit,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, COLUMNS_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One program: BLOCK_M queries of one (batch, head); logits in base 2 (qk_scale = log2(e) / sqrt(D)).
    b, h, offs_m, q = query_block(Q, stride_qb, stride_ql, stride_qh, num_heads, q_len, BLOCK_M, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_c = tl.arange(0, COLUMNS_PAD)

    k_base = head_pointer(K, b, h, stride_kb, stride_kh)
    v_base = head_pointer(V, b, h, stride_vb, stride_vh)
    row_ok = offs_m < q_len

    # Bias of this block's rows (zero for other batch elements), in base-2 logit units, as float16 hi + lo.
    columns = tl.load(BiasColumns + offs_c, mask=offs_c < num_columns, other=-1)
    bias_cols = tl.where(b == bias_batch, num_columns, 0)
    bias = tl.load(Bias + offs_m[:, None] * stride_bias_q + offs_c[None, :] * stride_bias_t,
                   mask=row_ok[:, None] & (offs_c[None, :] < bias_cols), other=0.0)
    bias = tl.minimum(tl.maximum(bias, -bias_limit), bias_limit) * KERNEL_LOG2E
    bias_hi = bias.to(tl.float16)
    bias_lo = (bias - bias_hi.to(tl.float32)).to(tl.float16)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Key blocks holding this program's biased columns: [bias_key_lo, bias_key_hi) (empty for the
    # other batch elements); only they pay for the one-hot products.
    column_used = (offs_c < bias_cols) & (columns >= 0) & (columns < kv_len)
    first_column = tl.min(tl.where(column_used, columns, kv_len), 0)
    last_column = tl.max(tl.where(column_used, columns, -1), 0)
    bias_key_lo = tl.where(last_column >= 0, first_column // BLOCK_N * BLOCK_N, 0)
    bias_key_hi = tl.where(last_column >= 0, (last_column // BLOCK_N + 1) * BLOCK_N, 0)
    full_key_end = kv_len // BLOCK_N * BLOCK_N
    # Four key ranges: before the biased blocks (no mask), the biased blocks (masked, biased), after
    # them up to the last full block (no mask), and the partial tail block (masked).
    m_i, l_i, acc = attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl, 0, bias_key_lo, kv_len, qk_scale,
                                      m_i, l_i, acc, offs_n, offs_d, BLOCK_N, False, DOT_PRECISION)
    for start_n in range(bias_key_lo, bias_key_hi, BLOCK_N):
        cols = start_n + offs_n
        k, v = load_key_block(k_base, v_base, cols, stride_kl, stride_vl, offs_d, kv_len, True)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        onehot = (columns[:, None] == cols[None, :]).to(tl.float16)   # [COLUMNS_PAD, BLOCK_N]
        s = tl.dot(bias_hi, onehot, s)
        s = tl.dot(bias_lo, onehot, s)
        s = tl.where((cols < kv_len)[None, :], s, float("-inf"))
        m_i, l_i, acc = online_softmax_update(s, v, m_i, l_i, acc, DOT_PRECISION)
    m_i, l_i, acc = attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl, bias_key_hi, full_key_end, kv_len,
                                      qk_scale, m_i, l_i, acc, offs_n, offs_d, BLOCK_N, False, DOT_PRECISION)
    m_i, l_i, acc = attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl, tl.maximum(full_key_end, bias_key_hi),
                                      kv_len, kv_len, qk_scale, m_i, l_i, acc, offs_n, offs_d, BLOCK_N, True,
                                      DOT_PRECISION)

    store_query_rows(Out, b, h, stride_ob, stride_ol, stride_oh, offs_m, q_len, acc / l_i[:, None], HEAD_DIM)


def _check_bias_args(q: torch.Tensor, bias_columns: torch.Tensor, bias: torch.Tensor, bias_batch: int, *,
                     what: str) -> None:
    """Shape/dtype/device checks only (no tensor values are read)."""
    if bias_columns.dim() != 1 or bias_columns.dtype != torch.int32:
        raise ValueError(f"{what}: bias_columns must be int32 [T], got {bias_columns.dtype} {tuple(bias_columns.shape)}")
    num_columns = bias_columns.shape[0]
    if num_columns > MAX_BIAS_COLUMNS:
        raise ValueError(f"{what}: at most {MAX_BIAS_COLUMNS} bias columns, got {num_columns}")
    expected = (q.shape[1], num_columns)
    if bias.dtype != torch.float32 or tuple(bias.shape) != expected:
        raise ValueError(f"{what}: bias must be float32 {expected} ([Lq, T]), got {bias.dtype} {tuple(bias.shape)}")
    if bias_columns.device != q.device or bias.device != q.device:
        raise ValueError(f"{what}: bias_columns ({bias_columns.device}) and bias ({bias.device}) must be on "
                         f"q's device {q.device}")
    if not 0 <= bias_batch < q.shape[0]:
        raise ValueError(f"{what}: bias_batch must be in [0, {q.shape[0]}), got {bias_batch}")


def cross_attention_with_column_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias_columns: torch.Tensor,
    bias: torch.Tensor,
    *,
    bias_batch: int = 0,
    tiles: LaunchConfig | None = None,
) -> torch.Tensor:
    """Cross-attention with bias[:, t] added to the scaled logits of key column bias_columns[t].

    Args:
        q: [B, Lq, H, D] video queries; k, v: [B, Lk, H, D] text keys/values (same dtype).
        bias_columns: int32 [T], T <= 64, key positions in [0, Lk) (others are ignored); repeats add up.
        bias: float32 [Lq, T], natural-log logit offsets shared by all heads, finite or -inf
            (magnitudes are clamped to BIAS_LIMIT).
        bias_batch: the batch element that gets the bias; the others get plain attention.
        tiles: GPU launch tiles instead of kernels/tiles.py's (bench/sweep_attention_tiles.py); kernel only.
    Returns:
        out: [B, Lq, H, D] in q.dtype, softmax(q k^T / sqrt(D) + bias scattered to its columns) v.
    """
    what = "cross_attention_with_column_bias"
    check_qkv(q, k, v, what=what)
    _check_bias_args(q, bias_columns, bias, bias_batch, what=what)
    require_triton(q, what=what)
    check_head_dim(q, what=what)

    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    bias_columns = bias_columns.contiguous()
    batch, q_len, heads, head_dim = q.shape
    num_columns = bias_columns.shape[0]
    out = new_output((batch, q_len, heads, head_dim), q.dtype, q.device)
    config = launch_config(gpu_tiles("cross_attention_with_column_bias", head_dim, tiles))
    grid = (math.ceil(q_len / config.block_m), batch * heads)
    _cross_attention_column_bias_kernel[grid](
        q, k, v, out, bias_columns, bias,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        bias.stride(0), bias.stride(1),
        heads, q_len, k.shape[1], num_columns, bias_batch,
        LOG2E / math.sqrt(head_dim), BIAS_LIMIT,
        HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        COLUMNS_PAD=max(16, next_power_of_2(num_columns)),
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out


def cross_attention_with_column_bias_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias_columns: torch.Tensor,
    bias: torch.Tensor,
    *,
    bias_batch: int = 0,
) -> torch.Tensor:
    """Plain-PyTorch cross_attention_with_column_bias: a dense [Lq, Lk] bias, float32 math (same contract)."""
    what = "cross_attention_with_column_bias_reference"
    check_qkv(q, k, v, what=what)
    _check_bias_args(q, bias_columns, bias, bias_batch, what=what)
    batch, q_len, heads, head_dim = q.shape
    kv_len = k.shape[1]
    # Out-of-range columns add zeros to a clamped column: no boolean indexing, so no host sync (capturable).
    in_range = (bias_columns >= 0) & (bias_columns < kv_len)
    dense_bias = torch.zeros(q_len, kv_len, dtype=torch.float32, device=q.device)
    dense_bias.index_add_(1, bias_columns.long().clamp(0, kv_len - 1),
                          bias.clamp(-BIAS_LIMIT, BIAS_LIMIT) * in_range.to(torch.float32))

    qf = q.float().transpose(1, 2)   # [B, H, Lq, D]
    kf = k.float().transpose(1, 2)
    vf = v.float().transpose(1, 2)
    out = torch.empty(batch, heads, q_len, head_dim, dtype=torch.float32, device=q.device)
    chunk = max(1, (1 << 26) // (batch * heads * kv_len))
    for start in range(0, q_len, chunk):
        rows = slice(start, start + chunk)
        logits = qf[:, :, rows] @ kf.transpose(-1, -2) / math.sqrt(head_dim)   # [B, H, rows, Lk]
        logits[bias_batch] += dense_bias[rows]
        out[:, :, rows] = torch.softmax(logits, dim=-1) @ vf
    return out.transpose(1, 2).to(q.dtype)
