"""`eval`: the authors' scoring and JSON format, breakdowns, missing videos, the demo counter against the
counting world's own counter (numina_engine.demo.counter, which bench/countbench_demo.py scores with) on the same
frames, and GroundingDINO through transformers with a tiny random checkpoint."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from numina_engine import Engine
from numina_engine.cli import main
from numina_engine.demo.counter import count_world_nouns, video_accuracy
from numina_engine.demo.scenes import COLOURS, SHAPES, kind_of_noun
from numina_engine.engine.video_io import write_mp4
from numina_engine.workflow.batch import plan_jobs, run_batch
from numina_engine.workflow.demo_benchmark import BENCH_SEED, demo_benchmark, write_demo_benchmark
from numina_engine.workflow.detectors import DemoWorldCounter
from numina_engine.workflow.evaluate import (breakdown, evaluate_folder, evaluate_videos, find_video_for_prompt,
                                             frame_scores, prompt_accuracy)
from numina_engine.workflow.frames import read_video_frames
from numina_engine.workflow.prompt_files import BenchmarkPrompt, prompt_words, read_benchmark

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("countbench_demo", REPO / "bench" / "countbench_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FixedCounter:
    """Detections given by the test: {prompt: {noun: [count per frame]}}."""
    name = "fixed"

    def __init__(self, detections):
        self.detections = detections

    def count(self, frames, prompt, nouns):
        return {noun: self.detections[prompt][noun][:len(frames)] for noun in nouns}


def _world_score(frames, target: dict[str, int]) -> tuple[float, dict[str, list[int]]]:
    """(video accuracy, {noun: [count per frame]}) as bench/countbench_demo.py scores a video: the world's
    counter on the frames, CountBench's accuracy."""
    counts = count_world_nouns(frames, list(target))
    return video_accuracy(counts, target), counts


def _video(path, frames=4, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8)
    write_mp4(path, pixels)


def test_scoring_is_the_authors_rule_by_hand():
    per_noun = {"cats": [3, 2, 3, 3], "dogs": [2, 2, 1, 0]}
    targets = {"cats": 3, "dogs": 2}
    # frame 1: both right -> 1; frame 2: dogs only -> 1/2; frame 3: cats only -> 1/2; frame 4: cats only -> 1/2
    assert frame_scores(per_noun, targets) == [1.0, 0.5, 0.5, 0.5]
    assert prompt_accuracy(per_noun, targets) == pytest.approx(2.5 / 4)


def test_results_json_is_the_authors_format_and_missing_videos_are_skipped(tmp_path):
    items = [BenchmarkPrompt(1, "three cats and two dogs", 1, {"cats": 3, "dogs": 2}),
             BenchmarkPrompt(2, "one bird", 2, {"bird": 1}),
             BenchmarkPrompt(3, "two birds", 3, {"birds": 2})]
    _video(tmp_path / "001_three-cats.mp4", seed=1)
    _video(tmp_path / "003_two-birds.mp4", seed=3)
    counter = FixedCounter({"three cats and two dogs": {"cats": [3, 2, 3, 3], "dogs": [2, 2, 1, 0]},
                            "two birds": {"birds": [2, 2, 2, 1]}})
    evaluation = evaluate_folder(tmp_path, items, counter)
    assert evaluation.missing == [2] and evaluation.frames == 8
    results = evaluation.results
    assert list(results) == ["overall_accuracy", "num_prompts", "box_threshold", "text_threshold", "per_prompt"]
    assert results["num_prompts"] == 2
    assert results["overall_accuracy"] == pytest.approx((2.5 / 4 + 3 / 4) / 2)
    first, second = results["per_prompt"]
    assert list(first) == ["index", "prompt", "video", "targets", "num_frames", "per_noun", "prompt_accuracy"]
    assert first == {"index": 1, "prompt": "three cats and two dogs", "video": "001_three-cats.mp4",
                     "targets": {"cats": 3, "dogs": 2}, "num_frames": 4,
                     "per_noun": {"cats": [3, 2, 3, 3], "dogs": [2, 2, 1, 0]}, "prompt_accuracy": 0.625}
    assert second["index"] == 3 and second["prompt_accuracy"] == 0.75
    parts = breakdown(results)
    # target 3: cats right in 3 of 4 frames; target 2: dogs 2 of 4, birds 3 of 4
    assert parts["by_target_count"] == {"2": {"accuracy": pytest.approx(0.625), "nouns": 2},
                                        "3": {"accuracy": 0.75, "nouns": 1}}
    assert parts["by_num_nouns"] == {"1": {"accuracy": 0.75, "prompts": 1}, "2": {"accuracy": 0.625, "prompts": 1}}

    summary = evaluate_videos(tmp_path, items, counter)
    assert summary["folders"][tmp_path.name]["missing_videos"] == [2]
    assert json.loads((tmp_path / "eval_breakdown.json").read_text())["missing_videos"] == [2]
    assert json.loads((tmp_path / "eval_results.json").read_text()) == json.loads(json.dumps(results))
    assert summary["by_target_count"][tmp_path.name]["2"]["nouns"] == 2


