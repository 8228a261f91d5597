"""Text-to-video generation with NUMINA, top to bottom.

    settings   check the request, fill the checkpoint's defaults
    counts     which nouns to count (--counts, else parsed from the prompt) and their token positions
    encode     umT5 embeddings of the prompt and the negative prompt
    noise      Wan's seeded float32 noise
    plain:     denoise every step (--cache-steps plain|all: EasyCache reuses stable steps), decode
    NUMINA:
      phase 1  denoise up to the reference step (EasyCache may reuse cached outputs on stable steps);
               at the reference step run only the conditional pass, only up to the reference layer,
               extracting each noun's cross-attention map and, when the layout reads them (not with
               layout_instances "focus_clusters"), the best within-frame self-attention head per frame
      layout   cluster into countable instances, refine to the target counts, build the modulation plan;
               decode the latent frames layout.png shows of phase 1's last x0 estimate
      phase 2  denoise again from the same noise with the layout bias on the conditional pass while
               delta(t) is above its floor (its first step reuses phase 1's first unconditional
               prediction: same latents, same timestep, no bias on that row); if refinement changed
               nothing (counts already right, or no frame could be planned: report.json says which
               and why), `when_nothing_to_modulate` picks: plain Wan2.1 regenerated from the noise
               (the authors), or phase 1 run on to the end; --cache-steps phase2|all: EasyCache here too,
               never handing the biased transformation to a step after the bias stops (easycache.py)
      decode   VAE to uint8 frames

CFG batches the conditional and unconditional passes as rows 0 and 1 of one forward call. On a GPU
the denoising steps replay CUDA graphs of that call (`cuda_graphs.py`; the extraction stays eager),
and --offload keeps the text encoder's weights on the CPU (streamed to the GPU block by block to
encode), the DiT off the GPU while the VAE decodes and the extraction's maps in smaller chunks
(`offload.py`).
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import CheckpointError, UserInputError
from ..numina.config import BEHAVIOURS, DEFAULT_MODE, NuminaConfig
from ..numina.layout import build_layouts, count_instances, uses_self_maps
from ..numina.modulation import build_modulation_plan
from ..numina.prompt_counts import counted_nouns_from_phrases, parse_counted_nouns
from ..numina.refinement import refine_layout, summarize_refinement
from ..numina.token_mapping import map_noun_tokens
from .cuda_graphs import StepGraphs
from .easycache import EasyCache, caches
from .extraction import DEFAULT_MAPS_BUDGET_BYTES
from .forward_state import Extraction, ForwardState, Modulation
from .loading import WanModel
from .offload import (maps_budget_bytes, offload_mode, park_dit_on_cpu, parks_dit, place_for_generation,
                      text_encoding_device)
from .parallel import CUDA_GRAPHS_UNSUPPORTED, ParallelDiT, agree_on_layouts
from .prompt_clean import clean_prompt
from .scheduler import FlowUniPCScheduler
from .settings import MAX_COUNT, GenerationRequest, ResolvedSettings, resolve, scaled_reference_step

COND, UNCOND = 0, 1          # batch rows of a CFG forward call
LAYOUT_COLUMNS = 4           # latent frames shown in layout.png


@dataclass
class LayoutResult:
    """What phase 1 found and what phase 2 was asked to do (token-grid labels, int32 [F, h, w])."""
    reference: dict[str, torch.Tensor]
    refined: dict[str, torch.Tensor]
    preview_frames: torch.Tensor          # uint8 [S, H, W, 3]: the phase-1 preview at latent frames `shown_frames`
    shown_frames: list[int]               # the S latent frames layout.png shows


@dataclass
class GenerationResult:
    """A finished video: frames uint8 [T, H, W, 3] and what happened, for report.json."""
    frames: torch.Tensor
    settings: ResolvedSettings
    timings_s: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    layout: LayoutResult | None = None


class PhaseTimer:
    """Wall-clock seconds per named phase; synchronises the device only at phase boundaries.

    On CUDA it also keeps each phase's peak allocated memory (`peak_allocated_gib`, the largest over
    a name's phases): the allocator's peak is reset at each phase start, after folding it into the
    run's peak so far, so `run_peak_gib()` is still the peak since the run began."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_allocated_gib: dict[str, float] = {}
        self._earlier_peaks = {"allocated": 0, "reserved": 0}       # bytes, before the last reset

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        self._reset_peak()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
            self.peak_allocated_gib[name] = round(max(peak, self.peak_allocated_gib.get(name, 0.0)), 3)

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            self._earlier_peaks = self._peaks()
            torch.cuda.reset_peak_memory_stats(self.device)

    def _peaks(self) -> dict[str, int]:
        return {"allocated": max(self._earlier_peaks["allocated"], torch.cuda.max_memory_allocated(self.device)),
                "reserved": max(self._earlier_peaks["reserved"], torch.cuda.max_memory_reserved(self.device))}

    def run_peak_gib(self) -> dict[str, float]:
        """Peak memory of the CUDA device since the timer was made (its peak stats reset then), GiB:
        allocated by tensors and reserved by PyTorch's allocator (what the GPU sees)."""
        return {kind: round(value / 2 ** 30, 3) for kind, value in self._peaks().items()}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ----------------------------------------------------------------------------------- building blocks

