"""Plain vs NUMINA videos timed phase by phase, for one or several engine configurations side by side.

Wan2.1 at its real shape with random weights, on a GPU, every configuration in one process.

Timing and memory do not depend on weight values, so the model is built on the GPU at the real sizes
(the --config DiT, 1.3B or 14B, umT5-XXL encoder, Wan VAE) with random weights (bench/random_wan.py,
seconds even for 14B); the tokenizer is the embedded demo one. Every run's JSON holds its peak GPU
memory, allocated and reserved, and each phase's allocated peak ("allocated_by_phase"). Peaks do not
grow with --steps (every step of a kind replays the same graph; the extraction and the decode run once),
so `--steps 2` gives the memory figures of a 50-step run.

A configuration (bench/e2e_configs.py) is an (attention, cache steps, offload) triple: the DiT's
self-attention (bf16 SDPA or fp8), EasyCache beyond phase 1 (--cache-steps) and the offload mode
(engine/offload.py). `--configs NAME ...` times the named ones in the order given, the first the
baseline; without it --attention/--cache-steps/--offload make one. One model serves them all: the
attention is the DiT's setting (set before each run), and before each run the text encoder and the DiT
are put where a video of that offload mode finds them after another (pipeline.generate itself places
parts only for offloaded modes, so a "none" run after a "full" one would otherwise find both on the
CPU). All runs, one after the other in one process:

    warm-up          a NUMINA run with WARMUP_STEPS steps and phase 2 forced, at the same shape, before
                     the first configuration of each attention kind and of each offload mode (Triton
                     compilation, cuDNN plans, the encoder's move to the CPU, first-call setup: not timed;
                     e2e_configs.warmup_plan)
    per configuration, in order:
      plain          CUDA graphs on
      plain, eager   CUDA graphs off (first configuration only; left out with --skip-graphs-off)
      NUMINA         CUDA graphs on

Prints a table per configuration, one JSON object and the configurations side by side. The JSON's
top-level keys describe the first configuration as a single-configuration run always did: phase times,
steps computed/reused, peak GPU memory (allocated and reserved), forward TFLOP/s (1.3B at 832*480x81
only), graphs on/off ratio, NUMINA/plain ratio and the authors' ~255 s estimate over ours; with --steps
below 50, per-step times are also extrapolated to 50 steps ("extrapolated_to_50_steps": estimates, not
measurements). "configurations" holds every configuration's settings, plain and NUMINA runs, NUMINA /
plain and both totals over the first configuration's; with --json the file is rewritten after each
configuration ("configurations_planned" names them all), so a run stopped by a time limit keeps what it
finished.

    python -m bench.e2e --steps 50 --force-modulation --configs bf16 cache-all fp8 offload-full \
        --json docs/results/e2e_h200.json
    python -m bench.e2e --steps 50 --force-modulation [--skip-graphs-off] [--json e2e.json]
    python -m bench.e2e --config 14B --size 1280*720 --steps 2 --force-modulation --skip-graphs-off \
        --offload text-encoder

The first command (H200, estimated at 9.5-10.5 minutes, not measured: about 54 s a plain and 70 s a NUMINA
video at bf16, cached and fp8 ones faster, offloaded ones a few seconds slower, the graphs-off plain run,
3 warm-ups with their compilation, the model build; --skip-graphs-off saves about a minute) times step caching
(`bf16` is --cache-steps off; `cache-all`'s plain run is what --cache-steps plain times and its NUMINA run
what --cache-steps phase2 times, e2e_configs.py), FP8 attention and what --offload full costs.
With random weights the cache's decisions say nothing about video quality: only the time of the steps it
computes and reuses is meaningful (bench/step_cache.py measures quality on the demo model).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.e2e_configs import (CACHE_ALL_NOTE, CONFIGURATIONS, Configuration,  # noqa: E402
                               configurations_from_args, warmup_plan)
from bench.random_wan import random_wan  # noqa: E402
from bench.results_file import provenance, write_results  # noqa: E402
from numina_engine.engine import pipeline  # noqa: E402
from numina_engine.engine.attention import check_attention_setting  # noqa: E402
from numina_engine.engine.config import PRESETS  # noqa: E402
from numina_engine.engine.easycache import CACHE_STEPS  # noqa: E402
from numina_engine.engine.loading import WanModel  # noqa: E402
from numina_engine.engine.offload import CPU, OFFLOAD_MODES, parks_dit  # noqa: E402
from numina_engine.engine.settings import GenerationRequest, parse_size  # noqa: E402
from numina_engine.errors import UserInputError  # noqa: E402
from numina_engine.kernels.dispatch import ATTENTION_CHOICES  # noqa: E402
from numina_engine.numina.config import NuminaConfig  # noqa: E402

FLOP_PER_FORWARD_1_3B_81F = 289e12          # one batch-1 forward at 832x480x81 (shared/ANCHORS.md)
AUTHORS_ESTIMATE_S = 255.0                  # the authors' pipeline, one NUMINA video, 50 steps (shared/ANCHORS.md)
PROMPT = "Three cats chasing two dogs"
COUNTS = {"cats": 2, "dogs": 3}             # differ from what random weights give, so phase 2 runs
WARMUP_STEPS = 2
FULL_STEPS = 50
FULL_REFERENCE_STEP = NuminaConfig().reference_step


def disc_added(labels: torch.Tensor) -> torch.Tensor:
    """labels int32 [F, h, w] with a disc of radius 3 tokens at the centre marked added (100) in every frame."""
    _, h, w = labels.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=labels.device), torch.arange(w, device=labels.device), indexing="ij")
    edited = labels.clone()
    edited[:, (ys - h // 2) ** 2 + (xs - w // 2) ** 2 <= 9] = 100
    return edited


def add_disc(reference: dict[str, torch.Tensor], refined: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layout edit (pipeline.generate's edit_layout): random weights give layouts that refinement may
    leave as they are (e.g. one instance covering the frame), so phase 2 would not run. For timing
    only: add one disc of radius 3 tokens per noun and frame to the refined layout (disc_added), so that
    phase 2 regenerates with a real modulation plan. The output video is meaningless either way (random weights)."""
    return {noun: disc_added(labels) for noun, labels in refined.items()}


