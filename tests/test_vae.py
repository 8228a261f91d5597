"""WanVAE: official `Wan2.1_VAE.pth` and diffusers `vae/` layouts load the same tiny VAE and decode alike."""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from numina_engine.engine.vae import (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAE, official_vae_to_diffusers,
                                      pixels_to_uint8)
from numina_engine.errors import CheckpointError

from full_stack import full_stack  # noqa: E402

diffusers = full_stack("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers  # noqa: E402

VAE_FILE = "Wan2.1_VAE.pth"
WAN_LIKE = dict(base_dim=6, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
OTHER = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, False])


def official_vae_shapes(base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample) -> dict[str, tuple]:
    """Key -> shape of Wan's own VAE module (wan/modules/vae.py, WanVAE_) for a config, described from scratch."""
    shapes = {}

    def conv(name, c_in, c_out, kernel):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, *kernel), (c_out,)

    def residual(name, c_in, c_out):
        shapes[f"{name}.residual.0.gamma"] = (c_in, 1, 1, 1)
        conv(f"{name}.residual.2", c_in, c_out, (3, 3, 3))
        shapes[f"{name}.residual.3.gamma"] = (c_out, 1, 1, 1)
        conv(f"{name}.residual.6", c_out, c_out, (3, 3, 3))
        if c_in != c_out:
            conv(f"{name}.shortcut", c_in, c_out, (1, 1, 1))

    def middle(name, dim):
        residual(f"{name}.0", dim, dim)
        shapes[f"{name}.1.norm.gamma"] = (dim, 1, 1)
        conv(f"{name}.1.to_qkv", dim, 3 * dim, (1, 1))
        conv(f"{name}.1.proj", dim, dim, (1, 1))
        residual(f"{name}.2", dim, dim)

    dims = [base_dim * m for m in [1] + dim_mult]
    conv("encoder.conv1", 3, dims[0], (3, 3, 3))
    index = 0
    for stage, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            residual(f"encoder.downsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if stage != len(dim_mult) - 1:
            conv(f"encoder.downsamples.{index}.resample.1", c_out, c_out, (3, 3))
            if temperal_downsample[stage]:
                conv(f"encoder.downsamples.{index}.time_conv", c_out, c_out, (3, 1, 1))
            index += 1
    middle("encoder.middle", dims[-1])
    shapes["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("encoder.head.2", dims[-1], 2 * z_dim, (3, 3, 3))
    conv("conv1", 2 * z_dim, 2 * z_dim, (1, 1, 1))
    conv("conv2", z_dim, z_dim, (1, 1, 1))

    dims = [base_dim * m for m in [dim_mult[-1]] + dim_mult[::-1]]
    conv("decoder.conv1", z_dim, dims[0], (3, 3, 3))
    middle("decoder.middle", dims[0])
    index = 0
    for stage, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        c_in = c_in // 2 if stage in (1, 2, 3) else c_in      # the previous upsample halved the channels
        for _ in range(num_res_blocks + 1):
            residual(f"decoder.upsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if stage != len(dim_mult) - 1:
            conv(f"decoder.upsamples.{index}.resample.1", c_out, c_out // 2, (3, 3))
            if temperal_downsample[::-1][stage]:
                conv(f"decoder.upsamples.{index}.time_conv", c_out, 2 * c_out, (3, 1, 1))
            index += 1
    shapes["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("decoder.head.2", dims[-1], 3, (3, 3, 3))
    return shapes


def random_official_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_vae_shapes(**config).items():
        noise = torch.randn(shape, generator=gen)
        if key.endswith("gamma"):
            state[key] = 1 + 0.1 * noise
        elif key.endswith("bias"):
            state[key] = 0.05 * noise
        else:
            state[key] = noise / math.sqrt(math.prod(shape[1:]))
    return state


def diffusers_kwargs(config: dict) -> dict:
    return dict(config, attn_scales=[], latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same random Wan-like VAE as an official .pth and as a diffusers folder (via diffusers' converter)."""
    folder = tmp_path_factory.mktemp("vae")
    official = random_official_state(WAN_LIKE, seed=3)
    torch.save(official, folder / VAE_FILE)
    model = AutoencoderKLWan(**diffusers_kwargs(WAN_LIKE))
    model.load_state_dict(convert_wan_vae_to_diffusers(official), strict=True)
    model.save_pretrained(folder / "vae")
    return folder, official


def random_latents(batch=2, frames=2, height=3, width=4, seed=0) -> torch.Tensor:
    return torch.randn(batch, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


def test_mapping_equals_diffusers_single_file_converter():
    official = random_official_state(WAN_LIKE, seed=1)
    ours, theirs = official_vae_to_diffusers(official), convert_wan_vae_to_diffusers(official)
    assert ours.keys() == theirs.keys()
    assert all(ours[key] is theirs[key] for key in ours)
    assert ours.keys() == AutoencoderKLWan(**diffusers_kwargs(WAN_LIKE)).state_dict().keys()


def test_both_layouts_load_same_weights_and_decode_alike(checkpoints):
    folder, _ = checkpoints
    official = WanVAE.from_official(folder / VAE_FILE)
    from_diffusers = WanVAE.from_diffusers(folder / "vae")
    theirs = from_diffusers.model.state_dict()
    for key, tensor in official.model.state_dict().items():
        assert torch.equal(tensor, theirs[key]), key
    assert official.model.config.dim_mult == [1, 2, 4, 4] and official.model.config.base_dim == 6
    latents = random_latents()
    frames = official.decode(latents)
    assert frames.shape == (2, 5, 24, 32, 3) and frames.dtype == torch.uint8
    assert torch.equal(frames, from_diffusers.decode(latents))
    assert 0 < frames.float().std()               # not a constant image


def test_bf16_load_casts_every_weight_and_decodes(checkpoints):
    folder, _ = checkpoints
    vae = WanVAE.from_diffusers(folder / "vae", dtype=torch.bfloat16)
    assert {p.dtype for p in vae.model.parameters()} == {torch.bfloat16} and vae.dtype == torch.bfloat16
    reference = WanVAE.from_diffusers(folder / "vae").decode(random_latents())
    frames = vae.decode(random_latents())
    assert frames.dtype == torch.uint8 and (frames.float() - reference.float()).abs().mean() < 4


def test_decode_applies_wan_normalisation_and_clamp(checkpoints):
    folder, official = checkpoints
    vae = WanVAE.from_official(folder / VAE_FILE)
    reference = AutoencoderKLWan(**diffusers_kwargs(WAN_LIKE)).eval()
    reference.load_state_dict(convert_wan_vae_to_diffusers(official))
    latents = random_latents(batch=1, frames=3, height=2, width=5, seed=4)
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        pixels = reference.decode(latents * std + mean).sample.clamp(-1, 1)      # [1, 3, T, H, W]
    expected = ((pixels + 1) * 127.5).permute(0, 2, 3, 4, 1)
    frames = vae.decode(latents)
    assert frames.shape == (1, 9, 16, 40, 3)
    truncated = expected.floor()
    assert (frames.float() - truncated).abs().max() <= 1.0          # float rounding at level edges only
    assert (frames.float() == truncated).float().mean() > 0.99 and truncated.std() > 1


@pytest.mark.parametrize("frames, height, width, dtype", [(1, 3, 5, torch.float32), (4, 3, 5, torch.float32),
                                                      (6, 7, 2, torch.float32), (3, 5, 3, torch.bfloat16)])
def test_decode_in_time_chunks_equals_the_whole_decode_bit_for_bit(checkpoints, frames, height, width, dtype):
    folder, _ = checkpoints
    vae = WanVAE.from_diffusers(folder / "vae", dtype=dtype)
    latents = random_latents(batch=2, frames=frames, height=height, width=width, seed=frames)
    mean, inverse_std = vae._statistics()
    with torch.no_grad():
        whole = torch.cat([pixels_to_uint8(vae.model.decode(z / inverse_std + mean).sample)
                           for z in latents.to(dtype).split(1)])
        chunks = list(vae.decoded_chunks(latents[:1].to(dtype) / inverse_std + mean))
    assert [chunk.shape[1] for chunk in chunks] == [1] + [4] * (frames - 1)
    assert all(chunk.dtype == torch.uint8 for chunk in chunks)
    frames_out = vae.decode(latents)
    assert frames_out.shape == (2, 1 + 4 * (frames - 1), 8 * height, 8 * width, 3)
    assert torch.equal(frames_out, whole) and whole.float().std() > 1
    assert torch.equal(torch.cat(chunks, dim=1), whole[:1])


def test_chunked_decode_refuses_a_tiled_vae(checkpoints):
    folder, _ = checkpoints
    vae = WanVAE.from_diffusers(folder / "vae")
    vae.model.enable_tiling()
    with pytest.raises(ValueError, match="tiling"):
        vae.decode(random_latents(batch=1))


def test_encode_returns_normalised_posterior_mean(checkpoints):
    folder, official = checkpoints
    vae = WanVAE.from_official(folder / VAE_FILE)
    reference = AutoencoderKLWan(**diffusers_kwargs(WAN_LIKE)).eval()
    reference.load_state_dict(convert_wan_vae_to_diffusers(official))
    frames = torch.randint(0, 256, (2, 5, 16, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    latents = vae.encode(frames)
    assert latents.shape == (2, 16, 2, 2, 3) and latents.dtype == torch.float32
    pixels = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    with torch.no_grad():
        mu = reference.encode(pixels).latent_dist.mean
    expected = (mu - torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)) / torch.tensor(
        WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    assert torch.allclose(latents, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="uint8 frames"):
        vae.encode(frames[:, :4])
    with pytest.raises(ValueError, match="float latents"):
        vae.decode(latents[:, :8])


def test_other_layouts_are_inferred_from_the_weights(tmp_path):
    torch.save(random_official_state(OTHER, seed=6), tmp_path / VAE_FILE)
    vae = WanVAE.from_official(tmp_path / VAE_FILE)
    config = vae.model.config
    assert (config.base_dim, config.dim_mult, config.num_res_blocks, config.temperal_downsample) == (
        4, [1, 2, 2], 1, [True, False])
    assert (vae.temporal_factor, vae.spatial_factor) == (2, 4)
    frames = vae.decode(random_latents(batch=1, frames=3, height=3, width=2, seed=7))
    assert frames.shape == (1, 5, 12, 8, 3)


def test_wan_latent_statistics_equal_diffusers_defaults():
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert defaults["latents_mean"].default == WAN21_LATENTS_MEAN
    assert defaults["latents_std"].default == WAN21_LATENTS_STD


def test_missing_or_malformed_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=VAE_FILE):
        WanVAE.from_official(tmp_path / VAE_FILE)
    with pytest.raises(CheckpointError, match="vae/config.json"):
        WanVAE.from_diffusers(tmp_path / "vae")
    state = random_official_state(WAN_LIKE, seed=8)
    state["decoder.upsamples.0.extra"] = state["conv2.bias"]
    torch.save(state, tmp_path / VAE_FILE)
    with pytest.raises(CheckpointError, match="decoder.upsamples.0"):
        WanVAE.from_official(tmp_path / VAE_FILE)
    state = random_official_state(WAN_LIKE, seed=8)
    del state["decoder.upsamples.4.residual.6.bias"]
    torch.save(state, tmp_path / VAE_FILE)
    with pytest.raises(CheckpointError, match="up_blocks.1.resnets.0.conv2.bias"):
        WanVAE.from_official(tmp_path / VAE_FILE)


@pytest.mark.parametrize("frames", [1, 3])
def test_the_last_latent_frame_keeps_no_cache(checkpoints, frames):
    """Each chunk reads the cache the chunks before left; the last one's writes are dropped, so a one-frame
    clip (the NUMINA preview) holds no cache at all, and the frames stay those of the whole decode."""
    folder, _ = checkpoints
    vae = WanVAE.from_diffusers(folder / "vae")
    cached_after = []
    hook = vae.model.decoder.register_forward_hook(lambda module, args, kwargs, out: cached_after.append(
        sum(isinstance(entry, torch.Tensor) for entry in kwargs["feat_cache"])), with_kwargs=True)
    latents = random_latents(batch=1, frames=frames, seed=9)
    chunked = vae.decode(latents)
    hook.remove()
    mean, inverse_std = vae._statistics()
    with torch.no_grad():
        whole = pixels_to_uint8(vae.model.decode(latents / inverse_std + mean).sample)
    assert torch.equal(chunked, whole)
    assert cached_after[-1] == 0 and all(count > 0 for count in cached_after[:-1]) and len(cached_after) == frames


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cache_on_the_cpu_decodes_the_same_frames_on_a_gpu(checkpoints):
    folder, _ = checkpoints
    vae = WanVAE.from_diffusers(folder / "vae", device="cuda")
    latents = random_latents(batch=2, frames=4, height=5, width=7, seed=10).cuda()
    mean, inverse_std = vae._statistics()
    with torch.no_grad():
        whole = torch.cat([pixels_to_uint8(vae.model.decode(z / inverse_std + mean).sample) for z in latents.split(1)])
    assert torch.equal(vae.decode(latents, cache_on_cpu=True), whole)
    assert torch.equal(vae.decode(latents), whole) and whole.float().std() > 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_wan21_vae_at_480p_on_a_gpu_exact_and_the_cpu_cache_lowers_the_peak():
    """Wan2.1's VAE (diffusers' default config, random weights) decoding 3 latent frames at 832x480: every
    way gives AutoencoderKLWan.decode's frames; the peak allocated memory above the weights, per way, is
    printed (pytest -s); the cache on the CPU (3.5 GiB at this size) must take >= 2 GiB off it."""
    torch.manual_seed(0)
    model = AutoencoderKLWan().to("cuda").eval().requires_grad_(False)
    for param in model.parameters():
        param.normal_(0, 0.02)
    vae = WanVAE(model, model.config.latents_mean, model.config.latents_std)
    latents = torch.randn(1, 16, 3, 60, 104, generator=torch.Generator().manual_seed(11)).cuda()
    mean, inverse_std = vae._statistics()

    def peak_gib(decode):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        frames = decode()
        torch.cuda.synchronize()
        return frames.cpu(), (torch.cuda.max_memory_allocated() - start) / 2 ** 30

    with torch.no_grad():
        whole, whole_gib = peak_gib(lambda: pixels_to_uint8(model.decode(latents / inverse_std + mean).sample))
    chunked, chunked_gib = peak_gib(lambda: vae.decode(latents))
    on_cpu, on_cpu_gib = peak_gib(lambda: vae.decode(latents, cache_on_cpu=True))
    print(f"\nWan2.1 VAE, 3 latent frames at 832x480, peak allocated above the weights: AutoencoderKLWan.decode "
          f"{whole_gib:.2f} GiB, chunked {chunked_gib:.2f} GiB, chunked with the cache on the CPU {on_cpu_gib:.2f} GiB")
    assert torch.equal(chunked, whole) and torch.equal(on_cpu, whole) and whole.float().std() > 1
    assert on_cpu_gib <= chunked_gib - 2.0
