"""NUMINA's layout settings on the demo model, measured offline against the counting world's truth.

For N validation prompts (bench/numina_stages.py's VALIDATION_SEED, never the benchmark's), the plain
trajectory runs once per prompt (EasyCache off, noise seed numina_stages.NOISE_SEED), probed at every
candidate (layer, step) by an extraction forward (numina_stages.plain_trajectory); what the layout stage
needs is kept (MeanShift features of the selected self-attention heads, the nouns' cross-attention maps,
both token scopes) with the final plain video's true objects (demo/oracle.component_layout). Then the
layout stage (numina/layout.py: cluster_proposals, focus_masks, assign_instances, the pieces of
build_layouts) is rebuilt for every setting from the cached maps, and scored as numina_stages scores its
stage 3 (numina_stages.instance_scores / summarise): instance recall and precision (IoU >= 0.5) and how
often the layout's count per noun and frame is the true one.

Sweep: per (step, layer) and token scope, every combination of
  bandwidth rule (meanshift_quantile values, or a fixed meanshift_bandwidth) x cross_attn_peak_ratio x
  dbscan_eps x dbscan_min_samples x semantic_overlap_tau (the authors' construction, layout_instances
  "meanshift"), and of cross_attn_peak_ratio x dbscan_eps x dbscan_min_samples for the engine rule
  layout_instances "focus_clusters" (the focus region's DBSCAN clusters are the instances).
Clusters are computed once per (step, layer, bandwidth rule), focus masks once per focus setting, and
identical label maps are scored once. The rest of NuminaConfig is the model's (numina_engine.json).

    python bench/layout_settings.py [--prompts 10] [--device cuda] [--out docs/results/layout_settings_cpu.json]
        [--layers 3,4,6] [--steps 6,8,10] [--scopes noun,phrase] [--grid full|small] [--figure I]
        [--cache FILE]   # reuse / write the cached maps (torch.save), e.g. to re-sweep without the model

Cost: the collection is one plain trajectory plus one extraction forward per probe and prompt (CPU, 2
cores: ~20 s a prompt for 32 probes); the full grid sweeps ~2,700 settings per probe and scope (CPU:
~3.5 s per prompt, probe and scope); --grid small 180.

Writes the results file (bench/results_file.py's header) with: per (step, layer, scope) the current
settings' row and, per layout_instances rule, the best settings by the choice rule (max F1 of instance
matching, ties by count exact, then recall); the best overall per rule; every row of the sweep at the
model's reference (step, layer).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.countbench_demo import benchmark_prompts  # noqa: E402
from bench.numina_stages import (NOISE_SEED, SCOPES, VALIDATION_SEED, match_instances,  # noqa: E402
                                 plain_trajectory)
from bench.results_file import provenance, write_results  # noqa: E402
from numina_engine import Engine, GenerationRequest  # noqa: E402
from numina_engine.demo.counter import count_world_nouns  # noqa: E402
from numina_engine.demo.oracle import component_layout  # noqa: E402
from numina_engine.demo.world import count_phrases  # noqa: E402
from numina_engine.engine import pipeline  # noqa: E402
from numina_engine.numina.config import NuminaConfig  # noqa: E402
from numina_engine.numina.layout import (assign_instances, cluster_proposals, focus_clusters, focus_masks,  # noqa: E402
                                         layout_features)

DEFAULT_STEPS = (4, 6, 8, 10)
INSTANCE_RULES = ("meanshift", "focus_clusters")          # NuminaConfig.layout_instances
# bandwidth rules: ("quantile", q) estimates it like the authors; ("bandwidth", b) fixes it
BANDWIDTH_RULES = (("quantile", 0.2), ("quantile", 0.1), ("quantile", 0.05), ("quantile", 0.03),
                   ("quantile", 0.02), ("bandwidth", 0.05), ("bandwidth", 0.1), ("bandwidth", 0.15),
                   ("bandwidth", 0.2), ("bandwidth", 0.3))
PEAK_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
DBSCAN_EPS = (1.0, 1.5, 2.0)
DBSCAN_MIN_SAMPLES = (1, 3, 5)
OVERLAP_TAUS = (0.1, 0.2, 0.3, 0.5, 0.7)
GRIDS = {
    "full": {"bandwidth_rules": BANDWIDTH_RULES, "peak_ratios": PEAK_RATIOS, "eps": DBSCAN_EPS,
             "min_samples": DBSCAN_MIN_SAMPLES, "taus": OVERLAP_TAUS},
    # 15x fewer settings around the shipped ones and the best of the 16-prompt CPU sweep (for N = 100)
    "small": {"bandwidth_rules": (("quantile", 0.2), ("quantile", 0.1), ("bandwidth", 0.3)),
              "peak_ratios": (0.3, 0.5, 0.6), "eps": (1.0, 1.5, 2.0), "min_samples": (3, 5), "taus": (0.2, 0.3, 0.5)},
}


def collect(engine: Engine, item: dict, probes: set) -> dict:
    """One prompt's cache: {prompt, target, nouns, grid, features {(step, layer): float64 [F, N, 5]},
    maps {(step, layer): float32 [2 * n_nouns, F, N]} (numina_stages' row order), truth {noun: int32
    [F, h, w]} of the final plain video, plain_counts {noun: [per frame]}}; tensors on the CPU."""
    run = plain_trajectory(engine, item, probes, keep_self_maps=probes)
    features = {key: layout_features(maps, run.grid[1:]).cpu() for key, maps in run.self_maps.items()}
    return {"prompt": item["prompt"], "target": item["target"], "nouns": run.nouns, "grid": run.grid,
            "features": features, "maps": run.maps,
            "truth": {n: component_layout(run.frames, n, run.patch) for n in run.nouns},
            "plain_counts": count_world_nouns(run.frames, run.nouns)}


def bandwidth_config(config: NuminaConfig, rule: tuple[str, float]) -> NuminaConfig:
    kind, value = rule
    if kind == "quantile":
        return config.with_overrides(meanshift_bandwidth=None, meanshift_quantile=value)
    return config.with_overrides(meanshift_bandwidth=value)


def current_settings(config: NuminaConfig) -> dict:
    """The swept fields' values in `config`."""
    rule = ("bandwidth", config.meanshift_bandwidth) if config.meanshift_bandwidth is not None \
        else ("quantile", config.meanshift_quantile)
    meanshift = config.layout_instances == "meanshift"
    return {"layout_instances": config.layout_instances, "bandwidth_rule": list(rule) if meanshift else None,
            "cross_attn_peak_ratio": config.cross_attn_peak_ratio, "dbscan_eps": config.dbscan_eps,
            "dbscan_min_samples": config.dbscan_min_samples,
            "semantic_overlap_tau": config.semantic_overlap_tau if meanshift else None}


