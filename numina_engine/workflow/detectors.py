"""Object counters for the evaluation: GroundingDINO (the NUMINA authors' detector) and the demo world's exact
counter. A counter maps (frames, prompt, nouns) to {noun: [count in frame 0, ..., frame T-1]}.

GroundingDINO follows github.com/H-EmbodVis/NUMINA evaluation/eval_counting.py: one detection pass per noun with
the caption "<noun> ." (lower-cased and stripped, as GroundingDINO's preprocess_caption does), box threshold
0.32, text threshold 0.25, and the count is the number of boxes kept, i.e. of queries whose highest token
probability exceeds the box threshold (the text threshold only picks the phrase of a box, not whether it is
counted). The authors run the original GroundingDINO SwinT-OGC; here it is the transformers port
(AutoProcessor + AutoModelForZeroShotObjectDetection, e.g. IDEA-Research/grounding-dino-tiny), whose processor
resizes as theirs does (shorter side 800, longer side at most 1333, ImageNet normalisation). Frames are batched
through the detector, `batch_size` at a time, rather than one by one as the authors do.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import UserInputError

BOX_THRESHOLD = 0.32
TEXT_THRESHOLD = 0.25


class ObjectCounter(Protocol):
    name: str

    def count(self, frames: np.ndarray, prompt: str, nouns: list[str]) -> dict[str, list[int]]:
        """frames: uint8 RGB [T, H, W, 3]. Returns {noun: [count per frame]} for every noun."""


def detector_caption(noun: str) -> str:
    """The caption GroundingDINO gets for one noun: the authors' f"{noun} .", lower-cased and stripped."""
    return f"{noun} .".lower().strip()


def check_grounding_dino_dir(detector_dir: str | Path | None) -> Path:
    """The folder, if it holds a transformers GroundingDINO checkpoint; a UserInputError saying what is wrong
    otherwise."""
    if detector_dir is None:
        raise UserInputError("--detector grounding-dino needs --detector-dir: a local copy of a transformers "
                             "GroundingDINO checkpoint, e.g. IDEA-Research/grounding-dino-tiny")
    folder = Path(detector_dir)
    if not folder.is_dir():
        raise UserInputError(f"--detector-dir {folder} does not exist (or is not a folder)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserInputError(f"--detector-dir {folder} is not a transformers checkpoint: it has no config.json")
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise UserInputError(f"{config_path} is not a JSON object: the folder is not a transformers checkpoint") \
            from None
    if model_type != "grounding-dino":
        raise UserInputError(f"--detector-dir {folder} holds a {model_type!r} model, not GroundingDINO "
                             f"(model_type 'grounding-dino'), e.g. IDEA-Research/grounding-dino-tiny")
    return folder


class GroundingDinoCounter:
    """GroundingDINO through transformers, loaded from a local folder (no download).

    device: where the detector runs (default cuda when available). batch_size: frames per detector call.
    """
    name = "grounding-dino"

    def __init__(self, detector_dir: str | Path, device: str | torch.device | None = None, batch_size: int = 8,
                 box_threshold: float = BOX_THRESHOLD, text_threshold: float = TEXT_THRESHOLD):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        folder = check_grounding_dino_dir(detector_dir)
        if batch_size < 1:
            raise UserInputError(f"--batch-size {batch_size} must be at least 1")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        try:
            self.processor = AutoProcessor.from_pretrained(folder)
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise UserInputError(f"cannot load GroundingDINO from {folder}: {err}") from None

    @torch.inference_mode()
    def count(self, frames: np.ndarray, prompt: str, nouns: list[str]) -> dict[str, list[int]]:
        """frames: uint8 RGB [T, H, W, 3]; `prompt` is not used (GroundingDINO sees one noun at a time)."""
        height, width = frames.shape[1:3]
        counts = {}
        for noun in nouns:
            caption = detector_caption(noun)
            per_frame: list[int] = []
            for start in range(0, len(frames), self.batch_size):
                batch = list(frames[start:start + self.batch_size])
                inputs = self.processor(images=batch, text=[caption] * len(batch), return_tensors="pt")
                inputs = inputs.to(self.device)
                outputs = self.model(**inputs)
                kept = self.processor.post_process_grounded_object_detection(
                    outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
                    target_sizes=[(height, width)] * len(batch))
                per_frame += [len(result["boxes"]) for result in kept]
            counts[noun] = per_frame
        return counts


def count_demo_frames(frames: np.ndarray, prompt: str, nouns: list[str]) -> dict[str, list[int]]:
    """The demo world's exact counter on uint8 RGB frames [T, H, W, 3]: {noun: [count per frame]}.

    The one place this workflow knows the demo world: each of its nouns names one kind of object
    (demo/scenes.py KINDS), so the noun alone says what to count; `prompt` is not needed to tell.
    """
    from ..demo.counter import count_world_nouns

    try:
        return count_world_nouns(frames, nouns)
    except ValueError as err:
        raise UserInputError(f"the demo counter counts only the demo world's nouns (apples, trees, rings, boxes, "
                             f"gems, flowers); {prompt!r}: {err}") from None


class DemoWorldCounter:
    """The exact counter of the embedded demo model's world, through count_demo_frames."""
    name = "demo-counter"

    def count(self, frames: np.ndarray, prompt: str, nouns: list[str]) -> dict[str, list[int]]:
        return count_demo_frames(frames, prompt, nouns)
