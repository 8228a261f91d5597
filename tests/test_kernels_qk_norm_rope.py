"""qk_norm_rope: the Triton kernel against its PyTorch reference (with Wan's 3-axis RoPE tables),
and the reference against the unfused ops it replaces.

Without CUDA the kernel runs in Triton's CPU interpreter (float32 and float16: the interpreter
computes bfloat16 wrongly); with CUDA the same small cases run compiled, plus the full Wan2.1-1.3B
shape (32,760 tokens, 12 heads of 128) in bfloat16.
"""
import pytest
import torch

from numina_engine.engine.model import build_rope_tables
from numina_engine.kernels import qk_norm_rope, qk_norm_rope_reference, rms_norm_rope
from numina_engine.kernels._triton import TRITON_INTERPRETED, triton_serves
from kernel_checks import BF16_RTOL, DEVICE, FP16_RTOL, FP32_RTOL, KERNEL_PATH_MISSING, poison_outputs, relative_error
from kernel_checks import requires_cuda, requires_triton


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


# (batch, token grid, heads, head_dim, RMSNorm, RoPE, dtype, rtol vs the float32 reference). Grids of 105, 30 and 9 tokens (not
# multiples of the rows per program); D = 48, 96 or 60 (not powers of two); head_dim 16 (RoPE split
# 8/4/4 channels), 32 (12/10/10) and 20 (8/6/6).
SMALL_CASES = {
    "self_B1_hd16": (1, (3, 5, 7), 3, 16, True, True, torch.float32, FP32_RTOL),
    "self_B2_hd32": (2, (2, 3, 5), 3, 32, True, True, torch.float32, FP32_RTOL),
    "self_B2_hd20": (2, (1, 3, 3), 3, 20, True, True, torch.float32, FP32_RTOL),
    "cross_B2_hd32": (2, (2, 3, 5), 3, 32, True, False, torch.float32, FP32_RTOL),
    "rope_only_B1_hd16": (1, (3, 5, 7), 3, 16, False, True, torch.float32, FP32_RTOL),
    "self_B2_hd32_fp16": (2, (3, 5, 7), 3, 32, True, True, torch.float16, FP16_RTOL),
    "cross_B1_hd16_fp16": (1, (2, 3, 5), 3, 16, True, False, torch.float16, FP16_RTOL),
}
if not TRITON_INTERPRETED and torch.cuda.is_available():
    SMALL_CASES["self_B2_hd32_bf16"] = (2, (3, 5, 7), 3, 32, True, True, torch.bfloat16, BF16_RTOL)


@requires_triton
@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_kernel_matches_reference_on_small_shapes(case, poisoned_outputs):
    batch, grid, heads, head_dim, norm, rope, dtype, rtol = SMALL_CASES[case]
    x, weight, cos, sin = random_inputs(batch, grid, heads, head_dim, dtype, seed=len(case) * 17 + head_dim)
    assert triton_serves(x), KERNEL_PATH_MISSING
    args = (weight if norm else None, cos if rope else None, sin if rope else None)
    out = qk_norm_rope(x, *args, num_heads=heads, eps=1e-6)
    expected = qk_norm_rope_reference(x.float(), *args, num_heads=heads, eps=1e-6)
    assert out.shape == (batch, x.shape[1], heads, head_dim) and out.dtype == dtype
    assert relative_error(out, expected) <= rtol


def rope_oracle(x: torch.Tensor, weight: torch.Tensor, grid, heads: int, head_dim: int) -> torch.Tensor:
    """float64 oracle: torch.nn.RMSNorm over the full width, then each channel pair (2i, 2i+1) of a
    head as a complex number times exp(1j * angle), angle = position on the pair's axis (frame
    pairs first, then height, then width) * 10000^(-2j / axis channels) (Wan's RoPE)."""
    norm = torch.nn.RMSNorm(x.shape[-1], eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(weight.double())
        y = norm(x.double()).unflatten(-1, (heads, head_dim // 2, 2))
    spatial = 2 * (head_dim // 6)
    axis_dims = (head_dim - 2 * spatial, spatial, spatial)
    f, h, w = grid
    positions = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"),
                            dim=-1).reshape(-1, 3).double()                             # [L, 3] (f, h, w)
    angles = torch.cat([positions[:, axis:axis + 1] * 10000.0 ** (-torch.arange(0, d, 2).double() / d)
                        for axis, d in enumerate(axis_dims)], dim=-1)                   # [L, head_dim/2]
    rotated = torch.view_as_complex(y.contiguous()) * torch.polar(torch.ones_like(angles), angles)[:, None]
    return torch.view_as_real(rotated).flatten(-2)                                       # [B, L, H, head_dim]


def test_reference_matches_a_float64_rmsnorm_and_complex_rotation_oracle():
    """Full-width RMSNorm (one statistic across all heads), then RoPE on each head with the same table."""
    grid, heads, head_dim = (2, 3, 5), 3, 16
    x, weight, cos, sin = random_inputs(2, grid, heads, head_dim, torch.float32, seed=5, device="cpu")
    expected = rope_oracle(x, weight, grid, heads, head_dim)
    assert relative_error(qk_norm_rope_reference(x, weight, cos, sin, num_heads=heads, eps=1e-6), expected) <= FP32_RTOL
    no_rope = qk_norm_rope_reference(x, weight, num_heads=heads, eps=1e-6)
    norm = torch.nn.RMSNorm(x.shape[-1], eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(weight.double())
        assert relative_error(no_rope, norm(x.double()).unflatten(-1, (heads, head_dim))) <= FP32_RTOL
    half = qk_norm_rope_reference(x.half(), weight, cos, sin, num_heads=heads, eps=1e-6)
    assert half.dtype == torch.float16 and relative_error(half, rope_oracle(x.half(), weight, grid, heads, head_dim)) \
        <= FP16_RTOL


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
    assert relative_error(out, expected) <= BF16_RTOL
    reference_bf16 = qk_norm_rope_reference(x, *args, num_heads=REAL_HEADS, eps=1e-6)
    assert relative_error(out, reference_bf16) <= BF16_RTOL
