"""torchrun with 2 gloo ranks on the CPU makes the same videos (bit-identical frames) and the same index as one
process, on the tiny Wan checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from assets_paths import TINY_WAN
from numina_engine.workflow.frames import read_video_frames

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--ckpt-dir", str(TINY_WAN), "--size", "32*32", "--frames", "5", "--steps", "2", "--reference-step", "1",
         "--device", "cpu", "--quiet"]


def _batch(launcher: list[str], out_dir: Path, prompts: Path, counts: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "numina_engine", "batch", "--prompts", str(prompts), "--counts", str(counts),
               "--seeds", "0", "1", "--out-dir", str(out_dir), *SMALL]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _index(out_dir: Path) -> list[dict]:
    """index.jsonl without the timings (wall-clock, different on every run)."""
    lines = [json.loads(line) for line in (out_dir / "index.jsonl").read_text().splitlines()]
    return [{key: value for key, value in entry.items() if key != "timings_s"} for entry in lines]


def test_two_gloo_ranks_equal_one_process(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Three cats chasing two dogs\nA single dog on a beach\nTwo cats\n")
    counts = tmp_path / "counts.jsonl"
    counts.write_text('{"cats": 3, "dogs": 2}\n{"dog": 1}\n{"cats": 2}\n')
    single = _batch([sys.executable], tmp_path / "one", prompts, counts)
    assert single.returncode == 0, single.stderr
    ranks = _batch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                   tmp_path / "two", prompts, counts)
    assert ranks.returncode == 0, ranks.stderr
    assert "12 videos, 0 already finished (skipped), 12 to make on 2 ranks" in ranks.stderr
    assert json.loads(ranks.stdout.splitlines()[-1])["made_by_rank_0"] == 6

    one, two = _index(tmp_path / "one"), _index(tmp_path / "two")
    assert len(one) == 12 and one == two
    for entry in one:
        frames_one = read_video_frames(tmp_path / "one" / entry["video"])
        frames_two = read_video_frames(tmp_path / "two" / entry["video"])
        assert frames_one.shape == (5, 32, 32, 3) and np.array_equal(frames_one, frames_two), entry["video"]
    assert sorted(p.name for p in (tmp_path / "one").rglob("*")) == sorted(p.name for p in (tmp_path / "two").rglob("*"))

    again = _batch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                   tmp_path / "two", prompts, counts)
    assert again.returncode == 0, again.stderr
    assert "12 videos, 12 already finished (skipped), 0 to make" in again.stderr

