"""Wan2.1 at its real sizes with random weights, built directly on the GPU in seconds (for benchmarks).

Time and memory do not depend on the weights' values, so every part is made on the `meta` device
(no memory, no initialisation), cast to its run dtype there, given uninitialised storage on the GPU
(`to_empty`) and filled in place by the GPU's random generator: the 14B DiT (14.3B parameters) and
umT5-XXL (5.7B) take seconds instead of the minutes a CPU initialisation takes. Filling: matrices
and convolution kernels N(0, 1/(3 fan_in)) (the variance of PyTorch's default Linear/Conv init, which
bench/e2e.py used before), biases 0, other vectors (norm weights) 1, so activations stay finite. The tokenizer is the embedded demo one (the prompts' token counts are what they are;
the context is padded to 512 tokens anyway).
"""
from __future__ import annotations

from pathlib import Path

import torch

from numina_engine.engine.config import PRESETS
from numina_engine.engine.loading import ModelDefaults, WanModel
from numina_engine.engine.model import WanDiT
from numina_engine.engine.text_encoder import TextEncoder
from numina_engine.engine.vae import WanVAE

TOKENIZER = Path(__file__).resolve().parents[1] / "numina_engine" / "assets" / "counting-world" / "tokenizer"
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", relative_attention_num_buckets=32,
                relative_attention_max_distance=128, is_encoder_decoder=False, use_cache=False)


@torch.no_grad()
def fill_random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter of `module` in place (see the module docstring); returns it."""
    devices = {p.device for p in module.parameters()}
    generator = torch.Generator(device=next(iter(devices))).manual_seed(seed)
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, (3 * param[0].numel()) ** -0.5, generator=generator)
        elif name.endswith("bias"):
            param.zero_()
        else:
            param.fill_(1.0)
    return module


def _materialise(module: torch.nn.Module, device: torch.device, seed: int) -> torch.nn.Module:
    module = module.to_empty(device=device)
    if any(True for _ in module.buffers()):
        raise RuntimeError(f"{type(module).__name__} has buffers, which to_empty leaves uninitialised")
    return fill_random_(module, seed).eval().requires_grad_(False)


def random_wan(config: str, device: torch.device, *, text_encoder_device: torch.device | None = None) -> WanModel:
    """Wan2.1-`config` ("1.3B" or "14B", engine.config.PRESETS) with random weights: the DiT in bf16
    (its float32 parameters as WanDiT.cast_weights keeps them) and the VAE in float32 on `device`,
    umT5-XXL in bf16 made on `device` and then moved to `text_encoder_device` (default: stays)."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        dit = WanDiT(PRESETS[config]).cast_weights(torch.bfloat16)
        t5 = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).to(torch.bfloat16)
        vae = AutoencoderKLWan()          # Wan2.1's VAE configuration is diffusers' default
    dit = _materialise(dit, device, seed=0)
    t5 = _materialise(t5, device, seed=1)
    t5.set_input_embeddings(t5.shared)    # to_empty gave the tied embedding two tensors: one again
    vae = _materialise(vae, device, seed=2)
    if text_encoder_device is not None:
        t5.to(text_encoder_device)
    text_encoder = TextEncoder(t5, AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True))
    wan_vae = WanVAE(vae, vae.config.latents_mean, vae.config.latents_std)
    return WanModel(dit=dit, text_encoder=text_encoder, vae=wan_vae, defaults=ModelDefaults(), layout="random",
                    path=Path(f"random-{config}"), device=device, dtype=torch.bfloat16)
