"""--offload: make videos on a GPU that cannot hold every part of Wan2.1 at once.

Three modes (`offload_mode`):

- "none": every part on the GPU.
- "text-encoder": the umT5-XXL text encoder (5.7B parameters, 11.4 GB in bf16, the largest part of
  Wan2.1-1.3B, run once per video) lives on the CPU and is streamed to the GPU one block at a time
  for the encoding (`TextEncoder.encode(device=)`: 0.47 GB on the GPU at a time, the same context
  as the encoder on the GPU computes). For Wan2.1-14B at 720p: 48.7 GiB allocated
  on the H200 with NUMINA (docs/results/memory_h200_first.json); not run on an 80 GB card.
- "full" (`--offload`): that, and the DiT leaves the GPU while the VAE decodes, so the decode's
  activations get its memory (it comes back at the start of the next generation), the VAE keeps its
  causal convolutions' cache in CPU memory (`vae.py`, HostFeatureCache: Wan2.1's VAE caches 3.5 GiB
  at 832x480; counted tensor by tensor on the CPU, a decode's live tensors peak at 6.8 GiB with the
  cache on the device and 3.8 GiB without), and the NUMINA
  extraction holds less of its attention maps at a time (FULL_OFFLOAD_MAPS_BUDGET_BYTES). For
  Wan2.1-1.3B on an 8 GB card. (The official Wan2.1 scripts have --t5_cpu, which encodes on the CPU,
  and --offload_model.)

The video is the same in every mode: the VAE always decodes in time chunks (`vae.py`), and the
extraction's chunking does not change its result (`extraction.py`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .extraction import DEFAULT_MAPS_BUDGET_BYTES
from .loading import WanModel, default_dtype, load_model, resolve_device

CPU = torch.device("cpu")
OFFLOAD_MODES = ("none", "text-encoder", "full")
# Within-frame maps the extraction holds at a time under "full" offload: 9 of Wan2.1-1.3B's 21 latent
# frames at 832x480 (12 heads, 1560 tokens a frame: 117 MB a frame), about 1 GB, plus as much again
# for head scoring's working copy; the DiT (2.8 GB) and the VAE (0.5 GB) stay on the GPU meanwhile.
FULL_OFFLOAD_MAPS_BUDGET_BYTES = 2**30


def offload_mode(value: bool | str | None) -> str:
    """One of OFFLOAD_MODES from a mode name, or from a bool (True: "full", False/None: "none")."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "full"
    if value not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)} (or True/False), got {value!r}")
    return value


def load_offloaded(ckpt_dir: str | Path | None, device: str | torch.device | None = None,
                   dtype: torch.dtype | None = None) -> WanModel:
    """Load a checkpoint for offloaded runs: every part is read onto the CPU, then the DiT and the VAE
    move to `device` (default: CUDA when available); the text encoder's weights stay on the CPU.

    `dtype` is the DiT's and the text encoder's (default: the device's, bf16 on CUDA); the VAE stays float32.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    model = load_model(ckpt_dir, device=CPU, dtype=dtype or default_dtype(device))
    model.dit.to(device)
    model.vae.to(device)
    return dataclasses.replace(model, device=device)


def place_for_generation(model: WanModel) -> None:
    """The text encoder's weights on the CPU (a model loaded without offload moves them there once) and
    the DiT on `model.device` (back from the CPU, where the last "full" offload decode left it)."""
    model.text_encoder.model.to(CPU)
    model.dit.to(model.device)


def text_encoding_device(model: WanModel, mode: str) -> torch.device | None:
    """Where the prompts are encoded: with offload, on `model.device` (the encoder streamed there);
    without, None (where the encoder's weights are)."""
    return None if mode == "none" else model.device


def parks_dit(mode: str) -> bool:
    """Whether the DiT leaves the GPU while the VAE decodes."""
    return mode == "full"


def maps_budget_bytes(mode: str) -> int:
    """Bytes of within-frame attention maps the NUMINA extraction may hold at a time."""
    return FULL_OFFLOAD_MAPS_BUDGET_BYTES if mode == "full" else DEFAULT_MAPS_BUDGET_BYTES


def park_dit_on_cpu(model: WanModel) -> None:
    """Move the DiT's weights to the CPU, so that the VAE decode can use their GPU memory."""
    model.dit.to(CPU)
