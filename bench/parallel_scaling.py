"""One video on 1, 2, 4 GPUs: the DiT's denoising steps under CFG parallel x Ulysses (engine/parallel.py).

Random weights built on the GPU (timing does not depend on values), bf16, random T5-sized context: only
the denoising is timed (the text encoder and the VAE are not parallelised). Runs, in one process per rank,
after a warm-up (Triton compilation, cuDNN plans):

    plain    --steps CFG steps from the seeded noise
    numina   phase 1 up to --reference-step (EasyCache off, so every rank count runs the same steps), the
             extraction forward, the layouts with a disc planted per noun and frame (bench/e2e.py's disc_added,
             so that phase 2 has a real plan), phase 2 over --steps steps with the layout bias

Launch once per GPU count, the 1-GPU run first (the others are compared with its final latents):

    torchrun --nproc-per-node 1 bench/parallel_scaling.py --model 14B --size 1280*720 --json docs/results/parallel_scaling_h200.json
    torchrun --nproc-per-node 2 bench/parallel_scaling.py --model 14B --size 1280*720 --json docs/results/parallel_scaling_h200.json
    torchrun --nproc-per-node 4 bench/parallel_scaling.py --model 14B --size 1280*720 --json docs/results/parallel_scaling_h200.json

Rank 0 prints one JSON object per run ({"model", "size", "frames", "mode", "gpus", "plan", "step_s",
"speedup", "efficiency", "peak_memory_gib_per_gpu", "latents_relative_error_vs_1_gpu", ...}) and a table of
every row in the --json file; it adds its rows to that file (a row of the same model, shape, steps, mode,
reference step, GPU count and plan is replaced; a file written at another commit, on another device or
with other versions is refused), and computes speedup = 1-GPU step_s / step_s and efficiency = speedup /
gpus from the file's 1-GPU row of the same model, shape, steps, mode and reference step. --device cpu
--model tiny runs the same on a CPU gloo world (a check of the script, not a benchmark).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.e2e import disc_added                                                   # noqa: E402
from bench.results_file import provenance, require_one_run, write_results          # noqa: E402
from numina_engine.engine import pipeline                                          # noqa: E402
from numina_engine.engine.config import PRESETS                                    # noqa: E402
from numina_engine.engine.forward_state import ForwardState, Modulation            # noqa: E402
from numina_engine.engine.loading import LatentGeometry, ModelDefaults, WanModel   # noqa: E402
from numina_engine.engine.model import WanDiT                                      # noqa: E402
from numina_engine.engine.parallel import (                                        # noqa: E402
    agree_on_layouts, choose_plan, parallelize, parse_parallel)
from numina_engine.engine.scheduler import FlowUniPCScheduler                      # noqa: E402
from numina_engine.engine.settings import GenerationRequest, parse_size, resolve   # noqa: E402
from numina_engine.numina.config import NuminaConfig                               # noqa: E402
from numina_engine.numina.modulation import build_modulation_plan                  # noqa: E402

RUN_FIELDS = ("git_commit", "device", "versions")   # a --json file's rows and this run's: one commit, GPU, software
NOUN_TOKENS = {"cats": [1], "dogs": [4, 5]}          # text positions the layouts' nouns are read from
COUNTS = {"cats": 3, "dogs": 2}
SEED = 1


def random_model(name: str, device: torch.device, dtype: torch.dtype) -> WanModel:
    """A WanDiT of preset `name` with random weights made on `device` in `dtype` (the same on every rank)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)                    # build in the compute dtype: 14B takes 28 GB, not 56
    try:
        with torch.device(device):
            dit = WanDiT(PRESETS[name])
    finally:
        torch.set_default_dtype(previous)
    dit = dit.cast_weights(dtype).eval().requires_grad_(False)
    return WanModel(dit=dit, text_encoder=None, vae=None, defaults=ModelDefaults(), layout="random",
                    path=Path("random"), device=device, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist.is_initialized():
        dist.barrier()


def plain_run(model, noise, context, settings, steps: int) -> torch.Tensor:
    scheduler = FlowUniPCScheduler(steps, shift=settings.shift, device=model.device)
    return pipeline.denoise(model, noise, context, scheduler, settings, range(steps), progress=False)


def numina_run(model, noise, context, settings, config: NuminaConfig, timer: dict) -> torch.Tensor:
    """NUMINA's flow as pipeline.generate runs it, with the layouts edited so that phase 2 modulates."""
    start = time.perf_counter()
    noun_tokens = pipeline.noun_token_table(NOUN_TOKENS, model.device)
    ref = pipeline.reference_pass(model, noise, context, settings, config, noun_tokens, progress=False)
    reference, refined, _ = pipeline.plan_layouts(ref, COUNTS, config)
    refined, _ = agree_on_layouts(model.dit, {noun: disc_added(labels) for noun, labels in refined.items()}, True)
    plan = build_modulation_plan(refined, NOUN_TOKENS, model.device, model.dtype)
    synchronize(model.device)
    timer["phase1_and_layout_s"] = time.perf_counter() - start
    delta = torch.zeros((), dtype=torch.float32, device=model.device)
    state = ForwardState(modulation=Modulation(plan=plan, delta=delta, config=config, batch_index=pipeline.COND))

    def state_at(step: int):
        if not config.should_modulate(step):
            return None
        delta.fill_(config.delta(step))
        return state

    scheduler = FlowUniPCScheduler(settings.steps, shift=settings.shift, device=model.device)
    start = time.perf_counter()
    latents = pipeline.denoise(model, noise, context, scheduler, settings, range(settings.steps), state_at=state_at,
                               progress=False, first_uncond=ref.first_uncond)
    synchronize(model.device)
    timer["phase2_s"] = time.perf_counter() - start
    return latents


def peak_memory_gib(device: torch.device) -> list[float]:
    """Every rank's peak allocated GPU memory, GiB (empty on the CPU)."""
    if device.type != "cuda":
        return []
    mine = torch.tensor([torch.cuda.max_memory_allocated(device) / 2 ** 30], device=device)
    if not dist.is_initialized():
        return [round(float(mine), 3)]
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return [round(float(value), 3) for value in every]


def row_key(row: dict) -> tuple:
    """What a row's 1-GPU baseline shares with it: the model, the shape, the steps, the mode (and NUMINA's
    reference step, None in plain rows)."""
    return row["model"], row["size"], row["frames"], row["steps"], row["mode"], row.get("reference_step")


def previous_rows(path: Path | None, header: dict) -> list[dict]:
    """The rows already in the results file at `path` (none: no file, or no --json), refused (SystemExit)
    where the file was written at another commit, on another device or with other versions than this run
    (`header`, its provenance): this run's speedups are taken against the file's 1-GPU rows."""
    if path is None or not path.is_file():
        return []
    previous = json.loads(path.read_text(encoding="utf-8"))
    require_one_run({str(path): {field: previous.get(field) for field in RUN_FIELDS},
                     "this run": {field: header.get(field) for field in RUN_FIELDS}},
                    remedy="run every GPU count at one commit on one machine, or write to another --json file")
    return previous["results"]["rows"]


def added_rows(previous: list[dict], rows: list[dict]) -> list[dict]:
    """`previous` rows and this run's `rows`: a previous row of the same key, GPU count and plan is replaced."""
    replaced = {(row_key(row), row["gpus"], row["plan"]) for row in rows}
    return [row for row in previous if (row_key(row), row["gpus"], row["plan"]) not in replaced] + rows


def finish_rows(rows: list[dict], latents_dir: Path) -> None:
    """Speedup, efficiency and the final latents' relative error against each row's 1-GPU row."""
    single = {row_key(row): row for row in rows if row["gpus"] == 1}
    for row in rows:
        base = single.get(row_key(row))
        if base is None:
            continue
        row["speedup"] = base["step_s"] / row["step_s"]
        row["efficiency"] = row["speedup"] / row["gpus"]
        mine, theirs = latents_dir / row["latents_file"], latents_dir / base["latents_file"]
        if mine.is_file() and theirs.is_file():
            a, b = torch.load(mine).double(), torch.load(theirs).double()
            row["latents_relative_error_vs_1_gpu"] = float((a - b).norm() / b.norm())


def print_table(rows: list[dict]) -> None:
    print("| model | size x frames | mode | GPUs | plan | s/step | speedup | efficiency | peak GiB/GPU | rel. err vs 1 GPU |")
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in sorted(rows, key=lambda r: (*row_key(r)[:-1], r.get("reference_step") or 0, r["gpus"])):
        peak = max(row["peak_memory_gib_per_gpu"]) if row["peak_memory_gib_per_gpu"] else float("nan")
        error = row.get("latents_relative_error_vs_1_gpu")
        step = row.get("reference_step")
        mode = row["mode"] if step is None else f"{row['mode']} (ref. step {step})"
        print(f"| {row['model']} | {row['size']} x {row['frames']} | {mode} | {row['gpus']} | {row['plan']} | "
              f"{row['step_s']:.3f} | {row.get('speedup', float('nan')):.2f} | {row.get('efficiency', float('nan')):.2f} | "
              f"{peak:.1f} | {'-' if error is None else f'{error:.2e}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="1.3B")
    parser.add_argument("--size", default="832*480", help="WIDTH*HEIGHT (default 832*480)")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (default 4)")
    parser.add_argument("--reference-step", type=int, default=2, help="NUMINA's phase-1 steps (default 2)")
    parser.add_argument("--modes", nargs="+", choices=("plain", "numina"), default=["plain", "numina"])
    parser.add_argument("--parallel", default=None, help="CFG,ULYSSES (default: chosen from the world size)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--latents-dir", default="/tmp/parallel_scaling", help="final latents, for the comparison")
    parser.add_argument("--json", default=None, help="results file to add this run's rows to")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    plan = choose_plan(world, PRESETS[args.model].num_heads, parse_parallel(args.parallel))
    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dtype = torch.bfloat16
    else:
        device, dtype = torch.device("cpu"), torch.float32
    header = provenance("bench/parallel_scaling.py", device=str(device) if device.type == "cuda" else "cpu")
    previous = previous_rows(Path(args.json) if args.json else None, header)    # every rank: all stop alike
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    model = random_model(args.model, device, dtype)
    if world > 1:
        model = parallelize(model, plan, rank)
    width, height = parse_size(args.size)
    settings = resolve(GenerationRequest(prompt="random", seed=SEED, width=width, height=height, frames=args.frames,
                                         steps=args.steps), ModelDefaults(), LatentGeometry())
    layer = min(NuminaConfig().reference_layer, PRESETS[args.model].num_layers - 1)
    config = NuminaConfig(total_steps=args.steps, reference_step=args.reference_step, reference_layer=layer,
                          easycache_tau=0.0)
    noise = pipeline.seeded_noise(settings, device)
    generator = torch.Generator(device=device).manual_seed(SEED)
    text = PRESETS[args.model]
    context = torch.randn(2, text.text_len, text.text_dim, generator=generator, device=device).to(dtype)

    # warm-up at the same shape (Triton compilation, cuDNN plans): one plain step; NUMINA over 2 steps
    warm_settings = resolve(GenerationRequest(prompt="warm-up", seed=SEED, width=width, height=height,
                                              frames=args.frames, steps=2), ModelDefaults(), LatentGeometry())
    plain_run(model, noise, context, warm_settings, 1)
    if "numina" in args.modes:
        numina_run(model, noise, context, warm_settings, NuminaConfig(total_steps=2, reference_step=1,
                                                                      reference_layer=layer, easycache_tau=0.0), {})
    rows = []
    latents_dir = Path(args.latents_dir)
    latents_dir.mkdir(parents=True, exist_ok=True)
    for mode in args.modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        timer: dict = {}
        start = time.perf_counter()
        if mode == "plain":
            latents = plain_run(model, noise, context, settings, args.steps)
            synchronize(device)
            timer["denoise_s"] = time.perf_counter() - start
            step_s = timer["denoise_s"] / args.steps
        else:
            latents = numina_run(model, noise, context, settings, config, timer)
            step_s = timer["phase2_s"] / args.steps
        reference_step = args.reference_step if mode == "numina" else None
        row = {"model": args.model, "size": args.size, "frames": args.frames, "steps": args.steps, "mode": mode,
               "reference_step": reference_step,
               "gpus": world, "plan": plan.describe(), "step_s": step_s, "timings_s": timer,
               "peak_memory_gib_per_gpu": peak_memory_gib(device), "grid": list(model.dit.token_grid(noise.shape)),
               "latents_file": f"{args.model}_{args.size}_{args.frames}_{args.steps}_{mode}"
                               f"{'' if reference_step is None else f'_ref{reference_step}'}_{world}gpu.pt"}
        if rank == 0:
            torch.save(latents.cpu(), latents_dir / row["latents_file"])
        rows.append(row)
    if rank == 0:
        all_rows = added_rows(previous, rows)
        finish_rows(all_rows, latents_dir)
        for row in rows:
            print(json.dumps(row))
        print_table(all_rows)
        if args.json:
            write_results(args.json, "bench/parallel_scaling.py", {"rows": all_rows}, header=header)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
