"""`batch`: the DIR/<mode>/seed<k>/NNN_slug.mp4 layout and index, resuming, a killed run, bad benchmark lines."""
import json

import numpy as np
import pytest

from numina_engine import Engine
from numina_engine.cli import main
from numina_engine.errors import UserInputError
from numina_engine.workflow.batch import plan_jobs, run_batch, slug
from numina_engine.workflow.demo_benchmark import write_demo_benchmark
from numina_engine.workflow.frames import read_video_frames
from numina_engine.workflow.prompt_files import read_benchmark

# The demo model at 2 steps (NUMINA's reference at step 1), so 16 videos take seconds on the CPU.
OPTIONS = {"steps": 2, "numina_overrides": {"reference_step": 1}}
CLI_OPTIONS = ["--steps", "2", "--reference-step", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def engine():
    return Engine.load(device="cpu")


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    return write_demo_benchmark(tmp_path_factory.mktemp("bench"), 4)


def _jobs(engine, bench_files, seeds=(0, 1)):
    return plan_jobs(engine, read_benchmark(*bench_files), ["numina", "plain"], list(seeds), OPTIONS)


def _videos(out_dir):
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.mp4"))


def test_batch_writes_layout_and_index_then_resumes(tmp_path, bench_files, capsys):
    out = tmp_path / "out"
    prompts, counts = (str(p) for p in bench_files)
    argv = ["batch", "--prompts", prompts, "--counts", counts, "--seeds", "0", "1", "--out-dir", str(out), *CLI_OPTIONS]
    assert main(argv) == 0
    items = read_benchmark(*bench_files)
    expected = sorted(f"{mode}/seed{seed}/{item.index:03d}_{slug(item.prompt)}.mp4"
                      for mode in ("numina", "plain") for seed in (0, 1) for item in items)
    assert len(expected) == 16 and _videos(out) == expected
    for video in expected:
        assert (out / video).with_suffix(".json").is_file()
        assert read_video_frames(out / video).shape == (5, 32, 32, 3)
    assert len(list(out.glob("numina/seed*/*.layout.png"))) == 8
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(index) == 16
    assert [(e["seed"], e["index"], e["mode"]) for e in index] == [
        (seed, item.index, mode) for seed in (0, 1) for item in items for mode in ("numina", "plain")]
    for entry, item in zip(index[::2], [i for _ in (0, 1) for i in items]):
        assert entry["prompt"] == item.prompt and entry["counts"] == item.counts and entry["numina_enabled"]
        assert (out / entry["video"]).is_file() and entry["timings_s"]
    assert not any(e["numina_enabled"] for e in index[1::2])
    first = capsys.readouterr()
    assert "16 videos, 0 already finished (skipped), 16 to make" in first.err
    stamps = {video: (out / video).stat().st_mtime_ns for video in expected}

    assert main(argv) == 0
    second = capsys.readouterr()
    assert "16 videos, 16 already finished (skipped), 0 to make" in second.err
    assert json.loads(second.out.splitlines()[-1])["skipped"] == 16
    assert {video: (out / video).stat().st_mtime_ns for video in expected} == stamps
    assert len((out / "index.jsonl").read_text().splitlines()) == 16


class KilledAfter:
    """The engine, but generate raises after `videos` calls, as a kill in the middle of the batch would."""

    def __init__(self, engine, videos):
        self.engine, self.left = engine, videos

    def check(self, request):
        return self.engine.check(request)

    def save(self, *args, **kwargs):
        return self.engine.save(*args, **kwargs)

    def generate(self, request, progress=True):
        if self.left == 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        return self.engine.generate(request, progress=progress)


def test_killed_batch_leaves_whole_videos_and_the_next_run_finishes(tmp_path, engine, bench_files):
    jobs = _jobs(engine, bench_files, seeds=(0,))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(KilledAfter(engine, 3), jobs, out, OPTIONS, progress=False)
    assert len(_videos(out)) == 3
    assert not [p for p in out.rglob(".*") if p.is_file()], "a temp file was left behind"
    assert len((out / "index.jsonl").read_text().splitlines()) == 3
    summary = run_batch(engine, jobs, out, OPTIONS, progress=False)
    assert (summary.skipped, summary.made) == (3, 5)
    assert len(_videos(out)) == 8 and len((out / "index.jsonl").read_text().splitlines()) == 8
    for job in jobs:
        assert job.is_finished(out)


def test_leftover_temp_file_of_a_killed_run_is_removed(tmp_path, engine, bench_files):
    jobs = _jobs(engine, bench_files, seeds=(0,))[:1]
    folder = jobs[0].folder(tmp_path)
    folder.mkdir(parents=True)
    leftover = folder / f".{jobs[0].stem}.mp4.abc123.tmp.mp4"
    leftover.write_bytes(b"half a video")
    run_batch(engine, jobs, tmp_path, OPTIONS, progress=False)
    assert not leftover.exists() and jobs[0].is_finished(tmp_path)


def test_a_second_run_makes_only_what_is_missing(tmp_path, engine, bench_files):
    jobs = _jobs(engine, bench_files, seeds=(0,))
    run_batch(engine, jobs[:2], tmp_path, OPTIONS, progress=False)
    video = jobs[0].video_path(tmp_path)
    before = read_video_frames(video)
    jobs[1].report_path(tmp_path).unlink()           # killed between its video and its report
    summary = run_batch(engine, jobs, tmp_path, OPTIONS, progress=False)
    assert (summary.skipped, summary.made) == (1, 7)
    assert np.array_equal(read_video_frames(video), before)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_bad_counts_lines_are_reported_with_their_line_numbers(tmp_path):
    prompts = _write(tmp_path / "prompts.txt", ["Three apples.", "", "Two boxes drifting left.", "A single tree.",
                                                "One shiny gem."])
    counts = _write(tmp_path / "counts.jsonl", ['{"apples": 3}', "", '{"boxes": 2', '{"gems": 1}', '["gem"]'])
    with pytest.raises(UserInputError) as error:
        read_benchmark(prompts, counts)
    message = str(error.value)
    assert "3 problem(s)" in message
    assert f"{counts}:3 (prompt 2, {prompts}:3): not valid JSON" in message
    assert f"{counts}:4 (prompt 3, {prompts}:4): unknown noun 'gems'" in message
    assert f"{counts}:5 (prompt 4, {prompts}:5): must be a non-empty JSON object" in message


def test_counts_out_of_range_and_mismatched_files(tmp_path):
    prompts = _write(tmp_path / "prompts.txt", ["Three apples.", "Two boxes."])
    counts = _write(tmp_path / "counts.jsonl", ['{"apples": 0}'])
    with pytest.raises(UserInputError) as error:
        read_benchmark(prompts, counts)
    message = str(error.value)
    assert "has 1 counts lines but" in message and "has 2 prompts" in message
    assert f"{counts}:1 (prompt 1, {prompts}:1): count of 'apples' must be a whole number from 1" in message


def test_engine_refusals_name_the_prompt_and_its_lines(tmp_path, engine):
    # the files' check passes (every word of the noun is in its prompt); the engine's does not: "boxes apples"
    # is not a noun of the prompt as written
    prompts = _write(tmp_path / "prompts.txt", ["Three apples.", "Two apples and two boxes."])
    counts = _write(tmp_path / "counts.jsonl", ['{"apples": 3}', '{"boxes apples": 2}'])
    assert read_benchmark(prompts, counts)[1].counts == {"boxes apples": 2}
    with pytest.raises(UserInputError) as error:
        plan_jobs(engine, read_benchmark(prompts, counts), ["numina", "plain"], [0], OPTIONS)
    assert "prompt 2 (line 2, counts line 2): noun 'boxes apples' is not a word of the prompt" in str(error.value)
    assert "prompt 1 " not in str(error.value)


def test_cli_bad_lines_exit_2_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import numina_engine.api

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the benchmark files were checked")

    monkeypatch.setattr(numina_engine.api.Engine, "load", no_load)
    prompts = _write(tmp_path / "prompts.txt", ["Three apples."])
    counts = _write(tmp_path / "counts.jsonl", ['{"apples": three}'])
    assert main(["batch", "--prompts", str(prompts), "--counts", str(counts), "--out-dir", str(tmp_path / "o")]) == 2
    assert f"{counts}:1" in capsys.readouterr().err
    empty = _write(tmp_path / "empty.txt", ["", "  "])
    assert main(["batch", "--prompts", str(empty), "--out-dir", str(tmp_path / "o")]) == 2
    assert "has no prompt" in capsys.readouterr().err
    assert main(["batch", "--prompts", str(tmp_path / "nope.txt"), "--out-dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_mode_is_refused(engine, bench_files):
    with pytest.raises(UserInputError, match="--modes fancy"):
        plan_jobs(engine, read_benchmark(*bench_files), ["fancy"], [0], OPTIONS)