class Scorer:
    """Instance scores of label maps against the truth, each distinct (prompt, noun, frame, labels)
    matched once (numina_stages.match_instances)."""

    def __init__(self):
        self._seen: dict = {}

    def frame(self, key: tuple, labels: torch.Tensor, truth: torch.Tensor) -> tuple[int, int, int]:
        memo = (key, labels.numpy().tobytes())
        if memo not in self._seen:
            self._seen[memo] = match_instances(labels, truth)
        return self._seen[memo]


def totals(scores: list[tuple[int, int, int]]) -> dict:
    """numina_stages.summarise's instance figures from per (noun, frame) (matched, found, true)."""
    matched = sum(s[0] for s in scores)
    found = sum(s[1] for s in scores)
    true = sum(s[2] for s in scores)
    recall, precision = matched / max(1, true), matched / max(1, found)
    return {"recall": round(recall, 4), "precision": round(precision, 4),
            "f1": round(2 * recall * precision / max(1e-12, recall + precision), 4),
            "count_exact": round(sum(s[1] == s[2] for s in scores) / max(1, len(scores)), 4),
            "found": found, "true": true}


def _score(caches: list[dict], labels_of, scorer: Scorer) -> list[tuple[int, int, int]]:
    """(matched, found, true) per prompt, noun and frame of the layouts labels_of(index) int
    [n_nouns, F, h, w] against each cache's truth."""
    scores = []
    for index, cache in enumerate(caches):
        labels = labels_of(index).cpu()
        for row, noun in enumerate(cache["nouns"]):
            for f in range(labels.shape[1]):
                scores.append(scorer.frame((index, noun, f), labels[row, f], cache["truth"][noun][f]))
    return scores


