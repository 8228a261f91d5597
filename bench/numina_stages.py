"""NUMINA stage by stage on the demo model, each stage against the counting world's ground truth.

Prompts are captions of unseen scenes (VALIDATION_SEED: neither the training seed nor the benchmark's),
so the reference layer and step can be chosen here from data without touching the benchmark's prompts.

  1. plain counts: how plain generation miscounts, by target count (exact / too few / too many, per
     noun and frame), and how often a video's count changes across its frames;
  2. localisation: ROC-AUC of each noun's cross-attention map (mean over its tokens and the heads) against
     the noun's true object mask at token resolution in the final plain video, per DiT layer and
     denoising step, for the noun's own tokens ("noun" scope) and its count phrase ("phrase");
  3. instances: the layout NUMINA builds at the reference (layer, step) vs the true objects of the
     phase-1 preview (x0 estimate of the step before the reference step, as layout.png shows it) and of
     the final plain video: recall and
     precision of instances matched at IoU >= 0.5, and how often the layout's count is right;
  4. controllability: with oracle layouts (the plain video's true objects), remove one instance or add
     one (numina/refinement.py) and regenerate: success = the final video has the intended count in at
     least 3 of its frames; per token scope.
  (5. NUMINA with oracle layouts vs as shipped vs plain is the `oracle-*` rows of bench/countbench_demo.py.)

The trajectory of stages 1-3 is the plain one (EasyCache off), probed by extraction forwards (run only up
to the probed layer) at the probed steps; NUMINA's phase 1 follows it up to EasyCache's reuse.

    python bench/numina_stages.py [--prompts 100] [--device cuda] [--out DIR]

Writes DIR/stages.json (header: device, date, commit) after every prompt (a run stopped by a time limit
keeps the prompts it finished: results.prompts of results.prompts_asked) and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.countbench_demo import benchmark_prompts  # noqa: E402
from bench.results_file import provenance, require_one_run  # noqa: E402
from bench.shards import parse_shard  # noqa: E402
from numina_engine import Engine, GenerationRequest  # noqa: E402
from numina_engine.demo.counter import count_world_nouns  # noqa: E402
from numina_engine.demo.world import count_phrases  # noqa: E402
from numina_engine.demo.oracle import component_layout, noun_pixel_masks, token_masks  # noqa: E402
from numina_engine.engine import pipeline  # noqa: E402
from numina_engine.engine.extraction import Extraction  # noqa: E402
from numina_engine.engine.forward_state import ForwardState  # noqa: E402
from numina_engine.numina.layout import build_layouts, count_instances  # noqa: E402
from numina_engine.numina.refinement import refine_layout  # noqa: E402

VALIDATION_SEED = 20261201
NOISE_SEED = 0
PROBED_STEPS = (2, 4, 6, 8, 10, 12, 14)
MATCH_IOU = 0.5
SUCCESS_FRAMES = 3


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """Area under the ROC curve of `scores` [N] for the bool labels `positive` [N] (Mann-Whitney, ties
    halved); None when one class is empty."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return float(greater + 0.5 * ties)


def match_instances(found: torch.Tensor, truth: torch.Tensor) -> tuple[int, int, int]:
    """(matched, found instances, true instances) of two label maps [h, w] (0 = background), matched
    greedily by IoU >= MATCH_IOU (highest IoU first; ties by higher found label, then true label)."""
    found_ids, found_index = found.flatten().unique(return_inverse=True)
    true_ids, true_index = truth.flatten().unique(return_inverse=True)
    # confusion [distinct found values, distinct true values] of pixel counts, background included
    confusion = torch.bincount(found_index * len(true_ids) + true_index,
                               minlength=len(found_ids) * len(true_ids)).reshape(len(found_ids), len(true_ids))
    confusion = confusion[found_ids > 0][:, true_ids > 0].to(torch.float64)
    a_ids, b_ids = found_ids[found_ids > 0].tolist(), true_ids[true_ids > 0].tolist()
    # an instance's area: all its pixels, background of the other map included
    area_a = torch.bincount(found_index, minlength=len(found_ids))[found_ids > 0].to(torch.float64)
    area_b = torch.bincount(true_index, minlength=len(true_ids))[true_ids > 0].to(torch.float64)
    union = area_a[:, None] + area_b[None, :] - confusion
    iou = confusion / union.clamp_min(1.0)
    pairs = [(iou[i, j].item(), a_ids[i], b_ids[j]) for i, j in (iou >= MATCH_IOU).nonzero().tolist()]
    used_a, used_b = set(), set()
    for _, a, b in sorted(pairs, reverse=True):
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
    return len(used_a), len(a_ids), len(b_ids)


