"""Wan2.1 text-to-video DiT (the denoiser), written for this engine.

Same computation as the official `WanModel` (t2v) and diffusers' `WanTransformer3DModel`; parameter
names are the official checkpoint's, so its safetensors load with no renaming.

Precision policy (Wan's): the residual stream, LayerNorms, q/k RMSNorms, RoPE, the timestep
embedding and all shift/scale/gate modulation run in float32; matmuls and convolutions run in the
dtype of their weights (the "compute dtype", float32 or bfloat16), their inputs cast to it.

That elementwise float32 work goes through four helpers below (`modulated_norm`, `qk_norm_rope`,
`gated_add`, `feed_forward`). Where the model's `KernelChoice` (`WanDiT.kernels`: "auto" | "triton" |
"reference", kernels/dispatch.py; "auto": CUDA tensors outside autograd) picks the kernels, they
run fused Triton kernels (numina_engine/kernels), one read and one write of each tensor, float32
inside, rounded once to the compute dtype; elsewhere the kernels' PyTorch references, which are
Wan's op-by-op float32 computation. The same choice goes to the attention interface. The norm
modules (nn.LayerNorm, nn.RMSNorm) only carry their parameters and eps: the helpers compute with them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .. import kernels
from ..kernels.dispatch import AUTO, KernelChoice
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


def modulated_norm(hidden: torch.Tensor, norm: nn.Module, dtype: torch.dtype, shift: torch.Tensor | None = None,
                   scale: torch.Tensor | None = None, *, choice: KernelChoice = AUTO) -> torch.Tensor:
    """norm(hidden) * (1 + scale) + shift in float32, cast to `dtype`.

    hidden: [B, L, dim] float32; norm: an nn.LayerNorm (its parameters, if any, used in float32) or
    nn.Identity (then no modulation either: hidden is only cast); shift, scale: [B, dim] float32 or
    both None. Returns [B, L, dim] in `dtype`.
    """
    if isinstance(norm, nn.Identity):
        return hidden.to(dtype)
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    return choice.pick(kernels.layer_norm_modulate, hidden)(
        hidden, weight, bias, scale, shift, eps=norm.eps, out_dtype=dtype)


def qk_norm_rope(x: torch.Tensor, norm: nn.Module, num_heads: int,
                 rope: tuple[torch.Tensor, torch.Tensor] | None = None, *, choice: KernelChoice = AUTO) -> torch.Tensor:
    """Wan's q/k RMSNorm over the full width (nn.RMSNorm; nn.Identity: none), split into heads, then
    RoPE when `rope` = (cos, sin) [L, head_dim/2] float32 is given; float32 inside.

    x: [B, L, dim] (a q or k projection). Returns [B, L, num_heads, head_dim] in x's dtype.
    """
    weight, eps = (None, 0.0) if isinstance(norm, nn.Identity) else (norm.weight.float(), norm.eps)
    cos, sin = rope if rope is not None else (None, None)
    return choice.pick(kernels.qk_norm_rope, x)(x, weight, cos, sin, num_heads=num_heads, eps=eps)


def gated_add(hidden: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None, *,
              choice: KernelChoice = AUTO) -> torch.Tensor:
    """hidden + y.float() * gate (or + y.float() without a gate); returns the updated residual stream.

    hidden: [B, L, dim] float32 residual stream; y: [B, L, dim] compute dtype; gate: [B, dim] float32.
    In place when autograd is not recording (inference); a new tensor while it is (training), where an
    in-place update would break the backward pass.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or y.requires_grad):
        return hidden + (y.float() * gate[:, None] if gate is not None else y.float())
    return choice.pick(kernels.gated_residual_add, hidden)(hidden, y, gate)


def feed_forward(ffn: nn.Sequential, x: torch.Tensor, *, choice: KernelChoice = AUTO) -> torch.Tensor:
    """Wan's FFN (Linear, GELU(tanh), Linear) of x [B, L, dim] in the compute dtype.

    With the fused kernels in bfloat16/float16, the GELU runs in the first matmul's cuBLASLt epilogue
    (torch._addmm_activation, whose GELU on CUDA is the tanh form), on the float32 accumulator plus
    bias before the one rounding to x's dtype. Elsewhere the modules run as written: in float32 (the
    epilogue's accuracy there is not documented) and on the CPU (whose _addmm_activation GELU is erf).
    """
    if choice.use_kernels(x) and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        first, _, second = ffn
        hidden = torch._addmm_activation(first.bias, x.flatten(0, -2), first.weight.t(), use_gelu=True)
        return second(hidden.unflatten(0, x.shape[:-1]))
    return ffn(x)


class WanAttention(nn.Module):
    """Self-attention over the video tokens (with 3-axis RoPE) or cross-attention from them to the
    embedded text tokens; q/k RMSNorm over the full width in both."""

    def __init__(self, config: WanConfig, *, cross: bool):
        super().__init__()
        dim = config.dim
        self.cross = cross
        self.num_heads = config.num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, config.eps) if config.qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, config.eps) if config.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, *, layer_index: int, state,
                choice: KernelChoice = AUTO) -> torch.Tensor:
        """x: [B, L, dim] video tokens in the compute dtype. Self-attention: context None, rope =
        (cos, sin) [L, head_dim/2] float32 on x's device. Cross-attention: context [B, T, dim] in the
        compute dtype, no rope. Returns [B, L, dim] in the compute dtype."""
        source = context if self.cross else x
        q = qk_norm_rope(self.q(x), self.norm_q, self.num_heads, rope, choice=choice)
        k = qk_norm_rope(self.k(source), self.norm_k, self.num_heads, rope, choice=choice)
        v = self.v(source).unflatten(-1, (self.num_heads, -1))
        attend = attention.cross_attention if self.cross else attention.self_attention
        out = attend(q, k, v, layer_index=layer_index, state=state, kernels=choice)
        return self.o(out.flatten(2))


