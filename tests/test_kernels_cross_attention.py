"""cross_attention_with_noun_maps / cross_attention_with_column_bias: Triton kernels against their
PyTorch references, and the references against SDPA and independent dense computations.

Without CUDA the kernels run in Triton's CPU interpreter (float32 and float16: the interpreter
computes bfloat16 wrongly); with CUDA the same small cases run compiled, plus the full Wan2.1-1.3B
shape (32,760 video queries, 512 text keys, 12 heads of 128, bfloat16) and a CUDA-graph capture.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from numina_engine.kernels import cross_attention_column_bias, cross_attention_noun_maps
from numina_engine.kernels._triton import triton_runs_on
from numina_engine.kernels.cross_attention_column_bias import (
    cross_attention_with_column_bias,
    cross_attention_with_column_bias_reference,
)
from numina_engine.kernels.cross_attention_noun_maps import (
    cross_attention_with_noun_maps,
    cross_attention_with_noun_maps_reference,
)
from kernel_checks import DEVICE, KERNEL_PATH_MISSING, poison_outputs, relative_error
from kernel_checks import requires_cuda, requires_triton

# Relative-error bounds (attention output, noun maps) next to each case's dtype.
FP32 = (1e-4, 1e-5)      # softmax of long rows in float32
FP16 = (2e-3, 1e-4)      # fp16 inputs and output; the noun maps stay float32
# GPU bf16 at Wan2.1-1.3B's shape: measured (docs/MEASUREMENTS.md) outputs 1.7e-3 to 2.0e-3, noun maps 4e-7;
# bounded at 2.5x (outputs: bf16 rounding) and 5x of that.
BF16_REAL = (5e-3, 2e-6)


def random_attention_inputs(batch, q_len, kv_len, heads, head_dim, dtype, *, seed, q_gain=1.0, device=DEVICE):
    """Fresh random q [B, Lq, H, D] and k, v [B, Lk, H, D]; q_gain > 1 sharpens the softmax."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(batch, q_len, heads, head_dim, generator=gen) * q_gain
    k = torch.randn(batch, kv_len, heads, head_dim, generator=gen)
    v = torch.randn(batch, kv_len, heads, head_dim, generator=gen)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


@pytest.fixture
def poisoned_outputs(monkeypatch):
    poison_outputs(monkeypatch, cross_attention_noun_maps, cross_attention_column_bias)


def sdpa(q, k, v, attn_mask=None):
    """float64 SDPA on [B, L, H, D] tensors."""
    out = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v)), attn_mask=attn_mask)
    return out.transpose(1, 2)


# ---------------------------------------------------------------- noun maps

# 7 frames of 5x9 video tokens; nouns as token positions padded with -1 (one noun of three tokens).
NOUN_TOKENS = [[3, -1, -1], [7, 8, 40], [12, 13, -1]]
# (batch, q_len, kv_len, heads, head_dim, maps_batch, q_gain, dtype, (output rtol, noun-maps rtol))
NOUN_MAP_CASES = {
    "7_frames_5x9_b2_fp32": (2, 315, 45, 2, 32, 1, 3.0, torch.float32, FP32),
    "7_frames_5x9_b2_fp16": (2, 315, 77, 2, 16, 0, 2.0, torch.float16, FP16),
    "head_dim_64_b1": (1, 50, 64, 1, 64, 0, 1.0, torch.float32, FP32),
}


