"""Self-attention that also yields NUMINA's per-frame self-attention maps.

`attention_with_frame_lse` is one flash-attention forward pass over all valid keys (the model's
output) that, for one batch element, also keeps the softmax statistics of each query restricted
to the keys of its own frame, and returns their log-sum-exp. `frame_attention_maps` then writes
the within-frame maps softmax(Q_f K_f^T / sqrt(D)) as exp(logit - lse) in a second, cheap pass:
no second reduction and no Python loop over frames or heads.

With output="within_frame" the first pass returns, instead of the full attention, the
block-diagonal (within-frame) attention, as the NUMINA authors' extraction block does: it then
visits only the key blocks of each query block's frames, whose statistics are the within-frame
ones, so it costs about 1/num_frames of the full pass.

Token layout: the video's tokens come first, frame after frame (frame f holds tokens
[f * frame_tokens, (f + 1) * frame_tokens)); tokens past num_frames * frame_tokens are padding
that still gets a full-attention output (zeros in the within-frame output); keys at or past kv_len are masked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._attention_loop import (
    attend_key_blocks,
    head_pointer,
    key_block_logits,
    load_key_block,
    online_softmax_update,
    query_block,
    store_query_rows,
)
from ._triton import (
    KERNEL_LN2,
    KERNEL_LOG2E,
    LOG2E,
    LaunchConfig,
    check_head_dim,
    check_qkv,
    dot_precision,
    last_dim_contiguous,
    launch_config,
    new_output,
    tl,
    require_triton,
    triton_kernel,
)
from .tiles import gpu_tiles

@triton_kernel
def _attention_with_frame_lse_kernel(
    Q, K, V, Out, FrameLse,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_ob, stride_ol, stride_oh,
    num_heads, q_len, kv_len, frame_tokens, video_len, stats_batch,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WITHIN_FRAME_OUTPUT: tl.constexpr,
):
    # One program: BLOCK_M queries of one (batch, head). Logits are kept in base 2
    # (qk_scale = log2(e) / sqrt(D)), so exp2 serves the softmax.
    b, h, offs_m, q = query_block(Q, stride_qb, stride_ql, stride_qh, num_heads, q_len, BLOCK_M, HEAD_DIM)
    m_start = tl.program_id(0) * BLOCK_M
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_base = head_pointer(K, b, h, stride_kb, stride_kh)
    v_base = head_pointer(V, b, h, stride_vb, stride_vh)

    # Key blocks that can hold keys of this block's frames: [frame_key_lo, frame_key_hi), for the
    # programs over video rows that need them: every batch element's for the within-frame output,
    # the stats batch element's only otherwise.
    framed = m_start < video_len
    if not WITHIN_FRAME_OUTPUT:
        framed = framed & (b == stats_batch)
    first_frame = m_start // frame_tokens
    last_frame = (tl.minimum(m_start + BLOCK_M, video_len) - 1) // frame_tokens
    frame_key_lo = tl.where(framed, (first_frame * frame_tokens) // BLOCK_N * BLOCK_N, 0)
    frame_key_hi = tl.where(framed, tl.cdiv((last_frame + 1) * frame_tokens, BLOCK_N) * BLOCK_N, 0)
    row_frame = offs_m // frame_tokens
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    if WITHIN_FRAME_OUTPUT:
        # Only the frame blocks, own-frame keys only: the statistics and the output are the
        # within-frame ones (a finite start: a block may hold no key of a row's frame).
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        for start_n in range(frame_key_lo, frame_key_hi, BLOCK_N):
            cols = start_n + offs_n
            k, v = load_key_block(k_base, v_base, cols, stride_kl, stride_vl, offs_d, kv_len, True)
            s = key_block_logits(q, k, cols, kv_len, qk_scale, True, DOT_PRECISION)
            s = tl.where((cols[None, :] // frame_tokens) == row_frame[:, None], s, float("-inf"))
            m_i, l_i, acc = online_softmax_update(s, v, m_i, l_i, acc, DOT_PRECISION)
        mf_i = m_i
        lf_i = l_i
        # Rows past the video have no frame: zeros, as the NUMINA authors' extraction returns there.
        video_row = offs_m < video_len
        out = tl.where(video_row[:, None], acc / tl.where(video_row, l_i, 1.0)[:, None], 0.0)
    else:
        full_key_end = kv_len // BLOCK_N * BLOCK_N
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)      # running max over all keys
        l_i = tl.zeros([BLOCK_M], tl.float32)                     # running sum over all keys
        mf_i = tl.full([BLOCK_M], -1.0e30, tl.float32)            # running max over own-frame keys
        lf_i = tl.zeros([BLOCK_M], tl.float32)                    # running sum over own-frame keys
        # Four key ranges: before the frame blocks (no mask), the frame blocks (masked, tracked),
        # after them up to the last full block (no mask), and the partial tail block (masked).
        m_i, l_i, acc = attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl, 0, frame_key_lo, kv_len,
                                          qk_scale, m_i, l_i, acc, offs_n, offs_d, BLOCK_N, False, DOT_PRECISION)
        for start_n in range(frame_key_lo, frame_key_hi, BLOCK_N):
            cols = start_n + offs_n
            k, v = load_key_block(k_base, v_base, cols, stride_kl, stride_vl, offs_d, kv_len, True)
            s = key_block_logits(q, k, cols, kv_len, qk_scale, True, DOT_PRECISION)
            m_i, l_i, acc = online_softmax_update(s, v, m_i, l_i, acc, DOT_PRECISION)
            s_frame = tl.where((cols[None, :] // frame_tokens) == row_frame[:, None], s, float("-inf"))
            mf_new = tl.maximum(mf_i, tl.max(s_frame, 1))
            lf_i = lf_i * tl.exp2(mf_i - mf_new) + tl.sum(tl.exp2(s_frame - mf_new[:, None]), 1)
            mf_i = mf_new
        m_i, l_i, acc = attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl, frame_key_hi, full_key_end,
                                          kv_len, qk_scale, m_i, l_i, acc, offs_n, offs_d, BLOCK_N, False,
                                          DOT_PRECISION)
        m_i, l_i, acc = attend_key_blocks(q, k_base, v_base, stride_kl, stride_vl,
                                          tl.maximum(full_key_end, frame_key_hi), kv_len, kv_len, qk_scale,
                                          m_i, l_i, acc, offs_n, offs_d, BLOCK_N, True, DOT_PRECISION)
        out = acc / l_i[:, None]

    store_query_rows(Out, b, h, stride_ob, stride_ol, stride_oh, offs_m, q_len, out, HEAD_DIM)
    # Video rows of framed programs have lf_i >= 1 (their max term is exp2(0)); the floor only keeps
    # log2 finite elsewhere.
    frame_lse = (mf_i + tl.log2(tl.maximum(lf_i, 1.0))) * KERNEL_LN2   # base-2 lse -> natural units
    lse_rows = tl.where(framed & (b == stats_batch), video_len, 0)
    tl.store(FrameLse + h * video_len + offs_m, frame_lse, mask=offs_m < lse_rows)


@triton_kernel
def _frame_attention_maps_kernel(
    Q, K, FrameLse, Maps,
    stride_ql, stride_qh, stride_kl, stride_kh,
    num_heads, frame_tokens, video_len,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # One program: a [BLOCK_M, BLOCK_N] tile of the map of one (frame, head).
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_fh = tl.program_id(2)
    f = pid_fh // num_heads
    h = pid_fh % num_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < frame_tokens
    col_ok = offs_n < frame_tokens
    rows = f * frame_tokens + offs_m
    cols = f * frame_tokens + offs_n

    q = tl.load(Q + h.to(tl.int64) * stride_qh + rows[:, None] * stride_ql + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    k = tl.load(K + h.to(tl.int64) * stride_kh + cols[None, :] * stride_kl + offs_d[:, None],
                mask=col_ok[None, :], other=0.0)
    lse = tl.load(FrameLse + h * video_len + rows, mask=row_ok, other=0.0) * KERNEL_LOG2E  # to base 2
    s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
    p = tl.exp2(s - lse[:, None])
    maps_base = Maps + pid_fh.to(tl.int64) * frame_tokens * frame_tokens
    tl.store(maps_base + offs_m[:, None] * frame_tokens + offs_n[None, :], p.to(Maps.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def _check_frame_layout(q: torch.Tensor, k: torch.Tensor, frame_tokens: int, num_frames: int, *, what: str) -> int:
    """Validate the frame layout against q [B, L, H, D] and k [B, Lk, H, D]; returns the video length in tokens."""
    if frame_tokens < 1 or num_frames < 1:
        raise ValueError(f"{what}: frame_tokens and num_frames must be >= 1, got {frame_tokens} and {num_frames}")
    video_len = frame_tokens * num_frames
    if video_len > q.shape[1] or video_len > k.shape[1]:
        raise ValueError(f"{what}: {num_frames} frames x {frame_tokens} tokens = {video_len} tokens exceed the "
                         f"sequence (q has {q.shape[1]} tokens, k has {k.shape[1]})")
    return video_len


def _resolve_kv_len(k: torch.Tensor, kv_len: int | None, video_len: int, *, what: str) -> int:
    """kv_len defaulted to all keys and checked to cover the video's tokens."""
    if kv_len is None:
        return k.shape[1]
    if not video_len <= kv_len <= k.shape[1]:
        raise ValueError(f"{what}: kv_len must be in [{video_len} (video tokens), {k.shape[1]} (keys)], got {kv_len}")
    return kv_len


