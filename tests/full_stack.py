"""Dependencies that setup.py installs (spaCy and its English pipeline, diffusers, PyAV) are required.

A test that needs one imports it through `full_stack(name)`: where it is missing, the import error is
raised and the run fails (an install problem, not a reason to skip), with one exception: the GPU image,
which has CUDA and lacks these packages on purpose. There, and only where CUDA is present and the package
is absent, the test is skipped with a reason that says so. `requires_full_stack(name)` is the same rule as
a marker, for tests in modules that do not need the package otherwise.
"""
from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

GPU_IMAGE_REASON = "{name} is not on the GPU image (CUDA present, {name} not installed); CI runs it"


def _on_gpu_image_without(name: str) -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec(name.split(".")[0]) is None


def full_stack(name: str):
    """Import module `name`; on the GPU image without it, skip the calling module (or test)."""
    if _on_gpu_image_without(name):
        pytest.skip(GPU_IMAGE_REASON.format(name=name), allow_module_level=True)
    return importlib.import_module(name)


def requires_full_stack(name: str) -> pytest.MarkDecorator:
    """Marker: skip only on the GPU image without `name`; anywhere else a missing `name` fails the test."""
    return pytest.mark.skipif(_on_gpu_image_without(name), reason=GPU_IMAGE_REASON.format(name=name))
