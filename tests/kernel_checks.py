"""What the Triton kernel tests share: the device, row-kernel bounds, skip markers, the error measure and
NaN-poisoned kernel outputs.

Without CUDA, tests/conftest.py has set TRITON_INTERPRET=1 before anything imported triton.
"""
import pytest
import torch

from numina_engine.kernels._triton import TRITON_AVAILABLE, TRITON_INTERPRETED

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Relative-error bounds that the row-kernel cases carry next to their dtype: float32 math rounded
# once to the output dtype (fp16: 2^-11 relative at most; bf16: 2^-8 at most against a float32 or
# a bf16-rounded reference, however many elements round differently).
FP32_RTOL = 1e-5
FP16_RTOL = 2e-3
BF16_RTOL = 4e-3

requires_triton = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton is not installed (reference tested below)")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available() or TRITON_INTERPRETED,
                                   reason="needs a CUDA GPU and compiled (not interpreted) Triton")
KERNEL_PATH_MISSING = "the Triton kernel must serve this test (TRITON_INTERPRET=1 on CPU, set by tests/conftest.py)"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; NaN anywhere in `actual` gives NaN (fails any bound)."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm()).item()


def poison_outputs(monkeypatch, *kernel_modules) -> None:
    """Kernel outputs start as NaN (each module's `new_output`), so any element a kernel fails to write
    fails the comparison."""
    def nan_output(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    for module in kernel_modules:
        monkeypatch.setattr(module, "new_output", nan_output)
