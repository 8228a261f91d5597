"""Wan2.1's video VAE, loaded from either checkpoint layout, with Wan's latent normalisation.

The network is diffusers' `AutoencoderKLWan`; the official release's `Wan2.1_VAE.pth` (Wan's own
`wan/modules/vae.py` module names) is renamed onto it key by key. Channel sizes, stage count, residual
blocks per stage and which stages resample in time are read from the weights, so tiny test VAEs load the
same way as the real one (base dim 96, dim_mult [1, 2, 4, 4], 2 residual blocks, z_dim 16).

diffusers is imported only when a VAE is loaded, so the rest of the engine works without it.
"""
from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from .text_encoder import load_pth_state_dict

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan

DIFFUSERS_VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
# Wan2.1's per-channel latent statistics (wan/modules/vae.py; diffusers keeps them in the vae config).
WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

_RESIDUAL_KEYS = {                 # Wan ResidualBlock sub-key -> diffusers WanResidualBlock sub-key
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias",
}
_ATTENTION_KEYS = {"norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias"}   # same names
_RESAMPLE_KEYS = {"resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias"}  # same names
_RENAMED_CONVS = {"conv1": "quant_conv", "conv2": "post_quant_conv",
                  "encoder.conv1": "encoder.conv_in", "decoder.conv1": "decoder.conv_in",
                  "encoder.head.2": "encoder.conv_out", "decoder.head.2": "decoder.conv_out"}
_RENAMED_NORMS = {"encoder.head.0.gamma": "encoder.norm_out.gamma", "decoder.head.0.gamma": "decoder.norm_out.gamma"}
_LIST_ITEM = re.compile(r"(encoder\.downsamples|decoder\.upsamples|encoder\.middle|decoder\.middle)\.(\d+)\.(.+)")
_OFFICIAL_REMEDY = ("Download the complete official Wan2.1-T2V checkpoint (Wan2.1_VAE.pth), "
                    "or use a diffusers-layout folder.")


def _block_kind(sub_keys: set[str], where: str) -> str:
    """"residual", "attention" or "resample" for the sub-keys of one item of a Wan VAE block list."""
    for kind, names in (("residual", _RESIDUAL_KEYS), ("attention", _ATTENTION_KEYS), ("resample", _RESAMPLE_KEYS)):
        if sub_keys <= set(names):
            return kind
    raise CheckpointError(f"{where} has keys {sorted(sub_keys)}, which are not a Wan2.1 VAE residual, attention "
                          f"or resample block. {_OFFICIAL_REMEDY}")


def _official_lists(state: dict[str, torch.Tensor]) -> dict[str, dict[int, set[str]]]:
    """{list name: {index: sub-keys}} for encoder.downsamples, decoder.upsamples, encoder/decoder.middle."""
    lists: dict[str, dict[int, set[str]]] = {}
    for key in state:
        item = _LIST_ITEM.fullmatch(key)
        if item:
            lists.setdefault(item.group(1), {}).setdefault(int(item.group(2)), set()).add(item.group(3))
    return lists


