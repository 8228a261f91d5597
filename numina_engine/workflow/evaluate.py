"""Counting accuracy of generated videos, scored as the NUMINA authors' evaluator scores it.

github.com/H-EmbodVis/NUMINA evaluation/eval_counting.py: every frame of a prompt's video is counted per noun;
a frame scores the fraction of the prompt's nouns whose count equals the target; a prompt scores the mean over
its frames; the benchmark scores the mean over the prompts evaluated (0.0 when none). The video of prompt k
(1-based) is the first `kkk_*.mp4` of the folder in name order, else `video_kkk.mp4` (else, an addition for
`batch --video-format npy` on machines without PyAV, the first `kkk_*.npy` of frames). A prompt without a video,
or whose video has no frame, is reported and skipped (not scored, not in num_prompts). Results are written in
their JSON format (`eval_results.json`: overall_accuracy, num_prompts, box_threshold, text_threshold,
per_prompt[{index, prompt, video, targets, num_frames, per_noun, prompt_accuracy}]); what they do not write
(breakdowns, missing videos, speed) goes to a separate `eval_breakdown.json`, so their file stays as theirs.
With the demo counter, which has no detector thresholds, box_threshold and text_threshold are null.

One deviation: their last fallback takes the (k-1)-th mp4 of the folder when no name matches, which scores the
wrong video against prompt k as soon as one video is missing. Here that positional fallback is used only for a
folder where no mp4 follows either naming (a folder of arbitrarily named videos, their use case for it).
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..api import write_json_atomic
from ..engine.video_io import atomic_output
from ..errors import UserInputError
from .detectors import BOX_THRESHOLD, TEXT_THRESHOLD, ObjectCounter
from .frames import read_video_frames
from .prompt_files import BenchmarkPrompt

RESULTS_NAME = "eval_results.json"
BREAKDOWN_NAME = "eval_breakdown.json"
SUMMARY_NAME = "eval_summary.json"
PLOT_NAME = "accuracy_by_count.png"
_NAMED = re.compile(r"^(\d{3,})_.*\.mp4$|^video_(\d{3,})\.mp4$")


def find_video_for_prompt(video_dir: Path, index: int) -> Path | None:
    """The video of prompt `index` (1-based) in `video_dir`, or None (see the module docstring)."""
    names = sorted(p.name for p in video_dir.iterdir() if p.is_file() and p.name.endswith(".mp4"))
    prefix = f"{index:03d}_"
    for name in names:
        if name.startswith(prefix):
            return video_dir / name
    if f"video_{index:03d}.mp4" in names:
        return video_dir / f"video_{index:03d}.mp4"
    frames = sorted(p.name for p in video_dir.glob(f"{prefix}*.npy") if p.is_file())
    if frames:
        return video_dir / frames[0]
    if not any(_NAMED.match(name) for name in names) and 0 <= index - 1 < len(names):
        return video_dir / names[index - 1]
    return None


def frame_scores(per_noun: dict[str, list[int]], targets: dict[str, int]) -> list[float]:
    """Per frame, the fraction of `targets`' nouns counted right. per_noun: {noun: [count per frame]}."""
    num_frames = len(next(iter(per_noun.values())))
    return [sum(1 for noun in targets if per_noun[noun][t] == targets[noun]) / len(targets)
            for t in range(num_frames)]


def prompt_accuracy(per_noun: dict[str, list[int]], targets: dict[str, int]) -> float:
    """The mean of frame_scores over the video's frames."""
    scores = frame_scores(per_noun, targets)
    return sum(scores) / len(scores)


@dataclass
class FolderEvaluation:
    """One folder's evaluation: `results` in the authors' format, plus what it skipped and how fast it was."""
    folder: Path
    results: dict
    missing: list[int] = field(default_factory=list)       # prompt indices without a video
    no_frames: list[int] = field(default_factory=list)     # prompt indices whose video has no frame
    frames: int = 0
    count_seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.count_seconds if self.count_seconds > 0 else 0.0


def evaluate_folder(video_dir: Path, items: list[BenchmarkPrompt], counter: ObjectCounter, *,
                    log=None) -> FolderEvaluation:
    """Count and score the video of every item found in `video_dir`. Items need counts. `log`: where the
    skipped videos are reported (default sys.stderr)."""
    log = sys.stderr if log is None else log
    evaluation = FolderEvaluation(video_dir, {})
    per_prompt, accuracies = [], []
    for item in items:
        video = find_video_for_prompt(video_dir, item.index)
        if video is None:
            evaluation.missing.append(item.index)
            print(f"[{item.index}] video not found in {video_dir}, skipped", file=log)
            continue
        frames = read_video_frames(video)
        if len(frames) == 0:
            evaluation.no_frames.append(item.index)
            print(f"[{item.index}] {video.name} has no frame, skipped", file=log)
            continue
        nouns = list(item.counts)
        started = time.perf_counter()
        per_noun = counter.count(frames, item.prompt, nouns)
        evaluation.count_seconds += time.perf_counter() - started
        evaluation.frames += len(frames)
        accuracy = prompt_accuracy(per_noun, item.counts)
        accuracies.append(accuracy)
        per_prompt.append({"index": item.index, "prompt": item.prompt, "video": video.name,
                           "targets": item.counts, "num_frames": len(frames),
                           "per_noun": {noun: per_noun[noun] for noun in nouns}, "prompt_accuracy": accuracy})
    grounding = counter.name == "grounding-dino"
    evaluation.results = {
        "overall_accuracy": float(np.mean(accuracies)) if accuracies else 0.0,
        "num_prompts": len(accuracies),
        "box_threshold": getattr(counter, "box_threshold", BOX_THRESHOLD) if grounding else None,
        "text_threshold": getattr(counter, "text_threshold", TEXT_THRESHOLD) if grounding else None,
        "per_prompt": per_prompt,
    }
    return evaluation


