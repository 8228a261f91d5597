"""KernelChoice, the one place that picks a Triton kernel or its PyTorch reference."""
import pytest
import torch

from numina_engine.kernels import (
    KernelChoice,
    attention_with_frame_lse,
    attention_with_frame_lse_reference,
    cross_attention_with_column_bias,
    fp8_attention,
    fp8_attention_reference,
    gated_residual_add,
    gated_residual_add_reference,
)
from numina_engine.kernels._triton import TRITON_AVAILABLE, TRITON_INTERPRETED


def test_unknown_choice_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"one of \('auto', 'triton', 'reference'\), got 'fast'"):
        KernelChoice("fast")


def test_attention_choice_is_bf16_or_fp8():
    assert KernelChoice().attention == "bf16" and KernelChoice("reference", attention="fp8").attention == "fp8"
    with pytest.raises(ValueError, match=r"attention must be one of \('bf16', 'fp8'\), got 'int8'"):
        KernelChoice(attention="int8")


def test_fp8_attention_falls_back_to_its_reference_off_the_gpu_and_for_other_head_sizes():
    assert KernelChoice("auto").pick(fp8_attention, torch.zeros(1, 4, 2, 128)) is fp8_attention_reference
    if torch.cuda.is_available():
        with torch.no_grad():
            assert KernelChoice("auto").pick(fp8_attention, torch.zeros(1, 4, 2, 128, device="cuda")) is fp8_attention
            assert KernelChoice("auto").pick(fp8_attention, torch.zeros(1, 4, 2, 48, device="cuda")) is fp8_attention
            assert KernelChoice("auto").pick(fp8_attention, torch.zeros(1, 4, 2, 40, device="cuda")) \
                is fp8_attention_reference


def test_reference_choice_never_picks_a_kernel():
    for x in (torch.zeros(2, 3), torch.zeros(1, 4, 2, 16)):
        assert KernelChoice("reference").pick(gated_residual_add, x) is gated_residual_add_reference
        assert KernelChoice("reference").pick(attention_with_frame_lse, x) is attention_with_frame_lse_reference


def test_auto_picks_the_references_on_the_cpu_and_in_autograd():
    x = torch.zeros(1, 4, 2, 16)
    assert KernelChoice("auto").pick(attention_with_frame_lse, x) is attention_with_frame_lse_reference
    with torch.no_grad():
        assert KernelChoice("auto").pick(gated_residual_add, x) is gated_residual_add_reference


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda_picks_kernels_outside_autograd_and_for_supported_head_sizes():
    with torch.no_grad():
        assert KernelChoice("auto").pick(attention_with_frame_lse, torch.zeros(1, 4, 2, 64, device="cuda")) \
            is attention_with_frame_lse
        assert KernelChoice("auto").pick(attention_with_frame_lse, torch.zeros(1, 4, 2, 20, device="cuda")) \
            is attention_with_frame_lse_reference
    assert KernelChoice("auto").pick(gated_residual_add, torch.zeros(2, 3, device="cuda")) \
        is gated_residual_add_reference


@pytest.mark.skipif(not (TRITON_AVAILABLE and TRITON_INTERPRETED), reason="needs Triton's interpreter")
def test_triton_choice_picks_kernels_and_refuses_what_triton_cannot_run():
    assert KernelChoice("triton").pick(cross_attention_with_column_bias, torch.zeros(1, 4, 2, 16)) \
        is cross_attention_with_column_bias
    with pytest.raises(ValueError, match="kernels='triton'.*bfloat16"):
        KernelChoice("triton").pick(gated_residual_add, torch.zeros(2, 3, dtype=torch.bfloat16))


def test_a_function_without_a_reference_is_refused():
    with pytest.raises(KeyError, match="no_kernel"):
        def no_kernel():
            pass
        KernelChoice("auto").pick(no_kernel, torch.zeros(1))


@pytest.mark.skipif(not (TRITON_AVAILABLE and TRITON_INTERPRETED), reason="needs Triton's interpreter")
def test_launchers_refuse_inputs_their_kernel_cannot_serve_instead_of_falling_back():
    q = torch.randn(1, 20, 2, 16, dtype=torch.bfloat16)            # the interpreter computes bfloat16 wrongly
    with pytest.raises(ValueError, match="attention_with_frame_lse: Triton cannot run.*attention_with_frame_lse_reference"):
        attention_with_frame_lse(q, q, q, frame_tokens=10, num_frames=2)
    hidden, y = torch.randn(1, 3, 8), torch.randn(1, 3, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="gated_residual_add: Triton cannot run"):
        gated_residual_add(hidden, y)
