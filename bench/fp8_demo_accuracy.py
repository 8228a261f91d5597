"""Counting accuracy of the demo benchmark with `--attention fp8` against bf16, same prompts, seeds and counts.

The FP8 self-attention (kernels/fp8_attention.py) changes every plain self-attention call of the DiT; what a
user wants to know is whether it changes what NUMINA achieves. On the demo model (heads of 48 channels,
stored padded to 64 by the kernel), the CLI commands of README "CountBench", once per attention:

    numina-engine batch --attention A --prompts P --counts C --seeds S... --modes plain numina --video-format npy
    numina-engine eval --videos V_A --prompts P --counts C --detector demo-counter

then `compare` plain vs NUMINA under each attention and, per mode, bf16 vs fp8 (paired per prompt). The two
batches may run at the same time (--parallel: two processes on one GPU; the demo model is small): times are
then not each batch's own. Needs a GPU with FP8 tensor cores (compute capability 8.9+).

    python -m bench.fp8_demo_accuracy --prompts 100 --seeds 0 1 2 --work DIR --parallel \\
        --json docs/results/fp8_demo_accuracy_<gpu>.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.demo_workflow import batch_command, count_videos, eval_command, timed_command  # noqa: E402
from bench.results_file import provenance, write_results  # noqa: E402
from numina_engine.workflow.demo_benchmark import write_demo_benchmark  # noqa: E402

ATTENTIONS = ("bf16", "fp8")
MODES = ("plain", "numina")          # what batch_command makes


def run_batches(commands: dict[str, list[str]], parallel: bool) -> dict[str, float]:
    """Each attention's batch command, one after the other or all at once; wall seconds per attention
    (all at once: each command's own wall time while the others ran too)."""
    if not parallel:
        return {attention: timed_command(command) for attention, command in commands.items()}
    started = time.perf_counter()
    running = {attention: subprocess.Popen(command) for attention, command in commands.items()}
    seconds = {}
    for attention, process in running.items():
        if process.wait() != 0:
            raise SystemExit(f"batch --attention {attention} exited with {process.returncode}")
        seconds[attention] = round(time.perf_counter() - started, 1)
    return seconds


def compare(cli: list[str], a: Path, b: Path, out: Path) -> dict:
    timed_command(cli + ["compare", str(a), str(b), "--out", str(out)])
    comparison = json.loads(out.read_text(encoding="utf-8"))
    comparison.pop("per_prompt_difference", None)
    return comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100, help="demo benchmark prompts (default 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, required=True, help="folder for the prompt files and the videos")
    parser.add_argument("--parallel", action="store_true", help="run the two batches at the same time")
    parser.add_argument("--json", type=Path, required=True, help="the results file to write")
    args = parser.parse_args()

    header = provenance("bench/fp8_demo_accuracy.py", sys.argv[1:], "cuda")
    cli = [sys.executable, "-m", "numina_engine"]
    prompts, counts = write_demo_benchmark(args.work / "bench", args.prompts)
    videos = {attention: args.work / attention for attention in ATTENTIONS}
    batch_s = run_batches({a: batch_command(cli, prompts, counts, args.seeds, videos[a], "--attention", a,
                                            "--device", "cuda") for a in ATTENTIONS}, args.parallel)
    eval_s = {a: timed_command(eval_command(cli, videos[a], prompts, counts)) for a in ATTENTIONS}
    results = {"prompts": args.prompts, "seeds": args.seeds, "attentions": list(ATTENTIONS), "modes": list(MODES),
               "batches_in_parallel": args.parallel,
               "videos": {a: count_videos(videos[a]) for a in ATTENTIONS},
               "wall_seconds": {"batch": batch_s, "eval": eval_s},
               "numina_vs_plain": {a: compare(cli, videos[a] / "plain", videos[a] / "numina",
                                              args.work / f"compare_{a}.json") for a in ATTENTIONS},
               "fp8_vs_bf16": {m: compare(cli, videos["bf16"] / m, videos["fp8"] / m, args.work / f"compare_{m}.json")
                               for m in MODES}}
    write_results(args.json, "bench/fp8_demo_accuracy.py", results, header=header)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