def numina_config_for(model: WanModel, request: GenerationRequest, steps: int) -> NuminaConfig:
    """The authors' defaults, then the checkpoint's scaled settings, then the request's overrides.

    Without a requested reference step, the checkpoint's is scaled to `steps` (same fraction of the run).
    Behaviour fields in the checkpoint's settings (numina/config.py BEHAVIOURS) are its engine-mode
    choices: in authors mode they are left out, so that mode keeps every authors' rule unless the
    request itself sets one.
    """
    overrides = {**checkpoint_numina(model, request), **request.numina_overrides, "total_steps": steps,
                 "pca_seed": request.seed}
    user_step = request.numina_overrides.get("reference_step")
    if user_step is None:
        overrides["reference_step"] = scaled_reference_step(steps, *checkpoint_reference_step(model))
    elif not 0 <= user_step < steps:
        model_steps, model_step = checkpoint_reference_step(model)
        raise UserInputError(
            f"--reference-step {user_step} is not a step of a {steps}-step run (0 to {steps - 1}): lower "
            f"--reference-step or raise --steps, or leave --reference-step out to use "
            f"{scaled_reference_step(steps, model_steps, model_step)} (the checkpoint's {model_step} of "
            f"{model_steps} steps, scaled)")
    try:
        config = NuminaConfig().with_overrides(**overrides)
    except TypeError as err:          # an unknown field name, from the request or the checkpoint's sidecar
        raise UserInputError(str(err)) from None
    if config.reference_layer >= model.dit.config.num_layers:
        raise UserInputError(f"--reference-layer {config.reference_layer} is past the model's last block "
                             f"({model.dit.config.num_layers - 1})")
    return config


def checkpoint_reference_step(model: WanModel) -> tuple[int, int]:
    """(the checkpoint's default steps, its reference step): the authors' 20 of 50 unless its sidecar says."""
    return model.defaults.steps, model.defaults.numina.get("reference_step", NuminaConfig().reference_step)


def reference_step_source(model: WanModel, request: GenerationRequest, steps: int) -> str:
    """For report.json: where the reference step came from."""
    if request.numina_overrides.get("reference_step") is not None:
        return "--reference-step"
    model_steps, model_step = checkpoint_reference_step(model)
    return (f"the checkpoint's {model_step} of {model_steps} steps scaled to {steps} steps "
            f"(--reference-step not given)")


def checkpoint_numina(model: WanModel, request: GenerationRequest) -> dict:
    """The checkpoint's NUMINA settings as they apply to `request`: its behaviour fields (numina/config.py
    BEHAVIOURS) are its engine-mode choices, left out when the request's mode is "authors"."""
    checkpoint = dict(model.defaults.numina)
    if request.numina_overrides.get("mode", checkpoint.get("mode", DEFAULT_MODE)) == "authors":
        checkpoint = {name: value for name, value in checkpoint.items() if name not in BEHAVIOURS}
    return checkpoint


def behaviour_config(model: WanModel, request: GenerationRequest) -> NuminaConfig:
    """The NUMINA mode and behaviour fields of the checkpoint and the request alone (the rest default):
    what a plain run's sigma grid needs without the full config."""
    given = {**checkpoint_numina(model, request), **request.numina_overrides}
    return NuminaConfig(**{name: value for name, value in given.items() if name == "mode" or name in BEHAVIOURS})