def test_video_lookup_follows_the_authors_names(tmp_path):
    for name in ("002_b.mp4", "video_003.mp4", "001_a.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert find_video_for_prompt(tmp_path, 1).name == "001_a.mp4"
    assert find_video_for_prompt(tmp_path, 3).name == "video_003.mp4"
    assert find_video_for_prompt(tmp_path, 4) is None        # named folder: no positional guess
    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    for name in ("b.mp4", "a.mp4"):
        (unnamed / name).write_bytes(b"")
    assert find_video_for_prompt(unnamed, 2).name == "b.mp4"
    assert find_video_for_prompt(unnamed, 3) is None


def test_demo_benchmark_files_are_bench_countbench_demos_prompts(tmp_path):
    bench = _bench_module()
    assert bench.BENCH_SEED == BENCH_SEED
    expected = bench.benchmark_prompts(6, BENCH_SEED)
    assert bench.benchmark_prompts(6) == expected
    assert demo_benchmark(6) == [(item["prompt"], item["target"]) for item in expected]
    # the world's nouns name the look: captions never say a colour or a shape ("ring" is a noun as well)
    looks = (set(COLOURS) | set(SHAPES) | {f"{shape}s" for shape in SHAPES} | {"crosses"}) - {"ring", "rings"}
    for item in expected:
        assert all(kind_of_noun(noun) is not None for noun in item["target"])
        assert not set(prompt_words(item["prompt"])) & looks, item["prompt"]
    items = read_benchmark(*write_demo_benchmark(tmp_path, 6))
    assert [(i.prompt, i.counts) for i in items] == [(e["prompt"], e["target"]) for e in expected]


def test_demo_counter_eval_equals_the_worlds_counter_on_demo_videos(tmp_path, capsys):
    bench = _bench_module()
    prompts, counts = write_demo_benchmark(tmp_path / "bench", 4)
    engine = Engine.load(device="cpu")
    options = {"steps": 2, "numina_overrides": {"reference_step": 1}}
    jobs = plan_jobs(engine, read_benchmark(prompts, counts), ["plain", "numina"], [0], options)
    out = tmp_path / "out"
    run_batch(engine, jobs, out, options, progress=False)
    assert main(["eval", "--videos", str(out), "--prompts", str(prompts), "--counts", str(counts),
                 "--detector", "demo-counter"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert sorted(printed) == ["numina/seed0", "plain/seed0"]
    items = bench.benchmark_prompts(4)
    for mode in ("plain", "numina"):
        results = json.loads((out / mode / "seed0" / "eval_results.json").read_text())
        assert results["num_prompts"] == 4 and results["box_threshold"] is None
        for entry, item in zip(results["per_prompt"], items):
            frames = read_video_frames(out / mode / "seed0" / entry["video"])
            assert entry["prompt"] == item["prompt"] and entry["targets"] == item["target"]
            accuracy, per_noun = _world_score(torch.from_numpy(frames), item["target"])
            assert entry["prompt_accuracy"] == pytest.approx(accuracy, abs=1e-12)
            assert entry["per_noun"] == per_noun
        assert printed[f"{mode}/seed0"] == round(results["overall_accuracy"], 4)
    summary = json.loads((out / "eval_summary.json").read_text())
    assert sorted(summary["by_target_count"]) == ["numina", "plain"]
    assert Image.open(out / "accuracy_by_count.png").size == (640, 420)


def test_demo_counter_on_rendered_scenes_counts_them_exactly(tmp_path):
    from numina_engine.demo.world import WorldConfig, captions, render_uint8, sample_scenes, scene_counts

    scenes = sample_scenes(3, seed=7, config=WorldConfig())
    clips = render_uint8(scenes, WorldConfig()).numpy()
    items = [BenchmarkPrompt(i + 1, text, i + 1, target)
             for i, (text, target) in enumerate(zip(captions(scenes, seed=7), scene_counts(scenes)))]
    for item, clip in zip(items, clips):
        write_mp4(tmp_path / f"{item.index:03d}_scene.mp4", clip)
    summary = evaluate_videos(tmp_path, items, DemoWorldCounter())
    assert summary["folders"][tmp_path.name]["overall_accuracy"] == 1.0


# --- GroundingDINO: a tiny random checkpoint saved and loaded as a real one would be -------------------------

DINO_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "cats", "dogs", "dog", "bird"]


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessorPil, GroundingDinoProcessor, SwinConfig)

    folder = tmp_path_factory.mktemp("grounding-dino-tiny")
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(DINO_VOCAB)})
    assert tokenizer("cats .")["input_ids"] == [2, 6, 5, 3]      # the nouns are words of the vocabulary, not [UNK]
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 192}),
        tokenizer=tokenizer)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=128, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], window_size=2,
                                   out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(DINO_VOCAB), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=30, num_feature_levels=4,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class DetectorSpy:
    """Wraps GroundingDinoForObjectDetection.forward (installed with monkeypatch): records, per detector call, the
    noun of the caption and the number of frames; with `planned` ({noun: [[box score of each query that should
    score above 0.01] per frame]}), it then replaces the call's logits [frames, queries, text positions] so
    that each frame's queries score exactly those box scores (the others 0.01), frames taken in order per noun."""

    def __init__(self, monkeypatch, planned=None):
        from transformers import GroundingDinoForObjectDetection

        self.calls: list[tuple[str, int]] = []
        self.planned = planned
        self.next_frame: dict[str, int] = {}
        forward = GroundingDinoForObjectDetection.forward

        def spy(model, *args, **kwargs):
            outputs = forward(model, *args, **kwargs)
            self._record(kwargs["input_ids"], outputs)
            return outputs

        monkeypatch.setattr(GroundingDinoForObjectDetection, "forward", spy)

    def _record(self, input_ids, outputs):
        nouns = {DINO_VOCAB[int(i)] for i in input_ids[:, 1]}
        assert len(nouns) == 1, nouns                               # one noun per call
        noun = nouns.pop()
        caption = [DINO_VOCAB.index(word) for word in ("[CLS]", noun, ".", "[SEP]")]
        assert input_ids.tolist() == [caption] * len(input_ids)    # the caption "<noun> ." of every frame
        self.calls.append((noun, len(input_ids)))
        if self.planned is None:
            return
        first = self.next_frame.get(noun, 0)
        self.next_frame[noun] = first + len(input_ids)
        logits = torch.full_like(outputs.logits, float(torch.logit(torch.tensor(0.01))))
        for row, scores in enumerate(self.planned[noun][first:first + len(input_ids)]):
            logits[row, :len(scores), 1] = torch.logit(torch.tensor(scores, dtype=logits.dtype))
        outputs["logits"] = logits


