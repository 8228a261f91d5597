"""Wan2.1 text-to-video DiT (the denoiser), written for this engine.

Same computation as the official `WanModel` (t2v) and diffusers' `WanTransformer3DModel`; parameter
names are the official checkpoint's, so its safetensors load with no renaming.

Precision policy (Wan's): the residual stream, LayerNorms, q/k RMSNorms, RoPE, the timestep
embedding and all shift/scale/gate modulation run in float32; matmuls and convolutions run in the
dtype of their weights (the "compute dtype", float32 or bfloat16), their inputs cast to it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attention
from .config import WanConfig

ROPE_THETA = 10000.0

# Parameters that `WanDiT.cast_weights` keeps in float32 (Wan computes them in float32).
_FLOAT32_PARAMETER_MARKERS = ("time_embedding.", "time_projection.", "modulation", "norm3.", "norm_q.",
                              "norm_k.")


def timestep_sinusoid(timestep: torch.Tensor, freq_dim: int) -> torch.Tensor:
    """Wan's sinusoidal timestep embedding: [cos(t w_i), sin(t w_i)] with w_i = 10000^(-i/half).

    timestep: [B] (any real dtype, 0..1000). Returns [B, freq_dim] float64 (Wan computes it in float64).
    """
    half = freq_dim // 2
    position = timestep.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timestep.device) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of a head given to the frame, height and width axes of 3-axis RoPE (Wan's split)."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def build_rope_tables(grid: tuple[int, int, int], head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of Wan's 3-axis RoPE for a token grid (f, h, w), tokens in (f, h, w) order.

    Channel pair i of a head (channels 2i, 2i+1) rotates by angle pos_axis * theta^(-2j/axis_dim),
    where the pairs are split frame/height/width by `rope_axis_dims` and j counts pairs within the axis.
    Angles are computed in float64 on the CPU and rounded once. Returns (cos, sin), each
    [f*h*w, head_dim/2] float32 on the CPU.
    """
    parts = []
    for axis, (length, axis_dim) in enumerate(zip(grid, rope_axis_dims(head_dim))):
        inv_freq = ROPE_THETA ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
        angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)   # [length, axis_dim/2]
        shape = [1, 1, 1, axis_dim // 2]
        shape[axis] = length
        parts.append(angles.view(shape).expand(*grid, axis_dim // 2))
    angles = torch.cat(parts, dim=-1).reshape(math.prod(grid), head_dim // 2)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x by the table angles.

    x: [B, L, H, D] float32; cos, sin: [L, D/2] float32 (from `build_rope_tables`). Returns [B, L, H, D] float32.
    """
    x_even, x_odd = x.unflatten(-1, (-1, 2)).unbind(-1)          # [B, L, H, D/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1).flatten(-2)


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input/parameter dtype; returns float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class QKRMSNorm(nn.Module):
    """RMSNorm over the full model width (all heads together), as Wan normalises q and k.

    Input [..., dim] any float dtype; output float32.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()


class WanSelfAttention(nn.Module):
    """Self-attention over video tokens with q/k RMSNorm and 3-axis RoPE."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.num_heads = config.num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = QKRMSNorm(dim, config.eps) if config.qk_norm else nn.Identity()
        self.norm_k = QKRMSNorm(dim, config.eps) if config.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], *, layer_index: int,
                state) -> torch.Tensor:
        """x: [B, L, dim] in the compute dtype; rope: (cos, sin) [L, head_dim/2] float32 on x's device.
        Returns [B, L, dim] in the compute dtype."""
        q = self.norm_q(self.q(x)).float().unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(x)).float().unflatten(-1, (self.num_heads, -1))
        v = self.v(x).unflatten(-1, (self.num_heads, -1))
        q = apply_rope(q, *rope).to(x.dtype)
        k = apply_rope(k, *rope).to(x.dtype)
        out = attention.self_attention(q, k, v, layer_index=layer_index, state=state)
        return self.o(out.flatten(2))


class WanCrossAttention(nn.Module):
    """Cross-attention from video tokens to the embedded text tokens, with q/k RMSNorm."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.num_heads = config.num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = QKRMSNorm(dim, config.eps) if config.qk_norm else nn.Identity()
        self.norm_k = QKRMSNorm(dim, config.eps) if config.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, *, layer_index: int, state) -> torch.Tensor:
        """x: [B, L, dim], context: [B, T, dim], both in the compute dtype. Returns [B, L, dim]."""
        q = self.norm_q(self.q(x)).to(x.dtype).unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(context)).to(x.dtype).unflatten(-1, (self.num_heads, -1))
        v = self.v(context).unflatten(-1, (self.num_heads, -1))
        out = attention.cross_attention(q, k, v, layer_index=layer_index, state=state)
        return self.o(out.flatten(2))


class WanBlock(nn.Module):
    """One DiT block: modulated self-attention, cross-attention, modulated FFN, gated residuals."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = Float32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(config)
        self.norm3 = Float32LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(config)
        self.norm2 = Float32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, hidden: torch.Tensor, time_modulation: torch.Tensor, context: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], *, layer_index: int, state) -> torch.Tensor:
        """hidden: [B, L, dim] float32 residual stream; time_modulation: [B, 6, dim] float32;
        context: [B, T, dim] compute dtype; rope: (cos, sin) [L, head_dim/2] float32.
        Returns the updated residual stream [B, L, dim] float32."""
        compute_dtype = self.ffn[0].weight.dtype
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            self.modulation.float() + time_modulation).unsqueeze(2).unbind(1)          # [B, 1, dim] each

        x = self.norm1(hidden) * (1 + scale_sa) + shift_sa
        x = self.self_attn(x.to(compute_dtype), rope, layer_index=layer_index, state=state)
        hidden = hidden + x.float() * gate_sa

        x = self.norm3(hidden).to(compute_dtype)
        hidden = hidden + self.cross_attn(x, context, layer_index=layer_index, state=state).float()

        x = self.norm2(hidden) * (1 + scale_ff) + shift_ff
        return hidden + self.ffn(x.to(compute_dtype)).float() * gate_ff


class WanHead(nn.Module):
    """Final modulated LayerNorm and projection to patch pixels."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.norm = Float32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, config.out_dim * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, hidden: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """hidden: [B, L, dim] float32; time_embedding: [B, dim] float32.
        Returns [B, L, out_dim * prod(patch_size)] float32."""
        shift, scale = (self.modulation.float() + time_embedding.unsqueeze(1)).unsqueeze(2).unbind(1)
        x = self.norm(hidden) * (1 + scale) + shift
        return self.head(x.to(self.head.weight.dtype)).float()


class WanDiT(nn.Module):
    """Wan2.1 text-to-video DiT with the official checkpoint's parameter names."""

    def __init__(self, config: WanConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = WanHead(config)
        # (f, h, w, device) -> (cos, sin) RoPE tables; plain attribute, so not in the state dict.
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def cast_weights(self, dtype: torch.dtype) -> "WanDiT":
        """Cast matmul/convolution weights to `dtype` and keep the time embedding, modulation tables
        and norm weights in float32, as Wan computes with them. Returns self.

        (`.to(dtype)` also works: those parameters are then upcast on use, at `dtype`'s precision.)
        """
        for name, param in self.named_parameters():
            keep_float32 = any(marker in name for marker in _FLOAT32_PARAMETER_MARKERS)
            param.data = param.data.to(torch.float32 if keep_float32 else dtype)
        return self

    def token_grid(self, latent_shape) -> tuple[int, int, int]:
        """Token grid (f, h, w) of a latent of shape [B, C, F, H, W] or [C, F, H, W]: (F, H, W) over the patch size."""
        shape = tuple(latent_shape)
        if len(shape) not in (4, 5):
            raise ValueError(f"latent shape must be [B, C, F, H, W] or [C, F, H, W], got {list(shape)}")
        sizes = shape[-3:]
        if any(s % p for s, p in zip(sizes, self.config.patch_size)) or min(sizes) <= 0:
            raise ValueError(f"latent (F, H, W) = {sizes} must be positive multiples of the patch size "
                             f"{self.config.patch_size}")
        return tuple(s // p for s, p in zip(sizes, self.config.patch_size))

    def rope_tables(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (cos, sin) RoPE tables [f*h*w, head_dim/2] float32 on `device` for token grid (f, h, w)."""
        key = (*grid, torch.device(device))
        if key not in self._rope_cache:
            cos, sin = build_rope_tables(grid, self.config.head_dim)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
        return self._rope_cache[key]

    def _check_inputs(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> None:
        config = self.config
        if latents.ndim != 5 or latents.shape[1] != config.in_dim:
            raise ValueError(f"latents must be [B, {config.in_dim}, F, H, W], got {list(latents.shape)}")
        batch = latents.shape[0]
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must be [B] = [{batch}] (one value in 0..1000 per sample), "
                             f"got {list(timestep.shape)}")
        if context.shape != (batch, config.text_len, config.text_dim):
            raise ValueError(f"context must be [B, text_len, text_dim] = [{batch}, {config.text_len}, "
                             f"{config.text_dim}] (T5 embeddings zero-padded to text_len), got {list(context.shape)}")

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                state=None) -> torch.Tensor:
        """Predict the flow velocity of a batch of video latents.

        latents: [B, in_dim, F, H, W] (F, H, W multiples of the patch size), any float dtype.
        timestep: [B] float, 0..1000. context: [B, text_len, text_dim] T5 embeddings, zero-padded to text_len.
        state: the per-forward-call `ForwardState` handed, with each block's index, to
        `attention.self_attention` and `attention.cross_attention`; None for plain Wan.
        Returns [B, out_dim, F, H, W] float32, or None when `state.stop_after_layer` ends the call early.
        """
        self._check_inputs(latents, timestep, context)
        config = self.config
        batch = latents.shape[0]
        grid = self.token_grid(latents.shape)
        compute_dtype = self.patch_embedding.weight.dtype

        hidden = self.patch_embedding(latents.to(compute_dtype)).flatten(2).transpose(1, 2).float()  # [B, L, dim]

        time_dtype = self.time_embedding[0].weight.dtype
        time_embedding = self.time_embedding(timestep_sinusoid(timestep, config.freq_dim).to(time_dtype))
        time_modulation = self.time_projection(time_embedding).float().unflatten(1, (6, config.dim))
        time_embedding = time_embedding.float()                                          # [B, dim]

        text = self.text_embedding(context.to(self.text_embedding[0].weight.dtype))       # [B, T, dim]
        rope = self.rope_tables(grid, latents.device)

        for index, block in enumerate(self.blocks):
            hidden = block(hidden, time_modulation, text, rope, layer_index=index, state=state)
            if state is not None and state.stop_after_layer == index:
                return None                      # the caller wanted only what this block extracted

        patches = self.head(hidden, time_embedding)                           # [B, L, pt*ph*pw*out_dim]
        f, h, w = grid
        pt, ph, pw = config.patch_size
        patches = patches.view(batch, f, h, w, pt, ph, pw, config.out_dim)
        return patches.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(batch, config.out_dim, f * pt, h * ph, w * pw)
