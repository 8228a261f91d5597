"""The counting world: seeded sampling, geometry of the clips, rendering, captions."""
from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from numina_engine.demo.world import (
    BACKGROUND, COLOURS, NUMBER_WORDS, SHAPES, WorldConfig, caption_vocabulary, caption_words,
    captions, motion_direction, object_centres, object_masks, render, render_uint8,
    sample_scenes, scene_colour_of_noun, scene_counts, vocabulary_sentences)

CONFIG = WorldConfig()


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(600, seed=11)


def test_same_seed_same_scenes_other_seed_other_scenes():
    a, b, c = sample_scenes(50, 3), sample_scenes(50, 3), sample_scenes(50, 4)
    for name in ("colour", "shape", "valid", "centre", "radius", "velocity"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.kinds == b.kinds and captions(a, 3) == captions(b, 3)
    assert not torch.equal(a.centre, c.centre)
    assert captions(a, 3) != captions(a, 4)


def test_tensor_layout(scenes):
    n, k = len(scenes), CONFIG.max_objects
    assert scenes.colour.shape == scenes.shape.shape == scenes.valid.shape == (n, k)
    assert scenes.colour.dtype == scenes.shape.dtype == torch.int64
    assert scenes.centre.shape == (n, k, 2) and scenes.centre.dtype == torch.float32
    assert scenes.radius.shape == (n, k) and scenes.velocity.shape == (n, 2)
    low, high = CONFIG.radius_range
    radius = scenes.radius[scenes.valid]
    assert ((radius >= low) & (radius <= high)).all()
    assert (scenes.colour[~scenes.valid] == -1).all() and (scenes.radius[~scenes.valid] == 0).all()


def test_kinds_match_the_slots(scenes):
    colours, shapes = list(COLOURS), list(SHAPES)
    for i, kinds in enumerate(scenes.kinds):
        assert len(kinds) in (1, 2) and all(count >= 1 for _, _, count in kinds)
        if len(kinds) == 2:
            assert kinds[0][0] != kinds[1][0] and kinds[0][1] != kinds[1][1]
        slots = Counter((colours[c], shapes[s]) for c, s, v in zip(
            scenes.colour[i].tolist(), scenes.shape[i].tolist(), scenes.valid[i].tolist()) if v)
        assert slots == Counter({(colour, shape): count for colour, shape, count in kinds})
        total = sum(count for _, _, count in kinds)
        assert CONFIG.min_objects <= total <= CONFIG.max_objects
        assert scenes.valid[i].tolist() == [k < total for k in range(CONFIG.max_objects)]


def test_totals_are_near_uniform_over_1_to_8():
    totals = sample_scenes(8000, 5).valid.sum(dim=1)
    frequency = torch.bincount(totals, minlength=9)[1:].float() / len(totals)
    assert ((frequency - 1 / 8).abs() < 0.02).all(), frequency
    assert sum(len(k) == 2 for k in sample_scenes(2000, 5).kinds) > 600


def test_objects_stay_inside_the_frame_in_every_frame(scenes):
    centre = object_centres(scenes, CONFIG)                      # [N, K, F, 2]
    radius = scenes.radius[:, :, None, None]
    valid = scenes.valid[:, :, None, None].expand_as(centre)
    assert ((centre - radius >= 0) | ~valid).all()
    assert ((centre + radius <= CONFIG.size) | ~valid).all()
    area = object_masks(scenes, CONFIG).sum(dim=(-1, -2))        # [N, K, F]
    assert (area[scenes.valid] >= 12).all()


def test_objects_never_touch_in_any_frame(scenes):
    masks = object_masks(scenes, CONFIG).float()                 # [N, K, F, H, W]
    n, k, f, h, w = masks.shape
    grown = F.max_pool2d(masks.reshape(-1, 1, h, w), 3, stride=1, padding=1).reshape(masks.shape)
    others = masks.sum(dim=1, keepdim=True) - masks
    assert masks.sum(dim=1).max() <= 1, "objects overlap"
    assert (grown * others).sum() == 0, "objects are 8-neighbours somewhere"


def test_motion_is_captioned(scenes):
    for v, text in zip(scenes.velocity.tolist(), captions(scenes, 0)):
        direction = motion_direction(v)
        words = caption_words(text)
        if direction is None:
            assert v == [0.0, 0.0] and not {"drifting", "moving", "sliding"} & set(words)
        else:
            assert CONFIG.speed_range[0] <= max(abs(v[0]), abs(v[1])) <= CONFIG.speed_range[1]
            assert direction in words or direction + "ward" in words


def test_render_pixels(scenes):
    clips = render_uint8(scenes, CONFIG)
    assert clips.shape == (len(scenes), CONFIG.frames, CONFIG.size, CONFIG.size, 3)
    assert clips.dtype == torch.uint8
    scaled = render(scenes, CONFIG)
    assert scaled.shape == (len(scenes), 3, CONFIG.frames, CONFIG.size, CONFIG.size)
    assert scaled.dtype == torch.float32 and scaled.min() >= -1 and scaled.max() <= 1
    assert torch.equal(scaled, clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1)
    masks = object_masks(scenes, CONFIG)
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.uint8)
    for i in range(0, len(scenes), 37):
        covered = masks[i].any(dim=0)
        assert (clips[i][~covered] == torch.tensor(BACKGROUND, dtype=torch.uint8)).all()
        for slot in range(CONFIG.max_objects):
            if scenes.valid[i, slot]:
                assert (clips[i][masks[i, slot]] == palette[scenes.colour[i, slot]]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_render_on_cuda_matches_cpu(scenes):
    assert torch.equal(render_uint8(scenes, CONFIG, device="cuda").cpu(), render_uint8(scenes, CONFIG))


_COUNT_OF = {"one": 1, "a single": 1, "a": 1, "an": 1, "a pair of": 2,
             **{word: i + 1 for i, word in enumerate(NUMBER_WORDS)}}
_COUNT_WORDS = "|".join(sorted(_COUNT_OF, key=len, reverse=True))


def test_captions_name_every_kind_with_its_count(scenes):
    for kinds, text in zip(scenes.kinds, captions(scenes, 1)):
        assert text[0].isupper() and text.endswith(".")
        for colour, shape, count in kinds:
            noun = shape if count == 1 else shape + "s"
            match = re.search(rf"\b({_COUNT_WORDS}) {colour} {noun}\b", text.lower())
            assert match and _COUNT_OF[match.group(1)] == count, (text, kinds)


def test_scene_counts_and_colours_use_the_caption_nouns(scenes):
    for kinds, counts, colours, text in zip(scenes.kinds, scene_counts(scenes),
                                            scene_colour_of_noun(scenes), captions(scenes, 2)):
        assert counts.keys() == colours.keys() and len(counts) == len(kinds)
        for noun, count in counts.items():
            assert noun in caption_words(text)
            assert (noun, colours[noun], count) in {
                (shape if n == 1 else shape + "s", colour, n) for colour, shape, n in kinds}


def test_vocabulary_sentences_cover_every_caption_word():
    sentences = vocabulary_sentences(300, seed=0)
    assert len(sentences) >= 300
    used = {word for sentence in sentences for word in caption_words(sentence)}
    vocabulary = caption_vocabulary()
    assert used <= vocabulary
    assert vocabulary - used <= {"an"}    # no colour of the palette starts with a vowel
    assert vocabulary_sentences(300, seed=0) == sentences


def test_config_is_checked():
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(max_objects=9)
    with pytest.raises(ValueError, match="min_gap"):
        WorldConfig(min_gap=1.0)
    with pytest.raises(ValueError, match="leaves the frame"):
        WorldConfig(size=10, radius_range=(3.0, 4.0))


def test_too_dense_a_world_is_refused():
    # centres fit in [2, 10] and must be 6 apart: at most 2 x 2 objects
    dense = WorldConfig(size=12, min_objects=8, radius_range=(2.0, 2.0), speed_range=(0.0, 0.0))
    with pytest.raises(RuntimeError, match="too dense"):
        sample_scenes(2, seed=0, config=dense)


def test_velocity_words():
    assert motion_direction((0.0, 0.0)) is None
    assert motion_direction((-0.6, 0.0)) == "left" and motion_direction((0.9, 0.0)) == "right"
    assert motion_direction((0.0, -0.5)) == "up" and motion_direction((0.0, 0.7)) == "down"
