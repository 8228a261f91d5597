"""Peak GPU memory of whole generations at Wan2.1's real shapes, with and without offload, random weights.

One process, about 4 minutes on an H200, every run a whole generation with --steps 2 (peaks do not
grow with the step count: each kind of step replays one CUDA graph from one shared pool, and the
extraction, the layout and the decodes run once per video whatever the steps), NUMINA's phase 2
forced to run with a real modulation plan (bench/e2e.py add_disc):

    1.3B at 832x480x81   plain and NUMINA, offload "none" and "full" (--offload); goal: <= 8.5 GiB
                         allocated with "full"; the "full" videos must equal the "none" ones
    14B at 1280x720x81   NUMINA, offload "text-encoder" (umT5 streamed to the GPU to encode, not kept
                         there); goal: <= 75 GiB allocated for the whole run

Before the first 1.3B run of each offload mode, a warm-up generation of that mode at the runs' own
shape (NUMINA, phase 2 forced; not timed; bench/e2e_configs.warmup_plan, as bench/e2e.py does) takes
the one-time costs (kernel compilation, cuDNN plans, the encoder's move to the CPU, the VAE's first
pinned host-cache allocations), so the 1.3B times compare offload against none fairly; the 14B run has
no warm-up of its own (kernels for its widths compile inside it: its times are upper bounds; its memory
is what it is). Per run: wall time and seconds per phase, and the peak allocated (and reserved) memory
of the run and of each phase.

    python -m bench.memory_peak [--only 1.3B|14B] [--json docs/results/memory_h200.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.e2e import COUNTS, PROMPT, timed_configuration_run, timed_run  # noqa: E402
from bench.e2e_configs import Configuration, warmup_plan  # noqa: E402
from bench.random_wan import random_wan  # noqa: E402
from numina_engine.engine.settings import GenerationRequest  # noqa: E402

STEPS = 2
GOALS_GIB = {"1.3B": 8.5, "14B": 75.0}          # peak allocated, issue #15
SHAPES = {"1.3B": (832, 480), "14B": (1280, 720)}
FRAMES = 81
# the 1.3B runs' settings, one per offload mode, in the order run (each: plain, then NUMINA)
CONFIGURATIONS_1_3B = [Configuration(f"1.3B offload {mode}", "bf16", "off", mode) for mode in ("none", "full")]


def request(config: str, numina: bool) -> GenerationRequest:
    width, height = SHAPES[config]
    return GenerationRequest(prompt=PROMPT, seed=1, width=width, height=height, frames=FRAMES, steps=STEPS,
                             counts=COUNTS if numina else None, numina=numina,
                             numina_overrides={"reference_step": STEPS - 1} if numina else {})


def measured(config: str, numina: bool, offload: str, model) -> tuple[dict, torch.Tensor]:
    """(the run's record, its frames uint8 [T, H, W, 3] on the CPU)."""
    run = timed_run(model, request(config, numina), cuda_graphs=True, force_modulation=numina, offload=offload,
                    keep_frames=True)
    peak = run["peak_gpu_memory_gib"]
    record = {"config": config, "size": "{}*{}".format(*SHAPES[config]), "frames": FRAMES, "steps": STEPS,
              "mode": "NUMINA" if numina else "plain", "offload": offload, "total_s": run["total_s"],
              "phases_s": run["phases_s"], "peak_allocated_gib": peak["allocated"],
              "peak_reserved_gib": peak["reserved"], "peak_allocated_by_phase_gib": peak["allocated_by_phase"],
              "cuda_graphs": run["cuda_graphs"]}
    if numina:
        record["phase2"] = run["numina"]["phase2"]
    return record, run["frames"]


def run_1_3b() -> list[dict]:
    model = random_wan("1.3B", torch.device("cuda"))
    rows, videos = [], {}
    for configuration, warmup in zip(CONFIGURATIONS_1_3B, warmup_plan(CONFIGURATIONS_1_3B)):
        offload = configuration.offload
        if warmup is not None:
            # not timed; it also puts the text encoder where an offloaded engine loads it (the CPU) and leaves
            # the DiT where a video of this mode finds it after another (bench/e2e.py place_as_between_videos)
            attention, mode = warmup
            timed_configuration_run(model, Configuration("warm-up", attention, "off", mode), request("1.3B", True),
                                    force_modulation=True)
        for numina in (False, True):
            row, videos[offload, numina] = measured("1.3B", numina, offload, model)
            rows.append(row)
    for row in rows:
        if row["offload"] == "full":
            numina = row["mode"] == "NUMINA"
            full, none = videos["full", numina], videos["none", numina]
            row["video_equals_no_offload"] = bool(torch.equal(full, none))
            row["video_max_abs_diff_vs_no_offload"] = int((full.int() - none.int()).abs().max())
            row["goal_peak_allocated_gib"] = GOALS_GIB["1.3B"]
            row["meets_goal"] = row["peak_allocated_gib"] <= GOALS_GIB["1.3B"]
    del model, videos
    return rows


def run_14b() -> list[dict]:
    model = random_wan("14B", torch.device("cuda"), text_encoder_device=torch.device("cpu"))
    try:
        row, _ = measured("14B", True, "text-encoder", model)
        row["note"] = "no warm-up at this width: times include kernel compilation"
    except torch.cuda.OutOfMemoryError as err:          # the figure is then the peak at the failure
        row = {"config": "14B", "size": "{}*{}".format(*SHAPES["14B"]), "frames": FRAMES, "steps": STEPS,
               "mode": "NUMINA", "offload": "text-encoder", "error": f"out of memory: {err}"[:500],
               "total_s": float("nan"), "phases_s": {}, "peak_allocated_by_phase_gib": {},
               "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 3),
               "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2 ** 30, 3)}
    row["goal_peak_allocated_gib"] = GOALS_GIB["14B"]
    row["meets_goal"] = "error" not in row and row["peak_allocated_gib"] <= GOALS_GIB["14B"]
    del model
    return [row]


def print_table(rows: list[dict]) -> None:
    print("| config | mode | offload | total s | text s | decode s | peak alloc GiB | peak reserved GiB | "
          "largest phase | goal | video = no offload |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
    for row in rows:
        phases = row["peak_allocated_by_phase_gib"]
        largest = max(phases, key=phases.get) if phases else "-"
        print(f"| {row['config']} {row['size']} | {row['mode']} | {row['offload']} | {row['total_s']:.1f} | "
              f"{row['phases_s'].get('text encoding', 0):.2f} | {row['phases_s'].get('decode', 0):.2f} | "
              f"{row['peak_allocated_gib']:.2f} | {row['peak_reserved_gib']:.2f} | {largest} | "
              f"{'<= %.1f: %s' % (row['goal_peak_allocated_gib'], 'met' if row['meets_goal'] else 'MISSED') if 'meets_goal' in row else '-'} | "
              f"{row.get('video_equals_no_offload', '-')} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("1.3B", "14B"), default=None, help="one model size only")
    parser.add_argument("--json", default=None, help="also write the results to this file (docs/results/...)")
    args = parser.parse_args()
    rows = []
    if args.only in (None, "1.3B"):
        rows += run_1_3b()
        gc.collect()
        torch.cuda.empty_cache()
    if args.only in (None, "14B"):
        rows += run_14b()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    print(json.dumps(result, indent=2, default=str))
    print_table(rows)
    if args.json:
        from bench.results_file import write_results
        write_results(args.json, "bench/memory_peak.py", result)
    failed = [row for row in rows if row.get("meets_goal") is False or row.get("video_equals_no_offload") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
