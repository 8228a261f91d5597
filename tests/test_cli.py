"""`numina-engine` on the embedded demo model: outputs read back, NUMINA reports, and bad input.

Every bad input is an exit-2 message that says what is wrong, and leaves nothing behind (no file, no
folder). Those that need no model are refused before it loads: the model's note ("note: ...", printed
once it is loaded) never appears for them.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numina_engine import cli
from numina_engine.cli import main
from numina_engine.engine.loading import EMBEDDED_DEFAULT, ModelDefaults, read_defaults
from numina_engine.engine.video_io import read_mp4_frames, read_mp4_info
from numina_engine.numina.config import NuminaConfig
from assets_paths import TINY_WAN
from full_stack import full_stack

full_stack("av")          # video.mp4
full_stack("spacy")       # counts parsed from the prompt

# The demo world's words (README's first command): change these with the world.
FIRST, SECOND = "apples", "trees"
PROMPT = f"Three {FIRST} and two {SECOND} drifting left."
DEMO_STEPS = 20               # the demo model's default steps (its sidecar)
REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def console_command() -> list[str]:
    exe = shutil.which("numina-engine")
    return [exe] if exe else [sys.executable, "-m", "numina_engine.cli"]


def test_console_script_writes_video_layout_and_report(tmp_path):
    """The installed entry point, end to end: a NUMINA run on the embedded default, counts parsed from the
    prompt; the report says whether phase 2 regenerated, consistently with what phase 1 found."""
    out_dir = tmp_path / "run"
    done = subprocess.run([*console_command(), "run", "--prompt", PROMPT, "--seed", "1",
                           "--out-dir", str(out_dir), "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "counting world" in done.stderr                               # the demo model says what it is
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(paths) == {"video", "preview", "report", "layout"}
    frames, height, width, fps = read_mp4_info(out_dir / "video.mp4")
    assert (frames, height, width, fps) == (5, 32, 32, 16)
    assert read_mp4_info(out_dir / "video_preview.mp4") == (5, 256, 256, 16)      # 8x, nearest
    report = json.loads((out_dir / "report.json").read_text())
    assert report["prompt"] == PROMPT and report["seed"] == 1
    assert (report["width"], report["height"], report["frames"], report["steps"]) == (32, 32, 5, DEMO_STEPS)
    assert {"text encoding", "phase 1", "layout", "phase 2", "decode"} <= set(report["timings_s"])
    assert report["attention"] == "bf16"
    numina = report["numina"]
    assert numina["counts_asked"] == {FIRST: 3, SECOND: 2}
    assert set(numina["token_positions"]) == {FIRST, SECOND}
    found = numina["counts_found_per_frame"]
    assert all(len(v) == 5 for v in found.values())                      # 5 frames (pixel space)
    needs_edit = any(c != numina["counts_asked"][noun] for noun, counts in found.items() for c in counts)
    if needs_edit:                # the demo's modulation (centre 10) stays above its floor at all 20 steps
        assert numina["regenerated"] is True and numina["phase2_modulated_steps"] == DEMO_STEPS
    assert (out_dir / "layout.png").stat().st_size > 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["layout.png", "report.json", "video.mp4",
                                                         "video_preview.mp4"]


def test_a_count_phase_1_cannot_have_found_regenerates_every_step(tmp_path, capsys):
    """20 of the first noun: on a 16x16 token grid phase 1 finds far fewer, so the plan must add instances and
    phase 2 must regenerate; the demo's modulation is above its floor at all of its 20 steps."""
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--counts", json.dumps({FIRST: 20}),
                           "--out-dir", str(tmp_path), "--quiet")
    assert code == 0, err
    numina = json.loads((tmp_path / "report.json").read_text())["numina"]
    assert all(count < 20 for count in numina["counts_found_per_frame"][FIRST])
    assert numina["regenerated"] is True and numina["phase2"] == "modulated"
    assert numina["message"].startswith("phase 2 regenerated with the layout bias")
    assert numina["phase2_modulated_steps"] == DEMO_STEPS
    summary = numina["refinement"][FIRST]
    assert summary["plan_reaches_target"] in (True, False) and "reached_target" not in summary
    # the frames the plan falls short in are reported, and named in the message
    assert (FIRST in numina["not_reached"]) == (not summary["plan_reaches_target"])
    assert (f"{FIRST}: frame(s)" in numina["message"]) == (not summary["plan_reaches_target"])
    assert any(frame["added_labels"] for frame in summary["frames"])