def counted_nouns(model: WanModel, request: GenerationRequest, prompt: str, token_scope: str = "noun",
                  token_match: str = "words") -> tuple[dict[str, int], dict[str, list[int]]]:
    """({noun: count}, {noun: token positions}) for the prompt; ({}, {}) when nothing is counted.

    token_scope "phrase" maps each noun's count phrase: with --counts, the request's count_phrases when
    given, else the phrase the parser finds for that noun, when it finds one."""
    cleaned = clean_prompt(prompt)
    if request.counts is None:
        found = parse_counted_nouns(cleaned)
        nouns: list = found
        counts: dict[str, int] = {}
        for item in found:
            counts[item.noun] = counts.get(item.noun, 0) + item.count
    elif request.count_phrases is not None:
        counts = dict(request.counts)
        missing = sorted(set(counts) - set(request.count_phrases))
        if missing:
            raise UserInputError(f"count_phrases gives no phrase for {missing}; give one per counted noun")
        try:
            nouns = counted_nouns_from_phrases(cleaned, counts, request.count_phrases)
        except ValueError as err:
            raise UserInputError(str(err)) from None
    else:
        counts = dict(request.counts)
        parsed = parse_counted_nouns(cleaned) if token_scope == "phrase" else []
        # every parsed occurrence of a --counts noun (their tokens are united), keyed as --counts spells it
        nouns = []
        for noun in counts:
            mine = [replace(item, noun=noun) for item in parsed if item.noun.lower() == noun.lower()]
            nouns += mine or [noun]
    for noun, count in counts.items():
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
            if request.counts is None:
                raise UserInputError(
                    f"the prompt asks for {count} {noun!r} (counted from the prompt, every mention added up); "
                    f"NUMINA counts 1 to {MAX_COUNT} of a noun: rephrase the prompt, or pass --counts")
            raise UserInputError(f"count for {noun!r} must be a whole number from 1 to {MAX_COUNT}, got {count!r}")
    if not counts:
        return {}, {}
    tokenizer = model.text_encoder.tokenizer
    positions = map_noun_tokens(tokenizer, model.text_encoder.token_ids(prompt), nouns, scope=token_scope,
                                prompt=cleaned, match=token_match)
    return counts, positions


def final_counts(model: WanModel, frames: torch.Tensor, counts: dict[str, int]) -> dict[str, list[int]] | None:
    """{noun: [objects in each frame]} of the finished video (uint8 [T, H, W, 3]), by the exact counter
    the checkpoint names (ModelDefaults.counter); None when it names none or does not know a noun."""
    if model.defaults.counter is None:
        return None
    from ..demo.counter import COUNTERS
    try:
        return COUNTERS[model.defaults.counter](frames, list(counts))       # prepare() checked the name
    except ValueError:
        return None