def scope_tables(model, request: GenerationRequest, settings, config, counts) -> dict[str, torch.Tensor]:
    """{scope: int32 [n_nouns, T] token table} for the noun and phrase scopes."""
    tables = {}
    for scope in ("noun", "phrase"):
        _, positions = pipeline.counted_nouns(model, request, settings.prompt, scope, config.token_match)
        tables[scope] = pipeline.noun_token_table({n: positions[n] for n in counts}, model.device)
    return tables


@dataclass
class PlainTrajectory:
    """One prompt's plain (EasyCache-off) trajectory, probed by extraction forwards.

    `maps`: {(step, layer): noun maps float32 [2 * n_nouns, F, N] on the CPU}, rows the noun scope's
    nouns then the phrase scope's (SCOPES order); `self_maps`: {(step, layer): float32 [F, N, N]} for
    the probes asked to keep them (on the model's device); `frames` / `preview_frames`: uint8 [F_px, H, W, 3] of the final video
    and of the x0 estimate of the step before the reference step; `grid` (f, h, w) of the token grid.
    """
    nouns: list[str]
    config: object
    grid: tuple[int, int, int]
    patch: tuple[int, int]
    maps: dict
    self_maps: dict
    frames: torch.Tensor
    preview_frames: torch.Tensor


SCOPES = ("noun", "phrase")


def plain_trajectory(engine: Engine, item: dict, probes: set, keep_self_maps: set) -> PlainTrajectory:
    """Run `item`'s plain trajectory (NOISE_SEED), probing every (step, layer) of `probes` with an
    extraction forward (run only up to the layer); self maps kept for the probes in `keep_self_maps`."""
    model = engine.model
    request = GenerationRequest(prompt=item["prompt"], seed=NOISE_SEED, counts=item["target"],
                                count_phrases=count_phrases(item["prompt"]))
    prepared = pipeline.prepare(model, request)
    settings, config, counts = prepared.settings, prepared.config, prepared.counts
    tables = scope_tables(model, request, settings, config, counts)
    both = torch.cat([tables["noun"], tables["phrase"]]) if tables["noun"].shape[1] == tables["phrase"].shape[1] \
        else _stack_padded(tables["noun"], tables["phrase"])
    context = pipeline.encode_prompts(model, settings)
    latents = pipeline.seeded_noise(settings, model.device)
    scheduler = pipeline.FlowUniPCScheduler(settings.steps, shift=settings.shift, device=model.device,
                                            sigma_grid=config.sigma_grid)
    grid = model.dit.token_grid(latents.shape)
    maps, self_maps, preview = {}, {}, None
    for index in range(settings.steps):
        timestep = pipeline.timestep_at(scheduler, index, model.device)
        for layer in sorted(layer for step, layer in probes if step == index):
            extraction = Extraction(layer=layer, grid=grid, noun_tokens=both, config=config)
            model.dit(latents.to(model.dtype).unsqueeze(0), timestep, context[:1],
                      state=ForwardState(extraction=extraction, stop_after_layer=layer))
            maps[(index, layer)] = extraction.noun_maps.float().cpu()     # [2n, F, N]
            if (index, layer) in keep_self_maps:
                self_maps[(index, layer)] = extraction.self_maps.float()
        cond, uncond = pipeline.flow_predictions(model, latents, timestep, context)
        velocity = pipeline.guide(cond, uncond, settings.guide_scale)
        if index == config.reference_step - 1:       # the x0 estimate layout.png shows (pipeline.reference_pass)
            preview = latents - scheduler.sigmas[index].to(model.device) * velocity
        latents = scheduler.step(velocity, latents, index)
    frames = model.vae.decode(latents.unsqueeze(0))[0].cpu()
    preview_frames = model.vae.decode(preview.unsqueeze(0))[0].cpu() if preview is not None else None
    return PlainTrajectory(nouns=list(counts), config=config, grid=tuple(grid),
                           patch=tuple(model.dit.config.patch_size[1:]), maps=maps, self_maps=self_maps,
                           frames=frames, preview_frames=preview_frames)