def test_counts_override_and_plain_runs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--counts", json.dumps({FIRST: 2}),
                           "--out-dir", str(tmp_path / "a"), "--quiet", "--steps", "8", "--reference-step", "3")
    assert code == 0, err
    numina = json.loads((tmp_path / "a" / "report.json").read_text())["numina"]
    assert numina["counts_asked"] == {FIRST: 2} and numina["counts_source"] == "--counts"
    assert numina["reference_step"] == 3 and numina["reference_step_source"] == "--reference-step"

    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--no-numina",
                           "--out-dir", str(tmp_path / "b"), "--quiet", "--frames", "3")
    assert code == 0, err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["numina"]["enabled"] is False and not (tmp_path / "b" / "layout.png").exists()
    assert read_mp4_info(tmp_path / "b" / "video.mp4")[0] == 3


def test_few_steps_scale_the_reference_step_and_say_so(tmp_path, capsys):
    """--steps 4 on the demo model (reference step 10 of 20): the reference step becomes 50% of 4 = 2."""
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--steps", "4", "--out-dir", str(tmp_path), "--quiet")
    assert code == 0, err
    numina = json.loads((tmp_path / "report.json").read_text())["numina"]
    assert numina["reference_step"] == 2
    assert numina["reference_step_source"] == ("the checkpoint's 10 of 20 steps scaled to 4 steps "
                                               "(--reference-step not given)")


def test_prompt_without_counted_noun_runs_plain_and_says_so(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--prompt", "Rain falling over the sea at dusk",
                           "--out-dir", str(tmp_path), "--quiet", "--steps", "2")
    assert code == 0, err
    assert "note: NUMINA skipped: the prompt has no counted noun" in err
    numina = json.loads((tmp_path / "report.json").read_text())["numina"]
    assert numina == {"enabled": False, "reason": "the prompt has no counted noun; ran plain Wan2.1"}


def test_a_run_prepares_its_request_once(tmp_path, capsys, monkeypatch):
    """`run` checks the request before generating (bad input refused early) and hands that check on:
    pipeline.prepare runs once per run, not again inside generate."""
    from numina_engine.engine import pipeline

    prepared, prepare = [], pipeline.prepare

    def counted(model, request):
        prepared.append(request.prompt)
        return prepare(model, request)

    monkeypatch.setattr(pipeline, "prepare", counted)
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--steps", "2", "--size", "16*16", "--frames", "3",
                           "--out-dir", str(tmp_path), "--quiet")
    assert code == 0, err
    assert prepared == [PROMPT]
    assert json.loads((tmp_path / "report.json").read_text())["numina"]["enabled"] is True


def test_numina_mode_is_passed_through_and_recorded(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--numina-mode",
                           "engine", "--out-dir", str(tmp_path), "--quiet", "--steps", "6", "--reference-step", "3")
    assert code == 0, err
    behaviours = json.loads((tmp_path / "report.json").read_text())["numina"]["behaviours"]
    assert behaviours["mode"] == "engine" and behaviours["sigma_grid"] == "diffusers"
    assert behaviours["refine_paint_over"] is False and behaviours["token_match"] == "words"


def test_unknown_numina_mode_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--prompt", f"Three {FIRST}", "--numina-mode", "paper", "--out-dir", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert re.search("invalid choice: 'paper' \\(choose from '?authors'?, '?engine'?\\)", capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_overwrite_without_numina_removes_the_old_layout(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--steps", "2", "--out-dir", str(tmp_path), "--quiet")
    assert code == 0, err
    assert (tmp_path / "layout.png").exists()
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--steps", "2", "--no-numina", "--overwrite",
                           "--out-dir", str(tmp_path), "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "video.mp4", "video_preview.mp4"]