def sweep_probe(caches: list[dict], key: tuple[int, int], scope: str, config: NuminaConfig, scorer: Scorer,
                grid: dict) -> list[dict]:
    """Every setting of `grid` ({bandwidth_rules, peak_ratios, eps, min_samples, taus}) at probe `key`
    = (step, layer) for one token scope: [{settings..., recall, precision, f1, count_exact, found, true}].
    layout_instances "meanshift" rows: every combination; "focus_clusters" rows (no MeanShift, no tau):
    every focus setting."""
    s = SCOPES.index(scope)
    per_prompt = []
    for index, cache in enumerate(caches):
        n = len(cache["nouns"])
        per_prompt.append((index, cache, cache["maps"][key][s * n:(s + 1) * n]))
    rows = []
    focus_settings = list(itertools.product(grid["peak_ratios"], grid["eps"], grid["min_samples"]))
    focus_cache: dict = {}
    for rule in grid["bandwidth_rules"]:
        rule_config = bandwidth_config(config, rule)
        clusters = [cluster_proposals(cache["features"][key], rule_config) for _, cache, _ in per_prompt]
        for ratio, eps, min_samples in focus_settings:
            focus_config = config.with_overrides(cross_attn_peak_ratio=ratio, dbscan_eps=eps,
                                                 dbscan_min_samples=min_samples)
            focus = focus_cache.get((ratio, eps, min_samples))
            if focus is None:
                focus = [focus_masks(maps, tuple(cache["grid"][1:]), focus_config).flatten(-2)
                         for _, cache, maps in per_prompt]
                focus_cache[(ratio, eps, min_samples)] = focus
            for tau in grid["taus"]:
                scores = _score(caches, lambda i: assign_instances(clusters[i], focus[i], tau).reshape(
                    len(caches[i]["nouns"]), -1, *caches[i]["grid"][1:]).to(torch.int32), scorer)
                rows.append({"layout_instances": "meanshift", "bandwidth_rule": list(rule),
                             "cross_attn_peak_ratio": ratio, "dbscan_eps": eps, "dbscan_min_samples": min_samples,
                             "semantic_overlap_tau": tau, **totals(scores)})
    for ratio, eps, min_samples in focus_settings:
        focus_config = config.with_overrides(cross_attn_peak_ratio=ratio, dbscan_eps=eps,
                                             dbscan_min_samples=min_samples)
        scores = _score(caches, lambda i: focus_clusters(per_prompt[i][2], tuple(caches[i]["grid"][1:]), focus_config)
                        .reshape(len(caches[i]["nouns"]), -1, *caches[i]["grid"][1:]).to(torch.int32), scorer)
        rows.append({"layout_instances": "focus_clusters", "bandwidth_rule": None, "cross_attn_peak_ratio": ratio,
                     "dbscan_eps": eps, "dbscan_min_samples": min_samples, "semantic_overlap_tau": None,
                     **totals(scores)})
    return rows


def best_row(rows: list[dict]) -> dict:
    """The choice rule: max F1 of instance matching, ties broken by count exact, then recall."""
    return max(rows, key=lambda r: (r["f1"], r["count_exact"], r["recall"]))


def settings_of(row: dict) -> dict:
    return {k: row[k] for k in ("layout_instances", "bandwidth_rule", "cross_attn_peak_ratio", "dbscan_eps", "dbscan_min_samples",
                                "semantic_overlap_tau")}


def settings_config(config: NuminaConfig, row: dict) -> NuminaConfig:
    """`config` with a sweep row's settings."""
    if row["layout_instances"] == "meanshift":
        config = bandwidth_config(config, tuple(row["bandwidth_rule"])).with_overrides(
            semantic_overlap_tau=row["semantic_overlap_tau"])
    return config.with_overrides(layout_instances=row["layout_instances"],
                                 cross_attn_peak_ratio=row["cross_attn_peak_ratio"], dbscan_eps=row["dbscan_eps"],
                                 dbscan_min_samples=row["dbscan_min_samples"])


def row_for(rows: list[dict], settings: dict) -> dict | None:
    return next((r for r in rows if settings_of(r) == settings), None)


PALETTE = ((40, 40, 40), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))
PANEL_SCALE = 8
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "layout_settings_diagnosis.png"


def _panel(labels: torch.Tensor) -> "Image.Image":
    """An RGB picture of int labels [h, w] (0 dark grey, k > 0 the palette's colour k mod 11 + 1)."""
    from PIL import Image

    colours = torch.tensor(PALETTE, dtype=torch.uint8)
    index = torch.where(labels > 0, (labels.long() - 1) % (len(PALETTE) - 1) + 1, 0)
    picture = Image.fromarray(colours[index].numpy())
    return picture.resize((labels.shape[1] * PANEL_SCALE, labels.shape[0] * PANEL_SCALE), Image.NEAREST)


