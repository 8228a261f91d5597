"""What one generation is asked to do, checked before any work starts."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import UserInputError
from .easycache import CACHE_STEPS
from .loading import LatentGeometry, ModelDefaults

# Wan2.1's default negative prompt (wan/configs/shared_config.py, sample_neg_prompt).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")

MAX_COUNT = 20
MAX_SEED = 2 ** 64 - 1          # torch.Generator.manual_seed takes seeds up to 2**64 - 1


@dataclass
class GenerationRequest:
    """One video to make. `None` fields take the checkpoint's defaults."""
    prompt: str
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    seed: int = 0
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    steps: int | None = None
    guide_scale: float | None = None
    shift: float | None = None
    numina: bool = True
    counts: dict[str, int] | None = None       # None: parsed from the prompt
    numina_overrides: dict = field(default_factory=dict)
    # with `counts`: each noun's count phrase as written in the prompt ({"apples": "three shiny apples"}),
    # for token_scope "phrase" without a parse (machines without spaCy); None: found by the parser
    count_phrases: dict[str, str] | None = None
    # EasyCache beyond phase 1 (easycache.py, CACHE_STEPS): "off", "plain" (plain generation), "phase2"
    # (NUMINA's phase 2) or "all"; phase 1 follows NuminaConfig.easycache_enabled either way
    cache_steps: str = "off"


@dataclass(frozen=True)
class ResolvedSettings:
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    frames: int
    steps: int
    guide_scale: float
    shift: float
    geometry: LatentGeometry = LatentGeometry()

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """[channels, latent frames, latent height, latent width] (Wan2.1's VAE: 16, 4x time, 8x space)."""
        g = self.geometry
        return (g.channels, (self.frames - 1) // g.temporal_factor + 1, self.height // g.spatial_factor,
                self.width // g.spatial_factor)


def parse_size(text: str) -> tuple[int, int]:
    """'832*480' (Wan's notation, width*height) or '832x480' -> (832, 480)."""
    for sep in ("*", "x", "X"):
        if sep in text:
            parts = text.split(sep)
            break
    else:
        parts = [text]
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise UserInputError(f"--size {text!r} is not WIDTH*HEIGHT, e.g. 832*480") from None
    return width, height


def check_request_values(request: GenerationRequest) -> None:
    """The checks that need no model (run before one is loaded): prompt, seed, numbers' ranges and
    finiteness. Raises UserInputError naming the flag."""
    prompt = request.prompt.strip() if request.prompt else ""
    if not prompt:
        raise UserInputError("the prompt is empty: say what the video should show, e.g. --prompt \"three cats\"")
    if isinstance(request.seed, bool) or not isinstance(request.seed, int) or not 0 <= request.seed <= MAX_SEED:
        raise UserInputError(f"--seed {request.seed} must be a whole number from 0 to 2**64-1 ({MAX_SEED})")
    for flag, value in (("--size width", request.width), ("--size height", request.height),
                        ("--frames", request.frames), ("--steps", request.steps)):
        if value is not None and value < 1:
            raise UserInputError(f"{flag} {value} must be at least 1")
    for flag, value in (("--guide-scale", request.guide_scale), ("--shift", request.shift)):
        if value is not None and not math.isfinite(value):
            raise UserInputError(f"{flag} {value} must be a finite number, e.g. {flag} 5.0")
    if request.shift is not None and request.shift <= 0:
        raise UserInputError(f"--shift {request.shift} must be positive")
    if request.cache_steps not in CACHE_STEPS:
        raise UserInputError(f"--cache-steps {request.cache_steps!r} is not one of {', '.join(CACHE_STEPS)}: "
                             f"'plain' caches plain generation, 'phase2' NUMINA's phase 2, 'all' both, 'off' neither")
    if request.counts is not None and not request.counts:
        raise UserInputError('--counts is empty: give a JSON object like {"cats": 3}, or leave it out to '
                             "count the nouns of the prompt")


def scaled_reference_step(steps: int, model_steps: int, model_reference_step: int) -> int:
    """The reference step for a `steps`-step run: the same fraction of the run as the checkpoint's own
    (`model_reference_step` of `model_steps`; the authors' 20 of 50 = 40% for Wan2.1), rounded, at most
    steps - 1."""
    return min(steps - 1, round(model_reference_step * steps / model_steps))


def resolve(request: GenerationRequest, defaults: ModelDefaults,
            geometry: LatentGeometry = LatentGeometry()) -> ResolvedSettings:
    """Fill defaults and check every value against the model's `geometry`; raise UserInputError naming
    the bad one."""
    check_request_values(request)
    prompt = request.prompt.strip()
    width = defaults.width if request.width is None else request.width
    height = defaults.height if request.height is None else request.height
    frames = defaults.frames if request.frames is None else request.frames
    steps = defaults.steps if request.steps is None else request.steps
    multiple = geometry.size_multiple
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % multiple:
            raise UserInputError(f"{name} {value} must be a positive multiple of {multiple} (one token: "
                                 f"VAE stride {geometry.spatial_factor} x patch {geometry.patch[1]}), "
                                 f"e.g. --size {defaults.width}*{defaults.height}")
    temporal = geometry.temporal_factor
    if frames < 1 or (frames - 1) % temporal:
        rule = "at least 1" if temporal == 1 else (f"{temporal}n+1 (1, {1 + temporal}, {1 + 2 * temporal}, ...): "
                                                  f"the VAE packs {temporal} frames a latent")
        raise UserInputError(f"--frames {frames} must be {rule}")
    if steps < 1:
        raise UserInputError(f"--steps {steps} must be at least 1")
    guide_scale = defaults.guide_scale if request.guide_scale is None else request.guide_scale
    shift = defaults.shift if request.shift is None else request.shift
    if shift <= 0:
        raise UserInputError(f"--shift {shift} must be positive")
    return ResolvedSettings(prompt=prompt, negative_prompt=request.negative_prompt or "", seed=request.seed,
                            width=width, height=height, frames=frames, steps=steps,
                            guide_scale=float(guide_scale), shift=float(shift), geometry=geometry)
