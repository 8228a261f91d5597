"""attention_with_frame_lse / frame_attention_maps: Triton kernels against their PyTorch references,
and the references against SDPA and dense block-diagonal computations.

Without CUDA the kernels run in Triton's CPU interpreter (float32 and float16: the interpreter
computes bfloat16 wrongly); with CUDA the same small cases run compiled, plus the full Wan2.1-1.3B
shape (21 frames x 1560 tokens, 12 heads of 128, bfloat16).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from numina_engine.kernels import frame_attention
from numina_engine.kernels._triton import TRITON_INTERPRETED, triton_runs_on
from numina_engine.kernels.frame_attention import (
    attention_with_frame_lse,
    attention_with_frame_lse_reference,
    frame_attention_maps,
    frame_attention_maps_reference,
)
from kernel_checks import DEVICE, KERNEL_PATH_MISSING, TOLERANCE, poison_outputs, relative_error
from kernel_checks import requires_cuda, requires_triton

TOLERANCE = {**TOLERANCE, torch.float32: 1e-4}     # attention: softmax of long rows in float32


def random_qkv(batch, seq_len, heads, head_dim, dtype, *, seed, q_gain=1.0, device=DEVICE):
    """Fresh random q, k, v [B, L, H, D]; q_gain > 1 sharpens the softmax."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(batch, seq_len, heads, head_dim, generator=gen) for _ in range(3))
    return (q * q_gain).to(device, dtype), k.to(device, dtype), v.to(device, dtype)


@pytest.fixture
def poisoned_outputs(monkeypatch):
    poison_outputs(monkeypatch, frame_attention)


# (batch, frames, frame_tokens, padding tokens, kv_len shortfall, heads, head_dim, dtype, stats_batch, q_gain)
SMALL_CASES = {
    "one_frame": (1, 1, 45, 0, 0, 2, 32, torch.float32, 0, 1.0),
    "7_frames_5x9_padded_kv_len": (2, 7, 45, 13, 11, 2, 32, torch.float32, 1, 3.0),
    "7_frames_5x9_fp16": (2, 7, 45, 5, 5, 2, 16, torch.float16, 0, 2.0),
    "head_dim_64": (1, 2, 33, 4, 1, 1, 64, torch.float32, 0, 1.0),
}


@requires_triton
@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_kernels_match_references_on_small_shapes(case, poisoned_outputs):
    batch, frames, frame_tokens, padding, kv_short, heads, head_dim, dtype, stats_batch, q_gain = SMALL_CASES[case]
    seq_len = frames * frame_tokens + padding
    kv_len = seq_len - kv_short
    q, k, v = random_qkv(batch, seq_len, heads, head_dim, dtype, seed=len(case) * 7919 + seq_len, q_gain=q_gain)
    assert triton_runs_on(q), KERNEL_PATH_MISSING
    layout = dict(frame_tokens=frame_tokens, num_frames=frames)

    out, frame_lse = attention_with_frame_lse(q, k, v, **layout, kv_len=kv_len, stats_batch=stats_batch)
    ref_out, ref_lse = attention_with_frame_lse_reference(q, k, v, **layout, kv_len=kv_len, stats_batch=stats_batch)
    assert out.shape == (batch, seq_len, heads, head_dim) and out.dtype == dtype
    assert frame_lse.shape == (heads, frames * frame_tokens) and frame_lse.dtype == torch.float32
    assert relative_error(out, ref_out) <= TOLERANCE[dtype]
    assert relative_error(frame_lse, ref_lse) <= TOLERANCE[torch.float32]

    maps = frame_attention_maps(q, k, frame_lse, **layout, batch=stats_batch)
    ref_maps = frame_attention_maps_reference(q, k, ref_lse, **layout, batch=stats_batch)
    assert maps.shape == (frames, heads, frame_tokens, frame_tokens) and maps.dtype == torch.float32
    assert relative_error(maps, ref_maps) <= TOLERANCE[dtype]
    assert relative_error(maps.sum(dim=-1), torch.ones_like(ref_maps[..., 0])) <= TOLERANCE[dtype]


@requires_triton
def test_maps_kernel_writes_requested_dtype(poisoned_outputs):
    q, k, v = random_qkv(1, 3 * 20, 2, 32, torch.float32, seed=11)
    assert triton_runs_on(q), KERNEL_PATH_MISSING
    _, frame_lse = attention_with_frame_lse(q, k, v, frame_tokens=20, num_frames=3)
    maps = frame_attention_maps(q, k, frame_lse, frame_tokens=20, num_frames=3, out_dtype=torch.float16)
    ref_maps = frame_attention_maps_reference(q, k, frame_lse, frame_tokens=20, num_frames=3)
    assert maps.dtype == torch.float16
    assert relative_error(maps, ref_maps) <= TOLERANCE[torch.float16]


