"""`numina-engine` on the embedded demo model: outputs read back, NUMINA reports, and bad input."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from numina_engine.cli import main
from numina_engine.engine.video_io import read_mp4_info

pytest.importorskip("av")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_console_script_writes_video_layout_and_report(tmp_path):
    """The installed entry point, end to end: a two-phase NUMINA run on the embedded default."""
    exe = shutil.which("numina-engine")
    command = [exe] if exe else [sys.executable, "-m", "numina_engine.cli"]
    out_dir = tmp_path / "run"
    done = subprocess.run([*command, "run", "--prompt", "Three red circles and two blue squares", "--seed", "1",
                           "--out-dir", str(out_dir), "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "counting world" in done.stderr                               # the demo model says what it is
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(paths) == {"video", "report", "layout"}
    frames, height, width, fps = read_mp4_info(out_dir / "video.mp4")
    assert (frames, height, width, fps) == (5, 32, 32, 16)
    report = json.loads((out_dir / "report.json").read_text())
    assert report["prompt"] == "Three red circles and two blue squares" and report["seed"] == 1
    assert (report["width"], report["height"], report["frames"], report["steps"]) == (32, 32, 5, 20)
    assert {"text encoding", "phase 1", "layout", "phase 2", "decode"} <= set(report["timings_s"])
    numina = report["numina"]
    assert numina["counts_asked"] == {"circles": 3, "squares": 2}
    assert set(numina["token_positions"]) == {"circles", "squares"}
    assert all(len(v) == 5 for v in numina["counts_found_per_frame"].values())     # 5 frames (pixel space)
    assert (out_dir / "layout.png").stat().st_size > 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["layout.png", "report.json", "video.mp4"]


def test_counts_override_and_plain_runs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--prompt", "Three red circles and two blue squares", "--counts", '{"circles": 2}',
                           "--out-dir", str(tmp_path / "a"), "--quiet", "--steps", "8", "--reference-step", "3")
    assert code == 0, err
    numina = json.loads((tmp_path / "a" / "report.json").read_text())["numina"]
    assert numina["counts_asked"] == {"circles": 2} and numina["counts_source"] == "--counts"
    assert numina["reference_step"] == 3

    code, _, err = run_cli(capsys, "run", "--prompt", "Three red circles and two blue squares", "--no-numina",
                           "--out-dir", str(tmp_path / "b"), "--quiet", "--frames", "3")
    assert code == 0, err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["numina"]["enabled"] is False and not (tmp_path / "b" / "layout.png").exists()
    assert read_mp4_info(tmp_path / "b" / "video.mp4")[0] == 3


def test_prompt_without_counted_noun_runs_plain_and_says_so(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--prompt", "Rain falling over the sea at dusk",
                           "--out-dir", str(tmp_path), "--quiet", "--steps", "2")
    assert code == 0, err
    numina = json.loads((tmp_path / "report.json").read_text())["numina"]
    assert numina == {"enabled": False, "reason": "the prompt has no counted noun; ran plain Wan2.1"}


def test_numina_mode_is_passed_through_and_recorded(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--prompt", "Three red circles and two blue squares", "--numina-mode",
                           "engine", "--out-dir", str(tmp_path), "--quiet", "--steps", "6", "--reference-step", "3")
    assert code == 0, err
    behaviours = json.loads((tmp_path / "report.json").read_text())["numina"]["behaviours"]
    assert behaviours["mode"] == "engine" and behaviours["sigma_grid"] == "diffusers"
    assert behaviours["refine_paint_over"] is False and behaviours["token_match"] == "words"


def test_unknown_numina_mode_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--prompt", "Three red circles", "--numina-mode", "paper", "--out-dir", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert re.search("invalid choice: 'paper' \\(choose from '?authors'?, '?engine'?\\)", capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_counts_command_prints_one_json_line(capsys):
    code, out, _ = run_cli(capsys, "counts", "Three cats chasing two dogs")
    assert code == 0 and out == '{"cats": 3, "dogs": 2}\n'


@pytest.mark.parametrize("args, message", [
    (["--size", "33*32"], "width 33 must be a positive multiple of 2"),
    (["--size", "big"], "is not WIDTH\\*HEIGHT"),
    (["--frames", "-3"], "--frames -3 must be at least 1"),
    (["--steps", "0"], "must be at least 1"),
    (["--prompt", "   "], "the prompt is empty"),
    (["--ckpt-dir", "/nonexistent/wan"], "does not exist"),
    (["--counts", '{"circles": 3, "horses": 1}'],
     "'horses' is not a word of the prompt.*counts the nouns \\['circles', 'squares'\\]"),
    (["--counts", '{"circles": 0}'], "from 1 to 20, got 0"),
    (["--counts", '{"circles": 21}'], "from 1 to 20, got 21"),
    (["--counts", '{"circles": 3,, "squares": 2}'], "not valid JSON \\(Expecting property name.* at character 15\\)"),
    (["--counts", '["circles"]'], "must be a non-empty JSON object"),
    (["--reference-layer", "9"], "past the model's last block"),
    (["--reference-step", "40"], "reference_step must be in \\[0, 19\\]"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, args, message):
    out_dir = tmp_path / "out"
    argv = ["run", "--prompt", "Three red circles and two blue squares", "--out-dir", str(out_dir), "--quiet"]
    if "--prompt" in args:
        argv = ["run", "--out-dir", str(out_dir), "--quiet"]
    code, _, err = run_cli(capsys, *argv, *args)
    assert code == 2
    assert err.startswith("numina-engine: error: ")
    import re
    assert re.search(message, err, re.S), err
    assert not out_dir.exists()


def test_cuda_without_gpu_is_refused(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_cli(capsys, "run", "--prompt", "two dogs", "--device", "cuda", "--out-dir", str(tmp_path / "o"))
    assert code == 2 and "no CUDA GPU" in err


def test_existing_outputs_are_not_overwritten_without_asking(tmp_path, capsys):
    (tmp_path / "video.mp4").write_bytes(b"precious")
    code, _, err = run_cli(capsys, "run", "--prompt", "two dogs", "--out-dir", str(tmp_path), "--quiet")
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "video.mp4").read_bytes() == b"precious"