def timed_run(model: WanModel, request: GenerationRequest, *, cuda_graphs: bool, force_modulation: bool = False,
              offload: str = "none", keep_frames: bool = False) -> dict:
    """One generation from an emptied allocator cache: wall time, phase times, peak memory, reports
    (and the frames, uint8 [T, H, W, 3] on the CPU, with `keep_frames`)."""
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = pipeline.generate(model, request, progress=False, cuda_graphs=cuda_graphs, offload=offload,
                               edit_layout=add_disc if force_modulation else None)
    torch.cuda.synchronize()
    return {"total_s": time.perf_counter() - start, "phases_s": result.timings_s,
            "peak_gpu_memory_gib": result.report.get("peak_gpu_memory_gib", {}),
            "cuda_graphs": result.report["cuda_graphs"], "numina": result.report.get("numina", {}),
            "step_cache": result.report.get("step_cache", {}),
            **({"frames": result.frames} if keep_frames else {})}


def forward_tflops(step_s: float) -> float:
    """Effective TFLOP/s of a CFG step (two batch rows) at 832x480x81."""
    return 2 * FLOP_PER_FORWARD_1_3B_81F / step_s / 1e12


def extrapolate_to_50_steps(plain: dict, numina: dict, steps: int) -> dict:
    """Whole-video estimates at 50 steps from a shorter run's per-step times (not measurements).

    plain: the non-step phases as measured plus 50 plain steps. NUMINA: phase 1 as 20 plain steps (all
    computed: EasyCache's reuse at 50 steps is not predicted from a shorter run, so this is an upper
    bound) plus the measured reference forward; phase 2 at the measured phase-2 step time, for 50
    steps when it regenerated, else for the 30 steps phase 1 runs on.
    """
    plain_phases, numina_phases, report = plain["phases_s"], numina["phases_s"], numina["numina"]
    plain_step = plain_phases["denoising"] / steps
    computed_plain_steps = report["phase1_steps_computed"] - 1                   # less the reference forward
    reference_forward = numina_phases["phase 1"] - computed_plain_steps * plain_step
    regenerated = report["regenerated"]
    phase2_step = numina_phases["phase 2"] / (steps if regenerated else steps - report["reference_step"])
    phase2_steps = FULL_STEPS if regenerated else FULL_STEPS - FULL_REFERENCE_STEP
    plain_s = plain_phases["text encoding"] + FULL_STEPS * plain_step + plain_phases["decode"]
    numina_s = (numina_phases["text encoding"] + FULL_REFERENCE_STEP * plain_step + reference_forward
                + numina_phases["layout"] + numina_phases["preview decode"] + phase2_steps * phase2_step
                + numina_phases["decode"])
    return {"note": "estimates from per-step times of this shorter run, not measured",
            "plain_step_s": plain_step, "numina_phase2_step_s": phase2_step,
            "numina_reference_forward_s": reference_forward,
            "plain_total_s": plain_s, "numina_total_s": numina_s, "numina_over_plain": numina_s / plain_s}


