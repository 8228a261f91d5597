"""The demo model's benchmark as prompt files: the prompts and counts bench/countbench_demo.py scores.

    python -m numina_engine.workflow.demo_benchmark --prompts 100 --out demo_bench/
    # -> demo_bench/prompts.txt, demo_bench/noun_counts.jsonl (CountBench's layout)

The demo model knows only its counting world, so CountBench's own prompts say nothing about it; these are
unseen counting-world captions (BENCH_SEED, as in bench/countbench_demo.py) with their scenes' exact counts.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..demo.world import WorldConfig, captions, sample_scenes, scene_counts

BENCH_SEED = 20261125        # bench/countbench_demo.py's BENCH_SEED (tests/test_workflow_eval.py checks it)


def demo_benchmark(num_prompts: int) -> list[tuple[str, dict[str, int]]]:
    """[(caption, {noun: count})] of `num_prompts` scenes sampled with BENCH_SEED."""
    scenes = sample_scenes(num_prompts, seed=BENCH_SEED, config=WorldConfig())
    return list(zip(captions(scenes, seed=BENCH_SEED), scene_counts(scenes)))


def write_demo_benchmark(out_dir: str | Path, num_prompts: int) -> tuple[Path, Path]:
    """Write prompts.txt and noun_counts.jsonl into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = demo_benchmark(num_prompts)
    prompts, counts = out_dir / "prompts.txt", out_dir / "noun_counts.jsonl"
    prompts.write_text("".join(f"{prompt}\n" for prompt, _ in items), encoding="utf-8")
    counts.write_text("".join(json.dumps(target) + "\n" for _, target in items), encoding="utf-8")
    return prompts, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100, help="how many prompts (default 100)")
    parser.add_argument("--out", type=Path, required=True, help="folder for prompts.txt and noun_counts.jsonl")
    args = parser.parse_args()
    for path in write_demo_benchmark(args.out, args.prompts):
        print(path)


if __name__ == "__main__":
    main()
