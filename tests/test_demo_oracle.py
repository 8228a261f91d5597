"""Oracle layouts of the counting world: each noun's true objects, read off rendered clips at token resolution."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from numina_engine.demo.counter import count_world_nouns
from numina_engine.demo.oracle import component_layout
from numina_engine.demo.world import (
    BACKGROUND, KINDS, WorldConfig, kind_noun, object_masks, render_uint8, sample_scenes, scene_counts)

CONFIG = WorldConfig()


@pytest.fixture(scope="module")
def world():
    scenes = sample_scenes(120, seed=31)
    return scenes, render_uint8(scenes, CONFIG), object_masks(scenes, CONFIG)


def _kind_slots(scenes, i, kind):
    return [slot for slot in range(CONFIG.max_objects)
            if scenes.valid[i, slot] and KINDS[scenes.kind[i, slot]] == kind]


def _check_layout(world, patch):
    """Per scene, kind and frame: one label per object, each label's tokens on one object of that
    kind (tokens the object touches), each object's mostly covered tokens under its label."""
    scenes, clips, masks = world
    ph, pw = patch
    for i, kinds in enumerate(scenes.kinds):
        counts = dict((kind, count) for kind, count in kinds)
        for kind in KINDS:
            noun = kind_noun(kind, counts.get(kind, 2))
            layout = component_layout(clips[i].numpy(), noun, patch=patch)
            assert layout.shape == (CONFIG.frames, CONFIG.size // ph, CONFIG.size // pw)
            assert layout.dtype == torch.int32
            slots = _kind_slots(scenes, i, kind)
            assert len(slots) == counts.get(kind, 0)
            for frame in range(CONFIG.frames):
                labels = sorted(set(layout[frame].unique().tolist()) - {0})
                assert labels == list(range(1, len(slots) + 1)), (i, kind.noun, frame, labels)
                pixels = masks[i, slots, frame].float()[:, None]                  # [n, 1, H, W]
                touched = F.max_pool2d(pixels, patch, patch)[:, 0] > 0            # [n, h, w]
                coverage = F.avg_pool2d(pixels, patch, patch)[:, 0]
                owner_of_label = {}
                for label in labels:
                    tokens = layout[frame] == label
                    inside = [n for n in range(len(slots)) if not (tokens & ~touched[n]).any()]
                    assert len(inside) == 1, (i, kind.noun, frame, label)
                    owner_of_label[label] = inside[0]
                    assert (tokens <= touched[inside[0]]).all()
                assert sorted(owner_of_label.values()) == list(range(len(slots)))   # one label per object
                for label, n in owner_of_label.items():
                    assert ((coverage[n] >= 0.5) <= (layout[frame] == label)).all()


def test_one_label_per_true_object_inside_its_pixels(world):
    _check_layout(world, (2, 2))


@pytest.mark.parametrize("patch", [(1, 1), (2, 1)])
def test_other_token_grids(world, patch):
    _check_layout(world, patch)


def test_at_one_pixel_per_token_the_labels_are_the_object_masks(world):
    scenes, clips, masks = world
    for i, kinds in enumerate(scenes.kinds[:40]):
        for kind, count in kinds:
            layout = component_layout(clips[i].numpy(), kind_noun(kind, count), patch=(1, 1))
            slots = _kind_slots(scenes, i, kind)
            assert torch.equal(layout > 0, masks[i, slots].any(dim=0))


def test_a_word_that_names_no_kind_is_refused(world):
    clip = world[1][0].numpy()
    for word in ("cats", "red", "circles", "squares", ""):
        with pytest.raises(ValueError, match="names no object of the counting world"):
            component_layout(clip, word)


def test_a_blank_clip_has_an_empty_layout():
    blank = torch.tensor(BACKGROUND, dtype=torch.uint8).expand(CONFIG.frames, CONFIG.size, CONFIG.size, 3)
    for kind in KINDS:
        assert not component_layout(blank.numpy(), kind.plural).any()


def test_count_world_nouns_equals_the_scene_counts(world):
    scenes, clips, _ = world
    for clip, target in zip(clips, scene_counts(scenes)):
        assert count_world_nouns(clip, list(target)) == {n: [c] * CONFIG.frames for n, c in target.items()}
        layouts = {n: component_layout(clip.numpy(), n) for n in target}
        assert {n: [int(f.max()) for f in layout] for n, layout in layouts.items()} == \
            {n: [c] * CONFIG.frames for n, c in target.items()}