@requires_triton
@pytest.mark.parametrize("case", list(NOUN_MAP_CASES))
def test_noun_maps_kernel_matches_reference(case, poisoned_outputs):
    batch, q_len, kv_len, heads, head_dim, maps_batch, q_gain, dtype, (out_rtol, maps_rtol) = NOUN_MAP_CASES[case]
    q, k, v = random_attention_inputs(batch, q_len, kv_len, heads, head_dim, dtype, seed=q_len + kv_len, q_gain=q_gain)
    assert triton_runs_on(q), KERNEL_PATH_MISSING
    noun_tokens = torch.tensor(NOUN_TOKENS, dtype=torch.int32, device=DEVICE)

    out, noun_maps = cross_attention_with_noun_maps(q, k, v, noun_tokens, maps_batch=maps_batch)
    ref_out, ref_maps = cross_attention_with_noun_maps_reference(q, k, v, noun_tokens, maps_batch=maps_batch)
    assert out.shape == q.shape and out.dtype == dtype
    assert noun_maps.shape == (len(NOUN_TOKENS), q_len) and noun_maps.dtype == torch.float32
    assert relative_error(out, ref_out) <= out_rtol
    assert relative_error(noun_maps, ref_maps) <= maps_rtol


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, FP32[0]), (torch.float16, FP16[0])])
def test_noun_maps_reference_matches_sdpa_and_dense_probabilities(dtype, rtol):
    batch, q_len, kv_len, heads, head_dim, maps_batch = 2, 315, 45, 3, 16, 1
    q, k, v = random_attention_inputs(batch, q_len, kv_len, heads, head_dim, dtype, seed=31, q_gain=2.0, device="cpu")
    out, noun_maps = cross_attention_with_noun_maps_reference(
        q, k, v, torch.tensor(NOUN_TOKENS, dtype=torch.int32), maps_batch=maps_batch)
    assert relative_error(out, sdpa(q, k, v)) <= rtol

    # Probabilities as exp(logit - logsumexp), averaged onto nouns by a [Lk, n_nouns] weight matrix.
    logits = q[maps_batch].double().transpose(0, 1) @ k[maps_batch].double().permute(1, 2, 0) / math.sqrt(head_dim)
    probs = torch.exp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))     # [H, Lq, Lk]
    weights = torch.zeros(kv_len, len(NOUN_TOKENS), dtype=torch.float64)
    for n, tokens in enumerate(NOUN_TOKENS):
        valid = [t for t in tokens if t >= 0]
        weights[valid, n] = 1.0 / len(valid)
    expected = (probs @ weights).mean(dim=0).transpose(0, 1)                       # [n_nouns, Lq]
    assert relative_error(noun_maps, expected) <= 1e-5


@pytest.mark.parametrize("noun_tokens, message", [
    ([[3, 45, -1]], r"in \[0, 45\)"),
    ([[3, -2, -1]], r"in \[0, 45\)"),
    ([[3, 4], [-1, -1]], "at least one token"),
])
def test_noun_maps_rejects_bad_token_positions(noun_tokens, message):
    q, k, v = random_attention_inputs(1, 20, 45, 1, 16, torch.float32, seed=3, device="cpu")
    with pytest.raises(ValueError, match=message):
        cross_attention_with_noun_maps(q, k, v, torch.tensor(noun_tokens, dtype=torch.int32))


# ---------------------------------------------------------------- column bias

# Key positions with a bias: out of order, one repeated (its biases add up), one in the partial
# last key block of Lk = 45, one out of range (ignored).
BIAS_COLUMNS = [7, 3, 40, 7, 44, 50]
# (batch, q_len, kv_len, heads, head_dim, bias_batch, q_gain, bias_scale, column offset, dtype, output rtol)
COLUMN_BIAS_CASES = {
    "7_frames_5x9_b2_fp32": (2, 315, 45, 2, 32, 1, 2.0, 4.0, 0, torch.float32, FP32[0]),
    "7_frames_5x9_b2_fp16": (2, 315, 45, 2, 16, 0, 1.0, 8.0, 0, torch.float16, FP16[0]),
    "head_dim_64_b1": (1, 50, 64, 1, 64, 0, 1.0, 4.0, 0, torch.float32, FP32[0]),
    # columns 43..90 of 150 keys: plain key blocks before, between and after the biased ones
    "biased_blocks_amid_plain_ones": (2, 50, 150, 1, 32, 1, 1.0, 4.0, 40, torch.float32, FP32[0]),
}


