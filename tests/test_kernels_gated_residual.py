"""gated_residual_add: the in-place Triton kernel against its PyTorch reference, and the reference
against the unfused ops it replaces.

Without CUDA the kernel runs in Triton's CPU interpreter (float32 and float16 branch outputs: the
interpreter computes bfloat16 wrongly); with CUDA the same small cases run compiled, plus the full
Wan2.1-1.3B shape (32,760 tokens x 1536 channels) with a bfloat16 branch output.
"""
import pytest
import torch

from numina_engine.kernels import gated_residual_add, gated_residual_add_reference
from numina_engine.kernels._triton import TRITON_INTERPRETED, triton_serves
from kernel_checks import DEVICE, KERNEL_PATH_MISSING, relative_error, requires_cuda, requires_triton


def random_inputs(batch, seq_len, dim, dtype, *, seed, padded=False, device=DEVICE):
    """hidden float32 [B, L, D] (with `padded`, a view into wider rows, whose padding holds a marker),
    branch output y [B, L, D] in `dtype`, and the gate as a [B, D] view of a [B, 6, D] modulation table."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    storage = torch.full((batch, seq_len, dim + 8 if padded else dim), 123.0)
    storage[..., :dim] = torch.randn(batch, seq_len, dim, generator=gen) * 4
    y = torch.randn(batch, seq_len, dim, generator=gen)
    gate = torch.randn(batch, 6, dim, generator=gen)[:, 2]
    storage, y, gate = storage.to(device), y.to(device, dtype), gate.to(device)
    return storage, storage[..., :dim], y, gate


# The residual stream stays float32 whatever y's dtype: only a fused multiply-add may round
# differently (one float32 ulp).
FP32_ADD_RTOL = 1e-6
# (batch, seq_len, dim, y dtype, gated, hidden rows padded, rtol); seq_len not a multiple of the rows
# per program, dim not a power of two.
SMALL_CASES = {
    "gated_B1_D48": (1, 13, 48, torch.float32, True, False, FP32_ADD_RTOL),
    "gated_B2_D96": (2, 13, 96, torch.float32, True, False, FP32_ADD_RTOL),
    "ungated_B2_D48": (2, 7, 48, torch.float32, False, False, FP32_ADD_RTOL),
    "gated_B2_D96_padded_rows": (2, 9, 96, torch.float32, True, True, FP32_ADD_RTOL),
    "gated_B2_D96_fp16": (2, 13, 96, torch.float16, True, False, FP32_ADD_RTOL),
    "ungated_B1_D48_fp16": (1, 5, 48, torch.float16, False, True, FP32_ADD_RTOL),
}
if not TRITON_INTERPRETED and torch.cuda.is_available():
    SMALL_CASES["gated_B2_D96_bf16"] = (2, 13, 96, torch.bfloat16, True, False, FP32_ADD_RTOL)


@requires_triton
@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_kernel_matches_reference_on_small_shapes(case):
    batch, seq_len, dim, dtype, gated, padded, rtol = SMALL_CASES[case]
    storage, hidden, y, gate = random_inputs(batch, seq_len, dim, dtype, seed=len(case) * 13 + dim, padded=padded)
    assert triton_serves(hidden, y.dtype), KERNEL_PATH_MISSING
    expected = gated_residual_add_reference(hidden.clone(), y, gate if gated else None)
    out = gated_residual_add(hidden, y, gate if gated else None)
    assert out is hidden
    assert relative_error(hidden, expected) <= rtol
    if padded:
        assert torch.all(storage[..., dim:] == 123.0)


def test_reference_matches_a_float64_oracle():
    _, hidden, y, gate = random_inputs(2, 11, 48, torch.float16, seed=3, device="cpu")
    expected = hidden.double() + y.double() * gate[:, None].double()
    assert relative_error(gated_residual_add_reference(hidden.clone(), y, gate), expected) <= FP32_ADD_RTOL
    assert relative_error(gated_residual_add_reference(hidden.clone(), y), hidden.double() + y.double()) \
        <= FP32_ADD_RTOL


@pytest.mark.parametrize("call, error, message", [
    (lambda h, y, g: gated_residual_add(h.half(), y, g), TypeError, "hidden must be float32"),
    (lambda h, y, g: gated_residual_add(h, y.int(), g), TypeError, "y must be"),
    (lambda h, y, g: gated_residual_add(h, y[:, :-1], g), ValueError, "match hidden's shape"),
    (lambda h, y, g: gated_residual_add(h, y, g[:1]), ValueError, r"gate must be float32 \[B, D\]"),
    (lambda h, y, g: gated_residual_add(h.transpose(1, 2), y.transpose(1, 2), None), ValueError, "contiguous"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    _, hidden, y, gate = random_inputs(2, 8, 48, torch.float32, seed=4, device="cpu")
    with pytest.raises(error, match=message):
        call(hidden, y, gate)


# Wan2.1-1.3B at 832x480x81: 21 x 30 x 52 tokens of 1536 channels.
REAL_TOKENS, REAL_DIM = 32760, 1536


@requires_cuda
@requires_triton
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
def test_full_size_bf16_on_gpu(batch, gated):
    _, hidden, y, gate = random_inputs(batch, REAL_TOKENS, REAL_DIM, torch.bfloat16, seed=batch)
    expected = gated_residual_add_reference(hidden.clone(), y, gate if gated else None)
    gated_residual_add(hidden, y, gate if gated else None)
    assert relative_error(hidden, expected) <= FP32_ADD_RTOL
