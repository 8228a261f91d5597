"""layout.png rendering: numina_engine.numina.layout_image."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from numina_engine.numina.config import LABEL_ADDED_BASE, LABEL_REMOVED
from numina_engine.numina.layout_image import (
    HEADER, LEGEND, LINE_HEIGHT, MIN_FRAME_SIDE, frame_origin, frame_scale, layout_png_size, render_layout_png)

FRAMES, H, W, SCALE = 4, 6, 8, 4          # token grid 6 x 8, preview 24 x 32 (exact 4x upscale)
SHOWN = [0, 2, 3]
SHOWN_SCALE = frame_scale(H * SCALE, W * SCALE)     # layout.png upscales the 24 x 32 preview 6x: 144 x 192
K = SCALE * SHOWN_SCALE                              # pixels per token in layout.png


def inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    preview = torch.randint(0, 256, (FRAMES, H * SCALE, W * SCALE, 3), generator=generator, dtype=torch.uint8)
    reference = {noun: torch.randint(0, 4, (FRAMES, H, W), generator=generator, dtype=torch.int32)
                 for noun in ("cat", "dog")}
    return preview, reference


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image).copy()


def frame_area(image: np.ndarray, row: int, column: int) -> np.ndarray:
    """The (upscaled) preview-frame pixels of grid cell (row, column): [H*K, W*K, 3]."""
    left, top = frame_origin(row, column, H * SCALE, W * SCALE)
    return image[top:top + H * K, left:left + W * K]


def shown(frame: torch.Tensor) -> np.ndarray:
    """A preview frame as layout.png shows it: nearest-upscaled SHOWN_SCALE times."""
    return frame.numpy().repeat(SHOWN_SCALE, 0).repeat(SHOWN_SCALE, 1)


def test_png_has_expected_size_and_overwrites_atomically(tmp_path):
    preview, reference = inputs(0)
    path = tmp_path / "layout.png"
    path.write_bytes(b"stale")
    render_layout_png(path, preview, reference, reference, SHOWN)
    image = read(path)
    assert (image.shape[1], image.shape[0]) == layout_png_size(2, len(SHOWN), H * SCALE, W * SCALE)
    assert os.listdir(tmp_path) == ["layout.png"]
    odd_preview = torch.randint(0, 256, (FRAMES, 25, 30, 3), dtype=torch.uint8)
    render_layout_png(str(path), odd_preview, {"cat": reference["cat"]}, {"cat": reference["cat"]}, [1])
    assert read(path).shape[:2] == layout_png_size(1, 1, 25, 30)[::-1]


def test_png_differs_exactly_where_labels_differ(tmp_path):
    preview, reference = inputs(1)
    refined = {noun: labels.clone() for noun, labels in reference.items()}
    dog = refined["dog"][2]
    changed = torch.zeros(H, W, dtype=torch.bool)
    changed[1:3, 2:5] = True
    changed[5, 0] = True
    dog[1:3, 2:5] = torch.where(dog[1:3, 2:5] > 0, LABEL_REMOVED, LABEL_ADDED_BASE + 1)
    dog[5, 0] = LABEL_ADDED_BASE
    render_layout_png(tmp_path / "same.png", preview, reference, reference, SHOWN)
    render_layout_png(tmp_path / "changed.png", preview, reference, refined, SHOWN)
    same, other = read(tmp_path / "same.png"), read(tmp_path / "changed.png")
    differs = (same != other).any(axis=-1)
    dog_refined_row, frame_column = 3, SHOWN.index(2)
    cell_differs = (frame_area(same, dog_refined_row, frame_column)
                    != frame_area(other, dog_refined_row, frame_column)).any(axis=-1)
    expected = changed.numpy().repeat(K, axis=0).repeat(K, axis=1)
    np.testing.assert_array_equal(cell_differs, expected)
    frame_area(differs, dog_refined_row, frame_column)[...] = False
    _, frame_top = frame_origin(dog_refined_row, frame_column, H * SCALE, W * SCALE)
    differs[frame_top - LINE_HEIGHT:frame_top] = False          # titles may change (counts)
    assert not differs.any(), "pixels changed outside the cell whose labels changed"


def test_overlay_marks_labels_and_leaves_background(tmp_path):
    preview, reference = inputs(2)
    labels = torch.zeros(FRAMES, H, W, dtype=torch.int32)
    labels[:, 0:2, 0:2] = 1
    labels[:, 3:5, 0:3] = LABEL_REMOVED
    labels[:, 0:3, 5:8] = LABEL_ADDED_BASE
    render_layout_png(tmp_path / "layout.png", preview, {"cat": labels}, {"cat": labels}, [1])
    cell = frame_area(read(tmp_path / "layout.png"), 0, 0).astype(int)
    frame = shown(preview[1]).astype(int)
    background = labels[1].numpy().repeat(K, 0).repeat(K, 1) == 0
    np.testing.assert_array_equal(cell[background], frame[background])
    removed = cell[3 * K:5 * K, 0:3 * K]
    assert (removed == (235, 20, 20)).all(axis=-1).any(), "removed region not hatched red"
    added_gain = cell[0:3 * K, 5 * K:, 1] - frame[0:3 * K, 5 * K:, 1]
    assert added_gain.mean() > 30, "added region not tinted green"


def test_rejects_bad_input(tmp_path):
    preview, reference = inputs(3)
    with pytest.raises(ValueError, match="frames_to_show"):
        render_layout_png(tmp_path / "x.png", preview, reference, reference, [FRAMES])
    with pytest.raises(ValueError, match="uint8"):
        render_layout_png(tmp_path / "x.png", preview.float(), reference, reference, [0])
    with pytest.raises(ValueError, match="same nouns"):
        render_layout_png(tmp_path / "x.png", preview, reference, {"cat": reference["cat"]}, [0])
    with pytest.raises(ValueError, match=r"\[4, h, w\]"):
        render_layout_png(tmp_path / "x.png", preview, reference,
                          {"cat": reference["cat"], "dog": reference["dog"][:2]}, [0])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("frame_side", [32, 60, 480])
def test_frames_are_shown_at_least_min_side_and_the_text_fits(tmp_path, frame_side):
    """Whatever the model's size: the shorter side of each shown frame is >= MIN_FRAME_SIDE, and the
    canvas is wide enough for the header and the legend."""
    preview = torch.randint(0, 256, (2, frame_side, frame_side * 2, 3), dtype=torch.uint8)
    labels = {"circles": torch.ones(2, 4, 8, dtype=torch.int32)}
    render_layout_png(tmp_path / "layout.png", preview, labels, labels, [0, 1])
    image = read(tmp_path / "layout.png")
    scale = frame_scale(frame_side, frame_side * 2)
    assert frame_side * scale >= MIN_FRAME_SIDE and (frame_side * (scale - 1) < MIN_FRAME_SIDE or scale == 1)
    assert image.shape[1] >= max(len(line) for line in HEADER) * 6
    assert image.shape[1] >= max(len(label) for label, _ in LEGEND) * 6


def test_legend_swatches_show_the_overlay_colours(tmp_path):
    """The legend's swatches are the colours the cells use (instance, added, removed)."""
    preview, reference = inputs(4)
    render_layout_png(tmp_path / "layout.png", preview, reference, reference, [0])
    image = read(tmp_path / "layout.png")
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    for _, colour in LEGEND:
        if colour is not None:
            assert tuple(int(c) for c in colour) in colours
