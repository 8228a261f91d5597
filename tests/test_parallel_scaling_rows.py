"""bench/parallel_scaling.py --json: a launch adds its rows only to a file of the same run (commit, device,
versions), replaces its own rows, and takes speedups against 1-GPU rows of the same workload."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.parallel_scaling import added_rows, finish_rows, previous_rows

HEADER = {"script": "bench/parallel_scaling.py", "device": "NVIDIA H200", "git_commit": "c",
          "versions": {"python": "3.11", "torch": "2.8", "triton": "3.4"}}


def row(gpus: int, step_s: float, mode: str = "plain", reference_step: int | None = None) -> dict:
    return {"model": "1.3B", "size": "832*480", "frames": 81, "steps": 4, "mode": mode,
            "reference_step": reference_step,
            "gpus": gpus, "plan": f"cfg1 x ulysses{gpus}", "step_s": step_s, "latents_file": f"{mode}{gpus}.pt"}


def write(path: Path, rows: list[dict], **header) -> Path:
    path.write_text(json.dumps({**HEADER, **header, "results": {"rows": rows}}))
    return path


def test_rows_of_another_commit_device_or_versions_are_refused(tmp_path):
    single = [row(1, 2.0)]
    for field, value in (("git_commit", "other"), ("device", "NVIDIA H100 80GB HBM3"),
                         ("versions", {**HEADER["versions"], "torch": "2.9"})):
        path = write(tmp_path / "scaling.json", single, **{field: value})
        with pytest.raises(SystemExit, match=f"differ in {field}") as refused:
            previous_rows(path, HEADER)
        assert str(path) in str(refused.value) and "this run" in str(refused.value)
    assert previous_rows(write(tmp_path / "scaling.json", single), HEADER) == single
    assert previous_rows(tmp_path / "absent.json", HEADER) == [] and previous_rows(None, HEADER) == []


def test_a_launch_replaces_its_own_rows_and_compares_like_with_like(tmp_path):
    previous = [row(1, 2.0), row(2, 1.5), row(1, 4.0, "numina", 2)]
    rows = added_rows(previous, [row(2, 1.0), row(2, 2.0, "numina", 2), row(2, 3.0, "numina", 3)])
    assert [(r["mode"], r["gpus"], r["step_s"]) for r in rows] == [
        ("plain", 1, 2.0), ("numina", 1, 4.0), ("plain", 2, 1.0), ("numina", 2, 2.0), ("numina", 2, 3.0)]
    finish_rows(rows, tmp_path)
    assert rows[2]["speedup"] == 2.0 and rows[3]["speedup"] == 2.0 and rows[3]["efficiency"] == 1.0
    assert "speedup" not in rows[4]          # reference step 3 has no 1-GPU row: not compared with step 2's
