"""Text-to-video generation, top to bottom: encode, denoise, decode.

Plain Wan2.1 sampling as the official code does it: seeded float32 noise, classifier-free guidance
(conditional and unconditional passes batched into one forward), flow-matching UniPC, VAE decode.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .loading import WanModel
from .scheduler import FlowUniPCScheduler
from .settings import GenerationRequest, ResolvedSettings, resolve


@dataclass
class GenerationResult:
    """A finished video: frames uint8 [T, H, W, 3] and what happened, for report.json."""
    frames: torch.Tensor
    settings: ResolvedSettings
    timings_s: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)


class PhaseTimer:
    """Wall-clock seconds per named phase; synchronises the device only at phase boundaries."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def seeded_noise(settings: ResolvedSettings, device: torch.device) -> torch.Tensor:
    """Wan's initial noise: float32 [16, F', H/8, W/8] from a generator on `device` seeded with `seed`."""
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    return torch.randn(settings.latent_shape, generator=generator, device=device, dtype=torch.float32)


def encode_prompts(model: WanModel, settings: ResolvedSettings) -> torch.Tensor:
    """[2, text_len, text_dim] in the DiT's dtype: row 0 the prompt, row 1 the negative prompt."""
    context = model.text_encoder.encode([settings.prompt, settings.negative_prompt])
    return context.to(device=model.device, dtype=model.dtype)


def guided_velocity(model: WanModel, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                    guide_scale: float, state=None) -> torch.Tensor:
    """One CFG step's flow prediction, float32 like `latents` [C, F, H, W].

    Batch row 0 is conditional, row 1 unconditional; `state` carries per-call NUMINA work.
    """
    batch = latents.to(model.dtype).unsqueeze(0).expand(2, *latents.shape)
    flow = model.dit(batch, timestep.expand(2), context, state=state).float()
    cond, uncond = flow[0], flow[1]
    return uncond + guide_scale * (cond - uncond)


def denoise(model: WanModel, latents: torch.Tensor, context: torch.Tensor, scheduler: FlowUniPCScheduler,
            settings: ResolvedSettings, *, progress: bool = True, desc: str = "denoising") -> torch.Tensor:
    """Run every scheduler step from `latents` (float32 [C, F, H, W]); returns the final latents."""
    for index in tqdm(range(settings.steps), desc=desc, disable=not progress, leave=False):
        timestep = scheduler.timesteps[index].to(model.device).reshape(1)
        velocity = guided_velocity(model, latents, timestep, context, settings.guide_scale)
        latents = scheduler.step(velocity, latents, index)
    return latents


@torch.inference_mode()
def generate(model: WanModel, request: GenerationRequest, *, progress: bool = True) -> GenerationResult:
    """Make one video. Raises UserInputError for bad requests before any heavy work starts."""
    settings = resolve(request, model.defaults)
    timer = PhaseTimer(model.device)
    with timer("text encoding"):
        context = encode_prompts(model, settings)
    noise = seeded_noise(settings, model.device)
    scheduler = FlowUniPCScheduler(settings.steps, shift=settings.shift, device=model.device)
    with timer("denoising"):
        latents = denoise(model, noise, context, scheduler, settings, progress=progress)
    with timer("decode"):
        frames = model.vae.decode(latents.unsqueeze(0))[0]
    return GenerationResult(frames=frames.cpu(), settings=settings, timings_s=timer.seconds)