def official_vae_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan2.1 VAE state dict (official names) to AutoencoderKLWan keys (same tensors, no copies).

    The decoder's flat `upsamples` list is regrouped into `up_blocks[stage].resnets[i]` / `.upsamplers[0]`,
    a stage ending at each resample; the encoder's flat list keeps its indices as `down_blocks`.
    """
    lists = _official_lists(state)
    item_names: dict[tuple[str, int], str] = {}     # (official list, index) -> diffusers module path
    for index in lists.get("encoder.downsamples", {}):
        item_names["encoder.downsamples", index] = f"encoder.down_blocks.{index}"
    for part in ("encoder", "decoder"):
        item_names[f"{part}.middle", 0] = f"{part}.mid_block.resnets.0"
        item_names[f"{part}.middle", 1] = f"{part}.mid_block.attentions.0"
        item_names[f"{part}.middle", 2] = f"{part}.mid_block.resnets.1"
    stage, resnet = 0, 0
    for index, sub_keys in sorted(lists.get("decoder.upsamples", {}).items()):
        kind = _block_kind(sub_keys, f"decoder.upsamples.{index}")
        if kind == "residual":
            item_names["decoder.upsamples", index] = f"decoder.up_blocks.{stage}.resnets.{resnet}"
            resnet += 1
        elif kind == "resample":
            item_names["decoder.upsamples", index] = f"decoder.up_blocks.{stage}.upsamplers.0"
            stage, resnet = stage + 1, 0
        else:
            raise CheckpointError("the Wan2.1 VAE decoder has an attention block outside its middle "
                                  "(attn_scales), which diffusers' AutoencoderKLWan cannot hold")

    renamed, unknown = {}, []
    for key, tensor in state.items():
        item = _LIST_ITEM.fullmatch(key)
        head, _, leaf = key.rpartition(".")
        if item and (item.group(1), int(item.group(2))) in item_names:
            sub_key = item.group(3)
            renamed[f"{item_names[item.group(1), int(item.group(2))]}.{_RESIDUAL_KEYS.get(sub_key, sub_key)}"] = tensor
        elif head in _RENAMED_CONVS and leaf in ("weight", "bias"):
            renamed[f"{_RENAMED_CONVS[head]}.{leaf}"] = tensor
        elif key in _RENAMED_NORMS:
            renamed[_RENAMED_NORMS[key]] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unexpected keys {unknown[:5]}{' ...' if len(unknown) > 5 else ''} in a Wan2.1 VAE "
                              f"state dict. {_OFFICIAL_REMEDY}")
    return renamed


def vae_config_from_official(state: dict[str, torch.Tensor]) -> dict:
    """AutoencoderKLWan constructor arguments for a Wan2.1 VAE state dict (official names)."""
    try:
        base_dim, in_channels = state["encoder.conv1.weight"].shape[:2]
        z_dim = state["conv2.weight"].shape[0]
        out_channels, decoder_width = state["decoder.head.2.weight"].shape[:2]
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"a Wan2.1 VAE state dict needs {err} (encoder.conv1, conv2, decoder.head.2). "
                              f"{_OFFICIAL_REMEDY}") from err
    stages: list[list[int]] = [[]]       # output widths of each encoder stage's residual blocks
    temporal: list[bool] = []            # per resample: does it also halve time?
    for index, sub_keys in sorted(_official_lists(state).get("encoder.downsamples", {}).items()):
        kind = _block_kind(sub_keys, f"encoder.downsamples.{index}")
        if kind == "attention":
            raise CheckpointError("the Wan2.1 VAE encoder has attention blocks outside its middle (attn_scales); "
                                  "Wan2.1's VAE has none and this engine supports none")
        if kind == "residual":
            conv = state.get(f"encoder.downsamples.{index}.residual.2.weight")
            if conv is None:
                raise CheckpointError(f"encoder.downsamples.{index} lacks residual.2.weight. {_OFFICIAL_REMEDY}")
            stages[-1].append(conv.shape[0])
        else:
            temporal.append(f"encoder.downsamples.{index}.time_conv.weight" in state)
            stages.append([])
    if len({len(widths) for widths in stages}) != 1 or not stages[0] or any(w[0] % base_dim for w in stages):
        raise CheckpointError(f"the Wan2.1 VAE encoder's residual blocks (output widths per stage {stages}, base "
                              f"width {base_dim}) do not form Wan's layout. {_OFFICIAL_REMEDY}")
    dim_mult = [widths[0] // base_dim for widths in stages]
    return dict(base_dim=base_dim, decoder_base_dim=decoder_width // dim_mult[0], z_dim=z_dim, dim_mult=dim_mult,
                num_res_blocks=len(stages[0]), attn_scales=[], temperal_downsample=temporal,
                in_channels=in_channels, out_channels=out_channels,
                latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD)


def _autoencoder_class():
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as err:
        raise ImportError("the Wan VAE runs on diffusers' AutoencoderKLWan: `pip install 'diffusers>=0.33'`") from err
    return AutoencoderKLWan


def _build_autoencoder(config: dict, state: dict[str, torch.Tensor], source: Path,
                       device: torch.device | str, dtype: torch.dtype) -> AutoencoderKLWan:
    """AutoencoderKLWan with exactly `state` (diffusers names), in `dtype` on `device`, eval, no grad."""
    autoencoder_class = _autoencoder_class()
    with torch.device("meta"):
        model = autoencoder_class.from_config(config)
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"the VAE weights from {source} do not fit a Wan2.1 VAE ({err}). "
                              f"Check that the file belongs to a Wan2.1 checkpoint.") from err
    return model.to(device=device).eval().requires_grad_(False)     # weights are already in `dtype`


def pixels_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Float pixels [B, 3, T, H, W] (nominally [-1, 1]) -> uint8 frames [B, T, H, W, 3]: clamped to
    [-1, 1] and mapped to 0..255 by truncation, as Wan's cache_video and diffusers' export_to_video do."""
    video = video.float().clamp(-1, 1)
    return ((video + 1) / 2 * 255).to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


