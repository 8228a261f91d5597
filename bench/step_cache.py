"""Step caching beyond phase 1 on the demo model: counting accuracy and PSNR for --cache-steps off/plain/phase2/all.

The prompts are bench/countbench_demo.py's unseen captions (same BENCH_SEED, same noise seeds, NUMINA given
each scene's counts and count phrases, as the checkpoint ships it). Each prompt and seed is generated four
ways: plain generation and NUMINA, each with the cache off and on (EasyCache's rule, the checkpoint's
tau and warm-up, phase 1 as NuminaConfig.easycache_enabled has it in every row). The four settings are
made of these runs: a setting caches plain generation ("plain", "all") and/or NUMINA's phase 2
("phase2", "all"); a run a setting does not cover is the uncached run (the cache is off for it: the same
computation, tests/test_step_cache.py checks which runs each setting caches), so it is not generated twice.

Per setting: frame-wise counting accuracy of the plain and the NUMINA videos (the world's exact counter,
CountBench's definition, as bench/countbench_demo.py scores), PSNR of each video against the uncached one
of the same prompt, seed and kind (over all its uint8 pixels; an identical video counts as identical,
not in the mean), steps reused, and wall time of the denoising (plain) and of phase 2 (NUMINA).

    python bench/step_cache.py --prompts 4 --device cpu --json docs/results/step_cache_cpu.json     # minutes
    python bench/step_cache.py --prompts 100 --device cuda --json docs/results/step_cache_h200.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.countbench_demo import BENCH_SEED, benchmark_prompts  # noqa: E402
from bench.results_file import provenance, write_results  # noqa: E402
from numina_engine import Engine, GenerationRequest  # noqa: E402
from numina_engine.demo.counter import count_world_nouns, video_accuracy  # noqa: E402
from numina_engine.demo.world import count_phrases  # noqa: E402
from numina_engine.engine.easycache import CACHE_STEPS, caches  # noqa: E402
from numina_engine.engine.pipeline import step_cache_for  # noqa: E402

KINDS = {"plain": ("plain", "denoising", "denoising"), "numina": ("phase2", "phase 2", "phase 2")}
# kind -> (the part of the run --cache-steps names, its report.json step_cache entry, its timed phase)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of uint8 videos [T, H, W, 3] over all their pixels, dB; inf when they are equal."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def request_for(item: dict, seed: int, kind: str, cached: bool) -> GenerationRequest:
    numina = kind == "numina"
    return GenerationRequest(prompt=item["prompt"], seed=seed, numina=numina,
                             counts=item["target"] if numina else None,
                             count_phrases=count_phrases(item["prompt"]) if numina else None,
                             cache_steps=KINDS[kind][0] if cached else "off")


def run_item(engine: Engine, item: dict, seed: int) -> dict:
    """Both kinds, cache off and on, for one prompt and seed: accuracy, PSNR, steps and seconds."""
    record = {"prompt": item["prompt"], "target": item["target"], "seed": seed}
    for kind, (_, cache_entry, phase) in KINDS.items():
        frames = {}
        for cached in (False, True):
            start = time.perf_counter()
            result = engine.generate(request_for(item, seed, kind, cached), progress=False)
            seconds = time.perf_counter() - start
            frames[cached] = result.frames
            counts = count_world_nouns(result.frames, list(item["target"]))
            entry = result.report["step_cache"][cache_entry]
            run = {"accuracy": round(video_accuracy(counts, item["target"]), 4), "counts": counts,
                   "steps_computed": entry["steps_computed"], "steps_reused": entry["steps_reused"],
                   "phase_s": round(result.timings_s[phase], 4), "total_s": round(seconds, 4)}
            if kind == "numina":
                run["phase2"] = result.report["numina"]["phase2"]
                run["phase1_steps_reused"] = result.report["step_cache"]["phase 1"]["steps_reused"]
            if cached:
                psnr = psnr_db(frames[True], frames[False])
                run["psnr_db"] = None if math.isinf(psnr) else round(psnr, 3)      # None: identical
            record.setdefault(kind, {})["cached" if cached else "off"] = run
    return record


def psnr_summary(values: list[float | None]) -> dict:
    changed = [v for v in values if v is not None]
    return {"mean_over_changed": round(statistics.fmean(changed), 3) if changed else None,
            "min": round(min(changed), 3) if changed else None,
            "changed_videos": len(changed), "identical_videos": len(values) - len(changed)}


def summarise(records: list[dict]) -> dict:
    """Per --cache-steps setting, per kind: accuracy, paired difference to off, PSNR, steps, seconds."""
    settings = {}
    for setting in CACHE_STEPS:
        row = {}
        for kind, (part, _, phase) in KINDS.items():
            side = "cached" if caches(setting, part) else "off"
            runs = [record[kind][side] for record in records]
            off = [record[kind]["off"] for record in records]
            row[kind] = {
                "cached": side == "cached",
                "accuracy": round(statistics.fmean(r["accuracy"] for r in runs), 4),
                "accuracy_minus_off": round(statistics.fmean(r["accuracy"] - o["accuracy"]
                                                             for r, o in zip(runs, off)), 4),
                "psnr_db_to_off": psnr_summary([r["psnr_db"] for r in runs] if side == "cached"
                                               else [None] * len(runs)),
                "steps_reused_mean": round(statistics.fmean(r["steps_reused"] for r in runs), 3),
                "steps_computed_mean": round(statistics.fmean(r["steps_computed"] for r in runs), 3),
                f"{phase.replace(' ', '')}_s_mean": round(statistics.fmean(r["phase_s"] for r in runs), 4),
                "total_s_mean": round(statistics.fmean(r["total_s"] for r in runs), 4),
            }
        settings[setting] = row
    return settings


def table(settings: dict) -> str:
    lines = ["| --cache-steps | plain accuracy | plain PSNR to off (mean / min) | plain steps reused | "
             "NUMINA accuracy | NUMINA PSNR to off (mean / min) | phase-2 steps reused |",
             "| --- |" + " ---: |" * 6]
    for setting, row in settings.items():
        cells = []
        for kind in KINDS:
            r = row[kind]
            psnr = r["psnr_db_to_off"]
            psnr_text = ("identical" if psnr["changed_videos"] == 0 else
                         f"{psnr['mean_over_changed']:.1f} / {psnr['min']:.1f} dB")
            cells += [f"{r['accuracy']:.3f} ({r['accuracy_minus_off']:+.3f})", psnr_text,
                      f"{r['steps_reused_mean']:.1f}"]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--ckpt-dir", default=None, help="default: the embedded demo model")
    parser.add_argument("--json", default=None, help="write the results (bench/results_file.py) to this file")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the steps from CUDA graphs (default off, as bench/countbench_demo.py runs the "
                             "demo model: each video would capture its own graphs)")
    args = parser.parse_args()
    engine = Engine.load(args.ckpt_dir, device=args.device, cuda_graphs=args.cuda_graphs)
    header = provenance("bench/step_cache.py", device=str(engine.model.device))
    items = benchmark_prompts(args.prompts)
    cache = step_cache_for(engine.model, request_for(items[0], args.seeds[0], "plain", True), None, "plain")
    started = time.perf_counter()

    def results_of(records: list[dict]) -> dict:
        return {"checkpoint": str(engine.model.path), "bench_seed": BENCH_SEED,
                "prompts": len({r["index"] for r in records}), "prompts_asked": len(items),
                "noise_seeds": sorted({r["seed"] for r in records}), "steps": engine.model.defaults.steps,
                "cuda_graphs": args.cuda_graphs, "easycache_tau": cache.tau, "easycache_warmup": cache.warmup,
                "seconds": round(time.perf_counter() - started, 1),
                "note": ("each prompt and seed generated as plain and NUMINA, cache off and on; a setting's row "
                         "takes the cached run of each kind it covers and the uncached one otherwise; PSNR "
                         "against the uncached video of the same prompt, seed and kind"),
                "settings": summarise(records), "videos": records}

    records = []
    for seed in args.seeds:
        for number, item in enumerate(tqdm(items, desc=f"seed {seed}")):
            records.append({"index": number, **run_item(engine, item, seed)})
            if args.json:             # rewritten after every prompt: a run stopped early keeps what it did
                write_results(args.json, "bench/step_cache.py", results_of(records), header=header)
    print(table(results_of(records)["settings"]))


if __name__ == "__main__":
    main()
