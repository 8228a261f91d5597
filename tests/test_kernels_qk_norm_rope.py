"""qk_norm_rope: the Triton kernel against its PyTorch reference (with Wan's 3-axis RoPE tables),
and the reference against the unfused ops it replaces.

Without CUDA the kernel runs in Triton's CPU interpreter (float32 and float16: the interpreter
computes bfloat16 wrongly); with CUDA the same small cases run compiled, plus the full Wan2.1-1.3B
shape (32,760 tokens, 12 heads of 128) in bfloat16.
"""
import pytest
import torch

from numina_engine.engine.model import build_rope_tables
from numina_engine.kernels import apply_rope, qk_norm_rope, qk_norm_rope_reference, rms_norm_rope
from numina_engine.kernels._rows import kernel_serves
from numina_engine.kernels._triton import TRITON_INTERPRETED
from kernel_checks import DEVICE, poison_outputs, TOLERANCE, KERNEL_PATH_MISSING, relative_error, requires_cuda, requires_triton


def random_inputs(batch, grid, heads, head_dim, dtype, *, seed, device=DEVICE):
    """A q/k projection [B, L, H * head_dim] with per-token gains, an RMSNorm weight != 1, and Wan's
    RoPE tables for the token grid (f, h, w)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    seq_len = grid[0] * grid[1] * grid[2]
    x = torch.randn(batch, seq_len, heads * head_dim, generator=gen) * (0.2 + 3 * torch.rand(batch, seq_len, 1,
                                                                                             generator=gen))
    weight = 1 + 0.3 * torch.randn(heads * head_dim, generator=gen)
    cos, sin = build_rope_tables(grid, head_dim)
    return x.to(device, dtype), weight.to(device), cos.to(device), sin.to(device)


@pytest.fixture
def poisoned_outputs(monkeypatch):
    poison_outputs(monkeypatch, rms_norm_rope)


# (batch, token grid, heads, head_dim, RMSNorm, RoPE, dtype). Grids of 105, 30 and 9 tokens (not
# multiples of the rows per program); D = 48, 96 or 60 (not powers of two); head_dim 16 (RoPE split
# 8/4/4 channels), 32 (12/10/10) and 20 (8/6/6).
SMALL_CASES = {
    "self_B1_hd16": (1, (3, 5, 7), 3, 16, True, True, torch.float32),
    "self_B2_hd32": (2, (2, 3, 5), 3, 32, True, True, torch.float32),
    "self_B2_hd20": (2, (1, 3, 3), 3, 20, True, True, torch.float32),
    "cross_B2_hd32": (2, (2, 3, 5), 3, 32, True, False, torch.float32),
    "rope_only_B1_hd16": (1, (3, 5, 7), 3, 16, False, True, torch.float32),
    "self_B2_hd32_fp16": (2, (3, 5, 7), 3, 32, True, True, torch.float16),
    "cross_B1_hd16_fp16": (1, (2, 3, 5), 3, 16, True, False, torch.float16),
}
if not TRITON_INTERPRETED and torch.cuda.is_available():
    SMALL_CASES["self_B2_hd32_bf16"] = (2, (3, 5, 7), 3, 32, True, True, torch.bfloat16)


@requires_triton
@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_kernel_matches_reference_on_small_shapes(case, poisoned_outputs):
    batch, grid, heads, head_dim, norm, rope, dtype = SMALL_CASES[case]
    x, weight, cos, sin = random_inputs(batch, grid, heads, head_dim, dtype, seed=len(case) * 17 + head_dim)
    assert kernel_serves(x), KERNEL_PATH_MISSING
    args = (weight if norm else None, cos if rope else None, sin if rope else None)
    out = qk_norm_rope(x, *args, num_heads=heads, eps=1e-6)
    expected = qk_norm_rope_reference(x.float(), *args, num_heads=heads, eps=1e-6)
    assert out.shape == (batch, x.shape[1], heads, head_dim) and out.dtype == dtype
    assert relative_error(out, expected) <= TOLERANCE[dtype]


def test_reference_is_the_unfused_float32_ops():
    """Full-width RMSNorm (one statistic across all heads), then RoPE on each head with the same table."""
    x, weight, cos, sin = random_inputs(2, (2, 3, 5), 3, 16, torch.float16, seed=5, device="cpu")
    y = x.float()
    y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * weight
    expected = apply_rope(y.unflatten(-1, (3, 16)), cos, sin).half()
    assert torch.equal(qk_norm_rope_reference(x, weight, cos, sin, num_heads=3, eps=1e-6), expected)
    no_rope = qk_norm_rope_reference(x, weight, num_heads=3, eps=1e-6)
    assert torch.equal(no_rope, y.half().unflatten(-1, (3, 16)))
    # Rotations keep each channel pair's length.
    pair_norms = [t.float().unflatten(-1, (-1, 2)).norm(dim=-1) for t in (expected, no_rope)]
    assert relative_error(*pair_norms) <= 1e-3


@pytest.mark.parametrize("call, message", [
    (lambda x, w, c, s: qk_norm_rope(x, w, num_heads=5, eps=1e-6), "heads of an even size"),
    (lambda x, w, c, s: qk_norm_rope(x, w, c, None, num_heads=3, eps=1e-6), "cos and sin together"),
    (lambda x, w, c, s: qk_norm_rope(x, w, c[:-1], s[:-1], num_heads=3, eps=1e-6), r"\[L, head_dim/2\]"),
    (lambda x, w, c, s: qk_norm_rope(x, w[:-1], num_heads=3, eps=1e-6), "weight must be"),
    (lambda x, w, c, s: qk_norm_rope(x, w.half(), num_heads=3, eps=1e-6), "weight must be"),
    (lambda x, w, c, s: qk_norm_rope(x[..., ::2], None, num_heads=3, eps=1e-6), "contiguous"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(*random_inputs(2, (2, 3, 5), 3, 16, torch.float32, seed=6, device="cpu"))


# Wan2.1-1.3B at 832x480x81: token grid 21 x 30 x 52, 12 heads of 128.
REAL_GRID, REAL_HEADS, REAL_HEAD_DIM = (21, 30, 52), 12, 128


@requires_cuda
@requires_triton
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("rope", [True, False], ids=["self_attention", "cross_attention"])
def test_full_size_bf16_on_gpu(batch, rope, poisoned_outputs):
    x, weight, cos, sin = random_inputs(batch, REAL_GRID, REAL_HEADS, REAL_HEAD_DIM, torch.bfloat16, seed=batch)
    args = (weight, cos, sin) if rope else (weight,)
    out = qk_norm_rope(x, *args, num_heads=REAL_HEADS, eps=1e-6)
    expected = qk_norm_rope_reference(x.float(), *args, num_heads=REAL_HEADS, eps=1e-6)
    assert relative_error(out, expected) <= 4e-3                       # bf16 rounding: 2^-9 relative at most
    reference_bf16 = qk_norm_rope_reference(x, *args, num_heads=REAL_HEADS, eps=1e-6)
    assert relative_error(out, reference_bf16) <= TOLERANCE[torch.bfloat16]