def print_table(runs: dict[str, dict]) -> None:
    columns = ["offload", "text", "phase 1", "layout", "preview", "phase 2 / denoise", "decode", "total",
               "peak alloc GiB", "peak reserved GiB"]
    print("| run | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name, run in runs.items():
        p = run["phases_s"]
        cells = [p.get("offload", 0), p.get("text encoding", 0), p.get("phase 1", 0), p.get("layout", 0),
                 p.get("preview decode", 0), p.get("phase 2", p.get("denoising", 0)), p.get("decode", 0), run["total_s"]]
        memory = run["peak_gpu_memory_gib"]
        print(f"| {name} | " + " | ".join(f"{c:.2f} s" for c in cells)
              + f" | {memory.get('allocated', 0):.1f} | {memory.get('reserved', 0):.1f} |")


CACHE_NOTE = ("random weights: which steps EasyCache reuses says nothing about video quality (trained weights "
              "may reuse other steps); only the time of computed and reused steps is meaningful")


def print_cache_steps(runs: dict[str, dict]) -> None:
    """Steps computed / reused per run and phase (report.json's step_cache)."""
    for name, run in runs.items():
        phases = {phase: f"{entry['steps_computed']} computed / {entry['steps_reused']} reused"
                  for phase, entry in run["step_cache"].items() if phase != "cache_steps"}
        print(f"{name}: " + "; ".join(f"{phase} {text}" for phase, text in phases.items()))


def set_attention(model: WanModel, attention: str) -> None:
    """The DiT's plain self-attention calls from now on (api.Engine.load sets it the same way, once)."""
    model.dit.kernels = dataclasses.replace(model.dit.kernels, attention=attention)


def place_as_between_videos(model: WanModel, offload: str) -> None:
    """Put the text encoder and the DiT where a video of mode `offload` finds them after another video of
    that mode: the encoder on the CPU with offload, the DiT on the CPU after a "full" one (parked for its
    decode; pipeline.generate brings it back, timed as the video's "offload"). pipeline.generate places
    parts only for offloaded modes, so without this a "none" run after a "full" one would find its DiT
    and encoder on the CPU; with it one built model serves every mode. Not timed."""
    model.text_encoder.model.to(model.device if offload == "none" else CPU)
    model.dit.to(CPU if parks_dit(offload) else model.device)


def timed_configuration_run(model: WanModel, configuration: Configuration, request: GenerationRequest, *,
                            cuda_graphs: bool = True, force_modulation: bool = False) -> dict:
    """timed_run of `request` with `configuration`'s attention and offload (its cache_steps is the request's)."""
    set_attention(model, configuration.attention)
    place_as_between_videos(model, configuration.offload)
    return timed_run(model, request, cuda_graphs=cuda_graphs, force_modulation=force_modulation,
                     offload=configuration.offload)


def time_configuration(model: WanModel, configuration: Configuration, common: dict, steps: int, *,
                       force_modulation: bool, graphs_off: bool) -> dict[str, dict]:
    """`configuration`'s runs, in this order: "plain", "plain, graphs off" (with `graphs_off`), "NUMINA"
    (timed_run's records); `common`: the GenerationRequest fields every run shares."""
    plain_request = GenerationRequest(**common, steps=steps, numina=False, cache_steps=configuration.cache_steps)
    runs = {"plain": timed_configuration_run(model, configuration, plain_request)}
    if graphs_off:
        runs["plain, graphs off"] = timed_configuration_run(model, configuration, plain_request, cuda_graphs=False)
    numina_request = GenerationRequest(**common, steps=steps, cache_steps=configuration.cache_steps,
                                       numina_overrides={"reference_step": min(FULL_REFERENCE_STEP, steps - 1)})
    runs["NUMINA"] = timed_configuration_run(model, configuration, numina_request, force_modulation=force_modulation)
    return runs


def configuration_entry(configuration: Configuration, runs: dict[str, dict], baseline: dict[str, dict],
                        steps: int) -> dict:
    """The JSON of one configuration: its settings, plain and NUMINA runs, its NUMINA / plain ratio and its
    totals over the first configuration's (`baseline`, its runs)."""
    plain, numina = runs["plain"], runs["NUMINA"]
    entry = {"attention": configuration.attention, "cache_steps": configuration.cache_steps,
             "offload": configuration.offload, "runs": {"plain": plain, "NUMINA": numina},
             "plain_step_s": plain["phases_s"]["denoising"] / steps,
             "numina_over_plain": numina["total_s"] / plain["total_s"],
             "plain_over_baseline": plain["total_s"] / baseline["plain"]["total_s"],
             "numina_over_baseline": numina["total_s"] / baseline["NUMINA"]["total_s"]}
    if configuration.cache_steps == "all":
        entry["note"] = CACHE_ALL_NOTE
    return entry


def first_configuration_result(args, configuration: Configuration, runs: dict[str, dict], warmup: dict,
                               width: int, height: int) -> dict:
    """The top-level keys (those of a single-configuration run, which older readers know), for `configuration`."""
    steps = args.steps
    plain, numina = runs["plain"], runs["NUMINA"]
    plain_step = plain["phases_s"]["denoising"] / steps
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "config": args.config,
              "attention": configuration.attention, "offload": configuration.offload, "steps": steps,
              "frames": args.frames, "size": args.size, "forced_modulation": args.force_modulation,
              "cache_steps": configuration.cache_steps,
              "warmup_run": {"steps": warmup["steps"], "total_s": warmup["total_s"]},
              "runs": runs,
              "plain_step_s": plain_step,
              "numina_over_plain": numina["total_s"] / plain["total_s"]}
    if "plain, graphs off" in runs:
        eager_step = runs["plain, graphs off"]["phases_s"]["denoising"] / steps
        result["plain_step_graphs_off_s"] = eager_step
        result["graphs_off_over_on_step"] = eager_step / plain_step
    if steps < FULL_STEPS:
        result["extrapolated_to_50_steps"] = extrapolate_to_50_steps(plain, numina, steps)
    if (args.config, args.frames, width, height) == ("1.3B", 81, 832, 480):      # the shape the anchors are for
        result["forward_tflops"] = forward_tflops(plain_step)
        if "plain, graphs off" in runs:
            result["forward_tflops_graphs_off"] = forward_tflops(result["plain_step_graphs_off_s"])
        measured = steps == FULL_STEPS
        numina_50_s = numina["total_s"] if measured else result["extrapolated_to_50_steps"]["numina_total_s"]
        result["authors_estimate_over_numina_50_steps"] = {
            "ratio": AUTHORS_ESTIMATE_S / numina_50_s, "authors_estimate_s": AUTHORS_ESTIMATE_S,
            "numina_s": numina_50_s, "numina_s_is": "measured" if measured else "extrapolated"}
    return result