class WanBlock(nn.Module):
    """One DiT block: modulated self-attention, cross-attention, modulated FFN, gated residuals."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanAttention(config, cross=False)
        self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = WanAttention(config, cross=True)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, hidden: torch.Tensor, time_modulation: torch.Tensor, context: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], *, layer_index: int, state,
                choice: KernelChoice = AUTO) -> torch.Tensor:
        """hidden: [B, L, dim] float32 residual stream (last dimension contiguous), updated in place
        outside autograd;
        time_modulation: [B, 6, dim] float32; context: [B, T, dim] compute dtype; rope: (cos, sin)
        [L, head_dim/2] float32. Returns hidden."""
        compute_dtype = self.ffn[0].weight.dtype
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            self.modulation.float() + time_modulation).unbind(1)                      # [B, dim] each

        x = modulated_norm(hidden, self.norm1, compute_dtype, shift_sa, scale_sa, choice=choice)
        y = self.self_attn(x, rope=rope, layer_index=layer_index, state=state, choice=choice)
        hidden = gated_add(hidden, y, gate_sa, choice=choice)

        x = modulated_norm(hidden, self.norm3, compute_dtype, choice=choice)
        y = self.cross_attn(x, context, layer_index=layer_index, state=state, choice=choice)
        hidden = gated_add(hidden, y, choice=choice)

        x = modulated_norm(hidden, self.norm2, compute_dtype, shift_ff, scale_ff, choice=choice)
        return gated_add(hidden, feed_forward(self.ffn, x, choice=choice), gate_ff, choice=choice)


class WanHead(nn.Module):
    """Final modulated LayerNorm and projection to patch pixels."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.norm = nn.LayerNorm(dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, config.out_dim * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, hidden: torch.Tensor, time_embedding: torch.Tensor, *,
                choice: KernelChoice = AUTO) -> torch.Tensor:
        """hidden: [B, L, dim] float32; time_embedding: [B, dim] float32.
        Returns [B, L, out_dim * prod(patch_size)] float32."""
        shift, scale = (self.modulation.float() + time_embedding.unsqueeze(1)).unbind(1)     # [B, dim] each
        normed = modulated_norm(hidden, self.norm, self.head.weight.dtype, shift, scale, choice=choice)
        return self.head(normed).float()


class WanDiT(nn.Module):
    """Wan2.1 text-to-video DiT with the official checkpoint's parameter names."""

    def __init__(self, config: WanConfig, kernels: KernelChoice | str = AUTO):
        super().__init__()
        self.config = config
        # Kernels or PyTorch references for the fused work of every forward call (kernels/dispatch.py).
        self.kernels = kernels if isinstance(kernels, KernelChoice) else KernelChoice(kernels)
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
        `attention.self_attention` and `attention.cross_attention`; None for plain Wan. With
        `state.sequence` (Ulysses) each rank runs the blocks on its own token rows and every rank gets
        the whole output.
        Returns [B, out_dim, F, H, W] float32, or None when `state.stop_after_layer` ends the call early.
        """
        self._check_inputs(latents, timestep, context)
        config = self.config
        batch = latents.shape[0]
        grid = self.token_grid(latents.shape)
        compute_dtype = self.patch_embedding.weight.dtype

        hidden = self.patch_embedding(latents.to(compute_dtype)).flatten(2).transpose(1, 2)  # [B, L, dim]
        hidden = hidden.float().contiguous()         # the float32 residual stream, token rows contiguous

        time_dtype = self.time_embedding[0].weight.dtype
        time_embedding = self.time_embedding(timestep_sinusoid(timestep, config.freq_dim).to(time_dtype))
        time_modulation = self.time_projection(time_embedding).float().unflatten(1, (6, config.dim))
        time_embedding = time_embedding.float()                                          # [B, dim]

        text = self.text_embedding(context.to(self.text_embedding[0].weight.dtype))       # [B, T, dim]
        rope = self.rope_tables(grid, latents.device)
        shard = state.sequence if state is not None else None
        if shard is not None:               # Ulysses: this rank's token rows only (sequence_shard.py)
            hidden = shard.local_rows(hidden, dim=1)
            rope = tuple(shard.local_rows(table, dim=0) for table in rope)

        for index, block in enumerate(self.blocks):
            hidden = block(hidden, time_modulation, text, rope, layer_index=index, state=state, choice=self.kernels)
            if state is not None and state.stop_after_layer == index:
                return None                      # the caller wanted only what this block extracted

        patches = self.head(hidden, time_embedding, choice=self.kernels)     # [B, L, pt*ph*pw*out_dim]
        if shard is not None:
            patches = shard.gather_rows(patches, dim=1)
        f, h, w = grid
        pt, ph, pw = config.patch_size
        patches = patches.view(batch, f, h, w, pt, ph, pw, config.out_dim)
        return patches.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(batch, config.out_dim, f * pt, h * ph, w * pw)
