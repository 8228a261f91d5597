"""The counting world: its kinds, seeded sampling, geometry of the clips, rendering, captions."""
from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from numina_engine.demo.world import (
    ATTRIBUTES, BACKGROUND, COLOURS, KINDS, NUMBER_WORDS, SHAPES, Kind, WorldConfig,
    caption_vocabulary, caption_words, captions, kind_of_noun, minimum_object_area, motion_direction,
    object_centres, object_masks, render, render_uint8, sample_scenes, scene_colour_of_noun,
    scene_counts, vocabulary_sentences)

CONFIG = WorldConfig()


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(600, seed=11)


def test_each_noun_names_one_look():
    assert [(k.noun, k.plural, k.colour, k.shape) for k in KINDS] == [
        ("apple", "apples", "red", "circle"), ("tree", "trees", "green", "triangle"),
        ("ring", "rings", "yellow", "ring"), ("box", "boxes", "blue", "square"),
        ("gem", "gems", "cyan", "diamond"), ("flower", "flowers", "magenta", "cross")]
    assert len({k.colour for k in KINDS}) == len({k.shape for k in KINDS}) == len(KINDS)
    assert {k.colour for k in KINDS} == set(COLOURS) and {k.shape for k in KINDS} == set(SHAPES)
    for kind in KINDS:
        for word in (kind.noun, kind.plural, kind.noun.upper(), kind.plural.capitalize()):
            assert kind_of_noun(word) is kind, word
    for word in ("cat", "red", "circle", "square", "apple s", "", "ringe"):
        assert kind_of_noun(word) is None, word