def add_configurations(result: dict, planned: list[Configuration], entries: dict[str, dict],
                       warmups: list[dict]) -> None:
    """Add to `result` (first_configuration_result's) the configurations measured so far (`entries`, by
    name, configuration_entry's), those `planned`, the first one's name ("baseline") and the warm-ups."""
    result.update({"warmup_runs": warmups, "baseline": planned[0].name,
                   "configurations_planned": [c.name for c in planned], "configurations": entries})
    if any(c.cache_steps != "off" for c in planned):
        result["cache_steps_note"] = CACHE_NOTE


def print_configurations(configurations: dict[str, dict]) -> None:
    """The configurations side by side (totals, ratios, peak allocated memory)."""
    print("| configuration | attention | cache steps | offload | plain total | NUMINA total | NUMINA / plain "
          "| plain, NUMINA vs first | peak alloc GiB plain / NUMINA |")
    print("| --- | --- | --- | --- |" + " ---: |" * 5)
    for name, entry in configurations.items():
        plain, numina = entry["runs"]["plain"], entry["runs"]["NUMINA"]
        print(f"| {name} | {entry['attention']} | {entry['cache_steps']} | {entry['offload']} | {plain['total_s']:.2f} s "
              f"| {numina['total_s']:.2f} s | {entry['numina_over_plain']:.3f} | {entry['plain_over_baseline']:.3f}, "
              f"{entry['numina_over_baseline']:.3f} | {plain['peak_gpu_memory_gib'].get('allocated', 0):.1f} / "
              f"{numina['peak_gpu_memory_gib'].get('allocated', 0):.1f} |")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[Configuration]]:
    """The arguments and the configurations they name (argparse's error exit, status 2, on a bad one)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("1.3B", "14B"), default="1.3B", help="Wan2.1 DiT size")
    parser.add_argument("--configs", nargs="+", metavar="NAME", default=None,
                        help="engine configurations to time one after the other, the first the baseline: "
                             + ", ".join(f"{name} ({', '.join(triple)})" for name, triple in CONFIGURATIONS.items())
                             + " (attention, cache steps, offload); not with --attention/--cache-steps/--offload")
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default=None,
                        help="the DiT's self-attention for every generation (default bf16)")
    parser.add_argument("--offload", choices=OFFLOAD_MODES, default=None,
                        help="offload mode of every generation (engine/offload.py; default none)")
    parser.add_argument("--steps", type=int, default=FULL_STEPS)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="832*480")
    parser.add_argument("--json", default=None,
                        help="also write the JSON result to this file (rewritten after each configuration)")
    parser.add_argument("--force-modulation", action="store_true",
                        help="timing aid: make phase 2 run even when refinement changes nothing (see add_disc)")
    parser.add_argument("--skip-graphs-off", action="store_true",
                        help="leave out the plain run with CUDA graphs off (saves one plain run's time)")
    parser.add_argument("--cache-steps", choices=CACHE_STEPS, default=None,
                        help="EasyCache beyond phase 1 for the timed runs (random weights: time only, not quality; "
                             "default off)")
    args = parser.parse_args(argv)
    try:
        configurations = configurations_from_args(args.configs, args.attention, args.cache_steps, args.offload)
    except ValueError as err:
        parser.error(str(err))
    head_dim = PRESETS[args.config].dim // PRESETS[args.config].num_heads
    for attention in dict.fromkeys(c.attention for c in configurations):
        try:        # before the model is built: fp8 needs FP8 tensor cores and a head size the kernel takes
            check_attention_setting(attention, torch.device("cuda"), head_dim)
        except UserInputError as err:
            parser.error(str(err))
    return args, configurations


def main() -> None:
    args, configurations = parse_args()
    header = provenance("bench/e2e.py", device="cuda")       # the git state and date of the start
    device = torch.device("cuda")
    model = random_wan(args.config, device,
                       text_encoder_device=CPU if configurations[0].offload != "none" else None)
    width, height = parse_size(args.size)
    common = dict(prompt=PROMPT, seed=1, width=width, height=height, frames=args.frames, counts=COUNTS)
    steps = args.steps
    warmup_request = GenerationRequest(**common, steps=WARMUP_STEPS, numina_overrides={"reference_step": WARMUP_STEPS - 1})

    warmups, entries, result = [], {}, {}
    for index, (configuration, warmup) in enumerate(zip(configurations, warmup_plan(configurations))):
        if warmup is not None:      # compiles every kernel phase 2 uses, too
            attention, offload = warmup
            run = timed_configuration_run(model, Configuration("warm-up", attention, "off", offload), warmup_request,
                                          force_modulation=True)
            warmups.append({"before": configuration.name, "attention": attention, "offload": offload,
                            "steps": WARMUP_STEPS, "total_s": run["total_s"]})
        runs = time_configuration(model, configuration, common, steps, force_modulation=args.force_modulation,
                                  graphs_off=index == 0 and not args.skip_graphs_off)
        if index == 0:
            result = first_configuration_result(args, configuration, runs, warmups[0], width, height)
        entries[configuration.name] = configuration_entry(configuration, runs, result["runs"], steps)
        add_configurations(result, configurations, entries, warmups)
        print(f"## {configuration.name}")
        print_table(runs)
        if configuration.cache_steps != "off":
            print_cache_steps(runs)
        if args.json:           # after every configuration: a run stopped by a time limit keeps what it finished
            write_results(args.json, "bench/e2e.py", result, header=header)

    print(json.dumps(result, indent=2, default=str))
    print_configurations(entries)
    if "cache_steps_note" in result:
        print(f"note: {CACHE_NOTE}")


if __name__ == "__main__":
    main()
