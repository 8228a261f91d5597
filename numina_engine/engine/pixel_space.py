"""Pixel space in place of a VAE: for small models that denoise RGB frames directly.

A diffusers-layout checkpoint selects it with `vae/config.json` = {"_class_name": "PixelSpace"}
(no weights). Latents are the frames themselves, [B, 3, T, H, W] with pixels scaled to [-1, 1], so
it has `WanVAE`'s decode interface with z_dim 3 and factors 1 in time and space.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from .vae import pixels_to_uint8

CLASS_NAME = "PixelSpace"


class PixelSpace:
    """Identity "autoencoder": [-1, 1] float latents <-> uint8 RGB frames, as Wan's VAE maps pixels."""

    z_dim = 3
    temporal_factor = 1
    spatial_factor = 1
    dtype = torch.float32

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    @classmethod
    def from_config(cls, config: dict, source: Path, device: torch.device | str = "cpu") -> PixelSpace:
        """Check a `vae/config.json` payload that names this class; `source` is used in errors."""
        extra = sorted(set(config) - {"_class_name", "_diffusers_version"})
        if config.get("_class_name") != CLASS_NAME or extra:
            raise CheckpointError(f"{source} should be {{\"_class_name\": \"{CLASS_NAME}\"}} for a pixel-space model; "
                                  f"got {config}")
        return cls(device)

    def to(self, device: torch.device | str) -> PixelSpace:
        self.device = torch.device(device)
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, cache_on_cpu: bool = False) -> torch.Tensor:
        """Float latents [B, 3, T, H, W] -> uint8 frames [B, T, H, W, 3] on `device` (as WanVAE.decode maps).
        `cache_on_cpu` is WanVAE.decode's; pixel space has no cache, so it changes nothing."""
        if latents.ndim != 5 or latents.shape[1] != 3 or not latents.is_floating_point():
            raise ValueError(f"decode() takes float latents [B, 3, T, H, W], got {latents.dtype} {tuple(latents.shape)}")
        return pixels_to_uint8(latents.to(self.device))
