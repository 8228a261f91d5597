"""End-to-end check of layout settings on the demo model: counting accuracy on VALIDATION prompts.

The offline sweep (bench/layout_settings.py) chooses layout settings by how well the layout's instances
match the true objects; this checks what the choice does to the finished videos: plain vs NUMINA in
engine mode, noun and phrase token scope (bench/countbench_demo.py's engine-noun / engine-phrase rows,
its run_seed), once with the checkpoint's settings and once per candidate (NuminaConfig overrides), on
captions of bench/numina_stages.py's VALIDATION_SEED (never the benchmark's BENCH_SEED), several noise
seeds. A video scores CountBench's frame-wise accuracy (countbench_demo); per candidate and mode: the
mean per seed, the paired per-prompt difference to plain (mean over seeds) and prompts better / worse.

    python bench/layout_settings_e2e.py --prompts 8 --seeds 0 1 \\
        --candidate focus '{"layout_instances": "focus_clusters", "cross_attn_peak_ratio": 0.4}' \\
        [--device cuda] [--out docs/results/layout_settings_e2e_cpu.json]
    python bench/layout_settings_e2e.py --merge SEED0.json SEED1.json ... --out FILE   # one file per seed -> one
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import countbench_demo  # noqa: E402
from bench.countbench_demo import benchmark_prompts, run_seed  # noqa: E402
from bench.numina_stages import VALIDATION_SEED  # noqa: E402
from bench.results_file import provenance, require_one_run, write_results  # noqa: E402
from numina_engine import Engine  # noqa: E402

MODES = ("engine-noun", "engine-phrase")


def paired(videos: list[dict], mode: str, baseline: str = "plain", label: str = "plain") -> dict:
    """Mean per seed, paired per-prompt difference to `baseline` (mean over seeds; its key named by
    `label`), prompts better/worse.
    videos: countbench_demo.run_seed records (every seed's, each with index, seed, {mode: {accuracy}})."""
    key = f"paired_difference_to_{label}"
    seeds = sorted({v["seed"] for v in videos})
    per_seed = {str(s): round(statistics.fmean(v[mode]["accuracy"] for v in videos if v["seed"] == s), 4)
                for s in seeds}
    by_prompt: dict[int, list[float]] = {}
    for v in videos:
        by_prompt.setdefault(v["index"], []).append(v[mode]["accuracy"] - v[baseline]["accuracy"])
    diffs = [statistics.fmean(d) for d in by_prompt.values()]
    return {"per_seed": per_seed, "mean": round(statistics.fmean(per_seed.values()), 4),
            key: round(statistics.fmean(diffs), 4),
            "prompts_better": sum(d > 0 for d in diffs), "prompts_worse": sum(d < 0 for d in diffs)}


def summarise(videos: list[dict], candidates: dict[str, dict]) -> dict:
    """Per candidate and mode: paired() to plain and, for every candidate but "current", to current; printed."""
    summary = {"plain": {k: paired(videos, "plain")[k] for k in ("per_seed", "mean")}}
    for name, overrides in candidates.items():
        summary[name] = {"overrides": overrides, **{mode: paired(videos, f"{mode}@{name}") for mode in MODES}}
        if name != "current":     # the same prompts and seeds, mode by mode: candidate - current
            for mode in MODES:
                summary[name][f"{mode} vs current"] = paired(videos, f"{mode}@{name}", baseline=f"{mode}@current",
                                                              label="current")
    print(f"plain {summary['plain']['mean']:.3f}")
    for name in candidates:
        s = summary[name]
        print(f"{name}: " + ", ".join(f"{mode} {s[mode]['mean']:.3f} ({s[mode]['paired_difference_to_plain']:+.3f}, "
                                      f"{s[mode]['prompts_better']}/{s[mode]['prompts_worse']})" for mode in MODES))
    return summary


def run_fields(part: dict) -> dict:
    """What the files of one run (on other noise seeds) share: commit, checkpoint, validation prompts,
    candidates (name -> overrides). part: a results file of this script (header and results)."""
    results = part["results"]
    return {"git_commit": part.get("git_commit"), "checkpoint": part.get("checkpoint"),
            "validation_seed": results.get("validation_seed"), "prompts": results["prompts"],
            "candidates": {name: row["overrides"] for name, row in results["summary"].items() if name != "plain"}}


def merge(paths: list[Path], out: Path) -> None:
    """One results file from several runs of this script on other noise seeds (refused unless they agree on
    run_fields)."""
    parts = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    require_one_run({str(path): run_fields(part) for path, part in zip(paths, parts)},
                    remedy="merge the files of one run (one commit, checkpoint, prompts and candidates) only")
    first = parts[0]["results"]
    candidates = run_fields(parts[0])["candidates"]
    videos = [v for part in parts for v in part["results"]["videos"]]
    seeds = sorted({v["seed"] for v in videos})
    if len(seeds) * first["prompts"] != len(videos):
        raise SystemExit(f"the files repeat a noise seed or miss prompts: seeds {seeds}, {len(videos)} videos")
    header = {k: v for k, v in parts[0].items() if k != "results"}
    header["argv"] = [a for part in parts for a in part["argv"]]
    write_results(out, "bench/layout_settings_e2e.py", {
        "validation_seed": VALIDATION_SEED, "prompts": first["prompts"], "noise_seeds": seeds,
        "merged_from": [str(p) for p in paths], "seconds": [part["results"]["seconds"] for part in parts],
        "summary": summarise(videos, candidates), "videos": videos}, header=header)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--candidate", nargs=2, action="append", default=[], metavar=("NAME", "JSON"),
                        help="a named set of NuminaConfig overrides to compare with the checkpoint's settings")
    parser.add_argument("--ckpt-dir", default=None, help="default: the embedded demo model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/results/layout_settings_e2e_cpu.json"))
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                        help="only merge results files of runs on other noise seeds into --out")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    candidates = {"current": {}}
    for name, text in args.candidate:
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as err:
            parser.error(f"--candidate {name}: not JSON ({err})")
        if not isinstance(overrides, dict) or {"mode", "token_scope"} & set(overrides):
            parser.error(f"--candidate {name}: a JSON object of NuminaConfig fields other than mode and token_scope")
        if name in candidates:
            parser.error(f"--candidate {name}: the name is taken")
        candidates[name] = overrides
    engine = Engine.load(args.ckpt_dir, device=args.device, cuda_graphs=False)
    header = provenance("bench/layout_settings_e2e.py", device=str(engine.model.device))
    header["checkpoint"] = str(engine.model.path)
    items = benchmark_prompts(args.prompts, seed=VALIDATION_SEED)
    # each candidate's rows as modes of countbench_demo.run_seed, so that every (prompt, seed) runs plain once
    rows = {f"{mode}@{name}": {**countbench_demo.MODES[mode], **overrides}
            for name, overrides in candidates.items() for mode in MODES}
    videos: list[dict] = []
    started = time.perf_counter()
    with torch.inference_mode():
        for seed in args.seeds:
            videos += run_seed(engine, list(enumerate(items)), seed, list(rows), Path("."), examples=0,
                               extra_modes=rows)
    summary = summarise(videos, candidates)
    write_results(args.out, "bench/layout_settings_e2e.py", {
        "validation_seed": VALIDATION_SEED, "prompts": len(items), "noise_seeds": args.seeds,
        "seconds": round(time.perf_counter() - started, 1), "summary": summary, "videos": videos}, header=header)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
