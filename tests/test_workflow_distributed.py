"""torchrun with 2 gloo ranks on the CPU makes the same videos (bit-identical frames) and the same index as one
process, on the tiny Wan checkpoint. (It needs a deterministic encoder: see MP4_X264_PARAMS in video_io.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from assets_paths import TINY_WAN
from numina_engine.workflow.distributed import Ranks
from numina_engine.workflow.frames import read_video_frames

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--ckpt-dir", str(TINY_WAN), "--size", "32*32", "--frames", "5", "--steps", "2", "--reference-step", "1",
         "--device", "cpu", "--quiet"]
TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _batch(launcher: list[str], out_dir: Path, prompts: Path, counts: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "numina_engine", "batch", "--prompts", str(prompts), "--counts", str(counts),
               "--seeds", "0", "1", "--out-dir", str(out_dir), *SMALL]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _index(out_dir: Path) -> list[dict]:
    """index.jsonl without the timings (wall-clock, different on every run)."""
    lines = [json.loads(line) for line in (out_dir / "index.jsonl").read_text().splitlines()]
    return [{key: value for key, value in entry.items() if key != "timings_s"} for entry in lines]


def test_the_split_gives_every_mode_of_a_prompt_to_one_rank():
    jobs = list(range(10))                       # 5 prompts x 2 modes, in that order
    shares = [Ranks(rank=r, world_size=3).share(jobs, group=2) for r in range(3)]
    assert shares == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5]]
    assert Ranks().share(jobs, group=2) == jobs


def _benchmark_files(tmp_path: Path) -> tuple[Path, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Three cats chasing two dogs\nA single dog on a beach\nTwo cats\n")
    counts = tmp_path / "counts.jsonl"
    counts.write_text('{"cats": 3, "dogs": 2}\n{"dog": 1}\n{"cats": 2}\n')
    return prompts, counts


def _assert_same_outputs(one_dir: Path, two_dir: Path) -> None:
    one, two = _index(one_dir), _index(two_dir)
    assert len(one) == 12 and one == two
    for entry in one:
        frames_one = read_video_frames(one_dir / entry["video"])
        frames_two = read_video_frames(two_dir / entry["video"])
        assert frames_one.shape == (5, 32, 32, 3) and np.array_equal(frames_one, frames_two), entry["video"]
    assert sorted(p.name for p in one_dir.rglob("*")) == sorted(p.name for p in two_dir.rglob("*"))


def test_two_gloo_ranks_equal_one_process(tmp_path):
    prompts, counts = _benchmark_files(tmp_path)
    single = _batch([sys.executable], tmp_path / "one", prompts, counts)
    assert single.returncode == 0, single.stderr
    ranks = _batch(TORCHRUN_2, tmp_path / "two", prompts, counts)
    assert ranks.returncode == 0, ranks.stderr
    assert "12 videos, 0 already finished (skipped), 12 to make on 2 ranks" in ranks.stderr
    assert json.loads(ranks.stdout.splitlines()[-1])["made_by_rank_0"] == 6
    _assert_same_outputs(tmp_path / "one", tmp_path / "two")

    again = _batch(TORCHRUN_2, tmp_path / "two", prompts, counts)
    assert again.returncode == 0, again.stderr
    assert "12 videos, 12 already finished (skipped), 0 to make" in again.stderr


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_nccl_ranks_equal_one_gpu_process(tmp_path):
    """On the embedded demo model (pixel space: no diffusers, which the GPU image lacks), frames as .npy (no
    PyAV there either): exactly what each rank generated."""
    from numina_engine.workflow.demo_benchmark import write_demo_benchmark

    prompts, counts = write_demo_benchmark(tmp_path / "bench", 3)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def batch(launcher, out_dir):
        command = [*launcher, "-m", "numina_engine", "batch", "--prompts", str(prompts), "--counts", str(counts),
                   "--seeds", "0", "1", "--out-dir", str(out_dir), "--device", "cuda", "--steps", "2",
                   "--reference-step", "1", "--video-format", "npy", "--quiet"]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr

    batch([sys.executable], tmp_path / "one")
    batch(TORCHRUN_2, tmp_path / "two")
    one, two = _index(tmp_path / "one"), _index(tmp_path / "two")
    assert {entry["device"] for entry in two} == {"cuda:0", "cuda:1"}
    assert len(one) == 12
    assert [{k: v for k, v in e.items() if k != "device"} for e in one] == \
        [{k: v for k, v in e.items() if k != "device"} for e in two]
    for entry in one:
        assert np.array_equal(read_video_frames(tmp_path / "one" / entry["video"]),
                              read_video_frames(tmp_path / "two" / entry["video"])), entry["video"]