def diagnosis_figure(cache: dict, key: tuple[int, int], configs: dict, path: Path, frame: int = 0) -> Path:
    """A png of one prompt's layout stage at probe `key` = (step, layer), noun scope, one frame: per noun a
    row of the final video's true objects, the noun map, then per named config of `configs` its
    MeanShift clusters (meanshift configs only), focus region and instances."""
    from PIL import Image, ImageDraw

    h, w = cache["grid"][1:]
    n = len(cache["nouns"])
    maps = cache["maps"][key][:n]
    rows = []
    for row, noun in enumerate(cache["nouns"]):
        heat = maps[row, frame] / maps[row, frame].max()
        panels = [("truth", cache["truth"][noun][frame]), ("noun map", (heat * 10).round().clamp(0, 10).reshape(h, w))]
        for name, config in configs.items():
            focus = focus_masks(maps[row:row + 1], (h, w), config)[0, frame]
            if config.layout_instances == "meanshift":
                clusters = cluster_proposals(cache["features"][key][frame:frame + 1], config)[0]
                labels = assign_instances(clusters[None], focus.flatten()[None, None], config.semantic_overlap_tau)[0, 0]
                panels.append((f"{name}: clusters", clusters.reshape(h, w) + 1))
            else:
                labels = focus_clusters(maps[row:row + 1, frame:frame + 1], (h, w), config)[0, 0]
            panels += [(f"{name}: focus", focus.long()), (f"{name}: instances", labels.reshape(h, w))]
        rows.append((noun, panels))
    size, gap, title = w * PANEL_SCALE, 6, 14
    columns = max(len(p) for _, p in rows)
    figure = Image.new("RGB", (columns * (size + gap) + 70, len(rows) * (size + title + gap) + 20), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    draw.text((4, 4), f"{cache['prompt']}  (step {key[0]}, layer {key[1]}, frame {frame})", fill=(0, 0, 0))
    for r, (noun, panels) in enumerate(rows):
        y = 20 + r * (size + title + gap)
        draw.text((4, y + title + size // 2), noun, fill=(0, 0, 0))
        for c, (name, labels) in enumerate(panels):
            x = 70 + c * (size + gap)
            draw.text((x, y), name, fill=(0, 0, 0))
            picture = _panel(labels) if name != "noun map" else _heat(labels)
            figure.paste(picture, (x, y + title))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
    return path


def _heat(levels: torch.Tensor) -> "Image.Image":
    """A grey-scale picture of levels [h, w] in 0..10."""
    from PIL import Image

    grey = (levels * 25.5).to(torch.uint8).numpy()
    picture = Image.fromarray(grey).convert("RGB")
    return picture.resize((levels.shape[1] * PANEL_SCALE, levels.shape[0] * PANEL_SCALE), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--ckpt-dir", default=None, help="default: the embedded demo model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--layers", default=None, help="comma-separated candidate layers (default: all)")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="candidate steps")
    parser.add_argument("--grid", choices=list(GRIDS), default="full", help="which settings to sweep")
    parser.add_argument("--scopes", default=",".join(SCOPES), help="token scopes to sweep")
    parser.add_argument("--cache", type=Path, default=None, help="read the cached maps from FILE if it exists, "
                        "else write them there")
    parser.add_argument("--out", type=Path, default=Path("docs/results/layout_settings_cpu.json"))
    parser.add_argument("--figure", type=int, default=None, metavar="I",
                        help="also draw prompt I's layout stage at the reference probe (current settings and, per "
                             "layout_instances rule, the best there) to docs/layout_settings_diagnosis.png")
    args = parser.parse_args()
    engine = Engine.load(args.ckpt_dir, device=args.device, cuda_graphs=False)
    header = provenance("bench/layout_settings.py", device=str(engine.model.device))
    items = benchmark_prompts(args.prompts, seed=VALIDATION_SEED)
    config = pipeline.prepare(engine.model, GenerationRequest(
        prompt=items[0]["prompt"], counts=items[0]["target"], count_phrases=count_phrases(items[0]["prompt"]))).config
    layers = [int(x) for x in args.layers.split(",")] if args.layers else list(range(engine.model.dit.config.num_layers))
    steps = [int(x) for x in args.steps.split(",")]
    probes = {(step, layer) for step in steps for layer in layers}
    scopes = args.scopes.split(",")
    if not set(scopes) <= set(SCOPES):
        parser.error(f"--scopes: each of {list(SCOPES)}, got {args.scopes!r}")
    started = time.perf_counter()
    if args.cache is not None and args.cache.exists():
        caches = torch.load(args.cache)
        if len(caches) < len(items):
            raise SystemExit(f"{args.cache} holds {len(caches)} prompts, fewer than --prompts {len(items)}")
        caches = caches[:len(items)]
        if [c["prompt"] for c in caches] != [item["prompt"] for item in items]:
            raise SystemExit(f"{args.cache} holds other prompts than VALIDATION_SEED's first {len(items)}")
        missing = sorted(probes - set(caches[0]["maps"]))
        if missing:
            raise SystemExit(f"{args.cache} lacks the (step, layer) probes {missing}")
    else:
        with torch.inference_mode():
            caches = [collect(engine, item, probes) for item in tqdm(items, desc="prompts")]
        if args.cache is not None:
            torch.save(caches, args.cache)
    collect_s = time.perf_counter() - started
    grid = GRIDS[args.grid]
    current = current_settings(config)
    meanshift = current["layout_instances"] == "meanshift"    # focus_clusters has no bandwidth or tau
    if ((meanshift and (tuple(current["bandwidth_rule"]) not in grid["bandwidth_rules"]
                        or current["semantic_overlap_tau"] not in grid["taus"]))
            or current["cross_attn_peak_ratio"] not in grid["peak_ratios"] or current["dbscan_eps"] not in grid["eps"]
            or current["dbscan_min_samples"] not in grid["min_samples"]):
        raise SystemExit(f"the model's settings {current} are not in --grid {args.grid}: nothing to compare with")
    reference = (config.reference_step, config.reference_layer)
    scorer = Scorer()
    per_probe, reference_rows = [], {}
    started = time.perf_counter()
    for key in tqdm(sorted(probes), desc="probes"):
        for scope in scopes:
            rows = sweep_probe(caches, key, scope, config, scorer, grid)
            per_probe.append({"step": key[0], "layer": key[1], "scope": scope, "current": row_for(rows, current),
                              "best": {rule: best_row([r for r in rows if r["layout_instances"] == rule])
                                       for rule in INSTANCE_RULES}})
            if key == reference:
                reference_rows[scope] = rows
    sweep_s = time.perf_counter() - started
    best = {}
    for rule in INSTANCE_RULES:
        print(f"best settings by the choice rule, layout_instances {rule}:")
        ranked = sorted(per_probe, key=lambda e: -e["best"][rule]["f1"])
        for entry in ranked[:5]:
            b, c = entry["best"][rule], entry["current"]
            print(f"  step {entry['step']:2d} layer {entry['layer']} {entry['scope']:6s} f1 {b['f1']:.3f} "
                  f"(recall {b['recall']:.3f} precision {b['precision']:.3f} count exact {b['count_exact']:.3f}) "
                  f"{settings_of(b)}; current settings there: f1 {c['f1']:.3f}")
        best[rule] = {k: ranked[0][k] for k in ("step", "layer", "scope")} | {"row": ranked[0]["best"][rule]}
    for scope, rows in reference_rows.items():
        c = row_for(rows, current)
        print(f"current settings at the reference (step {reference[0]}, layer {reference[1]}), {scope}: "
              f"f1 {c['f1']:.3f} recall {c['recall']:.3f} precision {c['precision']:.3f} "
              f"count exact {c['count_exact']:.3f}")
    if args.figure is not None:
        there = next(e for e in per_probe if (e["step"], e["layer"]) == reference and e["scope"] == "noun")
        configs = {"current": config, **{f"best {rule}": settings_config(config, there["best"][rule])
                                         for rule in INSTANCE_RULES}}
        print("drew", diagnosis_figure(caches[args.figure], reference, configs, FIGURE))
    results = {
        "validation_seed": VALIDATION_SEED, "noise_seed": NOISE_SEED, "prompts": len(caches),
        "prompt_texts": [c["prompt"] for c in caches],
        "reference_step": config.reference_step, "reference_layer": config.reference_layer, "mode": config.mode,
        "choice_rule": "max F1 of instance matching (IoU >= 0.5) against the final plain video's objects, "
                       "ties by count exact, then recall",
        "current_settings": current,
        "grid_name": args.grid, "grid": {k: [list(v) if isinstance(v, tuple) else v for v in vals] for k, vals in grid.items()},
        "best": best, "per_probe": per_probe, "reference_probe_rows": reference_rows,
        "collect_seconds": round(collect_s, 1), "sweep_seconds": round(sweep_s, 1)}
    write_results(args.out, "bench/layout_settings.py", results, header=header)
    print(f"wrote {args.out} (collect {collect_s:.0f} s, sweep {sweep_s:.0f} s)")


if __name__ == "__main__":
    main()