def _count_one_frame_at_a_time(folder, frames, noun):
    """The authors' count per frame, by hand from the raw outputs: queries whose best token probability is above
    the box threshold 0.32, one frame per detector call."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    counts = []
    with torch.inference_mode():
        for frame in frames:
            inputs = processor(images=[frame], text=[f"{noun} ."], return_tensors="pt")
            logits = model(**inputs).logits[0]                          # [queries, text positions]
            counts.append(int((logits.sigmoid().max(dim=-1).values > 0.32).sum()))
    return counts


def _accuracy_by_hand(per_noun, targets):
    """The authors' formula written out: mean over frames of the fraction of nouns whose count is the target."""
    frames = len(next(iter(per_noun.values())))
    return sum(sum(per_noun[noun][t] == target for noun, target in targets.items()) / len(targets)
               for t in range(frames)) / frames


def _grounding_dino_eval(tmp_path, folder, prompts, targets, frames, batch_size):
    """Write the benchmark files and one `frames`-frame video per prompt, run `numina-engine eval` with
    GroundingDINO from `folder` on the CPU; returns the videos folder."""
    (tmp_path / "prompts.txt").write_text("".join(f"{prompt}\n" for prompt in prompts))
    (tmp_path / "counts.jsonl").write_text("".join(json.dumps(target) + "\n" for target in targets))
    videos = tmp_path / "videos"
    videos.mkdir()
    for index in range(1, len(prompts) + 1):
        _video(videos / f"{index:03d}_video.mp4", frames=frames, seed=index)
    assert main(["eval", "--videos", str(videos), "--prompts", str(tmp_path / "prompts.txt"),
                 "--counts", str(tmp_path / "counts.jsonl"), "--detector", "grounding-dino",
                 "--detector-dir", str(folder), "--device", "cpu", "--batch-size", str(batch_size)]) == 0
    return videos