def breakdown(results: dict) -> dict:
    """Accuracy by target count and by number of nouns, from authors'-format results.

    by_target_count[c]: over every (prompt, noun) whose target is c, the mean fraction of frames in which that
    noun is counted right; `nouns` how many such pairs. by_num_nouns[n]: the mean prompt_accuracy of the prompts
    with n nouns; `prompts` how many.
    """
    by_count: dict[int, list[float]] = {}
    by_nouns: dict[int, list[float]] = {}
    for entry in results["per_prompt"]:
        for noun, target in entry["targets"].items():
            counts = entry["per_noun"][noun]
            by_count.setdefault(target, []).append(sum(c == target for c in counts) / len(counts))
        by_nouns.setdefault(len(entry["targets"]), []).append(entry["prompt_accuracy"])
    return {"by_target_count": {str(c): {"accuracy": statistics.fmean(v), "nouns": len(v)}
                                for c, v in sorted(by_count.items())},
            "by_num_nouns": {str(n): {"accuracy": statistics.fmean(v), "prompts": len(v)}
                             for n, v in sorted(by_nouns.items())}}


def video_folders(videos: Path) -> dict[str, Path]:
    """{label: folder} to evaluate: `videos` itself when it holds mp4s, else its <mode>/seed<k> folders (the
    batch layout), labelled "<mode>/seed<k>"."""
    if not videos.is_dir():
        raise UserInputError(f"--videos {videos} does not exist (or is not a folder)")
    def has_videos(folder: Path) -> bool:
        return any(folder.glob("*.mp4")) or any(folder.glob("[0-9][0-9][0-9]*_*.npy"))

    if has_videos(videos):
        return {videos.name: videos}
    found = {f"{seed.parent.name}/{seed.name}": seed for seed in sorted(videos.glob("*/seed*"))
             if seed.is_dir() and has_videos(seed)}
    if not found:
        raise UserInputError(f"--videos {videos} holds no .mp4, nor <mode>/seed<k>/ folders with videos "
                             f"(what `numina-engine batch` writes)")
    return found


def evaluate_videos(videos: str | Path, items: list[BenchmarkPrompt], counter: ObjectCounter, *,
                    log=None) -> dict:
    """Evaluate every folder of video_folders(videos): write eval_results.json and eval_breakdown.json in each,
    and eval_summary.json and accuracy_by_count.png (one line per mode, seeds pooled) in `videos`.
    Returns the summary. `log`: where progress is reported (default sys.stderr)."""
    from .plot import write_line_plot

    log = sys.stderr if log is None else log

    missing_counts = [item.index for item in items if not item.counts]
    if missing_counts:
        raise UserInputError(f"prompts {missing_counts} have no counts: eval needs --counts noun_counts.jsonl")
    videos = Path(videos)
    summary: dict = {"detector": counter.name, "folders": {}}
    pooled: dict[str, list[dict]] = {}
    total_frames, total_seconds = 0, 0.0
    for label, folder in video_folders(videos).items():
        evaluation = evaluate_folder(folder, items, counter, log=log)
        parts = breakdown(evaluation.results)
        extras = {**parts, "missing_videos": evaluation.missing, "videos_without_frames": evaluation.no_frames,
                  "frames_counted": evaluation.frames, "frames_per_second": round(evaluation.frames_per_second, 2),
                  "detector": counter.name}
        _write_authors_json(folder / RESULTS_NAME, evaluation.results)
        write_json_atomic(folder / BREAKDOWN_NAME, extras)
        summary["folders"][label] = {"overall_accuracy": evaluation.results["overall_accuracy"],
                                     "num_prompts": evaluation.results["num_prompts"], **extras}
        pooled.setdefault(label.split("/")[0], []).extend(evaluation.results["per_prompt"])
        total_frames += evaluation.frames
        total_seconds += evaluation.count_seconds
        print(f"{label}: accuracy {evaluation.results['overall_accuracy']:.4f} over "
              f"{evaluation.results['num_prompts']} prompts ({len(evaluation.missing)} missing, "
              f"{len(evaluation.no_frames)} without frames); {evaluation.frames_per_second:.1f} frames/s",
              file=log)
    summary["by_target_count"] = {mode: breakdown({"per_prompt": entries})["by_target_count"]
                                  for mode, entries in pooled.items()}
    summary["frames_per_second"] = round(total_frames / total_seconds, 2) if total_seconds > 0 else 0.0
    write_json_atomic(videos / SUMMARY_NAME, summary)
    lines = {mode: {int(c): v["accuracy"] for c, v in table.items()}
             for mode, table in summary["by_target_count"].items()}
    if any(lines.values()):
        write_line_plot(videos / PLOT_NAME, lines, title=f"Counting accuracy by target count ({counter.name})",
                        x_label="target count", y_label="accuracy")
    return summary


def _write_authors_json(path: Path, results: dict) -> None:
    """The authors' file: json.dump(summary, indent=2, default=str), written atomically."""
    with atomic_output(path, ".json") as temp:
        temp.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
