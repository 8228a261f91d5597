"""What the Triton kernel tests share: the device, tolerances, skip markers, the error measure and
NaN-poisoned kernel outputs.

Without CUDA, tests/conftest.py has set TRITON_INTERPRET=1 before anything imported triton.
"""
import pytest
import torch

from numina_engine.kernels._triton import TRITON_AVAILABLE, TRITON_INTERPRETED

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}

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
