"""--offload: make videos on a GPU that cannot hold every part of Wan2.1 at once.

The umT5-XXL text encoder (5.7B parameters, 11.4 GB in bf16) is the largest part of Wan2.1-1.3B and
runs once per video: with offload it stays on the CPU, the prompts are encoded there and only their
context ([2, 512, 4096]) moves to the GPU. The DiT leaves the GPU while the VAE decodes, so the
decode's activations get its memory, and comes back at the start of the next generation. (The
official Wan2.1 scripts call these --t5_cpu and --offload_model.)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .loading import WanModel, default_dtype, load_model, resolve_device

CPU = torch.device("cpu")


def load_offloaded(ckpt_dir: str | Path | None, device: str | torch.device | None = None,
                   dtype: torch.dtype | None = None) -> WanModel:
    """Load a checkpoint for offloaded runs: every part is read onto the CPU, then the DiT and the VAE
    move to `device` (default: CUDA when available); the text encoder never touches the GPU.

    `dtype` is the DiT's and the text encoder's (default: the device's, bf16 on CUDA); the VAE stays float32.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    model = load_model(ckpt_dir, device=CPU, dtype=dtype or default_dtype(device))
    model.dit.to(device)
    model.vae.to(device)
    return dataclasses.replace(model, device=device)


def place_for_generation(model: WanModel) -> None:
    """The text encoder on the CPU (a model loaded without offload moves it there once) and the DiT on
    `model.device` (back from the CPU, where the last offloaded decode left it)."""
    model.text_encoder.model.to(CPU)
    model.dit.to(model.device)


def park_dit_on_cpu(model: WanModel) -> None:
    """Move the DiT's weights to the CPU, so that the VAE decode can use their GPU memory."""
    model.dit.to(CPU)
