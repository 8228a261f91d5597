"""Test-session setup.

Without a GPU the Triton kernel tests run in Triton's CPU interpreter, which Triton fixes when it is
first imported: set it here, before any test module imports triton. (The engine itself calls the
kernels' PyTorch references on the CPU, so this does not slow the pipeline tests.)
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