def random_bias(q_len, num_columns, scale, *, seed, device=DEVICE):
    """float32 [Lq, T] bias of both signs; entry (0, 0) is -inf (a fully suppressed logit)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bias = torch.randn(q_len, num_columns, generator=gen) * scale
    bias[0, 0] = float("-inf")
    return bias.to(device)


@requires_triton
@pytest.mark.parametrize("case", list(COLUMN_BIAS_CASES))
def test_column_bias_kernel_matches_reference(case, poisoned_outputs):
    batch, q_len, kv_len, heads, head_dim, bias_batch, q_gain, bias_scale, offset, dtype, rtol = COLUMN_BIAS_CASES[case]
    q, k, v = random_attention_inputs(batch, q_len, kv_len, heads, head_dim, dtype, seed=q_len * 3 + kv_len,
                                      q_gain=q_gain)
    assert triton_runs_on(q), KERNEL_PATH_MISSING
    columns = torch.tensor(BIAS_COLUMNS, dtype=torch.int32, device=DEVICE) + offset
    bias = random_bias(q_len, len(BIAS_COLUMNS), bias_scale, seed=q_len)

    out = cross_attention_with_column_bias(q, k, v, columns, bias, bias_batch=bias_batch)
    ref_out = cross_attention_with_column_bias_reference(q, k, v, columns, bias, bias_batch=bias_batch)
    assert out.shape == q.shape and out.dtype == dtype
    assert relative_error(out, ref_out) <= rtol
    unbiased = [b for b in range(batch) if b != bias_batch]
    if unbiased:
        assert relative_error(out[unbiased], sdpa(q, k, v)[unbiased]) <= rtol


@requires_triton
def test_column_bias_kernel_without_columns_is_plain_attention(poisoned_outputs):
    q, k, v = random_attention_inputs(2, 70, 40, 2, 32, torch.float32, seed=8)
    assert triton_runs_on(q), KERNEL_PATH_MISSING
    columns = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    bias = torch.zeros(70, 0, dtype=torch.float32, device=DEVICE)
    out = cross_attention_with_column_bias(q, k, v, columns, bias, bias_batch=1)
    assert relative_error(out, sdpa(q, k, v)) <= FP32[0]


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, FP32[0]), (torch.float16, FP16[0])])
def test_column_bias_reference_matches_sdpa_with_dense_mask(dtype, rtol):
    batch, q_len, kv_len, heads, head_dim, bias_batch = 2, 315, 45, 3, 16, 1
    q, k, v = random_attention_inputs(batch, q_len, kv_len, heads, head_dim, dtype, seed=41, device="cpu")
    bias = random_bias(q_len, len(BIAS_COLUMNS), 4.0, seed=41, device="cpu")
    out = cross_attention_with_column_bias_reference(
        q, k, v, torch.tensor(BIAS_COLUMNS, dtype=torch.int32), bias, bias_batch=bias_batch)

    dense = torch.zeros(batch, 1, q_len, kv_len, dtype=torch.float64)
    for t, column in enumerate(BIAS_COLUMNS):
        if 0 <= column < kv_len:
            dense[bias_batch, 0, :, column] += bias[:, t].double()
    assert relative_error(out, sdpa(q, k, v, attn_mask=dense)) <= rtol


@pytest.mark.parametrize("columns, bias_shape, bias_batch, message", [
    (list(range(65)), (20, 65), 0, "at most 64"),
    ([1, 2], (20, 3), 0, r"\[Lq, T\]"),
    ([1, 2], (20, 2), 1, "bias_batch"),
])
def test_column_bias_rejects_bad_arguments(columns, bias_shape, bias_batch, message):
    q, k, v = random_attention_inputs(1, 20, 45, 1, 16, torch.float32, seed=4, device="cpu")
    with pytest.raises(ValueError, match=message):
        cross_attention_with_column_bias(q, k, v, torch.tensor(columns, dtype=torch.int32),
                                         torch.randn(bias_shape), bias_batch=bias_batch)


# ---------------------------------------------------------------- full size, GPU

# Wan2.1-1.3B at 832x480x81: 21 frames x 1560 video tokens, 512 text tokens, 12 heads of 128.
REAL_Q_LEN, REAL_KV_LEN, REAL_HEADS, REAL_HEAD_DIM = 21 * 1560, 512, 12, 128
REAL_NOUN_TOKENS = [[5, -1, -1], [9, 10, 11]]   # two nouns, one of three tokens


@requires_cuda
@requires_triton
@pytest.mark.parametrize("batch, maps_batch", [(1, 0), (2, 1)])
def test_noun_maps_full_size_bf16_on_gpu(batch, maps_batch, poisoned_outputs):
    q, k, v = random_attention_inputs(batch, REAL_Q_LEN, REAL_KV_LEN, REAL_HEADS, REAL_HEAD_DIM, torch.bfloat16,
                                      seed=batch, q_gain=2.0)
    noun_tokens = torch.tensor(REAL_NOUN_TOKENS, dtype=torch.int32, device=DEVICE)
    out, noun_maps = cross_attention_with_noun_maps(q, k, v, noun_tokens, maps_batch=maps_batch)
    ref_out, ref_maps = cross_attention_with_noun_maps_reference(q, k, v, noun_tokens, maps_batch=maps_batch)
    assert relative_error(out, ref_out) <= BF16_REAL[0]
    assert relative_error(noun_maps, ref_maps) <= BF16_REAL[1]


@requires_cuda
@requires_triton
@pytest.mark.parametrize("batch, bias_batch", [(1, 0), (2, 1)])
def test_column_bias_full_size_bf16_on_gpu(batch, bias_batch, poisoned_outputs):
    q, k, v = random_attention_inputs(batch, REAL_Q_LEN, REAL_KV_LEN, REAL_HEADS, REAL_HEAD_DIM, torch.bfloat16,
                                      seed=batch + 10, q_gain=2.0)
    columns = torch.tensor([5, 9, 10, 11], dtype=torch.int32, device=DEVICE)
    bias = random_bias(REAL_Q_LEN, 4, 8.0, seed=batch)
    out = cross_attention_with_column_bias(q, k, v, columns, bias, bias_batch=bias_batch)
    ref_out = cross_attention_with_column_bias_reference(q, k, v, columns, bias, bias_batch=bias_batch)
    assert relative_error(out, ref_out) <= BF16_REAL[0]


@requires_cuda
@requires_triton
def test_column_bias_replays_in_a_cuda_graph():
    q, k, v = random_attention_inputs(2, REAL_Q_LEN, REAL_KV_LEN, REAL_HEADS, REAL_HEAD_DIM, torch.bfloat16, seed=99)
    columns = torch.tensor([5, 9, 10, 11], dtype=torch.int32, device=DEVICE)
    bias = random_bias(REAL_Q_LEN, 4, 8.0, seed=99)
    cross_attention_with_column_bias(q, k, v, columns, bias)   # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out = cross_attention_with_column_bias(q, k, v, columns, bias)
    # New values in the captured input buffers must flow through a replay.
    fresh_q, _, _ = random_attention_inputs(2, REAL_Q_LEN, REAL_KV_LEN, REAL_HEADS, REAL_HEAD_DIM, torch.bfloat16,
                                            seed=100)
    q.copy_(fresh_q)
    bias.copy_(random_bias(REAL_Q_LEN, 4, 8.0, seed=100))
    graph.replay()
    torch.cuda.synchronize()
    expected = cross_attention_with_column_bias_reference(q, k, v, columns, bias)
    assert relative_error(graph_out, expected) <= BF16_REAL[0]