def instance_scores(labels: torch.Tensor, truth: dict, nouns: list[str]) -> dict[str, int]:
    """Layout labels int [n_nouns, F, h, w] (rows in `nouns` order) against true layouts {noun: [F, h, w]}:
    {matched, found, true, count_exact, frames} summed over nouns and frames (see summarise)."""
    matched = found = true = exact = frames_seen = 0
    for row, noun in enumerate(nouns):
        for f in range(labels.shape[1]):
            m, a, b = match_instances(labels[row, f].cpu(), truth[noun][f])
            matched, found, true = matched + m, found + a, true + b
            exact += int(a == b)
            frames_seen += 1
    return {"matched": matched, "found": found, "true": true, "count_exact": exact, "frames": frames_seen}


def probe_prompt(engine: Engine, item: dict) -> dict:
    """Stages 1-3 for one prompt: the plain trajectory, probed at PROBED_STEPS x every layer."""
    config = pipeline.prepare(engine.model, GenerationRequest(
        prompt=item["prompt"], counts=item["target"], count_phrases=count_phrases(item["prompt"]))).config
    layers = engine.model.dit.config.num_layers
    reference = (config.reference_step, config.reference_layer)
    probes = {(step, layer) for step in (*PROBED_STEPS, config.reference_step) for layer in range(layers)}
    run = plain_trajectory(engine, item, probes, keep_self_maps={reference})
    nouns, frames, grid, patch = run.nouns, run.frames, run.grid, run.patch
    truth = {n: component_layout(frames, n, patch) for n in nouns}
    preview_truth = {n: component_layout(run.preview_frames, n, patch) for n in nouns}

    # 2. localisation
    auc: dict[str, list] = {}
    for (step, layer), maps in run.maps.items():
        for s, scope in enumerate(SCOPES):
            for row, noun in enumerate(nouns):
                mask = token_masks(noun_pixel_masks(frames, noun), patch) >= 0.5            # [F, h, w]
                for f in range(grid[0]):
                    value = roc_auc(maps[s * len(nouns) + row, f], mask[f].flatten())
                    if value is not None:
                        auc.setdefault(f"{scope}|{step}|{layer}", []).append(value)
    # 3. instances: the layout at the reference (layer, step), per scope
    instances = {}
    for s, scope in enumerate(SCOPES):
        rows = slice(s * len(nouns), (s + 1) * len(nouns))
        labels = build_layouts(run.self_maps[reference], run.maps[reference][rows], grid[1:], run.config)
        for against, layouts in (("final", truth), ("preview", preview_truth)):
            instances[f"{scope}|{against}"] = instance_scores(labels, layouts, nouns)
    plain_counts = count_world_nouns(frames, nouns)
    return {"prompt": item["prompt"], "target": item["target"], "plain_counts": plain_counts,
            "auc": auc, "instances": instances, "frames": frames}


def _stack_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    width = max(a.shape[1], b.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1)  # noqa: E731
    return torch.cat([pad(a), pad(b)])


