"""Does NUMINA fix counts? Plain vs NUMINA generation on the demo model, counted exactly.

Prompts are counting-world captions of scenes sampled with BENCH_SEED, a seed used neither in training
(tools/train_demo_model.py: seed 1) nor for choosing NUMINA's settings (bench/numina_stages.py:
VALIDATION_SEED), so scenes and wording are unseen. Each prompt is generated with several noise seeds in
every mode (same noise, same settings; NUMINA is given each scene's counts, as --counts does, and the
count phrases as the world's grammar writes them, captions.count_phrases, so that no spaCy is needed:
tests/test_prompt_counts.py checks that the parser finds exactly these counts and phrases):

    plain                 plain Wan (no NUMINA)
    numina                NUMINA as the checkpoint ships it (its mode and token scope; not run by default:
                          the demo model ships engine mode with noun scope, the engine-noun row)
    numina-noun           authors mode, token scope "noun" (the authors' rule)
    numina-phrase         authors mode, token scope "phrase"
    engine-noun / engine-phrase   engine mode, either scope
    oracle-noun / oracle-phrase   NUMINA (authors mode) with oracle layouts: the refined plan is built from the true
                          objects of the plain video of the same prompt and seed (numina_engine.demo.oracle)
                          instead of the attention maps: what NUMINA would do with a perfect layout stage

Every frame of every video is counted by colour (numina_engine.demo.counter) and scored as CountBench
does: a frame scores the fraction of nouns whose count is right, a video the mean over its frames, a
mode the mean over videos. Reported per noise seed, then mean and spread (sample sd over seeds), and the
paired per-prompt difference to plain (mean over seeds; prompts better / worse).

    python bench/countbench_demo.py --seeds 0 --out DIR        # writes DIR/results_seed0.json
    python bench/countbench_demo.py --summarise DIR            # all DIR/results_seed*.json -> table

Seeds can run in parallel processes (one --seeds each, same --out), and so can parts of a seed's prompts
(--shard I/N: the prompts whose index is I modulo N, written to results_seed<k>_shard<I>of<N>.json);
--summarise merges them into DIR/results.json and DIR/results.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_file import provenance, require_one_run  # noqa: E402
from bench.shards import parse_shard  # noqa: E402
from numina_engine import Engine, GenerationRequest  # noqa: E402
from numina_engine.demo.counter import count_world_nouns, video_accuracy  # noqa: E402
from numina_engine.demo.oracle import component_layout  # noqa: E402
from numina_engine.demo.world import WorldConfig, captions, count_phrases, sample_scenes, scene_counts  # noqa: E402
from numina_engine.engine.pipeline import numina_config_for  # noqa: E402
from numina_engine.numina.refinement import refine_layout  # noqa: E402

RUN_FIELDS = ("git_commit", "checkpoint", "numina_overrides")   # parts of one run agree on these
BENCH_SEED = 20261125        # the training script uses seed 1, bench/numina_stages.py 20261201
MODES = {
    "plain": None,
    "numina": {},
    "numina-noun": {"mode": "authors", "token_scope": "noun"},
    "numina-phrase": {"mode": "authors", "token_scope": "phrase"},
    "engine-noun": {"mode": "engine", "token_scope": "noun"},
    "engine-phrase": {"mode": "engine", "token_scope": "phrase"},
    "oracle-noun": {"mode": "authors", "token_scope": "noun"},
    "oracle-phrase": {"mode": "authors", "token_scope": "phrase"},
}


def benchmark_prompts(num_prompts: int, seed: int = BENCH_SEED) -> list[dict]:
    """[{prompt, target {noun: count}}] for scenes of `seed`."""
    scenes = sample_scenes(num_prompts, seed=seed, config=WorldConfig())
    return [{"prompt": p, "target": t} for p, t in zip(captions(scenes, seed=seed), scene_counts(scenes))]


def oracle_editor(engine: Engine, request: GenerationRequest, plain_frames: torch.Tensor):
    """edit_layout for pipeline.generate: the plain video's true objects refined to the request's counts."""
    model = engine.model
    patch = tuple(model.dit.config.patch_size[1:])
    config = numina_config_for(model, request, model.defaults.steps if request.steps is None else request.steps)
    truth = {noun: component_layout(plain_frames, noun, patch) for noun in request.counts}

    def edit(reference: dict, refined: dict) -> dict:
        return {noun: refine_layout(truth[noun].to(reference[noun].device), request.counts[noun], config)
                for noun in reference}
    return edit


def run_seed(engine: Engine, items: list[tuple[int, dict]], seed: int, modes: list[str], out: Path, examples: int,
             written=lambda videos: None, overrides_for_all: dict | None = None,
             extra_modes: dict[str, dict] | None = None) -> list[dict]:
    """Every (prompt index, prompt) in every mode with noise `seed`: one record per prompt; `written(videos)`
    after each. `overrides_for_all`: NuminaConfig fields set in every NUMINA mode (e.g. another reference layer).
    `extra_modes`: more modes, name -> NuminaConfig overrides, beside MODES."""
    table = {**MODES, **(extra_modes or {})}
    videos = []
    for number, item in tqdm(items, desc=f"seed {seed}"):
        record = {"index": number, "prompt": item["prompt"], "target": item["target"], "seed": seed}
        plain_frames = None
        for mode in ["plain"] + [m for m in modes if m != "plain"]:
            overrides = table[mode]
            request = GenerationRequest(prompt=item["prompt"], seed=seed, numina=overrides is not None,
                                        counts=item["target"] if overrides is not None else None,
                                        count_phrases=count_phrases(item["prompt"]) if overrides is not None else None,
                                        numina_overrides={**(overrides or {}), **(overrides_for_all or {})})
            edit = oracle_editor(engine, request, plain_frames) if mode.startswith("oracle") else None
            result = engine.generate(request, progress=False, edit_layout=edit)
            if mode == "plain":
                plain_frames = result.frames
            counts = count_world_nouns(result.frames, list(item["target"]))
            entry = {"accuracy": round(video_accuracy(counts, item["target"]), 4), "counts": counts}
            numina = result.report.get("numina", {})
            if numina.get("enabled"):
                entry["regenerated"] = numina.get("regenerated")
                entry["reference_counts"] = numina.get("counts_found_per_frame")
            record[mode] = entry
            if mode == "numina-phrase" and number < examples:
                engine.save(result, out / f"example_seed{seed}_{number:02d}", preview=True)
        videos.append(record)
        written(videos)
    return videos


def summarise(out: Path) -> dict:
    """Merge out/results_seed*.json into out/results.json and the table out/results.md."""
    paths = sorted(out.glob("results_seed*.json"))
    parts = [json.loads(p.read_text()) for p in paths]
    if not parts:
        raise SystemExit(f"no results_seed*.json in {out}")
    require_one_run({str(path): {field: part["meta"].get(field) for field in RUN_FIELDS}
                     for path, part in zip(paths, parts)}, remedy="summarise the parts of one run only")
    by_seed: dict[int, list[dict]] = {}
    for part in parts:                       # a seed may come in several shards (--shard)
        by_seed.setdefault(part["seed"], []).append(part)
    # prompts finished in every seed's run (a run stopped early covers fewer)
    done = set.intersection(*({v["index"] for part in group for v in part["videos"]} for group in by_seed.values()))
    videos = [v for part in parts for v in part["videos"] if v["index"] in done]
    seeds = sorted({v["seed"] for v in videos})
    modes = [m for m in MODES if all(m in v for v in videos)]
    summary = {}
    for mode in modes:
        per_seed = {s: statistics.fmean(v[mode]["accuracy"] for v in videos if v["seed"] == s) for s in seeds}
        means = list(per_seed.values())
        entry = {"per_seed": {str(s): round(m, 4) for s, m in per_seed.items()},
                 "mean": round(statistics.fmean(means), 4),
                 "spread": round(statistics.stdev(means), 4) if len(means) > 1 else 0.0}
        if mode != "plain":
            by_prompt: dict[int, list[float]] = {}
            for v in videos:
                by_prompt.setdefault(v["index"], []).append(v[mode]["accuracy"] - v["plain"]["accuracy"])
            diffs = [statistics.fmean(d) for d in by_prompt.values()]
            entry.update(paired_difference=round(statistics.fmean(diffs), 4),
                         prompts_better=sum(d > 0 for d in diffs), prompts_worse=sum(d < 0 for d in diffs),
                         regenerated=sum(bool(v[mode].get("regenerated")) for v in videos))
        summary[mode] = entry
    # engine vs authors mode, same scope: which mode counts better (decides NuminaConfig's default mode)
    mode_pairs = {}
    for scope in ("noun", "phrase"):
        a, b = f"numina-{scope}", f"engine-{scope}"
        if a in modes and b in modes:
            by_prompt = {}
            for v in videos:
                by_prompt.setdefault(v["index"], []).append(v[b]["accuracy"] - v[a]["accuracy"])
            diffs = [statistics.fmean(d) for d in by_prompt.values()]
            mode_pairs[f"{b} - {a}"] = {"paired_difference": round(statistics.fmean(diffs), 4),
                                        "prompts_better": sum(d > 0 for d in diffs),
                                        "prompts_worse": sum(d < 0 for d in diffs)}
    meta = dict(parts[0]["meta"])
    results = {"checkpoint": meta.pop("checkpoint", None), "numina_overrides": meta.pop("numina_overrides", {}),
               "bench_seed": BENCH_SEED,
               "prompts": len({v["index"] for v in videos}), "noise_seeds": seeds,
               "seconds_per_seed": {str(seed): max(p["seconds"] for p in group) for seed, group in by_seed.items()},
               "processes_per_seed": {str(seed): len(group) for seed, group in by_seed.items()},
               "summary": summary, "mode_pairs": mode_pairs, "videos": videos}
    payload = {**meta, "results": results}
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    lines = [f"Counting-world benchmark: {results['prompts']} unseen prompts x {len(seeds)} noise seeds "
             f"({payload['device']}, commit {payload['git_commit']}, {payload['date']})", "",
             "| mode | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | spread (sd) | paired diff. to plain | prompts better / worse |",
             "| --- |" + " ---: |" * (len(seeds) + 4)]
    for mode, s in summary.items():
        paired = (f"{s['paired_difference']:+.3f} | {s['prompts_better']} / {s['prompts_worse']}"
                  if mode != "plain" else "| ")
        lines.append(f"| {mode} | " + " | ".join(f"{v:.3f}" for v in s["per_seed"].values())
                     + f" | {s['mean']:.3f} | {s['spread']:.3f} | {paired} |")
    for pair, p in mode_pairs.items():
        lines.append(f"\n{pair}: paired {p['paired_difference']:+.3f}, prompts better / worse "
                     f"{p['prompts_better']} / {p['prompts_worse']}")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=[m for m in MODES if m != "numina"], choices=list(MODES))
    parser.add_argument("--ckpt-dir", default=None, help="default: the embedded demo model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("countbench_demo_results"))
    parser.add_argument("--examples", type=int, default=3,
                        help="save video, layout.png and report of the first N numina-phrase runs of each seed")
    parser.add_argument("--numina-overrides", type=json.loads, default={}, metavar="JSON",
                        help='NuminaConfig fields for every NUMINA mode, e.g. \'{"reference_layer": 4}\' (recorded)')
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                        help="run only the prompts whose index is I modulo N (processes in parallel; "
                             "--summarise merges the shards)")
    parser.add_argument("--summarise", type=Path, default=None, metavar="DIR",
                        help="only merge DIR/results_seed*.json into DIR/results.json and results.md")
    args = parser.parse_args()
    if args.summarise is not None:
        summarise(args.summarise)
        return
    if {"mode", "token_scope"} & set(args.numina_overrides):
        parser.error("--numina-overrides may not set mode or token_scope: each row's label names them")
    engine = Engine.load(args.ckpt_dir, device=args.device, cuda_graphs=False)
    shard, shards = args.shard
    items = [(i, item) for i, item in enumerate(benchmark_prompts(args.prompts)) if i % shards == shard]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = provenance("bench/countbench_demo.py", device=str(engine.model.device))
    meta["checkpoint"] = str(engine.model.path)
    meta["numina_overrides"] = args.numina_overrides
    for seed in args.seeds:
        started = time.perf_counter()

        def written(videos: list[dict], seed: int = seed, started: float = started) -> None:
            """results_seed<k>.json rewritten after every prompt: a run stopped early keeps what it did."""
            part = {"meta": meta, "seed": seed, "seconds": round(time.perf_counter() - started, 1), "videos": videos}
            path = args.out / (f"results_seed{seed}.json" if shards == 1 else
                               f"results_seed{seed}_shard{shard}of{shards}.json")
            path.with_suffix(".tmp").write_text(json.dumps(part, indent=1) + "\n", encoding="utf-8")
            path.with_suffix(".tmp").replace(path)
        run_seed(engine, items, seed, args.modes, args.out, args.examples, written, args.numina_overrides)


if __name__ == "__main__":
    main()
