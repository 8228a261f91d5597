"""The CountBench workflow on the demo model, end to end and timed: `batch`, `eval --detector demo-counter`, `compare`.

What a user runs to score NUMINA (README "CountBench"), on the demo benchmark's prompts (the unseen captions of
bench/countbench_demo.py, written as prompt files by numina_engine.workflow.demo_benchmark), each command as
its own process exactly as typed on the command line:

    numina-engine batch --prompts P --counts C --seeds S... --modes plain numina --video-format npy --out-dir V
    numina-engine eval --videos V --prompts P --counts C --detector demo-counter
    numina-engine compare V/plain V/numina --out V/comparison.json

then one results file with the wall time of each command, the videos made, and the comparison:

    python -m bench.demo_workflow --prompts 100 --seeds 0 1 2 --device cuda --work DIR \\
        --json docs/results/demo_workflow_<gpu>.json

A second run over the same --work folder skips finished videos (batch's resume), so its batch time is not the
time to make them: the results file records how many videos the batch made in this run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_file import provenance, write_results  # noqa: E402
from numina_engine.workflow.demo_benchmark import write_demo_benchmark  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".npy")


def count_videos(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix in VIDEO_SUFFIXES) if folder.is_dir() else 0


def timed_command(command: list[str]) -> float:
    """Run one CLI command (stdout/stderr passed through); its wall time in seconds. Exits on failure."""
    print("+ " + " ".join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... exited with {done.returncode}")
    return round(time.perf_counter() - started, 1)


def batch_command(cli: list[str], prompts: Path, counts: Path, seeds: list[int], out: Path, *options: str) -> list[str]:
    """`numina-engine batch` over the prompt files, both modes, lossless .npy videos into `out`; `options`
    are more run options (--device, --attention, ...)."""
    return cli + ["batch", "--prompts", str(prompts), "--counts", str(counts), "--seeds", *map(str, seeds),
                  "--modes", "plain", "numina", "--video-format", "npy", "--out-dir", str(out), "--quiet", *options]


def eval_command(cli: list[str], videos: Path, prompts: Path, counts: Path, *options: str) -> list[str]:
    """`numina-engine eval --detector demo-counter` over a batch folder."""
    return cli + ["eval", "--videos", str(videos), "--prompts", str(prompts), "--counts", str(counts),
                  "--detector", "demo-counter", *options]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100, help="demo benchmark prompts (default 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the prompt files and the videos")
    parser.add_argument("--json", type=Path, required=True, help="the results file to write")
    args = parser.parse_args()

    header = provenance("bench/demo_workflow.py", sys.argv[1:], args.device)   # git state and date of the start
    cli = [sys.executable, "-m", "numina_engine"]
    prompts, counts = write_demo_benchmark(args.work / "bench", args.prompts)
    videos = args.work / "videos"
    before = count_videos(videos)
    device = ["--device", args.device] if args.device else []
    seconds = {"batch": timed_command(batch_command(cli, prompts, counts, args.seeds, videos, *device)),
               "eval": timed_command(eval_command(cli, videos, prompts, counts, *device))}
    comparison_file = videos / "comparison.json"
    seconds["compare"] = timed_command(cli + ["compare", str(videos / "plain"), str(videos / "numina"),
                                       "--out", str(comparison_file)])
    comparison = json.loads(comparison_file.read_text(encoding="utf-8"))
    comparison.pop("per_prompt_difference", None)        # per prompt: in the work folder, not the results file
    made = count_videos(videos) - before
    results = {"prompts": args.prompts, "seeds": args.seeds, "modes": ["plain", "numina"],
               "videos_made_this_run": made, "videos_total": count_videos(videos), "wall_seconds": seconds,
               "comparison": comparison}
    write_results(args.json, "bench/demo_workflow.py", results, header=header)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