def controllability(engine: Engine, item: dict, frames: torch.Tensor, plain_counts: dict) -> list[dict]:
    """Stage 4 for the prompt's first noun: remove one / add one with oracle layouts, per scope."""
    model = engine.model
    noun = next(iter(item["target"]))
    patch = tuple(model.dit.config.patch_size[1:])
    truth = {n: component_layout(frames, n, patch) for n in item["target"]}
    have = int(statistics.median(plain_counts[noun]))
    trials = []
    for edit_name, wanted in (("remove", have - 1), ("add", have + 1)):
        if wanted < 1 or wanted > 6 or have < 1:
            continue
        for scope in ("noun", "phrase"):
            counts = {**item["target"], noun: wanted}
            request = GenerationRequest(prompt=item["prompt"], seed=NOISE_SEED, counts=counts,
                                        count_phrases=count_phrases(item["prompt"]),
                                        numina_overrides={"token_scope": scope})
            config = pipeline.numina_config_for(model, request, model.defaults.steps)
            planned = {n: (refine_layout(truth[n], wanted, config) if n == noun else truth[n]) for n in counts}
            result = engine.generate(request, progress=False,
                                     edit_layout=lambda reference, refined: {
                                         n: planned[n].to(reference[n].device) for n in reference})
            final = count_world_nouns(result.frames, [noun])[noun]
            trials.append({"edit": edit_name, "scope": scope, "had": have, "wanted": wanted, "final": final,
                           "success": sum(c == wanted for c in final) >= SUCCESS_FRAMES,
                           "moved": sum((c - have) * (wanted - have) > 0 for c in final) >= SUCCESS_FRAMES})
    return trials


def summarise(records: list[dict], trials: list[dict]) -> dict:
    by_target: dict[int, dict[str, int]] = {}
    varying = 0
    for r in records:
        for noun, target in r["target"].items():
            row = by_target.setdefault(target, {"exact": 0, "too_few": 0, "too_many": 0})
            counts = r["plain_counts"][noun]
            varying += len(set(counts)) > 1
            for c in counts:
                row["exact" if c == target else "too_few" if c < target else "too_many"] += 1
    accuracy = statistics.fmean(
        statistics.fmean(sum(r["plain_counts"][n][f] == t for n, t in r["target"].items()) / len(r["target"])
                         for f in range(len(next(iter(r["plain_counts"].values())))))
        for r in records)
    auc = {}
    for r in records:
        for key, values in r["auc"].items():
            auc.setdefault(key, []).extend(values)
    auc = {k: round(statistics.fmean(v), 4) for k, v in auc.items()}
    instances = {}
    for r in records:
        for key, v in r["instances"].items():
            total = instances.setdefault(key, dict.fromkeys(v, 0))
            for name, value in v.items():
                total[name] += value
    instances = {k: {"recall": round(v["matched"] / max(1, v["true"]), 4),
                     "precision": round(v["matched"] / max(1, v["found"]), 4),
                     "count_exact": round(v["count_exact"] / max(1, v["frames"]), 4)} for k, v in instances.items()}
    control = {}
    for t in trials:
        key = f"{t['edit']}|{t['scope']}"
        c = control.setdefault(key, {"trials": 0, "success": 0, "moved": 0})
        c["trials"] += 1
        c["success"] += t["success"]
        c["moved"] += t["moved"]
    for c in control.values():
        c["success_rate"] = round(c["success"] / max(1, c["trials"]), 4)
        c["moved_rate"] = round(c["moved"] / max(1, c["trials"]), 4)
    return {"plain_frame_accuracy": round(accuracy, 4), "plain_by_target": by_target,
            "plain_nouns_varying_across_frames": varying, "auc": auc, "instances": instances,
            "controllability": control}


def print_tables(summary: dict, config) -> None:
    print(f"1. plain frame accuracy {summary['plain_frame_accuracy']:.3f}; by target (noun-frames):")
    for target, row in sorted(summary["plain_by_target"].items()):
        n = sum(row.values())
        print(f"   {target}: exact {row['exact'] / n:.2f}  too few {row['too_few'] / n:.2f}  "
              f"too many {row['too_many'] / n:.2f}  ({n})")
    print("2. localisation AUC, rows = step, columns = layer")
    for scope in ("noun", "phrase"):
        print(f"   {scope}:")
        steps = sorted({int(k.split('|')[1]) for k in summary["auc"] if k.startswith(scope)})
        layers = sorted({int(k.split('|')[2]) for k in summary["auc"] if k.startswith(scope)})
        for step in steps:
            print(f"   step {step:2d} " + " ".join(f"{summary['auc'].get(f'{scope}|{step}|{layer}', 0):.3f}"
                                              for layer in layers))
    print(f"3. instances at layer {config.reference_layer}, step {config.reference_step}:")
    for key, v in summary["instances"].items():
        print(f"   {key}: recall {v['recall']:.3f} precision {v['precision']:.3f} count exact {v['count_exact']:.3f}")
    print("4. controllability with oracle layouts:")
    for key, v in summary["controllability"].items():
        print(f"   {key}: success {v['success_rate']:.2f} moved the right way {v['moved_rate']:.2f} ({v['trials']})")


