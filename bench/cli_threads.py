"""Which CPU thread count makes the default demo run fastest: OMP_NUM_THREADS 1 vs 2, back to back.

Runs README's first command (`numina-engine run --prompt "Three apples and two trees drifting left."`, the
embedded demo model on the CPU) in a fresh process per run, alternating the thread counts (1, 2, 1, 2, ...)
so that a busy machine's load falls on both alike, and records each run's wall time, its report's phase
timings and the sha256 of its video frames (the same for every thread count: the decoded RGB of video.mp4).
The CLI's default (numina_engine/cli.py CPU_THREADS) cites the file this writes.

    PYTHONPATH=$PWD python bench/cli_threads.py --repeats 2 --json docs/results/cli_threads_cpu.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.results_file import provenance, write_results  # noqa: E402

PROMPT = "Three apples and two trees drifting left."


def one_run(threads: int, out_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "numina_engine.cli", "run", "--prompt", PROMPT, "--quiet",
               "--out-dir", str(out_dir)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"run with {threads} thread(s) failed:\n{done.stderr}")
    report = json.loads((out_dir / "report.json").read_text())
    from numina_engine.engine.video_io import read_mp4_frames
    frames = read_mp4_frames(out_dir / "video.mp4")
    return {"threads": threads, "wall_s": round(wall, 2), "timings_s": report["timings_s"],
            "frames_sha256": hashlib.sha256(frames.tobytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="docs/results/cli_threads_cpu.json")
    args = parser.parse_args()
    header = provenance("bench/cli_threads.py", device="cpu")      # the git state the runs start from
    runs = []
    load_before = os.getloadavg()            # 1, 5, 15-minute load averages before the first run
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for threads in args.threads:
                run = one_run(threads, Path(scratch) / f"r{repeat}-t{threads}")
                print(json.dumps(run))
                runs.append(run)
    medians = {}
    for threads in args.threads:
        walls = sorted(r["wall_s"] for r in runs if r["threads"] == threads)
        medians[str(threads)] = walls[len(walls) // 2] if len(walls) % 2 else sum(walls[len(walls) // 2 - 1:
                                                                                       len(walls) // 2 + 1]) / 2
    fastest = min(medians, key=medians.get)
    results = {"command": f'numina-engine run --prompt "{PROMPT}" --quiet', "cpu_count": os.cpu_count(),
               "load_average_before": load_before, "runs": runs, "median_wall_s": medians,
               "fastest_threads": int(fastest),
               "same_frames_for_all": len({r["frames_sha256"] for r in runs}) == 1}
    print(json.dumps(results, indent=2))
    write_results(args.json, "bench/cli_threads.py", results, header=header)


if __name__ == "__main__":
    main()
