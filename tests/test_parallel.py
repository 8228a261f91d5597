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
from numina_engine.engine.sequence_shard import SequenceShard
from numina_engine.errors import UserInputError
from numina_engine.kernels import KernelChoice
from numina_engine.numina.config import NuminaConfig
from numina_engine.numina.head_scoring import score_heads
from numina_engine.numina.modulation import bias_for_queries, build_modulation_plan, layout_bias
from assets_paths import TINY_WAN
from parallel_runs import REQUESTS, generate_all, run_rank
from test_modulation import (CONFIG, FRAME_LABELS, FRAME_LABELS_LARGE_REFERENCE, FRAME_LABELS_WITHOUT_REFERENCE,
                             FRAMES, HEIGHT, TOKENS, WIDTH, random_refined)

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
    assert report["cuda_graphs"] == {"enabled": False, "reason": "not supported under --parallel"}
    assert (out_dir / "video.mp4").is_file() and (out_dir / "layout.png").is_file()


@pytest.mark.parametrize("labels, degree", [(FRAME_LABELS, 4), (FRAME_LABELS, 2), (FRAME_LABELS_WITHOUT_REFERENCE, 4),
                                            (FRAME_LABELS_LARGE_REFERENCE, 4)])
def test_ranks_rows_of_the_layout_bias_make_the_whole_bias(labels, degree):
    """Each rank's PlanRows (its modulated rows, its part of the reference sums, added up over the ranks)
    give, rank after rank, the bias of one process (105 tokens: padded for 4 ranks)."""
    generator = torch.Generator().manual_seed(degree)
    refined = random_refined(generator, labels)
    plan = build_modulation_plan(refined, {noun: TOKENS[noun] for noun in refined}, "cpu")
    length = FRAMES * HEIGHT * WIDTH
    q = torch.randn(length, 4, 16, generator=generator)
    k = torch.randn(19, 4, 16, generator=generator)
    delta = torch.tensor(CONFIG.delta(10))
    shards = [SequenceShard(None, rank, degree, length) for rank in range(degree)]
    local_q = [shard.local_rows(q, dim=0) for shard in shards]
    rows = [shard.plan_rows(plan) for shard in shards]
    sums = sum(part.reference_sums(mine) for part, mine in zip(rows, local_q)) if plan.has_reference else None
    biases = [bias_for_queries(part.plan, mine.index_select(0, part.queries), k, sums, delta, CONFIG)
              for part, mine in zip(rows, local_q)]
    assert torch.equal(torch.cat([part.plan.modulated_queries for part in rows]), plan.modulated_queries)
    assert torch.equal(torch.cat([part.queries + shard.start for part, shard in zip(rows, shards)]),
                       plan.modulated_queries)
    torch.testing.assert_close(torch.cat(biases), layout_bias(plan, q, k, delta, CONFIG), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head_pca", ["exact", "svd_lowrank"])
def test_scores_of_a_range_of_heads_are_those_of_all_heads(head_pca):
    """A Ulysses rank scores its own heads (first_head, total_heads): the scores of one call over all heads."""
    generator = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 4, 12, 12, generator=generator).mul(3).softmax(dim=-1)
    config = NuminaConfig(head_pca=head_pca, pca_seed=5)
    whole, _ = score_heads(maps, (3, 4), config, kernels=KernelChoice("reference"))
    for first_frame in (0, 2):                          # a chunk of frames, too
        parts = [score_heads(maps[first_frame:, heads], (3, 4), config, kernels=KernelChoice("reference"),
                             first_frame=first_frame, total_frames=3, first_head=heads.start, total_heads=4)[0]
                 for heads in (slice(0, 2), slice(2, 4))]
        torch.testing.assert_close(torch.cat(parts, dim=1), whole[first_frame:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not heads of 4"):
        score_heads(maps[:, :2], (3, 4), config, first_head=3, total_heads=4)