# what a run's shards share besides commit and checkpoint (merge_shards refuses a mix)
SHARD_SETTINGS = ("validation_seed", "noise_seed", "reference_layer", "reference_step", "mode", "prompts_asked")


def merge_shards(out: Path) -> dict:
    """DIR/stages.json from DIR/stages_shard*.json (each shard's records keep their AUC lists): the summary
    over every shard's prompts, as one process would have written it; the header of the first shard."""
    paths = sorted(out.glob("stages_shard*.json"))
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    if not parts:
        raise SystemExit(f"no stages_shard*.json in {out}")
    require_one_run({str(path): {"git_commit": part.get("git_commit"), "checkpoint": part.get("checkpoint"),
                                 **{field: part["results"].get(field) for field in SHARD_SETTINGS}}
                     for path, part in zip(paths, parts)}, remedy="merge the shards of one run only")
    records = [r for part in parts for r in part["results"]["records"]]
    trials = [t for part in parts for t in part["results"]["trials"]]
    first = parts[0]["results"]
    summary = summarise(records, trials)
    payload = {**{k: v for k, v in parts[0].items() if k != "results"}, "results": {
        **{k: first[k] for k in SHARD_SETTINGS}, "prompts": len(records), "shards": len(parts),
        "summary": summary, "trials": trials, "records": [{k: v for k, v in r.items() if k != "auc"} for r in records]}}
    (out / "stages.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(f"{len(records)} prompts from {len(parts)} shards")
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--ckpt-dir", default=None, help="default: the embedded demo model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("numina_stages_results"))
    parser.add_argument("--no-control", action="store_true", help="skip stage 4 (regenerations)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                        help="only the prompts whose index is I modulo N (processes in parallel), written to "
                             "DIR/stages_shard<I>of<N>.json; --merge DIR makes DIR/stages.json of them")
    parser.add_argument("--merge", type=Path, default=None, metavar="DIR",
                        help="only merge DIR/stages_shard*.json into DIR/stages.json and print the tables")
    args = parser.parse_args()
    if args.merge is not None:
        merge_shards(args.merge)
        return
    engine = Engine.load(args.ckpt_dir, device=args.device, cuda_graphs=False)
    header = provenance("bench/numina_stages.py", device=str(engine.model.device))
    header["checkpoint"] = str(engine.model.path)
    shard, shards = args.shard
    items = benchmark_prompts(args.prompts, seed=VALIDATION_SEED)
    config = pipeline.prepare(engine.model, GenerationRequest(
        prompt=items[0]["prompt"], counts=items[0]["target"], count_phrases=count_phrases(items[0]["prompt"]))).config
    args.out.mkdir(parents=True, exist_ok=True)

    def write(records: list[dict], trials: list[dict]) -> dict:
        """DIR/stages.json over the prompts done so far (rewritten after each: a run stopped early keeps them)."""
        summary = summarise(records, trials)
        payload = {**header, "results": {
            "validation_seed": VALIDATION_SEED, "noise_seed": NOISE_SEED, "prompts": len(records),
            "prompts_asked": len(items),
            "reference_layer": config.reference_layer, "reference_step": config.reference_step,
            "mode": config.mode, "summary": summary, "trials": trials,
            "records": [{k: v for k, v in r.items() if k != "auc" or shards > 1} for r in records]}}
        name = "stages.json" if shards == 1 else f"stages_shard{shard}of{shards}.json"
        (args.out / name).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        return summary

    records, trials = [], []
    with torch.inference_mode():
        for item in tqdm(items[shard::shards], desc="prompts"):
            record = probe_prompt(engine, item)
            if not args.no_control:
                trials += controllability(engine, item, record["frames"], record["plain_counts"])
            del record["frames"]
            records.append(record)
            summary = write(records, trials)
    print_tables(summary, config)

if __name__ == "__main__":
    main()
