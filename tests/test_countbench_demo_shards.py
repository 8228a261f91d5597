"""bench/countbench_demo.py --summarise merges a seed's shards (--shard I/N) as if one process had run it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.shards import parse_shard

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("countbench_demo_shards", REPO / "bench" / "countbench_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _video(index: int, seed: int, plain: float, numina: float) -> dict:
    return {"index": index, "prompt": f"p{index}", "target": {"apples": 1}, "seed": seed,
            "plain": {"accuracy": plain, "counts": {}}, "engine-noun": {"accuracy": numina, "counts": {}}}


def _write(out: Path, name: str, seed: int, seconds: float, videos: list[dict]) -> None:
    meta = {"script": "bench/countbench_demo.py", "device": "cpu", "date": "d", "git_commit": "c", "checkpoint": "x"}
    (out / name).write_text(json.dumps({"meta": meta, "seed": seed, "seconds": seconds, "videos": videos}))


def test_summarise_merges_shards_and_keeps_prompts_done_in_every_seed(tmp_path):
    bench = _bench()
    accuracy = {(i, s): (0.1 * i + 0.01 * s, 0.5 + 0.05 * i) for i in range(4) for s in (0, 1)}
    for seed in (0, 1):
        for shard in (0, 1):
            indices = [i for i in range(4) if i % 2 == shard and not (seed == 1 and i == 3)]   # seed 1 stopped early
            _write(tmp_path, f"results_seed{seed}_shard{shard}of2.json", seed, 10.0 + shard,
                   [_video(i, seed, *accuracy[i, seed]) for i in indices])
    results = bench.summarise(tmp_path)["results"]
    assert results["prompts"] == 3                                   # prompt 3 missing in seed 1
    assert results["processes_per_seed"] == {"0": 2, "1": 2}
    assert results["seconds_per_seed"] == {"0": 11.0, "1": 11.0}   # shards run side by side: the longest
    for seed in (0, 1):
        expected = sum(accuracy[i, seed][0] for i in range(3)) / 3
        assert results["summary"]["plain"]["per_seed"][str(seed)] == pytest.approx(expected, abs=1e-4)
    diffs = [sum(accuracy[i, s][1] - accuracy[i, s][0] for s in (0, 1)) / 2 for i in range(3)]
    assert results["summary"]["engine-noun"]["paired_difference"] == pytest.approx(sum(diffs) / 3, abs=1e-4)


@pytest.mark.parametrize("text", ["2/2", "-1/3", "1", "a/b"])
def test_bad_shard_is_refused(text):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        parse_shard(text)


def test_summarise_refuses_parts_of_different_commits(tmp_path):
    bench = _bench()
    _write(tmp_path, "results_seed0.json", 0, 1.0, [_video(0, 0, 0.5, 0.5)])
    other = json.loads((tmp_path / "results_seed0.json").read_text())
    other["meta"]["git_commit"], other["seed"] = "another", 1
    (tmp_path / "results_seed1.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="differ in git_commit") as refused:
        bench.summarise(tmp_path)
    assert '"c" in ' in str(refused.value) and '"another" in ' in str(refused.value)
    assert "results_seed1.json" in str(refused.value)


def test_summarise_refuses_parts_of_other_overrides(tmp_path):
    bench = _bench()
    for seed, overrides in ((0, {"reference_layer": 4}), (1, {"reference_layer": 6})):
        _write(tmp_path, f"results_seed{seed}.json", seed, 1.0, [_video(0, seed, 0.5, 0.5)])
        part = json.loads((tmp_path / f"results_seed{seed}.json").read_text())
        part["meta"]["numina_overrides"] = overrides
        (tmp_path / f"results_seed{seed}.json").write_text(json.dumps(part))
    with pytest.raises(SystemExit, match="differ in numina_overrides"):
        bench.summarise(tmp_path)