def test_grounding_dino_eval_runs_batched_through_the_saved_checkpoint(tmp_path, tiny_grounding_dino, capsys,
                                                                        monkeypatch):
    spy = DetectorSpy(monkeypatch)
    videos = _grounding_dino_eval(tmp_path, tiny_grounding_dino, ["Three cats and two dogs", "A dog"],
                                  [{"cats": 3, "dogs": 2}, {"dog": 1}], frames=5, batch_size=2)
    # 5 frames, 2 per detector call, one pass per noun of each video
    assert spy.calls == [("cats", 2), ("cats", 2), ("cats", 1), ("dogs", 2), ("dogs", 2), ("dogs", 1),
                         ("dog", 2), ("dog", 2), ("dog", 1)]
    assert "frames/s" in capsys.readouterr().err
    results = json.loads((videos / "eval_results.json").read_text())
    assert (results["box_threshold"], results["text_threshold"], results["num_prompts"]) == (0.32, 0.25, 2)
    for entry in results["per_prompt"]:
        frames = read_video_frames(videos / entry["video"])
        by_hand = {noun: _count_one_frame_at_a_time(tiny_grounding_dino, frames, noun) for noun in entry["targets"]}
        assert entry["per_noun"] == by_hand
        assert entry["prompt_accuracy"] == pytest.approx(_accuracy_by_hand(by_hand, entry["targets"]))
    breakdown_file = json.loads((videos / "eval_breakdown.json").read_text())
    assert breakdown_file["frames_counted"] == 10 and breakdown_file["frames_per_second"] > 0


