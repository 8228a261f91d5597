"""bench/numina_stages.py --merge: shards' records make the summary one process would have written."""
from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("numina_stages_shards", REPO / "bench" / "numina_stages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _record(rng: random.Random, index: int) -> dict:
    target = {"apples": rng.randint(1, 6), "gems": rng.randint(1, 6)}
    plain = {noun: [rng.randint(0, 7) for _ in range(5)] for noun in target}
    auc = {f"{scope}|8|{layer}": [rng.random() for _ in range(3)] for scope in ("noun", "phrase") for layer in (2, 4)}
    instances = {f"{scope}|final": {"matched": rng.randint(0, 5), "found": rng.randint(5, 9), "true": rng.randint(5, 9),
                                    "count_exact": rng.randint(0, 10), "frames": 10} for scope in ("noun", "phrase")}
    return {"prompt": f"p{index}", "target": target, "plain_counts": plain, "auc": auc, "instances": instances}


def test_merged_shards_summarise_like_one_run(tmp_path):
    bench = _bench()
    rng = random.Random(3)
    records = [_record(rng, i) for i in range(7)]
    trials = [{"edit": rng.choice(["add", "remove"]), "scope": "noun", "success": rng.random() < 0.5,
               "moved": rng.random() < 0.5} for _ in range(9)]
    header = {"script": "bench/numina_stages.py", "device": "cpu", "date": "d", "git_commit": "c"}
    for shard in range(3):
        results = {"validation_seed": 1, "noise_seed": 0, "reference_layer": 4, "reference_step": 10, "mode": "engine",
                   "prompts_asked": 7, "records": records[shard::3], "trials": trials[shard::3]}
        (tmp_path / f"stages_shard{shard}of3.json").write_text(json.dumps({**header, "results": results}))
    merged = bench.merge_shards(tmp_path)["results"]
    order = [r for shard in range(3) for r in records[shard::3]]
    expected = bench.summarise(order, [t for shard in range(3) for t in trials[shard::3]])
    assert merged["prompts"] == 7 and merged["shards"] == 3
    assert json.loads(json.dumps(merged["summary"])) == json.loads(json.dumps(expected))
    assert json.loads((tmp_path / "stages.json").read_text())["results"]["summary"] == json.loads(json.dumps(expected))


def test_merge_refuses_shards_of_other_runs(tmp_path):
    """Shards of another commit or with another reference step are not one run: refused, the field named."""
    bench = _bench()
    results = {"validation_seed": 1, "noise_seed": 0, "reference_layer": 4, "reference_step": 10, "mode": "engine",
               "prompts_asked": 2}
    header = {"script": "bench/numina_stages.py", "device": "cpu", "date": "d", "git_commit": "c", "checkpoint": "x"}

    def write(shard: int, **changes):
        head = {**header, **{k: v for k, v in changes.items() if k in header}}
        res = {**results, **{k: v for k, v in changes.items() if k in results},
               "records": [_record(random.Random(shard), shard)],
               "trials": [{"edit": "add", "scope": "noun", "success": True, "moved": True}]}
        (tmp_path / f"stages_shard{shard}of2.json").write_text(json.dumps({**head, "results": res}))

    write(0)
    write(1, reference_step=8)
    with pytest.raises(SystemExit, match="differ in reference_step") as refused:
        bench.merge_shards(tmp_path)
    assert "10 in " in str(refused.value) and "8 in " in str(refused.value)
    write(1, git_commit="another")
    with pytest.raises(SystemExit, match="differ in git_commit"):
        bench.merge_shards(tmp_path)
    write(1)
    assert bench.merge_shards(tmp_path)["results"]["shards"] == 2
