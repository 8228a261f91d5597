"""What the fused row-kernel tests (norm_modulate, qk_norm_rope, gated_residual) share: the device,
tolerances, skip markers and the error measure.

Without CUDA, tests/conftest.py has set TRITON_INTERPRET=1 before anything imported triton.
"""
import pytest
import torch

from numina_engine.kernels._triton import TRITON_AVAILABLE, TRITON_INTERPRETED

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

requires_triton = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton is not installed (reference tested below)")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available() or TRITON_INTERPRETED,
                                   reason="needs a CUDA GPU and compiled (not interpreted) Triton")
KERNEL_PATH_MISSING = "the Triton kernel must serve this test (TRITON_INTERPRET=1 on CPU, set by tests/conftest.py)"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; NaN anywhere in `actual` gives NaN (fails any bound)."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm()).item()
