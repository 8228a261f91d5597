"""The counting world's counter: exact on rendered clips, robust to noise; CountBench accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from numina_engine.demo.counter import (
    count_by_colour, count_nouns, count_world_nouns, default_min_area, frame_accuracy, video_accuracy)
from numina_engine.demo.world import (
    BACKGROUND, COLOURS, KINDS, WorldConfig, object_masks, render_uint8, sample_scenes,
    scene_colour_of_noun, scene_counts)

CONFIG = WorldConfig()


@pytest.fixture(scope="module")
def world():
    scenes = sample_scenes(400, seed=21)
    return scenes, render_uint8(scenes, CONFIG).numpy(), scene_counts(scenes), scene_colour_of_noun(scenes)


def _wrong_frames(world, sigma: float, seed: int = 0) -> int:
    scenes, clips, targets, colours = world
    rng = np.random.default_rng(seed)
    wrong = 0
    for clip, target, colour_of_noun in zip(clips, targets, colours):
        if sigma:
            clip = np.clip(np.round(clip + rng.normal(0.0, sigma, clip.shape)), 0, 255).astype(np.uint8)
        counts = count_nouns(clip, colour_of_noun)
        wrong += sum(score < 1 for score in frame_accuracy(counts, target))
    return wrong


def test_exact_on_rendered_clips(world):
    _, _, targets, _ = world
    assert max(sum(t.values()) for t in targets) == CONFIG.max_objects
    assert _wrong_frames(world, sigma=0) == 0


def test_world_nouns_are_counted_by_their_kind(world):
    scenes, clips, targets, _ = world
    for kinds, clip, target in zip(scenes.kinds[:80], clips[:80], targets[:80]):
        assert count_world_nouns(clip, list(target)) == {n: [c] * CONFIG.frames for n, c in target.items()}
        present = {kind for kind, _ in kinds}
        # every other noun of the world, in any case and number, counts 0 objects
        others = [kind.plural.capitalize() for kind in KINDS if kind not in present]
        assert count_world_nouns(clip, others) == {n: [0] * CONFIG.frames for n in others}
        for kind, count in kinds:
            both = count_world_nouns(clip, [kind.noun, kind.plural.upper()])
            assert both == {kind.noun: [count] * CONFIG.frames, kind.plural.upper(): [count] * CONFIG.frames}


def test_world_nouns_must_name_a_kind():
    for word in ("cats", "red", "circles", "square"):
        with pytest.raises(ValueError, match=f"'{word}' names no object"):
            count_world_nouns(_blank(), ["apples", word])


@pytest.mark.parametrize("sigma", [8, 32])
def test_exact_under_gaussian_noise(world, sigma):
    # Measured on 5,000 frames (1,000 clips, seed 21): exact up to sigma 40 (of 0..255); 1 wrong frame
    # at sigma 48, 6 at 56, 43 at 64.
    assert _wrong_frames(world, sigma) == 0


def test_counts_every_colour_of_a_scene_per_frame(world):
    scenes, clips, _, _ = world
    for kinds, clip in zip(scenes.kinds[:50], clips[:50]):
        counts = count_by_colour(torch.from_numpy(clip))
        wanted = {colour: 0 for colour in COLOURS}
        wanted.update({kind.colour: count for kind, count in kinds})
        assert counts == {colour: [n] * CONFIG.frames for colour, n in wanted.items()}


def _blank(frames: int = 1, size: int = 12) -> np.ndarray:
    return np.tile(np.array(BACKGROUND, dtype=np.uint8), (frames, size, size, 1))


def test_eight_connected_components_and_min_area():
    video = _blank()
    red, blue = COLOURS["red"], COLOURS["blue"]
    video[0, 1:4, 1:4] = red          # 9 px
    video[0, 4:7, 4:7] = red          # 9 px, touching the first only at a corner: one object
    video[0, 8:11, 8:11] = red        # 9 px, apart: a second object
    video[0, 0:2, 9:11] = blue        # 4 px: under min_area 5
    video[0, 9:11, 0:3] = (128, 128, 128)  # far from every palette colour: background
    assert count_by_colour(video, ["red", "blue"], min_area=5) == {"red": [2], "blue": [0]}
    assert count_by_colour(video, ["blue"], min_area=4) == {"blue": [1]}


def test_min_area_is_40_percent_of_the_smallest_object(world):
    # the smallest shapes, the triangle and the diamond, cover 2 r^2 = 32 px at r = 4.0
    assert CONFIG.radius_range[0] == 4.0
    assert default_min_area(CONFIG) == 13                       # ceil(0.4 * 32)
    assert default_min_area(WorldConfig(radius_range=(5.0, 5.0))) == 20   # ceil(0.4 * 50)
    # every rendered object is well above it, so noise eating a few pixels never loses one
    scenes = world[0]
    area = object_masks(scenes, CONFIG).sum(dim=(-1, -2))[scenes.valid]
    assert area.min() >= 2 * default_min_area(CONFIG)


def test_near_palette_colours_are_classified():
    video = _blank()
    video[0, 2:6, 2:6] = (200, 40, 40)    # a dull red, 79 from red
    assert count_by_colour(video, ["red"], min_area=1) == {"red": [1]}
    assert count_by_colour(video, ["red"], min_area=1, max_distance=70.0) == {"red": [0]}


def test_frame_and_video_accuracy_by_hand():
    counts = {"apples": [3, 3, 2, 3], "box": [1, 0, 0, 1]}
    target = {"apples": 3, "box": 1}
    assert frame_accuracy(counts, target) == [1.0, 0.5, 0.0, 1.0]
    assert video_accuracy(counts, target) == pytest.approx(0.625)
    assert frame_accuracy({"apples": [4, 4]}, {"apples": 4}) == [1.0, 1.0]


def test_accuracy_inputs_are_checked():
    with pytest.raises(KeyError, match="box"):
        frame_accuracy({"apples": [3]}, {"apples": 3, "box": 1})
    with pytest.raises(ValueError, match="different numbers of frames"):
        frame_accuracy({"apples": [3], "box": [1, 1]}, {"apples": 3, "box": 1})
    with pytest.raises(ValueError, match="no noun"):
        frame_accuracy({"apples": [3]}, {})
    with pytest.raises(ValueError, match="no frames"):
        video_accuracy({"apples": []}, {"apples": 3})


def test_counter_inputs_are_checked():
    with pytest.raises(ValueError, match="uint8"):
        count_by_colour(np.zeros((1, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="unknown colours"):
        count_by_colour(_blank(), ["orange"])