def test_same_seed_same_scenes_other_seed_other_scenes():
    a, b, c = sample_scenes(50, 3), sample_scenes(50, 3), sample_scenes(50, 4)
    for name in ("kind", "colour", "shape", "valid", "centre", "radius", "velocity"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.kinds == b.kinds and captions(a, 3) == captions(b, 3)
    assert not torch.equal(a.centre, c.centre) and not torch.equal(a.kind, c.kind)
    assert captions(a, 3) != captions(a, 4)


def test_tensor_layout(scenes):
    n, k = len(scenes), CONFIG.max_objects
    assert k == 6
    assert scenes.kind.shape == scenes.colour.shape == scenes.shape.shape == scenes.valid.shape == (n, k)
    assert scenes.kind.dtype == scenes.colour.dtype == scenes.shape.dtype == torch.int64
    assert scenes.centre.shape == (n, k, 2) and scenes.centre.dtype == torch.float32
    assert scenes.radius.shape == (n, k) and scenes.velocity.shape == (n, 2)
    low, high = CONFIG.radius_range
    assert (low, high) == (4.0, 4.25) and CONFIG.min_gap == 1.5
    radius = scenes.radius[scenes.valid]
    assert ((radius >= low) & (radius <= high)).all()
    assert ((scenes.kind[scenes.valid] >= 0) & (scenes.kind[scenes.valid] < len(KINDS))).all()
    for name in ("kind", "colour", "shape"):
        assert (getattr(scenes, name)[~scenes.valid] == -1).all(), name
    assert (scenes.radius[~scenes.valid] == 0).all()


def test_colour_and_shape_follow_from_the_kind(scenes):
    colours, shapes = list(COLOURS), list(SHAPES)
    for i in range(len(scenes)):
        for slot in range(CONFIG.max_objects):
            if scenes.valid[i, slot]:
                kind = KINDS[scenes.kind[i, slot]]
                assert colours[scenes.colour[i, slot]] == kind.colour
                assert shapes[scenes.shape[i, slot]] == kind.shape


def test_kinds_match_the_slots(scenes):
    pairs = 0
    for i, kinds in enumerate(scenes.kinds):
        assert len(kinds) in (1, 2)
        assert all(isinstance(kind, Kind) and kind in KINDS and type(count) is int and count >= 1
                   for kind, count in kinds), kinds
        if len(kinds) == 2:
            pairs += 1
            (first, _), (second, _) = kinds
            assert first != second and first.colour != second.colour and first.shape != second.shape
        slots = Counter(KINDS[k] for k, v in zip(scenes.kind[i].tolist(), scenes.valid[i].tolist()) if v)
        assert slots == Counter(dict(kinds))
        total = sum(count for _, count in kinds)
        assert CONFIG.min_objects <= total <= CONFIG.max_objects
        assert scenes.valid[i].tolist() == [k < total for k in range(CONFIG.max_objects)]
    assert pairs > 100


def test_totals_are_near_uniform_over_1_to_6_and_every_kind_occurs():
    many = sample_scenes(6000, 5)
    totals = many.valid.sum(dim=1)
    assert totals.min() == 1 and totals.max() == 6
    frequency = torch.bincount(totals, minlength=7)[1:].float() / len(totals)
    assert ((frequency - 1 / 6).abs() < 0.02).all(), frequency
    kinds = torch.bincount(many.kind[many.valid], minlength=len(KINDS)).float() / many.valid.sum()
    assert ((kinds - 1 / len(KINDS)).abs() < 0.02).all(), kinds
    two = [k for k in many.kinds if len(k) == 2]
    several = int((totals >= 2).sum())
    assert abs(len(two) / several - CONFIG.two_kinds_probability) < 0.03
    assert all(len(k) == 1 for k, t in zip(many.kinds, totals.tolist()) if t == 1)


def test_objects_stay_inside_the_frame_in_every_frame(scenes):
    centre = object_centres(scenes, CONFIG)                      # [N, K, F, 2]
    radius = scenes.radius[:, :, None, None]
    valid = scenes.valid[:, :, None, None].expand_as(centre)
    assert ((centre - radius >= 0) | ~valid).all()
    assert ((centre + radius <= CONFIG.size) | ~valid).all()
    area = object_masks(scenes, CONFIG).sum(dim=(-1, -2))        # [N, K, F]
    # the smallest shapes (triangle, diamond: 2 r^2) at r = 4 cover 32 px; pixel sampling loses a few
    assert minimum_object_area(CONFIG) == pytest.approx(2 * 4.0 ** 2)
    assert (area[scenes.valid] >= 0.8 * minimum_object_area(CONFIG)).all()
    assert (area[~scenes.valid] == 0).all()


def test_objects_never_touch_in_any_frame(scenes):
    masks = object_masks(scenes, CONFIG).float()                 # [N, K, F, H, W]
    n, k, f, h, w = masks.shape
    grown = F.max_pool2d(masks.reshape(-1, 1, h, w), 3, stride=1, padding=1).reshape(masks.shape)
    others = masks.sum(dim=1, keepdim=True) - masks
    assert masks.sum(dim=1).max() <= 1, "objects overlap"
    assert (grown * others).sum() == 0, "objects are 8-neighbours somewhere"


def _reference_mask(shape: str, cx: float, cy: float, r: float, size: int) -> torch.Tensor:
    """bool [size, size]: the pixels whose centres are inside the shape, from its plain geometry."""
    pixel = torch.arange(size, dtype=torch.float64) + 0.5
    dx, dy = pixel[None, :] - cx, pixel[:, None] - cy
    distance = torch.sqrt(dx * dx + dy * dy)
    if shape == "circle":
        return distance <= r
    if shape == "ring":                                          # a disc with the inner half cut out
        return (distance <= r) & (distance > r / 2)
    if shape == "square":                                        # area of the circle: side r * sqrt(pi) ~ 1.7 r
        return (dx.abs() <= 0.85 * r) & (dy.abs() <= 0.85 * r)
    if shape == "triangle":                                      # apex at (cx, cy - r), base y = cy + r, 2r wide
        return (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    if shape == "diamond":
        return dx.abs() + dy.abs() <= r
    if shape == "cross":                                         # two bars 0.7 r wide, 2 r long
        return ((dx.abs() <= 0.35 * r) & (dy.abs() <= r)) | ((dy.abs() <= 0.35 * r) & (dx.abs() <= r))
    raise AssertionError(shape)


def test_each_kind_is_drawn_in_its_shape(scenes):
    masks, centres = object_masks(scenes, CONFIG), object_centres(scenes, CONFIG)
    seen = Counter()
    for i in range(0, len(scenes), 3):
        for slot in range(CONFIG.max_objects):
            if not scenes.valid[i, slot]:
                continue
            kind = KINDS[scenes.kind[i, slot]]
            seen[kind.noun] += 1
            for frame in range(CONFIG.frames):
                cx, cy = centres[i, slot, frame].double().tolist()
                want = _reference_mask(kind.shape, cx, cy, float(scenes.radius[i, slot]), CONFIG.size)
                assert torch.equal(masks[i, slot, frame], want), (kind.noun, i, slot, frame)
    assert set(seen) == {k.noun for k in KINDS}


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
    for i in range(0, len(scenes), 37):
        covered = masks[i].any(dim=0)
        assert (clips[i][~covered] == torch.tensor(BACKGROUND, dtype=torch.uint8)).all()
        for slot in range(CONFIG.max_objects):
            if scenes.valid[i, slot]:
                colour = torch.tensor(COLOURS[KINDS[scenes.kind[i, slot]].colour], dtype=torch.uint8)
                assert (clips[i][masks[i, slot]] == colour).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_render_on_cuda_matches_cpu(scenes):
    assert torch.equal(render_uint8(scenes, CONFIG, device="cuda").cpu(), render_uint8(scenes, CONFIG))


_COUNT_OF = {"one": 1, "a single": 1, "a": 1, "an": 1, "a pair of": 2,
             **{word: i + 1 for i, word in enumerate(NUMBER_WORDS)}}
_COUNT_WORDS = "|".join(sorted(_COUNT_OF, key=len, reverse=True))
_ATTRIBUTE_WORDS = "|".join(ATTRIBUTES)
# Words of the picture that a caption must never use: the noun alone carries the look. "ring" is
# both a shape and a kind's noun, so it is checked through the kinds instead.
_LOOK_WORDS = (set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES} | {"crosses"}) - {"ring", "rings"}


def test_captions_name_every_kind_with_its_count_and_no_look(scenes):
    assert NUMBER_WORDS == ("one", "two", "three", "four", "five", "six")
    attributes = 0
    for kinds, text in zip(scenes.kinds, captions(scenes, 1)):
        assert text[0].isupper() and text.endswith(".")
        words = caption_words(text)
        assert not _LOOK_WORDS & set(words), text
        named = {kind_of_noun(w) for w in words} - {None}
        assert named == {kind for kind, _ in kinds}, (text, kinds)
        for kind, count in kinds:
            noun = kind.noun if count == 1 else kind.plural
            match = re.search(rf"\b({_COUNT_WORDS}) (?:({_ATTRIBUTE_WORDS}) )?{noun}\b", text.lower())
            assert match and _COUNT_OF[match.group(1)] == count, (text, kinds)
            assert words.count(noun) == 1 and (kind.plural if count == 1 else kind.noun) not in words
            attributes += match.group(2) is not None
            if match.group(1) in ("a", "an"):      # the article agrees with the next word's sound
                after = text.lower()[match.end(1) + 1:]
                assert match.group(1) == ("an" if after[0] in "aeiou" else "a"), text
    assert 0.2 < attributes / sum(len(k) for k in scenes.kinds) < 0.4


def test_scene_counts_and_colours_use_the_caption_nouns(scenes):
    for kinds, counts, colours, text in zip(scenes.kinds, scene_counts(scenes),
                                            scene_colour_of_noun(scenes), captions(scenes, 2)):
        assert counts.keys() == colours.keys() and len(counts) == len(kinds)
        for noun, count in counts.items():
            assert noun in caption_words(text)
            assert (noun, colours[noun], count) in {
                (kind.noun if n == 1 else kind.plural, kind.colour, n) for kind, n in kinds}


def test_vocabulary_sentences_cover_every_caption_word():
    sentences = vocabulary_sentences(300, seed=0)
    assert len(sentences) >= 300
    used = {word for sentence in sentences for word in caption_words(sentence)}
    vocabulary = caption_vocabulary()
    assert used == vocabulary        # "an" included: "an apple"
    assert {"an", "apple", "apples", "single", "pair"} | set(ATTRIBUTES) <= vocabulary
    assert not _LOOK_WORDS & vocabulary
    assert vocabulary_sentences(300, seed=0) == sentences


def test_config_is_checked():
    WorldConfig(max_objects=6)
    for bad in (7, 8):
        with pytest.raises(ValueError, match="max_objects"):
            WorldConfig(max_objects=bad)
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(min_objects=0)
    with pytest.raises(ValueError, match="min_gap"):
        WorldConfig(min_gap=1.0)
    with pytest.raises(ValueError, match="leaves the frame"):
        WorldConfig(size=10, radius_range=(3.0, 4.0))
    with pytest.raises(ValueError, match="leaves the frame"):
        WorldConfig(speed_range=(0.25, 6.0))


def test_too_dense_a_world_is_refused():
    # centres fit in [2, 10] and must be 5.5 apart: at most 2 x 2 objects, not 6
    dense = WorldConfig(size=12, min_objects=6, radius_range=(2.0, 2.0), speed_range=(0.0, 0.0))
    with pytest.raises(RuntimeError, match="too dense"):
        sample_scenes(2, seed=0, config=dense)


def test_velocity_words():
    assert motion_direction((0.0, 0.0)) is None
    assert motion_direction((-0.6, 0.0)) == "left" and motion_direction((0.9, 0.0)) == "right"
    assert motion_direction((0.0, -0.5)) == "up" and motion_direction((0.0, 0.7)) == "down"
    # the slowest moving clip is still captioned as moving
    assert motion_direction((CONFIG.speed_range[0], 0.0)) == "right"
    assert motion_direction((0.1, -0.1)) is None
