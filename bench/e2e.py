"""Plain vs NUMINA generation, phase by phase, at Wan2.1's real shape with random weights, on a GPU.

Timing and memory do not depend on weight values, so the model is built on the GPU at the real sizes
(the --config DiT, 1.3B or 14B, umT5-XXL encoder, Wan VAE) with random weights (bench/random_wan.py,
seconds even for 14B); the tokenizer is the embedded demo one. `--offload` runs every generation with
that offload mode (engine/offload.py); every run's JSON holds its peak GPU memory, allocated and
reserved, and each phase's allocated peak ("allocated_by_phase"). Peaks do not grow with --steps
(every step of a kind replays the same graph; the extraction and the decode run once), so
`--steps 2` gives the memory figures of a 50-step run.
All runs use the same engine and settings, one after the other in one process:

    warm-up          a NUMINA run with WARMUP_STEPS steps and phase 2 forced, at the same shape
                     (Triton compilation, cuDNN plans, first-call setup: not timed)
    plain            CUDA graphs on
    plain, eager     CUDA graphs off (left out with --skip-graphs-off)
    NUMINA           CUDA graphs on

Prints a table and one JSON object: phase times, steps computed/reused, peak GPU memory (allocated
and reserved), forward TFLOP/s, graphs on/off ratio, NUMINA/plain ratio and the authors' ~255 s
estimate over ours. With --steps below 50, per-step times are also extrapolated to 50 steps
("extrapolated_to_50_steps": estimates, not measurements).

    python bench/e2e.py --steps 50 --force-modulation [--skip-graphs-off] [--json e2e.json]
    python bench/e2e.py --config 14B --size 1280*720 --steps 2 --force-modulation --skip-graphs-off \
        --offload text-encoder

--cache-steps plain|phase2|all times the plain and NUMINA runs with EasyCache beyond phase 1 (the warm-up
run stays uncached). With random weights the cache's decisions say nothing about video quality: only the
time of the steps it computes and reuses is meaningful (bench/step_cache.py measures quality on the demo
model).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.random_wan import random_wan  # noqa: E402
from numina_engine.engine import pipeline  # noqa: E402
from numina_engine.engine.easycache import CACHE_STEPS  # noqa: E402
from numina_engine.engine.loading import WanModel  # noqa: E402
from numina_engine.engine.offload import OFFLOAD_MODES  # noqa: E402
from numina_engine.engine.settings import GenerationRequest, parse_size  # noqa: E402
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
    columns = ["text", "phase 1", "layout", "preview", "phase 2 / denoise", "decode", "total",
               "peak alloc GiB", "peak reserved GiB"]
    print("| run | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name, run in runs.items():
        p = run["phases_s"]
        cells = [p.get("text encoding", 0), p.get("phase 1", 0), p.get("layout", 0), p.get("preview decode", 0),
                 p.get("phase 2", p.get("denoising", 0)), p.get("decode", 0), run["total_s"]]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("1.3B", "14B"), default="1.3B", help="Wan2.1 DiT size")
    parser.add_argument("--offload", choices=OFFLOAD_MODES, default="none",
                        help="offload mode of every generation (engine/offload.py)")
    parser.add_argument("--steps", type=int, default=FULL_STEPS)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="832*480")
    parser.add_argument("--json", default=None, help="also write the JSON result to this file")
    parser.add_argument("--force-modulation", action="store_true",
                        help="timing aid: make phase 2 run even when refinement changes nothing (see add_disc)")
    parser.add_argument("--skip-graphs-off", action="store_true",
                        help="leave out the plain run with CUDA graphs off (saves one plain run's time)")
    parser.add_argument("--cache-steps", choices=CACHE_STEPS, default="off",
                        help="EasyCache beyond phase 1 for the timed runs (random weights: time only, not quality)")
    args = parser.parse_args()
    device = torch.device("cuda")
    model = random_wan(args.config, device,
                       text_encoder_device=torch.device("cpu") if args.offload != "none" else None)
    width, height = parse_size(args.size)
    common = dict(prompt=PROMPT, seed=1, width=width, height=height, frames=args.frames, counts=COUNTS)
    steps = args.steps

    # the warm-up compiles every kernel phase 2 uses, too
    warmup = timed_run(model, GenerationRequest(**common, steps=WARMUP_STEPS,
                                                numina_overrides={"reference_step": WARMUP_STEPS - 1}),
                       cuda_graphs=True, force_modulation=True, offload=args.offload)
    plain_request = GenerationRequest(**common, steps=steps, numina=False, cache_steps=args.cache_steps)
    runs = {"plain": timed_run(model, plain_request, cuda_graphs=True, offload=args.offload)}
    if not args.skip_graphs_off:
        runs["plain, graphs off"] = timed_run(model, plain_request, cuda_graphs=False, offload=args.offload)
    numina_request = GenerationRequest(**common, steps=steps, cache_steps=args.cache_steps,
                                       numina_overrides={"reference_step": min(FULL_REFERENCE_STEP, steps - 1)})
    runs["NUMINA"] = timed_run(model, numina_request, cuda_graphs=True, force_modulation=args.force_modulation,
                               offload=args.offload)

    plain, numina = runs["plain"], runs["NUMINA"]
    plain_step = plain["phases_s"]["denoising"] / steps
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "config": args.config,
              "offload": args.offload, "steps": steps,
              "frames": args.frames, "size": args.size, "forced_modulation": args.force_modulation,
              "cache_steps": args.cache_steps,
              "warmup_run": {"steps": WARMUP_STEPS, "total_s": warmup["total_s"]},
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
    if args.cache_steps != "off":
        result["cache_steps_note"] = CACHE_NOTE
    print(json.dumps(result, indent=2, default=str))
    print_table(runs)
    if args.cache_steps != "off":
        print_cache_steps(runs)
        print(f"note: {CACHE_NOTE}")
    if args.json:
        from bench.results_file import write_results
        write_results(args.json, "bench/e2e.py", result)


if __name__ == "__main__":
    main()
