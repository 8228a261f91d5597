"""layer_norm_modulate: the Triton kernel against its PyTorch reference, and the reference against
the unfused ops it replaces.

Without CUDA the kernel runs in Triton's CPU interpreter (float32 and float16 outputs: the
interpreter computes bfloat16 wrongly); with CUDA the same small cases run compiled, plus the full
Wan2.1-1.3B shape (32,760 tokens x 1536 channels) with bfloat16 outputs.
"""
import pytest
import torch

from numina_engine.kernels import layer_norm_modulate, layer_norm_modulate_reference, norm_modulate
from numina_engine.kernels._triton import TRITON_INTERPRETED, triton_serves
from kernel_checks import BF16_RTOL, DEVICE, FP16_RTOL, FP32_RTOL, KERNEL_PATH_MISSING, poison_outputs, relative_error
from kernel_checks import requires_cuda, requires_triton


def random_inputs(batch, seq_len, dim, *, seed, device=DEVICE):
    """Residual stream with per-token offsets and gains (so the centring matters), affine parameters,
    and shift/scale as [B, D] views of a [B, 6, D] modulation table (row stride 6 D), as the block has them."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(batch, seq_len, dim, generator=gen) * (0.5 + torch.rand(batch, seq_len, 1, generator=gen) * 4)
         + torch.randn(batch, seq_len, 1, generator=gen) * 3)
    weight = 1 + 0.3 * torch.randn(dim, generator=gen)
    bias = 0.3 * torch.randn(dim, generator=gen)
    modulation = 0.5 * torch.randn(batch, 6, dim, generator=gen)
    return (t.to(device) for t in (x, weight, bias, modulation[:, 1], modulation[:, 0]))


@pytest.fixture
def poisoned_outputs(monkeypatch):
    poison_outputs(monkeypatch, norm_modulate)


# (batch, seq_len, dim, affine, modulated, out dtype, rtol vs the float32 reference); seq_len not a multiple of the rows per program,
# dim not a power of two.
SMALL_CASES = {
    "plain_B1_D48": (1, 13, 48, False, False, torch.float32, FP32_RTOL),
    "affine_B2_D96": (2, 13, 96, True, False, torch.float32, FP32_RTOL),
    "modulated_B2_D96": (2, 7, 96, False, True, torch.float32, FP32_RTOL),
    "affine_modulated_B1_D48": (1, 9, 48, True, True, torch.float32, FP32_RTOL),
    "modulated_B2_D96_fp16": (2, 13, 96, False, True, torch.float16, FP16_RTOL),
    "affine_B1_D48_fp16": (1, 5, 48, True, False, torch.float16, FP16_RTOL),
}
if not TRITON_INTERPRETED and torch.cuda.is_available():
    SMALL_CASES["modulated_B2_D96_bf16"] = (2, 13, 96, False, True, torch.bfloat16, BF16_RTOL)


@requires_triton
@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_kernel_matches_reference_on_small_shapes(case, poisoned_outputs):
    batch, seq_len, dim, affine, modulated, out_dtype, rtol = SMALL_CASES[case]
    x, weight, bias, scale, shift = random_inputs(batch, seq_len, dim, seed=len(case) * 31 + dim)
    assert triton_serves(x, out_dtype), KERNEL_PATH_MISSING
    args = (weight if affine else None, bias if affine else None, scale if modulated else None,
            shift if modulated else None)
    out = layer_norm_modulate(x, *args, eps=1e-6, out_dtype=out_dtype)
    expected = layer_norm_modulate_reference(x, *args, eps=1e-6, out_dtype=torch.float32)
    assert out.shape == x.shape and out.dtype == out_dtype
    assert relative_error(out, expected) <= rtol


def test_reference_matches_torch_layer_norm_in_float64():
    """Oracle: torch.nn.LayerNorm (affine and not) in float64, modulated in float64."""
    x, weight, bias, scale, shift = random_inputs(2, 11, 48, seed=3, device="cpu")
    norm = torch.nn.LayerNorm(48, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(weight.double())
        norm.bias.copy_(bias.double())
        expected = norm(x.double()) * (1 + scale[:, None].double()) + shift[:, None].double()
        plain = torch.nn.LayerNorm(48, eps=1e-6, elementwise_affine=False, dtype=torch.float64)(x.double())
    out = layer_norm_modulate_reference(x, weight, bias, scale, shift, eps=1e-6, out_dtype=torch.float32)
    assert relative_error(out, expected) <= FP32_RTOL
    assert relative_error(layer_norm_modulate_reference(x, eps=1e-6, out_dtype=torch.float32), plain) <= FP32_RTOL
    half = layer_norm_modulate_reference(x, weight, bias, scale, shift, eps=1e-6, out_dtype=torch.float16)
    assert half.dtype == torch.float16 and relative_error(half, expected) <= FP16_RTOL


@pytest.mark.parametrize("call, error, message", [
    (lambda x, w, b, s, t: layer_norm_modulate(x, w, None, eps=1e-6, out_dtype=torch.float32), ValueError,
     "weight and bias together"),
    (lambda x, w, b, s, t: layer_norm_modulate(x, scale=s, eps=1e-6, out_dtype=torch.float32), ValueError,
     "scale and shift together"),
    (lambda x, w, b, s, t: layer_norm_modulate(x.half(), eps=1e-6, out_dtype=torch.float32), TypeError, "float32"),
    (lambda x, w, b, s, t: layer_norm_modulate(x, scale=s[:1], shift=t[:1], eps=1e-6, out_dtype=torch.float32),
     ValueError, r"\[B, D\]"),
    (lambda x, w, b, s, t: layer_norm_modulate(x, w[:5], b[:5], eps=1e-6, out_dtype=torch.float32), ValueError,
     "weight must be"),
    (lambda x, w, b, s, t: layer_norm_modulate(x.transpose(1, 2), eps=1e-6, out_dtype=torch.float32), ValueError,
     "contiguous"),
    (lambda x, w, b, s, t: layer_norm_modulate(x, eps=1e-6, out_dtype=torch.int8), TypeError, "out_dtype"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(*random_inputs(2, 8, 8 * 6, seed=4, device="cpu"))


# Wan2.1-1.3B at 832x480x81: 21 x 30 x 52 tokens of 1536 channels.
REAL_TOKENS, REAL_DIM = 32760, 1536


@requires_cuda
@requires_triton
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("affine, modulated", [(False, True), (True, False)], ids=["norm1_norm2", "norm3"])
def test_full_size_bf16_on_gpu(batch, affine, modulated, poisoned_outputs):
    x, weight, bias, scale, shift = random_inputs(batch, REAL_TOKENS, REAL_DIM, seed=batch)
    args = (weight if affine else None, bias if affine else None, scale if modulated else None,
            shift if modulated else None)
    out = layer_norm_modulate(x, *args, eps=1e-6, out_dtype=torch.bfloat16)
    expected = layer_norm_modulate_reference(x, *args, eps=1e-6, out_dtype=torch.float32)
    assert relative_error(out, expected) <= BF16_RTOL
    reference_bf16 = layer_norm_modulate_reference(x, *args, eps=1e-6, out_dtype=torch.bfloat16)
    assert relative_error(out, reference_bf16) <= BF16_RTOL