def test_grounding_dino_counts_the_boxes_above_the_box_threshold_and_scores_them_by_hand(
        tmp_path, tiny_grounding_dino, monkeypatch):
    # box scores per frame around the box threshold 0.32; 0.26 is above the text threshold 0.25, which does not count
    planned = {"cats": [[0.9, 0.5, 0.321, 0.319, 0.26], [0.9, 0.321, 0.31, 0.26], [0.95, 0.8, 0.7, 0.319],
                        [0.33, 0.34, 0.35, 0.1]],
               "dogs": [[0.9, 0.6], [0.321, 0.322, 0.319], [0.5, 0.31], []],
               "bird": [[0.4, 0.2], [0.325], [0.318, 0.3], [0.99, 0.26]]}
    spy = DetectorSpy(monkeypatch, planned)
    videos = _grounding_dino_eval(tmp_path, tiny_grounding_dino, ["Three cats and two dogs", "One bird"],
                                  [{"cats": 3, "dogs": 2}, {"bird": 1}], frames=4, batch_size=3)
    assert spy.next_frame == {"cats": 4, "dogs": 4, "bird": 4}
    first, second = json.loads((videos / "eval_results.json").read_text())["per_prompt"]
    assert first["per_noun"] == {"cats": [3, 2, 3, 3], "dogs": [2, 2, 1, 0]}
    assert second["per_noun"] == {"bird": [1, 1, 0, 1]}
    # frames: both right, dogs only, cats only, cats only -> (1 + 1/2 + 1/2 + 1/2) / 4; the bird 3 frames of 4
    assert (first["prompt_accuracy"], second["prompt_accuracy"]) == (0.625, 0.75)
    assert json.loads((videos / "eval_results.json").read_text())["overall_accuracy"] == (0.625 + 0.75) / 2


def test_bad_detector_folders_and_videos_are_user_errors(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A dog\n")
    counts = tmp_path / "counts.jsonl"
    counts.write_text('{"dog": 1}\n')
    videos = tmp_path / "videos"
    videos.mkdir()
    _video(videos / "001_dog.mp4")
    base = ["eval", "--videos", str(videos), "--prompts", str(prompts), "--counts", str(counts)]

    assert main(base + ["--detector-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(base) == 2
    assert "needs --detector-dir" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "empty"
    not_a_checkpoint.mkdir()
    assert main(base + ["--detector-dir", str(not_a_checkpoint)]) == 2
    assert "no config.json" in capsys.readouterr().err
    (not_a_checkpoint / "config.json").write_text('{"model_type": "bert"}')
    assert main(base + ["--detector-dir", str(not_a_checkpoint)]) == 2
    assert "'bert' model, not GroundingDINO" in capsys.readouterr().err
    assert main(["eval", "--videos", str(tmp_path / "none"), "--prompts", str(prompts), "--counts", str(counts),
                 "--detector", "demo-counter"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_npy_videos_without_pyav_are_lossless_and_evaluated(tmp_path, capsys):
    """`batch --video-format npy` (for the GPU image, which has no PyAV): the frames exactly as generated, and
    eval scores them as the world's counter scores the generated frames (bench/countbench_demo.py's rule)."""
    from numina_engine import GenerationRequest

    bench = _bench_module()
    prompts, counts = write_demo_benchmark(tmp_path / "bench", 2)
    out = tmp_path / "out"
    assert main(["batch", "--prompts", str(prompts), "--counts", str(counts), "--modes", "plain",
                 "--video-format", "npy", "--out-dir", str(out), "--steps", "2", "--device", "cpu", "--quiet"]) == 0
    assert not list(out.rglob("*.mp4")) and len(list(out.glob("plain/seed0/*.npy"))) == 2
    assert main(["eval", "--videos", str(out), "--prompts", str(prompts), "--counts", str(counts),
                 "--detector", "demo-counter"]) == 0
    results = json.loads((out / "plain" / "seed0" / "eval_results.json").read_text())
    engine = Engine.load(device="cpu")
    for entry, item in zip(results["per_prompt"], bench.benchmark_prompts(2)):
        frames = engine.generate(GenerationRequest(prompt=item["prompt"], seed=0, steps=2, numina=False),
                                 progress=False).frames
        assert np.array_equal(np.load(out / "plain" / "seed0" / entry["video"]), frames.numpy())
        accuracy, per_noun = _world_score(frames, item["target"])
        assert entry["prompt_accuracy"] == pytest.approx(accuracy, abs=1e-12) and entry["per_noun"] == per_noun