def noun_token_table(positions: dict[str, list[int]], device: torch.device) -> torch.Tensor:
    """int32 [n_nouns, T] token positions, rows in `positions` order, padded with -1."""
    width = max(len(p) for p in positions.values())
    table = torch.full((len(positions), width), -1, dtype=torch.int32)
    for row, tokens in enumerate(positions.values()):
        table[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
    return table.to(device)


def seeded_noise(settings: ResolvedSettings, device: torch.device) -> torch.Tensor:
    """Wan's initial noise: float32 [16, F', H/8, W/8] from a generator on `device` seeded with `seed`."""
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    return torch.randn(settings.latent_shape, generator=generator, device=device, dtype=torch.float32)


def encode_prompts(model: WanModel, settings: ResolvedSettings, device: torch.device | None = None) -> torch.Tensor:
    """[2, text_len, text_dim] in the DiT's dtype on the DiT's device: row COND the prompt, row UNCOND the
    negative prompt, encoded on `device` (None: where the text encoder's weights are)."""
    context = model.text_encoder.encode([settings.prompt, settings.negative_prompt], device=device)
    return context.to(device=model.device, dtype=model.dtype)


def cfg_forward(model: WanModel, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                state: ForwardState | None = None) -> torch.Tensor:
    """float32 [2, C, F, H, W]: rows COND and UNCOND of one batched forward of latents float32
    [C, F, H, W] at timestep [1] (0..1000) with context [2, text_len, text_dim]."""
    batch = latents.to(model.dtype).unsqueeze(0).expand(2, *latents.shape)
    return model.dit(batch, timestep.expand(2), context, state=state).float()


def flow_predictions(model: WanModel, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                     state: ForwardState | None = None, graphs: StepGraphs | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional, unconditional) flow predictions, float32 [C, F, H, W], from one batched forward,
    replayed from `graphs` (CUDA graphs of `cfg_forward`) when given."""
    forward = graphs if graphs is not None else partial(cfg_forward, model)
    flow = forward(latents, timestep, context, state)
    return flow[COND], flow[UNCOND]


def conditional_prediction(model: WanModel, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                           state: ForwardState | None = None) -> torch.Tensor:
    """The conditional flow prediction alone, float32 [C, F, H, W]: a batch-1 forward of row COND (the
    state's batch_index must be COND)."""
    flow = model.dit(latents.to(model.dtype).unsqueeze(0), timestep, context[COND:COND + 1], state=state)
    return flow[0].float()


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def timestep_at(scheduler: FlowUniPCScheduler, index: int, device: torch.device) -> torch.Tensor:
    return scheduler.timesteps[index].to(device).reshape(1)


def denoise(model: WanModel, latents: torch.Tensor, context: torch.Tensor, scheduler: FlowUniPCScheduler,
            settings: ResolvedSettings, steps: range, *, state_at=lambda step: None, progress: bool = True,
            desc: str = "denoising", graphs: StepGraphs | None = None,
            first_uncond: torch.Tensor | None = None, cache: EasyCache | None = None) -> torch.Tensor:
    """Run scheduler steps `steps` from `latents` (float32 [C, F, H, W]); returns the latents after them.

    `state_at(step)` gives each step's ForwardState (None: plain); `graphs` replays the forwards.
    `first_uncond`: the unconditional prediction of the first step, already known (float32, like
    `latents`); that step then runs the conditional row alone. `cache`: EasyCache deciding which steps
    reuse the cached transformation instead of running the forward (a reused step replays no graph); a
    step with a ForwardState is of kind "modulated", so the cache never hands a biased transformation to
    an unbiased step or the reverse.
    """
    for index in tqdm(steps, desc=desc, disable=not progress, leave=False):
        timestep = timestep_at(scheduler, index, model.device)
        state = state_at(index)
        kind = None if state is None else "modulated"
        if cache is not None and not cache.must_compute(index, kind):
            cond, uncond = cache.reuse(index, latents)
        else:
            if first_uncond is not None and index == steps[0]:
                cond, uncond = conditional_prediction(model, latents, timestep, context, state), first_uncond
            else:
                cond, uncond = flow_predictions(model, latents, timestep, context, state, graphs)
            if cache is not None:
                cache.record(index, latents, cond, uncond, kind)
        latents = scheduler.step(guide(cond, uncond, settings.guide_scale), latents, index)
    return latents


def layout_frames_to_show(num_frames: int) -> list[int]:
    """Up to LAYOUT_COLUMNS latent frames spread evenly from first to last."""
    count = min(LAYOUT_COLUMNS, num_frames)
    return sorted({round(i * (num_frames - 1) / max(count - 1, 1)) for i in range(count)})


def preview_frames(model: WanModel, preview_latents: torch.Tensor, shown: list[int]) -> torch.Tensor:
    """uint8 [S, H, W, 3] on the CPU: the phase-1 estimate (float32 [C, F, h, w]) at latent frames `shown`.

    Only those frames are decoded, each as its own one-latent-frame clip, all in one batch. Wan's
    causal VAE decodes a clip's first latent frame alone, so frame 0 is exactly what a whole decode
    gives and the others approximate their in-context decode (no cache of the frames before them):
    fine for a preview, at a small part of a whole decode's cost.
    """
    clips = preview_latents[:, shown].transpose(0, 1).unsqueeze(2)                 # [S, C, 1, h, w]
    return model.vae.decode(clips)[:, 0].cpu()


def decode_video(model: WanModel, latents: torch.Tensor, timer: PhaseTimer, *, offload: bool) -> torch.Tensor:
    """uint8 [T, H, W, 3] on the CPU from float32 latents [C, F, h, w] (the VAE decodes in time
    chunks); with `offload` the DiT moves to the CPU first (timed as "offload"), so that the VAE gets
    its GPU memory, and the VAE keeps its causal cache in CPU memory (vae.py, HostFeatureCache)."""
    if offload:
        with timer("offload"):
            park_dit_on_cpu(model)
    with timer("decode"):
        return model.vae.decode(latents.unsqueeze(0), cache_on_cpu=offload)[0].cpu()


# --------------------------------------------------------------------------------------------- phases

@dataclass
class ReferencePass:
    """Phase 1's outcome: where it stopped and what it extracted."""
    latents: torch.Tensor           # float32 [C, F, H, W] at the reference step (before its update)
    preview: torch.Tensor           # float32 [C, F, H, W] x0 estimate of the last computed step
    first_uncond: torch.Tensor | None   # float32 [C, F, H, W] unconditional prediction of step 0 (None if
                                        # phase 1 ran no step)
    extraction: Extraction
    scheduler: FlowUniPCScheduler
    computed_steps: int             # denoising steps computed + the reference step's extraction forward
    reused_steps: int
    step_cache: dict                # EasyCache.summary() of the denoising steps before the reference step


def reference_pass(model: WanModel, noise: torch.Tensor, context: torch.Tensor, settings: ResolvedSettings,
                   config: NuminaConfig, noun_tokens: torch.Tensor, *, progress: bool,
                   graphs: StepGraphs | None = None, maps_budget_bytes: int = DEFAULT_MAPS_BUDGET_BYTES,
                   ) -> ReferencePass:
    """Phase 1: denoise up to `config.reference_step` (steps replayed from `graphs`, released before the
    extraction, which runs eagerly), then extract at `config.reference_layer`, holding at most
    `maps_budget_bytes` of within-frame maps at a time; the within-frame maps and head scores only
    when the layout reads them (layout.uses_self_maps)."""
    scheduler = FlowUniPCScheduler(settings.steps, shift=settings.shift, device=model.device,
                                   sigma_grid=config.sigma_grid)
    cache = EasyCache(config.easycache_tau, config.easycache_warmup, enabled=config.easycache_enabled)
    latents, preview, first_uncond = noise, noise, None
    for index in tqdm(range(config.reference_step), desc="phase 1", disable=not progress, leave=False):
        if cache.must_compute(index):
            cond, uncond = flow_predictions(model, latents, timestep_at(scheduler, index, model.device), context,
                                            graphs=graphs)
            cache.record(index, latents, cond, uncond)
            if index == 0:
                first_uncond = uncond
        else:
            cond, uncond = cache.reuse(index, latents)
        velocity = guide(cond, uncond, settings.guide_scale)
        if index == config.reference_step - 1:     # x0 estimate of the last step, for layout.png
            preview = latents - scheduler.sigmas[index].to(model.device) * velocity
        latents = scheduler.step(velocity, latents, index)
    if graphs is not None:
        graphs.release()                           # the extraction's maps get the graphs' memory

    grid = model.dit.token_grid(latents.shape)
    extraction = Extraction(layer=config.reference_layer, grid=grid, noun_tokens=noun_tokens, config=config,
                            batch_index=0, maps_budget_bytes=maps_budget_bytes,
                            with_self_maps=uses_self_maps(config))
    state = ForwardState(extraction=extraction, stop_after_layer=config.reference_layer)
    timestep = timestep_at(scheduler, config.reference_step, model.device)
    model.dit(latents.to(model.dtype).unsqueeze(0), timestep, context[COND:COND + 1], state=state)
    return ReferencePass(latents=latents, preview=preview, first_uncond=first_uncond, extraction=extraction,
                         scheduler=scheduler,
                         computed_steps=cache.computed + 1, reused_steps=len(cache.reused),
                         step_cache=cache.summary())


def plan_layouts(ref: ReferencePass, counts: dict[str, int], config: NuminaConfig):
    """Layouts from the extracted maps, refined to `counts`; returns (reference, refined, RefinementSummary
    per noun)."""
    _, h, w = ref.extraction.grid
    labels = build_layouts(ref.extraction.self_maps, ref.extraction.noun_maps, (h, w), config)
    reference, refined, summaries = {}, {}, {}
    for row, (noun, count) in enumerate(counts.items()):
        reference[noun] = labels[row]
        refined[noun] = refine_layout(labels[row], count, config)
        summaries[noun] = summarize_refinement(labels[row], refined[noun], count)
    return reference, refined, summaries


# ---------------------------------------------------------------------------------------------- main

@dataclass(frozen=True)
class Prepared:
    """A checked request (`request`: a copy of it as checked): settings, counted nouns with their token
    positions, NUMINA settings (None: plain)."""
    request: GenerationRequest
    settings: ResolvedSettings
    counts: dict[str, int]
    positions: dict[str, list[int]]
    config: NuminaConfig | None


def prepare(model: WanModel, request: GenerationRequest) -> Prepared:
    """Check everything about a request that can be checked cheaply; raises UserInputError."""
    from ..demo.counter import COUNTERS
    if model.defaults.counter is not None and model.defaults.counter not in COUNTERS:
        raise CheckpointError(f"{model.path}: unknown counter {model.defaults.counter!r}; known: {sorted(COUNTERS)}")
    settings = resolve(request, model.defaults, model.geometry)
    if not request.numina:
        return Prepared(copy.deepcopy(request), settings, {}, {}, None)
    config = numina_config_for(model, request, settings.steps)
    counts, positions = counted_nouns(model, request, settings.prompt, config.token_scope, config.token_match)
    return Prepared(copy.deepcopy(request), settings, counts, positions, config if counts else None)


def step_cache_for(model: WanModel, request: GenerationRequest, config: NuminaConfig | None, run: str) -> EasyCache:
    """EasyCache for a denoising run past phase 1, `run` "plain" (plain generation) or "phase2" (NUMINA's
    phase 2): on when request.cache_steps covers it, with phase 1's tau and warm-up (`config`'s; for a
    plain run, config None, the checkpoint's NUMINA settings, then the request's overrides)."""
    if config is None:
        given = {**checkpoint_numina(model, request), **request.numina_overrides}
        config = NuminaConfig().with_overrides(**{name: given[name] for name in ("easycache_tau", "easycache_warmup")
                                                  if name in given})
    return EasyCache(config.easycache_tau, config.easycache_warmup, enabled=caches(request.cache_steps, run))


def engine_report(graphs: StepGraphs, *, offload: str, timer: PhaseTimer) -> dict:
    """report.json's entries on how the engine ran: CUDA graphs, the offload mode, peak GPU memory
    (CUDA only: the run's allocated and reserved peaks, and each phase's allocated peak), GiB."""
    report = {"cuda_graphs": graphs.summary(), "offload": offload}
    if timer.device.type == "cuda":
        report["peak_gpu_memory_gib"] = {**timer.run_peak_gib(), "allocated_by_phase": dict(timer.peak_allocated_gib)}
    return report


def not_reached_frames(summaries: dict) -> dict[str, list[dict]]:
    """{noun: [{"frame", "status", "reason"}]} of the frames whose refined count is not the target."""
    return {noun: [{"frame": index, "status": frame.status, "reason": frame.reason}
                   for index, frame in enumerate(summary.frames) if frame.refined_count != summary.target_count]
            for noun, summary in summaries.items()
            if not summary.plan_reaches_target}


def outcome_message(summaries: dict, regenerated: bool, when_nothing_to_modulate: str,
                    layout_edited: bool = False) -> str:
    """report.json's one-line account of phase 2. It says the counts already match only when every
    frame's reference count equals the target. With `layout_edited` (generate's edit_layout) the plan
    came from the edited layouts, so the refinement summaries' shortfalls are not repeated."""
    short = not_reached_frames(summaries)
    why = "; ".join(f"{noun}: frame(s) {[item['frame'] for item in items]} "
                    f"({'; '.join(sorted({item['reason'] for item in items}))})" for noun, items in short.items())
    if regenerated:
        return "phase 2 regenerated with the layout bias" + (
            f"; the target could not be planned everywhere: {why}" if short and not layout_edited else "")
    after = ("plain Wan2.1 regenerated from the noise" if when_nothing_to_modulate == "regenerate_plain"
             else "phase 1 ran on to the end")
    if layout_edited:
        return f"the edited layouts have nothing to modulate: {after}"
    if all(summary.already_matched for summary in summaries.values()):
        return f"counts already match in every frame: no modulation, {after}"
    return f"the target could not be planned in any frame, nothing to modulate ({why}): {after}"


@torch.inference_mode()
def generate(model: WanModel, request: GenerationRequest, *, progress: bool = True, cuda_graphs: bool = True,
             offload: bool | str = False,
             edit_layout: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]
             | None = None, prepared: Prepared | None = None) -> GenerationResult:
    """Make one video. Bad requests raise UserInputError before any heavy work starts.

    `prepared`: prepare(model, request)'s result when the caller already checked the request (the CLI
    does, to refuse bad input before generating), so that it is not prepared again; None: prepared here.

    `cuda_graphs`: replay the denoising steps from CUDA graphs (ignored off CUDA and for a DiT under a
    ParallelPlan, whose collectives are not captured). `offload`: one of
    offload.OFFLOAD_MODES ("none", "text-encoder", "full"), or True ("full") / False ("none"); the video
    is the same in each (`offload.py`).
    `edit_layout`: for tests and benchmarks, a function (reference, refined) -> refined, each
    {noun: labels int32 [F, h, w]}, whose result replaces the refined layouts before the modulation plan
    is built (e.g. an edit planted so that phase 2 must regenerate, or the reference itself so that it
    must not); whether phase 2 regenerates is then decided from the edited layouts (some refined layout
    differs from its reference), and the refinement summaries in the report describe the unedited layouts.
    """
    if prepared is None:
        prepared = prepare(model, request)
    elif prepared.request != request:
        raise ValueError("`prepared` was prepared for another request than the one given")
    settings, counts, positions, config = prepared.settings, prepared.counts, prepared.positions, prepared.config
    offload = offload_mode(offload)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    timer = PhaseTimer(model.device)
    report: dict = {}
    if offload != "none":
        with timer("offload"):
            place_for_generation(model)
    graphs = StepGraphs(partial(cfg_forward, model), model.device, enabled=cuda_graphs,
                        unsupported=CUDA_GRAPHS_UNSUPPORTED if isinstance(model.dit, ParallelDiT) else None)

    with timer("text encoding"):
        context = encode_prompts(model, settings, device=text_encoding_device(model, offload))
    noise = seeded_noise(settings, model.device)

    if config is None:
        report["numina"] = {"enabled": False, "reason": ("turned off (--no-numina)" if not request.numina
                                                         else "the prompt has no counted noun; ran plain Wan2.1")}
        sigma_grid = behaviour_config(model, request).sigma_grid
        report["sigma_grid"] = sigma_grid
        scheduler = FlowUniPCScheduler(settings.steps, shift=settings.shift, device=model.device,
                                       sigma_grid=sigma_grid)
        cache = step_cache_for(model, request, None, "plain")
        with timer("denoising"):
            latents = denoise(model, noise, context, scheduler, settings, range(settings.steps), progress=progress,
                              graphs=graphs, cache=cache)
            graphs.release()
        frames = decode_video(model, latents, timer, offload=parks_dit(offload))
        report["step_cache"] = {"cache_steps": request.cache_steps, "denoising": cache.summary()}
        report.update(engine_report(graphs, offload=offload, timer=timer))
        return GenerationResult(frames=frames, settings=settings, timings_s=timer.seconds, report=report)

    # Phase 1: the reference pass.
    with timer("phase 1"):
        ref = reference_pass(model, noise, context, settings, config, noun_token_table(positions, model.device),
                             progress=progress, graphs=graphs, maps_budget_bytes=maps_budget_bytes(offload))
    # Layout: countable instances, refined to the asked counts, and the modulation plan.
    with timer("layout"):
        reference, refined, summaries = plan_layouts(ref, counts, config)
        if edit_layout is None:
            changed = any(summary.changed for summary in summaries.values())
        else:
            refined = edit_layout(reference, refined)
            changed = any(not torch.equal(refined[noun], reference[noun]) for noun in reference)
        refined, changed = agree_on_layouts(model.dit, refined, changed)     # rank 0's, under a ParallelPlan
        plan = build_modulation_plan(refined, positions, model.device, model.dtype) if changed else None
    with timer("preview decode"):
        shown = layout_frames_to_show(ref.preview.shape[1])
        layout = LayoutResult(reference={n: t.cpu() for n, t in reference.items()},
                              refined={n: t.cpu() for n, t in refined.items()},
                              preview_frames=preview_frames(model, ref.preview, shown), shown_frames=shown)

    # Phase 2: regenerate from the same noise with the layout bias; when refinement changed nothing,
    # regenerate plain Wan2.1 from the noise or run phase 1 on (config.when_nothing_to_modulate).
    # --cache-steps phase2|all: EasyCache on every way; only the modulated one has biased steps.
    cache = step_cache_for(model, request, config, "phase2")
    with timer("phase 2"):
        if plan is None and config.when_nothing_to_modulate == "regenerate_plain":
            scheduler = FlowUniPCScheduler(settings.steps, shift=settings.shift, device=model.device,
                                           sigma_grid=config.sigma_grid)
            latents = denoise(model, noise, context, scheduler, settings, range(settings.steps),
                              progress=progress, desc="plain regeneration", graphs=graphs, cache=cache)
            modulated_steps = 0
        elif plan is None:
            latents = denoise(model, ref.latents, context, ref.scheduler, settings,
                              range(config.reference_step, settings.steps), progress=progress,
                              desc="phase 1, continued", graphs=graphs, cache=cache)
            modulated_steps = 0
        else:
            delta = torch.zeros((), dtype=torch.float32, device=model.device)
            modulation = ForwardState(modulation=Modulation(plan=plan, delta=delta, config=config, batch_index=COND))

            def state_at(step: int) -> ForwardState | None:
                if not config.should_modulate(step):
                    return None
                delta.fill_(config.delta(step))
                return modulation

            scheduler = FlowUniPCScheduler(settings.steps, shift=settings.shift, device=model.device,
                                           sigma_grid=config.sigma_grid)
            latents = denoise(model, noise, context, scheduler, settings, range(settings.steps),
                              state_at=state_at, progress=progress, desc="phase 2", graphs=graphs,
                              first_uncond=ref.first_uncond, cache=cache)
            modulated_steps = sum(config.should_modulate(s) for s in range(settings.steps))
        graphs.release()
    frames = decode_video(model, latents, timer, offload=parks_dit(offload))

    found = {noun: count_instances(reference[noun]).tolist() for noun in counts}
    video_counts = final_counts(model, frames, counts)
    report["numina"] = {
        "enabled": True,
        "counts_asked": counts,
        "counts_source": "--counts" if request.counts is not None else "parsed from the prompt",
        "token_positions": positions,
        "reference_step": config.reference_step,
        "reference_step_source": reference_step_source(model, request, settings.steps),
        "reference_layer": config.reference_layer,
        "token_grid": list(ref.extraction.grid),
        # None with layout_instances "focus_clusters": no head is scored (layout.uses_self_maps)
        "best_head_per_frame": (ref.extraction.best_head.tolist() if ref.extraction.best_head is not None
                                else None),
        "counts_found_per_frame": found,
        # what the finished video shows, by the checkpoint's exact counter (None: it has none)
        "final_counts_per_frame": video_counts,
        "behaviours": config.behaviours(),
        "refinement": {noun: summary.to_dict() for noun, summary in summaries.items()},
        "layout_edited": edit_layout is not None,
        "regenerated": plan is not None,
        "phase2": ("modulated" if plan is not None else
                   "plain_regenerated" if config.when_nothing_to_modulate == "regenerate_plain" else
                   "phase1_continued"),
        "counts_matched": all(summary.already_matched for summary in summaries.values()),
        "not_reached": not_reached_frames(summaries),
        "message": outcome_message(summaries, plan is not None, config.when_nothing_to_modulate,
                                   layout_edited=edit_layout is not None),
        "phase1_steps_computed": ref.computed_steps,
        "phase1_steps_reused": ref.reused_steps,
        "phase2_modulated_steps": modulated_steps,
    }
    phase2_cache = cache.summary()
    if plan is not None:          # where the bias stops: a computed step, the cache starts over there
        phase2_cache["modulation_stops_at"] = next(
            (step for step in range(settings.steps) if not config.should_modulate(step)), None)
    report["step_cache"] = {"cache_steps": request.cache_steps, "phase 1": ref.step_cache, "phase 2": phase2_cache}
    report.update(engine_report(graphs, offload=offload, timer=timer))
    return GenerationResult(frames=frames, settings=settings, timings_s=timer.seconds, report=report,
                            layout=layout)
