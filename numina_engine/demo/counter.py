"""The exact object counter of the counting world, and CountBench's counting accuracy.

Counting: each pixel goes to the nearest palette colour, or to the background when the
background is nearer or every palette colour is more than `max_distance` away; objects are the
8-connected components of one colour with at least `min_area` pixels, per frame.

8-connectivity: the world keeps a background pixel between any two objects in all 8 directions
(WorldConfig.min_gap > 1), so diagonal neighbours of one colour always belong to one object; it
keeps a triangle's staircase sides and an object pierced by noise in one piece, where
4-connectivity could split them and count one object twice.

Accuracy (CountBench): a frame scores the fraction of the prompt's nouns whose count in it is
right; a video scores the mean of its frames' scores.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from .scenes import BACKGROUND, COLOURS, WorldConfig, kind_of_noun, minimum_object_area

# Farthest a pixel may be from a palette colour to take it, Euclidean RGB distance (0..255 per
# channel). Palette colours are >= 233 apart from each other and from the background.
MAX_COLOUR_DISTANCE = 110.0
# Smallest component counted, as a fraction of the world's smallest object area.
MIN_AREA_FRACTION = 0.4
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def default_min_area(config: WorldConfig = WorldConfig()) -> int:
    """Smallest component counted as an object, pixels: 40% of the smallest object's area."""
    return max(1, math.ceil(MIN_AREA_FRACTION * minimum_object_area(config)))


def classify_pixels(video, max_distance: float = MAX_COLOUR_DISTANCE) -> np.ndarray:
    """int64 [T, H, W]: per pixel, the index of its colour in COLOURS, or -1 for background.

    video: uint8 [T, H, W, 3] RGB (numpy array or torch tensor).
    """
    pixels = _as_numpy_video(video).astype(np.float32)
    references = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)    # [1 + C, 3]
    distance = np.linalg.norm(pixels[..., None, :] - references, axis=-1)       # [T, H, W, 1 + C]
    nearest = distance.argmin(axis=-1)
    far = np.take_along_axis(distance, nearest[..., None], axis=-1)[..., 0] > max_distance
    return np.where(far, 0, nearest) - 1


def count_by_colour(video, colours: list[str] | None = None, min_area: int | None = None,
                    max_distance: float = MAX_COLOUR_DISTANCE) -> dict[str, list[int]]:
    """Objects of each colour in each frame.

    video: uint8 [T, H, W, 3] RGB (numpy array or torch tensor).
    colours: names from COLOURS to count (default: all).
    min_area: smallest component counted, pixels (default: default_min_area()).
    Returns {colour name: [count in frame 0, ..., count in frame T-1]}.
    """
    names = list(COLOURS)
    colours = names if colours is None else list(colours)
    unknown = [c for c in colours if c not in COLOURS]
    if unknown:
        raise ValueError(f"unknown colours {unknown}; the palette has {names}")
    min_area = default_min_area() if min_area is None else min_area
    classes = classify_pixels(video, max_distance)
    counts = {}
    for colour in colours:
        per_frame = []
        for frame in classes == names.index(colour):
            labels, found = ndimage.label(frame, structure=_EIGHT_CONNECTED)
            areas = np.bincount(labels.ravel(), minlength=found + 1)[1:]
            per_frame.append(int((areas >= min_area).sum()))
        counts[colour] = per_frame
    return counts


def count_nouns(video, colour_of_noun: dict[str, str], min_area: int | None = None,
                max_distance: float = MAX_COLOUR_DISTANCE) -> dict[str, list[int]]:
    """Objects of each noun in each frame, counting a noun by its colour.

    colour_of_noun: {noun: colour name}, as scene_colour_of_noun gives for a scene.
    Returns {noun: [count per frame]}.
    """
    by_colour = count_by_colour(video, sorted(set(colour_of_noun.values())), min_area, max_distance)
    return {noun: by_colour[colour] for noun, colour in colour_of_noun.items()}


def count_world_nouns(video, nouns, min_area: int | None = None,
                      max_distance: float = MAX_COLOUR_DISTANCE) -> dict[str, list[int]]:
    """Objects of each of the world's nouns in each frame, e.g. {"apples": [3, 3, 2, 3, 3]}.

    nouns: nouns of the world's kinds, singular or plural, any case ("Apples", "tree").
    Raises ValueError naming a word that names no kind of the world.
    """
    colours = {}
    for noun in nouns:
        kind = kind_of_noun(noun)
        if kind is None:
            raise ValueError(f"{noun!r} names no object of the counting world")
        colours[noun] = kind.colour
    return count_nouns(video, colours, min_area, max_distance)


# Counters a checkpoint's sidecar can name ("counter": ...): name -> f(video, nouns) -> {noun: [count per frame]}.
COUNTERS = {"counting-world": count_world_nouns}


def frame_accuracy(counts_per_frame: dict[str, list[int]], target: dict[str, int]) -> list[float]:
    """Per frame, the fraction of target's nouns whose count in that frame equals the target.

    counts_per_frame: {noun: [count per frame]}, with every noun of target, all of one length.
    target: {noun: wanted count}, at least one noun.
    """
    if not target:
        raise ValueError("target names no noun: accuracy is undefined")
    missing = [noun for noun in target if noun not in counts_per_frame]
    if missing:
        raise KeyError(f"no counts for nouns {missing}; counted nouns: {list(counts_per_frame)}")
    lengths = {len(counts_per_frame[noun]) for noun in target}
    if len(lengths) != 1:
        raise ValueError(f"nouns are counted over different numbers of frames: {sorted(lengths)}")
    frames = lengths.pop()
    return [sum(counts_per_frame[noun][t] == wanted for noun, wanted in target.items()) / len(target)
            for t in range(frames)]


def video_accuracy(counts_per_frame: dict[str, list[int]], target: dict[str, int]) -> float:
    """The mean of frame_accuracy over the video's frames."""
    scores = frame_accuracy(counts_per_frame, target)
    if not scores:
        raise ValueError("the video has no frames: accuracy is undefined")
    return sum(scores) / len(scores)


def _as_numpy_video(video) -> np.ndarray:
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be uint8 [T, H, W, 3], got {video.dtype} {list(video.shape)}")
    return video
