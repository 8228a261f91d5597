"""Cross-attention that also yields NUMINA's per-noun cross-attention maps in the same pass.

noun_maps[n, i] is the softmax probability (float32) that video query i puts on noun n's text
tokens, averaged over the noun's tokens and then over heads, for one batch element. Each program
finishes its softmax statistics over all keys, then recomputes the logits of the few noun tokens
and writes one value per (head, noun, query); heads are averaged in PyTorch afterwards, so the
result is deterministic (no atomics).
"""
from __future__ import annotations

import math

import torch

from ._attention_loop import attend_key_blocks, head_pointer, query_block, store_query_rows
from ._triton import (
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



@triton_kernel
def _cross_attention_noun_maps_kernel(
    Q, K, V, Out, NounTokens, NounPartials,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_ob, stride_ol, stride_oh,
    num_heads, q_len, kv_len, num_nouns, tokens_per_noun, maps_batch,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TOKENS_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One program: BLOCK_M queries of one (batch, head); logits in base 2 (qk_scale = log2(e) / sqrt(D)).
    b, h, offs_m, q = query_block(Q, stride_qb, stride_ql, stride_qh, num_heads, q_len, BLOCK_M, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    k_base = head_pointer(K, b, h, stride_kb, stride_kh)
    v_base = head_pointer(V, b, h, stride_vb, stride_vh)
    row_ok = offs_m < q_len

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    full_key_end = kv_len // BLOCK_N * BLOCK_N
    # Two key ranges: the full blocks (no mask), then the partial tail block (masked).
    m_i, l_i, acc = attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl, 0, full_key_end, kv_len, qk_scale,
                                      m_i, l_i, acc, offs_n, offs_d, BLOCK_N, False, DOT_PRECISION)
    m_i, l_i, acc = attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl, full_key_end, kv_len, kv_len,
                                      qk_scale, m_i, l_i, acc, offs_n, offs_d, BLOCK_N, True, DOT_PRECISION)

    store_query_rows(Out, b, h, stride_ob, stride_ol, stride_oh, offs_m, q_len, acc / l_i[:, None], HEAD_DIM)

    if b == maps_batch:
        # Probability of each noun token = exp2(logit - m_i) / l_i, from the finished statistics.
        offs_t = tl.arange(0, TOKENS_PAD)
        for n in range(0, num_nouns):
            tokens = tl.load(NounTokens + n * tokens_per_noun + offs_t, mask=offs_t < tokens_per_noun, other=-1)
            token_ok = (tokens >= 0) & (tokens < kv_len)
            k_noun = tl.load(k_base + tokens[None, :] * stride_kl + offs_d[:, None], mask=token_ok[None, :], other=0.0)
            s_noun = tl.dot(q, k_noun, input_precision=DOT_PRECISION) * qk_scale
            p_noun = tl.where(token_ok[None, :], tl.exp2(s_noun - m_i[:, None]), 0.0)
            token_count = tl.maximum(tl.sum(token_ok.to(tl.float32), 0), 1.0)
            noun_prob = tl.sum(p_noun, 1) / (l_i * token_count)
            tl.store(NounPartials + (h * num_nouns + n) * q_len + offs_m, noun_prob, mask=row_ok)


def _check_noun_tokens(noun_tokens: torch.Tensor, kv_len: int, *, what: str) -> None:
    """noun_tokens: int32 [n_nouns, T], positions in [0, kv_len) padded with -1, >= 1 position per noun.

    Values are checked only for a CPU tensor: reading a device tensor would synchronise the host.
    On a device, positions outside [0, kv_len) are ignored and a noun left without positions
    gets a map of zeros (the references do the same).
    """
    if noun_tokens.dim() != 2 or noun_tokens.dtype != torch.int32:
        raise ValueError(f"{what}: noun_tokens must be int32 [n_nouns, T], got {noun_tokens.dtype} "
                         f"{tuple(noun_tokens.shape)}")
    if noun_tokens.device.type != "cpu":
        return
    if bool(((noun_tokens < -1) | (noun_tokens >= kv_len)).any()):
        raise ValueError(f"{what}: noun token positions must be in [0, {kv_len}) or -1 (padding), "
                         f"got {noun_tokens.tolist()}")
    if noun_tokens.shape[0] > 0 and bool(((noun_tokens >= 0).sum(dim=1) == 0).any()):
        raise ValueError(f"{what}: every noun needs at least one token position, got {noun_tokens.tolist()}")


def cross_attention_with_noun_maps(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    noun_tokens: torch.Tensor,
    *,
    maps_batch: int = 0,
    tiles: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention output and the per-noun maps of one batch element, in one pass.

    Args:
        q: [B, Lq, H, D] video queries; k, v: [B, Lk, H, D] text keys/values (same dtype).
        noun_tokens: int32 [n_nouns, T] key positions of each noun's tokens, padded with -1
            (CPU or q's device; see _check_noun_tokens).
        maps_batch: batch element whose noun maps are returned.
        tiles: GPU launch tiles instead of kernels/tiles.py's (bench/sweep_attention_tiles.py); kernel only.
    Returns:
        out: [B, Lq, H, D] in q.dtype, softmax(q k^T / sqrt(D)) v.
        noun_maps: [n_nouns, Lq] float32; noun_maps[n, i] = mean over heads of the mean over
            noun n's tokens t of softmax_t(q_i . k / sqrt(D)) (float32 softmax), batch maps_batch.
    """
    what = "cross_attention_with_noun_maps"
    check_qkv(q, k, v, what=what)
    _check_noun_tokens(noun_tokens, k.shape[1], what=what)
    if not 0 <= maps_batch < q.shape[0]:
        raise ValueError(f"{what}: maps_batch must be in [0, {q.shape[0]}), got {maps_batch}")
    require_triton(q, what=what)
    check_head_dim(q, what=what)

    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    noun_tokens = noun_tokens.to(q.device).contiguous()
    batch, q_len, heads, head_dim = q.shape
    kv_len = k.shape[1]
    num_nouns, tokens_per_noun = noun_tokens.shape
    out = new_output((batch, q_len, heads, head_dim), q.dtype, q.device)
    noun_partials = new_output((heads, num_nouns, q_len), torch.float32, q.device)
    config = launch_config(gpu_tiles("cross_attention_with_noun_maps", head_dim, tiles))
    grid = (math.ceil(q_len / config.block_m), batch * heads)
    _cross_attention_noun_maps_kernel[grid](
        q, k, v, out, noun_tokens, noun_partials,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, q_len, kv_len, num_nouns, tokens_per_noun, maps_batch,
        LOG2E / math.sqrt(head_dim),
        HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        TOKENS_PAD=max(16, next_power_of_2(tokens_per_noun)),
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out, noun_partials.mean(dim=0)


def cross_attention_with_noun_maps_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    noun_tokens: torch.Tensor,
    *,
    maps_batch: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch cross_attention_with_noun_maps (float32 math, query chunks; same contract)."""
    what = "cross_attention_with_noun_maps_reference"
    check_qkv(q, k, v, what=what)
    _check_noun_tokens(noun_tokens, k.shape[1], what=what)
    if not 0 <= maps_batch < q.shape[0]:
        raise ValueError(f"{what}: maps_batch must be in [0, {q.shape[0]}), got {maps_batch}")
    batch, q_len, heads, head_dim = q.shape
    kv_len = k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    qf = q.float().transpose(1, 2)   # [B, H, Lq, D]
    kf = k.float().transpose(1, 2)   # [B, H, Lk, D]
    vf = v.float().transpose(1, 2)
    noun_token_lists = [row[(row >= 0) & (row < kv_len)].to(device=q.device, dtype=torch.long)
                        for row in noun_tokens.cpu()]

    out = torch.empty(batch, heads, q_len, head_dim, dtype=torch.float32, device=q.device)
    noun_maps = torch.empty(len(noun_token_lists), q_len, dtype=torch.float32, device=q.device)
    chunk = max(1, (1 << 26) // (batch * heads * kv_len))
    for start in range(0, q_len, chunk):
        rows = slice(start, start + chunk)
        probs = torch.softmax(qf[:, :, rows] @ kf.transpose(-1, -2) * scale, dim=-1)   # [B, H, rows, Lk]
        out[:, :, rows] = probs @ vf
        for n, tokens in enumerate(noun_token_lists):
            noun_probs = probs[maps_batch][:, :, tokens].sum(dim=-1) / max(1, len(tokens))   # [H, rows]
            noun_maps[n, rows] = noun_probs.mean(dim=0)
    return out.transpose(1, 2).to(q.dtype), noun_maps