OUTPUTS = ("full", "within_frame")


def _check_output(output: str, *, what: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"{what}: output must be one of {OUTPUTS}, got {output!r}")


def _check_batch_index(index: int, batch: int, *, name: str, what: str) -> None:
    if not 0 <= index < batch:
        raise ValueError(f"{what}: {name} must be in [0, {batch}), got {index}")


def attention_with_frame_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    frame_tokens: int,
    num_frames: int,
    kv_len: int | None = None,
    stats_batch: int = 0,
    output: str = "full",
    tiles: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention (full or within-frame) plus the within-frame log-sum-exp of one batch element.

    Args:
        q, k, v: [B, L, H, D] (k, v may have another length Lk >= video tokens), float32/float16/bfloat16.
        frame_tokens: tokens per frame (height x width of the frame's token grid).
        num_frames: frames of the video; its num_frames * frame_tokens tokens lead the sequence.
        kv_len: keys at or past kv_len are masked (default: all Lk keys); must cover the video.
        stats_batch: batch element whose within-frame statistics are returned.
        output: OUTPUTS[0] "full" or OUTPUTS[1] "within_frame", the attention that `out` holds.
        tiles: GPU launch tiles instead of kernels/tiles.py's (bench/sweep_attention_tiles.py); kernel only.
    Returns:
        out: [B, L, H, D] in q.dtype. "full": softmax(q k^T / sqrt(D)) v over keys < kv_len, every
            query (padding past the video included). "within_frame": the block-diagonal attention
            of every batch element, softmax over the keys of the query's own frame only (per-frame
            attention; the NUMINA authors' extraction output), and zeros for queries past the video.
        frame_lse: [H, num_frames * frame_tokens] float32; for video query i of frame f,
            logsumexp_j(q_i . k_j / sqrt(D)) over the keys j of frame f (batch element stats_batch).
    """
    what = "attention_with_frame_lse"
    check_qkv(q, k, v, what=what)
    video_len = _check_frame_layout(q, k, frame_tokens, num_frames, what=what)
    kv_len = _resolve_kv_len(k, kv_len, video_len, what=what)
    _check_batch_index(stats_batch, q.shape[0], name="stats_batch", what=what)
    _check_output(output, what=what)
    require_triton(q, what=what)
    check_head_dim(q, what=what)

    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    batch, q_len, heads, head_dim = q.shape
    out = new_output((batch, q_len, heads, head_dim), q.dtype, q.device)
    frame_lse = new_output((heads, video_len), torch.float32, q.device)
    config = launch_config(gpu_tiles("attention_with_frame_lse", head_dim, tiles))
    grid = (math.ceil(q_len / config.block_m), batch * heads)
    _attention_with_frame_lse_kernel[grid](
        q, k, v, out, frame_lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, q_len, kv_len, frame_tokens, video_len, stats_batch,
        LOG2E / math.sqrt(head_dim),
        HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        DOT_PRECISION=dot_precision(q.dtype), WITHIN_FRAME_OUTPUT=output == "within_frame",
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out, frame_lse


def frame_attention_maps(
    q: torch.Tensor,
    k: torch.Tensor,
    frame_lse: torch.Tensor,
    *,
    frame_tokens: int,
    num_frames: int,
    batch: int = 0,
    out_dtype: torch.dtype = torch.float32,
    tiles: LaunchConfig | None = None,
) -> torch.Tensor:
    """Within-frame self-attention maps of one batch element, from attention_with_frame_lse's frame_lse.

    Args:
        q, k: [B, L, H, D] as given to attention_with_frame_lse.
        frame_lse: [H, num_frames * frame_tokens] float32 computed for batch element `batch`.
        batch: batch element whose maps are written.
        out_dtype: dtype of the maps (float32, float16 or bfloat16).
        tiles: GPU launch tiles instead of kernels/tiles.py's (bench/sweep_attention_tiles.py); kernel only.
    Returns:
        maps: [num_frames, H, frame_tokens, frame_tokens] in out_dtype;
            maps[f, h, i, j] = softmax_j(q_i . k_j / sqrt(D)) over query i's and key j's frame f
            (i, j indexing the frame's tokens), each row summing to 1.
    """
    what = "frame_attention_maps"
    _check_maps_args(q, k, frame_lse, frame_tokens, num_frames, batch, out_dtype, what=what)
    require_triton(q, out_dtype, what=what)
    check_head_dim(q, what=what)

    q_b, k_b = last_dim_contiguous(q[batch]), last_dim_contiguous(k[batch])
    frame_lse = frame_lse.contiguous()
    heads, head_dim = q.shape[2], q.shape[3]
    maps = new_output((num_frames, heads, frame_tokens, frame_tokens), out_dtype, q.device)
    config = launch_config(gpu_tiles("frame_attention_maps", head_dim, tiles))
    grid = (math.ceil(frame_tokens / config.block_m), math.ceil(frame_tokens / config.block_n), num_frames * heads)
    _frame_attention_maps_kernel[grid](
        q_b, k_b, frame_lse, maps,
        q_b.stride(0), q_b.stride(1), k_b.stride(0), k_b.stride(1),
        heads, frame_tokens, num_frames * frame_tokens,
        LOG2E / math.sqrt(head_dim),
        HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return maps


def _check_maps_args(q, k, frame_lse, frame_tokens, num_frames, batch, out_dtype, *, what: str) -> None:
    for name, t in (("q", q), ("k", k)):
        if t.dim() != 4:
            raise ValueError(f"{what}: {name} must be [B, L, H, D], got shape {tuple(t.shape)}")
    if k.dtype != q.dtype or k.device != q.device:
        raise TypeError(f"{what}: q and k must share dtype and device, got {q.dtype}/{q.device} and {k.dtype}/{k.device}")
    if k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"{what}: k {tuple(k.shape)} does not match q {tuple(q.shape)} in B, H or D")
    video_len = _check_frame_layout(q, k, frame_tokens, num_frames, what=what)
    _check_batch_index(batch, q.shape[0], name="batch", what=what)
    expected = (q.shape[2], video_len)
    if tuple(frame_lse.shape) != expected or frame_lse.dtype != torch.float32 or frame_lse.device != q.device:
        raise ValueError(f"{what}: frame_lse must be float32 {expected} on {q.device}, got "
                         f"{frame_lse.dtype} {tuple(frame_lse.shape)} on {frame_lse.device}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{what}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")


def attention_with_frame_lse_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    frame_tokens: int,
    num_frames: int,
    kv_len: int | None = None,
    stats_batch: int = 0,
    output: str = "full",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch attention_with_frame_lse (float32 math, query chunks; "within_frame": SDPA of
    each frame on its own; same contract)."""
    what = "attention_with_frame_lse_reference"
    check_qkv(q, k, v, what=what)
    video_len = _check_frame_layout(q, k, frame_tokens, num_frames, what=what)
    kv_len = _resolve_kv_len(k, kv_len, video_len, what=what)
    _check_batch_index(stats_batch, q.shape[0], name="stats_batch", what=what)
    _check_output(output, what=what)
    batch, q_len, heads, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    qf = q.float().transpose(1, 2)                  # [B, H, L, D]
    kf = k[:, :kv_len].float().transpose(1, 2)      # [B, H, kv_len, D]
    vf = v[:, :kv_len].float().transpose(1, 2)

    out = torch.zeros(batch, heads, q_len, head_dim, dtype=torch.float32, device=q.device)
    if output == "full":
        chunk = max(1, (1 << 26) // (batch * heads * kv_len))
        for start in range(0, q_len, chunk):
            logits = qf[:, :, start:start + chunk] @ kf.transpose(-1, -2) * scale
            out[:, :, start:start + chunk] = torch.softmax(logits, dim=-1) @ vf
    else:
        for f in range(num_frames):
            frame = slice(f * frame_tokens, (f + 1) * frame_tokens)
            out[:, :, frame] = F.scaled_dot_product_attention(qf[:, :, frame], kf[:, :, frame], vf[:, :, frame])

    frame_lse = torch.empty(heads, video_len, dtype=torch.float32, device=q.device)
    for f in range(num_frames):
        frame = slice(f * frame_tokens, (f + 1) * frame_tokens)
        logits = qf[stats_batch, :, frame] @ kf[stats_batch, :, frame].transpose(-1, -2) * scale  # [H, T, T]
        frame_lse[:, frame] = torch.logsumexp(logits, dim=-1)
    return out.transpose(1, 2).to(q.dtype), frame_lse


def frame_attention_maps_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    frame_lse: torch.Tensor,
    *,
    frame_tokens: int,
    num_frames: int,
    batch: int = 0,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Plain-PyTorch frame_attention_maps: exp(logit - frame_lse) frame by frame (same contract)."""
    _check_maps_args(q, k, frame_lse, frame_tokens, num_frames, batch, out_dtype, what="frame_attention_maps_reference")
    heads, head_dim = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(head_dim)
    maps = torch.empty(num_frames, heads, frame_tokens, frame_tokens, dtype=out_dtype, device=q.device)
    for f in range(num_frames):
        frame = slice(f * frame_tokens, (f + 1) * frame_tokens)
        q_f = q[batch, frame].float().transpose(0, 1)   # [H, T, D]
        k_f = k[batch, frame].float().transpose(0, 1)
        logits = q_f @ k_f.transpose(-1, -2) * scale    # [H, T, T]
        maps[f] = torch.exp(logits - frame_lse[:, frame, None]).to(out_dtype)
    return maps
