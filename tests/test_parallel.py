"""CFG-parallel and Ulysses sequence-parallel DiT (engine/parallel.py, engine/sequence_shard.py) on a
CPU gloo world spawned by the test: the same latents, layouts and video as one process.

One spawn per configuration; each rank runs a plain and two NUMINA generations (tests/parallel_runs.py).
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from numina_engine import cli
from numina_engine.engine.parallel import ParallelPlan, choose_plan, parse_parallel
from numina_engine.errors import UserInputError
from assets_paths import TINY_WAN
from parallel_runs import REQUESTS, generate_all, run_rank

RELATIVE_TOLERANCE = 1e-5


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_process() -> dict:
    results = generate_all()
    # the runs must reach the paths under test: modulation in both NUMINA modes, EasyCache reuse
    assert all(results[name]["report"]["phase2"] == "modulated" for name in ("numina_engine", "numina_authors"))
    assert results["numina_engine"]["report"]["phase1_steps_reused"] > 0
    return results


@pytest.mark.parametrize("cfg, ulysses", [(2, 1), (1, 2), (1, 4), (2, 2)],
                         ids=["cfg2", "ulysses2", "ulysses4", "cfg2xulysses2"])
def test_parallel_runs_match_one_process(cfg, ulysses, one_process, tmp_path):
    world = cfg * ulysses
    mp.spawn(run_rank, args=(world, cfg, ulysses, free_port(), str(tmp_path)), nprocs=world)
    print(f"{world} ranks")
    for rank in range(world):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name in REQUESTS:
            got, want = results[name], one_process[name]
            error = relative_error(got["latents"], want["latents"])
            assert error <= RELATIVE_TOLERANCE, (rank, name, error)
            print(f"rank {rank} {name}: relative error of the latents {error:.2e}")
            # the video: decoded from those latents; uint8 rounding may move a value that sits on a
            # rounding boundary by one level, nothing more
            assert (got["frames"].int() - want["frames"].int()).abs().max() <= 1, (rank, name)
            if "report" in want:
                assert got["report"] == want["report"], (rank, name)
                for which in ("reference", "refined"):
                    for noun, labels in want[which].items():
                        assert torch.equal(got[which][noun], labels), (rank, name, which, noun)


def test_plan_chosen_from_the_world_size():
    assert choose_plan(1, 40) == ParallelPlan(1, 1)
    assert choose_plan(2, 40) == ParallelPlan(2, 1)
    assert choose_plan(4, 40) == ParallelPlan(2, 2)
    assert choose_plan(8, 12) == ParallelPlan(2, 4)
    assert choose_plan(3, 12) == ParallelPlan(1, 3)
    assert choose_plan(4, 12, (1, 4)) == ParallelPlan(1, 4)
    assert parse_parallel("2,2") == (2, 2) and parse_parallel("auto") is None and parse_parallel(None) is None


@pytest.mark.parametrize("world, heads, requested, message", [
    (4, 6, (1, 4), "6 attention heads cannot be split over 4 Ulysses ranks"),
    (4, 40, (2, 1), "needs 2 ranks but 4 were started"),
    (6, 40, (3, 2), "CFG degree must be 1 or 2"),
    (3, 40, None, "no CFG x Ulysses split fits 3 ranks"),
    (14, 12, None, "no CFG x Ulysses split fits 14 ranks"),
])
def test_bad_plans_are_refused(world, heads, requested, message):
    with pytest.raises(UserInputError, match=message):
        choose_plan(world, heads, requested)


@pytest.mark.parametrize("text", ["2", "2,x", "0,2", "2,2,2"])
def test_bad_parallel_option_is_refused(text):
    with pytest.raises(UserInputError, match="CFG,ULYSSES"):
        parse_parallel(text)


@pytest.mark.parametrize("world, parallel, message", [
    ("3", None, "no CFG x Ulysses split fits 3 ranks and the model's 4 heads"),
    ("3", "1,3", "4 attention heads cannot be split over 3 Ulysses ranks"),
    ("1", "2,2", "needs 4 ranks but 1 were started"),
])
def test_cli_refuses_a_bad_split_before_loading(world, parallel, message, monkeypatch, tmp_path, capsys):
    from numina_engine import api

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(api.Engine, "load", no_loading)
    monkeypatch.setenv("WORLD_SIZE", world)
    argv = ["run", "--prompt", "three cats", "--ckpt-dir", str(TINY_WAN), "--out-dir", str(tmp_path / "out")]
    assert cli.main(argv + (["--parallel", parallel] if parallel else [])) == 2
    assert message in capsys.readouterr().err


def test_cli_under_torchrun_writes_the_outputs_once(tmp_path):
    """`torchrun --nproc-per-node 2 -m numina_engine run --parallel 1,2`: rank 0 writes the run's outputs."""
    import json
    import os
    import subprocess
    import sys

    out_dir = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "numina_engine", "run", "--prompt", "Three cats chasing two dogs",
               "--ckpt-dir", str(TINY_WAN), "--device", "cpu", "--size", "48*48", "--frames", "9", "--steps", "4",
               "--quiet", "--parallel", "1,2", "--out-dir", str(out_dir)]
    repo = str(Path(__file__).resolve().parents[1])          # this checkout's numina_engine in the ranks
    path = os.pathsep.join(filter(None, (repo, os.environ.get("PYTHONPATH"))))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"video"') == 1                 # one rank printed the paths
    report = json.loads((out_dir / "report.json").read_text())
    assert report["parallel"]["plan"] == "1 CFG x 2 Ulysses"
    assert (out_dir / "video.mp4").is_file() and (out_dir / "layout.png").is_file()
