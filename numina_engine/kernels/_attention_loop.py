"""The flash-attention key loop, once: Triton device functions that the three attention kernels
(frame_attention, cross_attention_noun_maps, cross_attention_column_bias) call.

Conventions shared by every caller: one program holds BLOCK_M queries q [BLOCK_M, HEAD_DIM] of one
(batch, head); logits are in base 2 (qk_scale = log2(e) / sqrt(D), so exp2 serves the softmax);
the running statistics are the row max m_i [BLOCK_M], the row sum l_i [BLOCK_M] (both float32,
relative to m_i) and the unnormalised output acc [BLOCK_M, HEAD_DIM] float32. Keys are addressed
from k_base / v_base (pointers to key 0 of this batch and head) with row strides stride_kl /
stride_vl; the head dimension is contiguous. MASKED blocks may reach past kv_len (keys there are
not loaded and get logit -inf); unmasked ones must lie below it.
"""
from __future__ import annotations

from ._triton import tl, triton_helper


@triton_helper
def load_key_block(k_base, v_base, cols, stride_kl, stride_vl, offs_d, kv_len, MASKED: tl.constexpr):
    """K^T [HEAD_DIM, BLOCK_N] and V [BLOCK_N, HEAD_DIM] of key positions `cols` [BLOCK_N]."""
    k_ptrs = k_base + cols[None, :] * stride_kl + offs_d[:, None]
    v_ptrs = v_base + cols[:, None] * stride_vl + offs_d[None, :]
    if MASKED:
        key_ok = cols < kv_len
        k = tl.load(k_ptrs, mask=key_ok[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v


@triton_helper
def key_block_logits(q, k, cols, kv_len, qk_scale, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Base-2 logits [BLOCK_M, BLOCK_N] float32 of q against K^T; -inf at keys >= kv_len when MASKED."""
    s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        s = tl.where((cols < kv_len)[None, :], s, float("-inf"))
    return s


@triton_helper
def online_softmax_update(s, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr):
    """Fold one key block's base-2 logits s [BLOCK_M, BLOCK_N] and values v into (m_i, l_i, acc).

    A row whose logits are all -inf leaves its statistics unchanged only if m_i is finite (start
    from a large negative number instead of -inf where that can happen)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton_helper
def attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl, lo, hi, kv_len, qk_scale, m_i, l_i, acc,
                      offs_n, offs_d,
                      BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Plain attention over the key blocks starting at lo, lo + BLOCK_N, ... < hi; returns (m_i, l_i, acc)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k, v = load_key_block(k_base, v_base, cols, stride_kl, stride_vl, offs_d, kv_len, MASKED)
        s = key_block_logits(q, k, cols, kv_len, qk_scale, MASKED, DOT_PRECISION)
        m_i, l_i, acc = online_softmax_update(s, v, m_i, l_i, acc, DOT_PRECISION)
    return m_i, l_i, acc


@triton_helper
def head_pointer(ptr, b, h, stride_b, stride_h):
    """ptr advanced to batch b, head h (int64 offsets: large tensors overflow int32)."""
    return ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton_helper
def query_block(Q, stride_qb, stride_ql, stride_qh, num_heads, q_len,
                BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """This program's batch b and head h (grid axis 1: b * num_heads + h), its query rows offs_m
    [BLOCK_M] (grid axis 0: blocks of BLOCK_M) and their queries q [BLOCK_M, HEAD_DIM] (zeros past q_len)."""
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = head_pointer(Q, b, h, stride_qb, stride_qh)
    q = tl.load(q_base + offs_m[:, None] * stride_ql + offs_d[None, :], mask=(offs_m < q_len)[:, None], other=0.0)
    return b, h, offs_m, q


@triton_helper
def store_query_rows(Out, b, h, stride_ob, stride_ol, stride_oh, offs_m, q_len, out, HEAD_DIM: tl.constexpr):
    """Write out [BLOCK_M, HEAD_DIM] (float32) to rows offs_m < q_len of Out's batch b, head h, in Out's dtype."""
    offs_d = tl.arange(0, HEAD_DIM)
    o_base = head_pointer(Out, b, h, stride_ob, stride_oh)
    tl.store(o_base + offs_m[:, None] * stride_ol + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=(offs_m < q_len)[:, None])
