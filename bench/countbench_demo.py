"""Does NUMINA fix counts? Plain vs NUMINA generation on the demo model, counted exactly.

Prompts are counting-world captions sampled with BENCH_SEED, a seed the model was not trained on
(tools/train_demo_model.py uses another), so the scenes and their wording are unseen. Each prompt is
generated with several noise seeds, plain and with NUMINA (same noise, same settings; NUMINA counts
what the engine parses from the prompt, as `numina-engine run` does). Every frame of every video is
counted by colour (numina_engine.demo.counter) and scored as CountBench does: a frame scores the
fraction of nouns whose count is right, a video the mean over its frames, the benchmark the mean over
videos. Reported per noise seed, then mean and spread (sample standard deviation) over seeds.

    python bench/countbench_demo.py [--prompts 100] [--seeds 0 1 2] [--device cuda] [--out results/]

Writes results.json (every video's counts) and results.md (the table) into --out, and layout.png of
the first few NUMINA runs, so that what NUMINA planned can be looked at.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from numina_engine import Engine, GenerationRequest
from numina_engine.demo.counter import count_nouns, video_accuracy
from numina_engine.demo.world import WorldConfig, captions, sample_scenes, scene_colour_of_noun, scene_counts

BENCH_SEED = 20261125        # the training script uses seed 1


def benchmark_prompts(num_prompts: int) -> list[dict]:
    """[{prompt, target {noun: count}, colour {noun: colour name}}] for unseen scenes."""
    scenes = sample_scenes(num_prompts, seed=BENCH_SEED, config=WorldConfig())
    texts = captions(scenes, seed=BENCH_SEED)
    targets = scene_counts(scenes)
    colours = scene_colour_of_noun(scenes)
    return [{"prompt": p, "target": t, "colour": c} for p, t, c in zip(texts, targets, colours)]


def score(frames: torch.Tensor, item: dict) -> tuple[float, dict[str, list[int]]]:
    """(video accuracy, counts per noun per frame) of uint8 frames [T, H, W, 3]."""
    counts = count_nouns(frames.numpy(), item["colour"])
    return video_accuracy(counts, item["target"]), counts


def summarise(per_seed: dict[int, list[float]]) -> dict:
    means = [statistics.fmean(scores) for scores in per_seed.values()]
    return {"per_seed": {str(seed): round(m, 4) for seed, m in zip(per_seed, means)},
            "mean": round(statistics.fmean(means), 4),
            "spread": round(statistics.stdev(means), 4) if len(means) > 1 else 0.0}


def write_results(args, engine: Engine, items: list[dict], scores: dict, videos: list[dict], started: float) -> None:
    """results.json and results.md over the seeds finished so far (rewritten after each seed)."""
    summary = {mode: summarise(per_seed) for mode, per_seed in scores.items()}
    regenerated = sum(bool(v["numina"].get("regenerated")) for v in videos)
    parsed_right = sum(v["numina"].get("parsed_counts") == v["target"] for v in videos)
    payload = {
        "device": torch.cuda.get_device_name() if engine.model.device.type == "cuda" else "cpu",
        "checkpoint": str(engine.model.path), "bench_seed": BENCH_SEED, "prompts": len(items),
        "noise_seeds": list(scores["plain"]), "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "numina_regenerated_videos": regenerated, "numina_counts_parsed_right": parsed_right,
        "videos": videos,
    }
    (args.out / "results.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    lines = [f"Counting-world benchmark: {len(items)} unseen prompts x {len(scores['plain'])} noise seeds "
             f"({payload['device']}, {payload['seconds']:.0f} s)", "",
             "| | " + " | ".join(f"seed {s}" for s in scores["plain"]) + " | mean | spread (sd over seeds) |",
             "| --- |" + " ---: |" * (len(scores["plain"]) + 2)]
    for mode, label in (("plain", "plain Wan"), ("numina", "NUMINA")):
        s = summary[mode]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in s["per_seed"].values())
                     + f" | {s['mean']:.3f} | {s['spread']:.3f} |")
    lines += ["", f"NUMINA regenerated {regenerated} of {len(videos)} videos (the others already matched in "
                  f"every frame of the reference layout); prompt parsing gave the right counts in "
                  f"{parsed_right} of {len(videos)}."]
    (args.out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ckpt-dir", default=None, help="default: the embedded demo model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("countbench_demo_results"))
    parser.add_argument("--layouts", type=int, default=6, help="write layout.png of the first N NUMINA runs")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run every step eagerly")
    parser.add_argument("--given-counts", action="store_true",
                        help="give NUMINA each scene's counts (as --counts does) instead of parsing the prompt: "
                             "for machines without spaCy; tests/test_prompt_counts.py checks that parsing the "
                             "world's captions gives exactly these counts")
    args = parser.parse_args()

    engine = Engine.load(args.ckpt_dir, device=args.device, cuda_graphs=not args.no_cuda_graphs)
    items = benchmark_prompts(args.prompts)
    args.out.mkdir(parents=True, exist_ok=True)
    scores: dict[str, dict[int, list[float]]] = {"plain": {}, "numina": {}}
    videos, started = [], time.perf_counter()
    for seed in args.seeds:
        for mode in scores:
            scores[mode][seed] = []
        for number, item in enumerate(tqdm(items, desc=f"seed {seed}")):
            record = {"prompt": item["prompt"], "target": item["target"], "seed": seed}
            for mode in ("plain", "numina"):
                request = GenerationRequest(prompt=item["prompt"], seed=seed, numina=mode == "numina",
                                            counts=item["target"] if args.given_counts else None)
                result = engine.generate(request, progress=False)
                accuracy, counts = score(result.frames, item)
                scores[mode][seed].append(accuracy)
                record[mode] = {"accuracy": round(accuracy, 4), "counts": counts}
                if mode == "numina":
                    numina = result.report.get("numina", {})
                    record[mode]["parsed_counts"] = numina.get("counts_asked")
                    record[mode]["regenerated"] = numina.get("regenerated")
                    record[mode]["counts_found_per_frame"] = numina.get("counts_found_per_frame")
                    if seed == args.seeds[0] and number < args.layouts and result.layout is not None:
                        engine.save(result, args.out / f"example_{number:02d}")
            videos.append(record)

        write_results(args, engine, items, scores, videos, started)


if __name__ == "__main__":
    main()
