"""layout.png rendering: numina_engine.numina.layout_image."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from numina_engine.numina.config import LABEL_ADDED_BASE, LABEL_REMOVED
from numina_engine.numina.layout_image import CELL_PADDING, TITLE_HEIGHT, layout_png_size, render_layout_png

FRAMES, H, W, SCALE = 4, 6, 8, 4          # token grid 6 x 8, preview 24 x 32 (exact 4x upscale)
SHOWN = [0, 2, 3]


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
    """The preview-frame pixels of grid cell (row, column): [H*SCALE, W*SCALE, 3]."""
    top = CELL_PADDING + row * (TITLE_HEIGHT + H * SCALE + CELL_PADDING) + TITLE_HEIGHT
    left = CELL_PADDING + column * (W * SCALE + CELL_PADDING)
    return image[top:top + H * SCALE, left:left + W * SCALE]


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
    expected = changed.numpy().repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    np.testing.assert_array_equal(cell_differs, expected)
    frame_area(differs, dog_refined_row, frame_column)[...] = False
    title_top = CELL_PADDING + dog_refined_row * (TITLE_HEIGHT + H * SCALE + CELL_PADDING)
    differs[title_top:title_top + TITLE_HEIGHT] = False          # titles may change (counts)
    assert not differs.any(), "pixels changed outside the cell whose labels changed"


def test_overlay_marks_labels_and_leaves_background(tmp_path):
    preview, reference = inputs(2)
    labels = torch.zeros(FRAMES, H, W, dtype=torch.int32)
    labels[:, 0:2, 0:2] = 1
    labels[:, 3:5, 0:3] = LABEL_REMOVED
    labels[:, 0:3, 5:8] = LABEL_ADDED_BASE
    render_layout_png(tmp_path / "layout.png", preview, {"cat": labels}, {"cat": labels}, [1])
    cell = frame_area(read(tmp_path / "layout.png"), 0, 0).astype(int)
    frame = preview[1].numpy().astype(int)
    background = labels[1].numpy().repeat(SCALE, 0).repeat(SCALE, 1) == 0
    np.testing.assert_array_equal(cell[background], frame[background])
    removed = cell[3 * SCALE:5 * SCALE, 0:3 * SCALE]
    assert (removed == (235, 20, 20)).all(axis=-1).any(), "removed region not hatched red"
    added_gain = cell[0:3 * SCALE, 5 * SCALE:, 1] - frame[0:3 * SCALE, 5 * SCALE:, 1]
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