def dense_frame_logits(q, k, batch, frame_tokens, num_frames):
    """[H, V, V] float64 logits of the video tokens with keys outside the query's frame at -inf."""
    video_len = frame_tokens * num_frames
    qd = q[batch, :video_len].double().transpose(0, 1)
    kd = k[batch, :video_len].double().transpose(0, 1)
    logits = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
    frame_of = torch.arange(video_len, device=q.device) // frame_tokens
    return logits.masked_fill(frame_of[:, None] != frame_of[None, :], float("-inf"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reference_matches_sdpa_and_dense_block_diagonal(dtype):
    batch, frames, frame_tokens, heads, head_dim = 2, 7, 45, 3, 16
    seq_len, kv_len, stats_batch = frames * frame_tokens + 9, frames * frame_tokens + 4, 1
    q, k, v = random_qkv(batch, seq_len, heads, head_dim, dtype, seed=23, q_gain=2.0, device="cpu")
    out, frame_lse = attention_with_frame_lse_reference(
        q, k, v, frame_tokens=frame_tokens, num_frames=frames, kv_len=kv_len, stats_batch=stats_batch)

    key_mask = (torch.arange(seq_len) < kv_len).expand(seq_len, seq_len)
    sdpa = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v)), attn_mask=key_mask)
    assert relative_error(out, sdpa.transpose(1, 2)) <= TOLERANCE[dtype]

    logits = dense_frame_logits(q, k, stats_batch, frame_tokens, frames)
    assert relative_error(frame_lse, torch.logsumexp(logits, dim=-1)) <= 1e-5

    maps = frame_attention_maps_reference(q, k, frame_lse, frame_tokens=frame_tokens, num_frames=frames,
                                          batch=stats_batch)
    dense_softmax = torch.softmax(logits, dim=-1)  # [H, V, V], zero off the diagonal blocks
    diagonal_blocks = torch.stack([dense_softmax[:, f * frame_tokens:(f + 1) * frame_tokens,
                                                 f * frame_tokens:(f + 1) * frame_tokens] for f in range(frames)])
    assert relative_error(maps, diagonal_blocks) <= 1e-5


@pytest.mark.parametrize("bad_call, message", [
    (lambda q, k, v: attention_with_frame_lse(q, k, v, frame_tokens=10, num_frames=5), "exceed the sequence"),
    (lambda q, k, v: attention_with_frame_lse(q, k, v, frame_tokens=10, num_frames=3, kv_len=29), "kv_len"),
    (lambda q, k, v: attention_with_frame_lse(q, k, v, frame_tokens=10, num_frames=3, stats_batch=2), "stats_batch"),
    (lambda q, k, v: attention_with_frame_lse(q, k[:, :, :1], v[:, :, :1], frame_tokens=10, num_frames=3), "match q"),
    (lambda q, k, v: frame_attention_maps(q, k, torch.zeros(2, 31), frame_tokens=10, num_frames=3), "frame_lse"),
])
def test_bad_arguments_raise_clear_errors(bad_call, message):
    q, k, v = random_qkv(2, 40, 2, 16, torch.float32, seed=5, device="cpu")
    with pytest.raises(ValueError, match=message):
        bad_call(q, k, v)


# Wan2.1-1.3B at 832x480x81: 21 latent frames of 30x52 tokens, 12 heads of 128.
REAL_FRAMES, REAL_FRAME_TOKENS, REAL_HEADS, REAL_HEAD_DIM = 21, 1560, 12, 128


@requires_cuda
@requires_triton
@pytest.mark.parametrize("batch, stats_batch", [(1, 0), (2, 1)])
def test_full_size_bf16_on_gpu(batch, stats_batch, poisoned_outputs):
    seq_len = REAL_FRAMES * REAL_FRAME_TOKENS
    q, k, v = random_qkv(batch, seq_len, REAL_HEADS, REAL_HEAD_DIM, torch.bfloat16, seed=batch, q_gain=2.0)
    layout = dict(frame_tokens=REAL_FRAME_TOKENS, num_frames=REAL_FRAMES)
    out, frame_lse = attention_with_frame_lse(q, k, v, **layout, stats_batch=stats_batch)
    ref_out, ref_lse = attention_with_frame_lse_reference(q, k, v, **layout, stats_batch=stats_batch)
    assert relative_error(out, ref_out) <= TOLERANCE[torch.bfloat16]
    assert relative_error(frame_lse, ref_lse) <= TOLERANCE[torch.bfloat16]
    del out, ref_out
    maps = frame_attention_maps(q, k, frame_lse, **layout, batch=stats_batch)
    ref_maps = frame_attention_maps_reference(q, k, ref_lse, **layout, batch=stats_batch)
    assert relative_error(maps, ref_maps) <= TOLERANCE[torch.bfloat16]