def pinned_empty(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor of `shape` and `dtype` in pinned (page-locked) CPU memory; needs CUDA."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


class HostFeatureCache(list):
    """diffusers' causal-convolution cache list (AutoencoderKLWan._feat_map: per convolution None, "Rep" or
    its last input frames [1, C, <=2, H, W]) that keeps each cached tensor in pinned CPU memory.

    A convolution reads its entry (AutoencoderKLWan's layers move it to their input's device, for that
    convolution only) and then writes its new input frames, which are copied to the CPU as they are
    written (asynchronously, in stream order): the GPU holds one convolution's cache at a time. Costs
    two copies of the cache per latent frame over PCIe (about 7.4 GB at 480p).

    Each slot keeps one host buffer (`allocate(shape, dtype)`, pinned by default) and copies every later
    write of the same shape and dtype into it; a write of another shape (the first latent frame caches
    1 frame, the others 2) replaces it. So pinned memory is taken once per slot and shape, not once per
    write (each new pinned tensor is a trip through PyTorch's caching host allocator, a cudaHostAlloc
    when it holds no free block of that size, rounded up to a power of two).

    The device-to-host copies stay non_blocking, and overwriting a buffer is safe without an event: an
    entry is only read by the convolution that writes it, before it writes it (see DroppedFeatureCache),
    and that read (`.to(device)`, blocking) is enqueued on the same current stream as the copy that
    overwrites the buffer after it and has finished when it returns (a blocking copy from pinned memory
    synchronises its stream); the CPU never touches a buffer's bytes.
    """

    def __init__(self, entries=(), *, allocate=pinned_empty):
        super().__init__(entries)
        self._allocate = allocate
        self._buffers: dict[int, torch.Tensor] = {}     # slot -> its host buffer, kept across writes

    def __setitem__(self, index, value):
        if isinstance(value, torch.Tensor) and value.is_cuda:
            host = self._buffers.get(index)
            if host is None or host.shape != value.shape or host.dtype != value.dtype:
                host = self._buffers[index] = self._allocate(value.shape, value.dtype)
            host.copy_(value, non_blocking=True)
            value = host
        super().__setitem__(index, value)


class DroppedFeatureCache(list):
    """The cache list for the last latent frame of a decode: reads what the frames before left, drops
    what it writes (nothing reads it later; each convolution reads its entry before writing it)."""

    def __setitem__(self, index, value):
        super().__setitem__(index, None)


class WanVAE:
    """Wan2.1 VAE: normalised latents <-> uint8 RGB frames.

    Latents are [B, z_dim (16), F, h, w] with Wan's normalisation ((mu - mean) / std per channel); frames
    are uint8 [B, T, h * spatial_factor, w * spatial_factor, 3] with T = 1 + temporal_factor * (F - 1)
    (8 and 4 for Wan2.1).
    """

    def __init__(self, model: AutoencoderKLWan, latents_mean: list[float], latents_std: list[float]):
        z_dim = model.config.z_dim
        if len(latents_mean) != z_dim or len(latents_std) != z_dim:
            raise CheckpointError(f"the VAE has {z_dim} latent channels but {len(latents_mean)} latents_mean and "
                                  f"{len(latents_std)} latents_std values")
        self.model = model
        self.latents_mean = list(latents_mean)
        self.latents_std = list(latents_std)

    @classmethod
    def from_official(cls, path: str | Path, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> WanVAE:
        """Load an official `Wan2.1_VAE.pth` (its path, not its folder)."""
        path = Path(path)
        state = load_pth_state_dict(path, "Wan2.1 VAE weights, official layout", _OFFICIAL_REMEDY)
        config = vae_config_from_official(state)
        if config["z_dim"] != len(WAN21_LATENTS_MEAN):
            raise CheckpointError(f"{path} has {config['z_dim']} latent channels; Wan2.1's VAE has "
                                  f"{len(WAN21_LATENTS_MEAN)} (its latent statistics are known only for that)")
        model = _build_autoencoder(config, official_vae_to_diffusers(state), path, device, dtype)
        return cls(model, WAN21_LATENTS_MEAN, WAN21_LATENTS_STD)

    @classmethod
    def from_diffusers(cls, folder: str | Path, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> WanVAE:
        """Load a diffusers `vae/` folder (AutoencoderKLWan config.json + diffusion_pytorch_model.safetensors)."""
        folder = Path(folder)
        config_path, weights_path = folder / "config.json", folder / DIFFUSERS_VAE_WEIGHTS
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"missing {path} (the diffusers layout's Wan VAE). Download the complete "
                                      f"diffusers Wan2.1 folder, or use the official layout.")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            state = load_file(weights_path)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot read the VAE in {folder}: {err}. Download the folder again.") from err
        if config.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan" or config.get("is_residual"):
            raise CheckpointError(f"{config_path} describes a {config.get('_class_name')} "
                                  f"(is_residual={config.get('is_residual')}); Wan2.1 uses AutoencoderKLWan")
        model = _build_autoencoder(config, state, folder, device, dtype)
        return cls(model, model.config.latents_mean, model.config.latents_std)

    def to(self, device: torch.device | str) -> WanVAE:
        """Move the network to `device`; returns self (as PixelSpace.to does)."""
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.post_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.post_quant_conv.weight.dtype

    @property
    def z_dim(self) -> int:
        return self.model.config.z_dim

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.model.config.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.model.config.dim_mult) - 1)

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) as [1, z_dim, 1, 1, 1] in the VAE's dtype, computed as diffusers' WanPipeline does."""
        mean = torch.tensor(self.latents_mean).view(1, -1, 1, 1, 1)
        inverse_std = 1.0 / torch.tensor(self.latents_std).view(1, -1, 1, 1, 1)
        return mean.to(self.device, self.dtype), inverse_std.to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, cache_on_cpu: bool = False) -> torch.Tensor:
        """Normalised latents (any float dtype) [B, z_dim, F, h, w] -> uint8 frames [B, T, H, W, 3] on the VAE's device.

        Pixels are clamped to [-1, 1] and mapped to 0..255 by truncation, as Wan's cache_video and
        diffusers' export_to_video do.
        One sample is decoded at a time, in time chunks (`decoded_chunks`): the result is the same as
        AutoencoderKLWan.decode's, bit for bit, without its float32 video on the device.
        `cache_on_cpu`: keep the causal convolutions' cache in CPU memory between chunks (`HostFeatureCache`),
        for a GPU that cannot hold it beside one chunk's activations (--offload); the same frames.
        """
        if latents.ndim != 5 or latents.shape[1] != self.z_dim or not latents.is_floating_point():
            raise ValueError(f"decode() takes float latents [B, {self.z_dim}, F, h, w], got "
                             f"{latents.dtype} {tuple(latents.shape)}")
        mean, inverse_std = self._statistics()
        videos = []
        for sample in latents.split(1):
            z = sample.to(self.device, self.dtype) / inverse_std + mean
            videos.append(torch.cat(list(self.decoded_chunks(z, cache_on_cpu=cache_on_cpu)), dim=1))
        return torch.cat(videos)

    def decoded_chunks(self, z: torch.Tensor, *, cache_on_cpu: bool = False) -> Iterator[torch.Tensor]:
        """uint8 frames [1, T_i, H, W, 3] of each latent frame of un-normalised latents z [1, z_dim, F, h, w]
        (the VAE's dtype and device), in order: 1 frame for the first, temporal_factor for each other.

        The calls AutoencoderKLWan.decode makes (its post_quant_conv on all of z, then its decoder one
        latent frame at a time with the causal convolutions' cache of the frames before), but each
        latent frame's float32 pixels become uint8 at once: the device never holds the float32 video
        (3 x 81 x 480 x 832 x 4 bytes = 388 MB at Wan2.1's 480p, 896 MB at 720p) nor the copies its
        concatenation and clamping make, only one latent frame's activations and the cache. The
        conversion is elementwise, so the frames equal the whole decode's exactly.

        The cache (2 frames of every causal convolution's input: 3.7 GB at 480p, 8.3 GB at 720p for
        Wan2.1's VAE) is what the next latent frame reads, so the last latent frame's writes are dropped
        (`DroppedFeatureCache`; a one-frame clip, as the NUMINA preview decodes, then holds none), and
        with `cache_on_cpu` it lives in pinned CPU memory (`HostFeatureCache`). Only where the cache is
        kept changes, never a value or an operation, so the frames stay exact.
        """
        model = self.model
        if getattr(model.config, "patch_size", None) is not None or getattr(model, "use_tiling", False):
            raise ValueError("decoded_chunks() decodes Wan2.1's VAE as AutoencoderKLWan.decode does without "
                             "tiling or patchification (Wan2.2's VAE); this VAE has one of them")
        first_chunk = "first_chunk" in inspect.signature(model.decoder.forward).parameters   # diffusers >= 0.35
        model.clear_cache()
        cache = (HostFeatureCache if cache_on_cpu else list)(model._feat_map)
        try:
            x = model.post_quant_conv(z)
            frames = x.shape[2]
            for index in range(frames):
                if index == frames - 1:
                    cache = DroppedFeatureCache(cache)
                model._conv_idx = [0]
                extra = {"first_chunk": index == 0} if first_chunk else {}
                pixels = model.decoder(x[:, :, index:index + 1], feat_cache=cache, feat_idx=model._conv_idx, **extra)
                yield pixels_to_uint8(pixels)
                del pixels
        finally:
            del cache
            model.clear_cache()

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, T, H, W, 3] -> normalised latent means float32 [B, z_dim, F, H/s, W/s].

        T must be 1 + temporal_factor * k and H, W multiples of spatial_factor (s). Deterministic: the
        posterior mean, as Wan's encoder returns.
        """
        t_factor, s_factor = self.temporal_factor, self.spatial_factor
        if (frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3
                or (frames.shape[1] - 1) % t_factor or frames.shape[2] % s_factor or frames.shape[3] % s_factor):
            raise ValueError(f"encode() takes uint8 frames [B, 1 + {t_factor}k, H, W, 3] with H, W multiples of "
                             f"{s_factor}, got {frames.dtype} {tuple(frames.shape)}")
        mean, inverse_std = self._statistics()
        latents = []
        for sample in frames.split(1):
            pixels = sample.to(self.device).permute(0, 4, 1, 2, 3).to(self.dtype) / 255 * 2 - 1   # [1, 3, T, H, W]
            mu = self.model.encode(pixels).latent_dist.mode()
            latents.append(((mu - mean) * inverse_std).float())
        return torch.cat(latents)