def test_the_demo_video_is_lossless_and_the_same_bytes_for_the_same_run(tmp_path, capsys):
    """32x32 video.mp4 keeps what the counter counts: exactly the generated frames (RGB H.264 at QP 0),
    and the preview is the same frames, 8x nearest-upscaled."""
    from numina_engine import Engine, GenerationRequest

    engine = Engine.load(device="cpu")
    result = engine.generate(GenerationRequest(prompt=PROMPT, steps=3, numina=False), progress=False)
    engine.save(result, tmp_path / "a", preview=True)
    engine.save(result, tmp_path / "b", preview=True)
    generated = result.frames.numpy().astype(np.int16)
    decoded = read_mp4_frames(tmp_path / "a" / "video.mp4").astype(np.int16)
    assert np.array_equal(decoded, generated)
    preview = read_mp4_frames(tmp_path / "a" / "video_preview.mp4").astype(np.int16)
    assert preview.shape == (5, 256, 256, 3)
    block_means = preview.reshape(5, 32, 8, 32, 8, 3).mean(axis=(2, 4))
    assert np.abs(block_means - generated).mean() < 2.0
    for name in ("video.mp4", "video_preview.mp4"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_counts_command_prints_one_json_line(capsys):
    code, out, _ = run_cli(capsys, "counts", "Three cats chasing two dogs")
    assert code == 0 and out == '{"cats": 3, "dogs": 2}\n'


def test_version_and_counts_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == "numina-engine 0.1.0\n"
    with pytest.raises(SystemExit):
        main(["counts", "--help"])
    assert "the prompt to parse" in capsys.readouterr().out


def test_help_shows_the_defaults_of_both_models_as_they_are():
    """--help's numbers are the demo model's sidecar and Wan2.1's own defaults, not typed-in copies."""
    demo = read_defaults(EMBEDDED_DEFAULT)
    wan, wan_numina = ModelDefaults(), NuminaConfig()
    assert cli.WAN21_DEFAULTS == {"size": f"{wan.width}*{wan.height}", "frames": wan.frames, "steps": wan.steps,
                                  "guide_scale": wan.guide_scale, "shift": wan.shift,
                                  "reference_step": wan_numina.reference_step,
                                  "reference_layer": wan_numina.reference_layer}
    assert cli.demo_defaults() == {"size": f"{demo.width}*{demo.height}", "frames": demo.frames,
                                   "steps": demo.steps, "guide_scale": demo.guide_scale, "shift": demo.shift,
                                   "reference_step": demo.numina["reference_step"],
                                   "reference_layer": demo.numina["reference_layer"]}
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert f"the demo model (no --ckpt-dir) {demo.shift}, Wan2.1 {wan.shift}" in text
    assert (f"the demo model (no --ckpt-dir) {demo.numina['reference_step']}, "
            f"Wan2.1 {wan_numina.reference_step}") in text


@pytest.mark.parametrize("args, message", [
    (["--size", "33*32"], "width 33 must be a positive multiple of 2"),
    (["--size", "big"], "is not WIDTH\\*HEIGHT"),
    (["--size", "0*0"], "--size width 0 must be at least 1"),
    (["--frames", "-3"], "--frames -3 must be at least 1"),
    (["--frames", "0"], "--frames 0 must be at least 1"),
    (["--steps", "0"], "--steps 0 must be at least 1"),
    (["--prompt", "   "], "the prompt is empty"),
    (["--ckpt-dir", "/nonexistent/wan"], "does not exist"),
    (["--device", "tpu"], "--device tpu is not a device this engine runs on: use cpu, cuda or cuda:N"),
    (["--device", "meta"], "--device meta is not a device this engine runs on"),
    (["--guide-scale", "nan"], "--guide-scale nan must be a finite number"),
    (["--guide-scale", "inf"], "--guide-scale inf must be a finite number"),
    (["--shift=-inf"], "--shift -inf must be a finite number"),
    (["--seed", str(2 ** 70)], f"--seed {2 ** 70} must be a whole number from 0 to 2\\*\\*64-1"),
    (["--seed", "-1"], "--seed -1 must be a whole number from 0"),
    (["--counts", ""], "--counts is empty"),
    (["--counts", json.dumps({FIRST: 3, "horses": 1})],
     f"'horses' is not a word of the prompt.*counts the nouns \\['{FIRST}', '{SECOND}'\\]"),
    (["--counts", json.dumps({FIRST: 0})], "from 1 to 20, got 0"),
    (["--counts", json.dumps({FIRST: 21})], "from 1 to 20, got 21"),
    (["--counts", '{"a": 3,, "b": 2}'], "not valid JSON \\(Expecting property name.* at character 9\\)"),
    (["--counts", json.dumps([FIRST])], "must be a non-empty JSON object"),
    (["--reference-layer", "9"], "past the model's last block"),
    (["--reference-step", "40"], "--reference-step 40 is not a step of a 20-step run \\(0 to 19\\): lower "
                                 "--reference-step or raise --steps, or leave --reference-step out to use 10"),
    (["--steps", "5", "--reference-step", "8"], "--reference-step 8 is not a step of a 5-step run \\(0 to 4\\).*"
                                                "to use 2 \\(the checkpoint's 10 of 20 steps, scaled\\)"),
    (["--prompt", " ".join(["two dogs"] * 1000)],
     "the prompt asks for 2000 'dogs' \\(counted from the prompt, every mention added up\\).*pass --counts"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, args, message):
    out_dir = tmp_path / "out" / "nested"
    argv = ["run", "--prompt", PROMPT, "--out-dir", str(out_dir), "--quiet"]
    if "--prompt" in args:
        argv = ["run", "--out-dir", str(out_dir), "--quiet"]
    code, _, err = run_cli(capsys, *argv, *args)
    assert code == 2
    assert err.startswith("numina-engine: error: ")
    assert re.search(message, err, re.S), err
    assert list(tmp_path.iterdir()) == []


MODEL_FREE_CHECKS = ["--size 0*0", "--frames 0", "--device tpu", "--guide-scale nan", "--counts ", "--seed -1"]


@pytest.mark.parametrize("flag", MODEL_FREE_CHECKS)
def test_checks_that_need_no_model_answer_before_it_loads(tmp_path, capsys, flag):
    name, _, value = flag.partition(" ")
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, name, value, "--out-dir", str(tmp_path / "o"))
    assert code == 2 and "note:" not in err          # the demo model's note is printed once it is loaded


def test_cuda_without_gpu_is_refused_with_what_to_do(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    code, _, err = run_cli(capsys, "run", "--prompt", "two dogs", "--device", "cuda", "--out-dir", str(tmp_path / "o"))
    expected = "is a CPU-only build. Use --device cpu, or install a CUDA build" if torch.version.cuda is None \
        else "sees no GPU"
    assert code == 2 and expected in err and not (tmp_path / "o").exists()


def test_fp8_attention_without_fp8_tensor_cores_is_refused_before_the_model_loads(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--device", "cpu", "--attention", "fp8",
                           "--out-dir", str(tmp_path / "o"))
    assert code == 2 and "--attention fp8: FP8 attention needs a CUDA GPU" in err and "--attention bf16" in err
    assert "note:" not in err and not (tmp_path / "o").exists()


def test_existing_outputs_are_not_overwritten_without_asking(tmp_path, capsys):
    (tmp_path / "video.mp4").write_bytes(b"precious")
    code, _, err = run_cli(capsys, "run", "--prompt", "two dogs", "--out-dir", str(tmp_path), "--quiet")
    assert code == 2 and "--overwrite" in err and "note:" not in err
    assert (tmp_path / "video.mp4").read_bytes() == b"precious"


def test_out_dir_that_is_a_file_or_under_one_is_refused(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--out-dir", str(a_file))
    assert code == 2 and f"--out-dir {a_file} is a file, not a folder" in err and "note:" not in err
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--out-dir", str(a_file / "sub"))
    assert code == 2 and f"{a_file} is a file, not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("where", ["existing", "under"])
def test_read_only_out_dir_is_refused_before_generation(tmp_path, capsys, where):
    """A folder without write bits is refused before the model loads (also for root, who could write)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    out_dir = folder if where == "existing" else folder / "new" / "run"
    try:
        code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--out-dir", str(out_dir))
        assert code == 2 and "read-only: choose a folder you can write to" in err and "note:" not in err
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_ckpt_dir_that_is_a_file_says_so(tmp_path, capsys):
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"\0" * 8)
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--ckpt-dir", str(a_file),
                           "--out-dir", str(tmp_path / "o"))
    assert code == 2 and "is a file, not a folder" in err and not (tmp_path / "o").exists()


def broken_copy_of_tiny_wan(tmp_path: Path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(TINY_WAN, copy)
    return copy


def test_truncated_text_encoder_weights_are_a_checkpoint_error(tmp_path, capsys):
    ckpt = broken_copy_of_tiny_wan(tmp_path)
    weights = ckpt / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = run_cli(capsys, "run", "--prompt", "two dogs", "--ckpt-dir", str(ckpt),
                           "--out-dir", str(tmp_path / "o"))
    assert code == 2 and f"cannot read the text encoder weights in {ckpt / 'text_encoder'}" in err
    assert "Download the folder again" in err and not (tmp_path / "o").exists()


def test_garbage_sentencepiece_model_is_named_as_damaged(tmp_path, capsys):
    ckpt = broken_copy_of_tiny_wan(tmp_path)
    (ckpt / "tokenizer" / "tokenizer.json").unlink()           # transformers would read this one instead
    (ckpt / "tokenizer" / "spiece.model").write_bytes(os.urandom(64))
    code, _, err = run_cli(capsys, "run", "--prompt", "two dogs", "--ckpt-dir", str(ckpt),
                           "--out-dir", str(tmp_path / "o"))
    assert code == 2 and "spiece.model is not a SentencePiece model" in err and "tiktoken" not in err
    assert not (tmp_path / "o").exists()


def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path):
    """SIGINT while generating: one line, exit 130, no output folder."""
    out_dir = tmp_path / "o" / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "numina_engine.cli", "run", "--prompt", PROMPT, "--quiet",
                                "--steps", "200", "--out-dir", str(out_dir)],
                               stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        first_line = process.stderr.readline()         # the demo model's note: loaded, generation starts
        assert first_line.startswith("note: embedded demo model"), first_line
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()
    assert rest == "numina-engine: interrupted, nothing written\n"
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_save_removes_what_it_made(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the outputs are written (here: in the layout image): no file and no folder remain."""
    from numina_engine import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "render_layout_png", interrupted)
    out_dir = tmp_path / "a" / "b"
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--steps", "2", "--out-dir", str(out_dir), "--quiet")
    assert code == 130 and err.endswith("numina-engine: interrupted, nothing written\n")
    assert list(tmp_path.iterdir()) == []


def test_cpu_thread_count_for_tiny_shapes_is_the_measured_fastest():
    """The CLI's CPU_THREADS is the fastest thread count of the committed measurement."""
    results = json.loads((REPO / "docs" / "results" / "cli_threads_cpu.json").read_text())
    assert results["script"] == "bench/cli_threads.py" and results["results"]["same_frames_for_all"]
    medians = results["results"]["median_wall_s"]
    assert int(min(medians, key=medians.get)) == cli.CPU_THREADS == results["results"]["fastest_threads"]
    assert math.isfinite(min(medians.values()))
