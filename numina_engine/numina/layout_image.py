"""layout.png: the reference and refined layouts of each noun over preview frames (Pillow only).

Grid: for every noun two rows, its reference layout then its refined layout; one column per
shown frame. Each cell is a title strip ("noun ref|refined f<frame> n=<count>") above the
preview frame with the labels (nearest-upscaled from the token grid) blended over it:
existing instances in distinct colours (no reds or greens), removed regions red with opaque
diagonal hatching, added instances in shades of green. Background labels leave the frame as is.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .config import LABEL_ADDED_BASE, LABEL_BACKGROUND, LABEL_REMOVED

__all__ = ["render_layout_png", "layout_png_size", "TITLE_HEIGHT", "CELL_PADDING"]

TITLE_HEIGHT = 14     # pixels of the title strip above each frame
CELL_PADDING = 4      # pixels between cells and around the grid
OVERLAY_ALPHA = 0.5   # weight of a label colour over the preview pixel
HATCH_PERIOD = 6      # removed regions: an opaque diagonal line, 2 px wide, every HATCH_PERIOD pixels

_INSTANCE_COLOURS = np.array([
    (31, 119, 255), (255, 160, 0), (160, 60, 220), (0, 210, 230), (255, 230, 0),
    (230, 0, 200), (140, 90, 40), (120, 140, 255), (255, 120, 200), (0, 110, 140),
], dtype=np.float32)
_ADDED_COLOURS = np.array([(0, 230, 60), (120, 255, 120), (0, 140, 40), (180, 255, 0)], dtype=np.float32)
_REMOVED_COLOUR = np.array((235, 20, 20), dtype=np.float32)
_BACKDROP = (24, 24, 24)
_TEXT_COLOUR = (240, 240, 240)


def layout_png_size(num_nouns: int, num_shown_frames: int, frame_height: int, frame_width: int) -> tuple[int, int]:
    """(width, height) in pixels of the image render_layout_png writes for these sizes."""
    width = num_shown_frames * frame_width + (num_shown_frames + 1) * CELL_PADDING
    rows = 2 * num_nouns
    height = rows * (TITLE_HEIGHT + frame_height) + (rows + 1) * CELL_PADDING
    return width, height


def render_layout_png(path: str | os.PathLike, preview_frames: torch.Tensor, reference: dict[str, torch.Tensor],
                      refined: dict[str, torch.Tensor], frames_to_show: list[int]) -> None:
    """Write the layout grid to `path` as PNG, atomically (temporary file, then os.replace).

    preview_frames: uint8 [F, H, W, 3] RGB frames (any H, W).
    reference, refined: noun -> int32 [F, h, w] labels on the token grid (same nouns, same
        shape); rows follow reference's noun order.
    frames_to_show: frame indices in [0, F), one grid column each.
    """
    frames = _check_inputs(preview_frames, reference, refined, frames_to_show)
    num_frames, frame_height, frame_width, _ = frames.shape
    width, height = layout_png_size(len(reference), len(frames_to_show), frame_height, frame_width)
    grid = Image.new("RGB", (width, height), _BACKDROP)
    font = ImageFont.load_default()
    row = 0
    for noun in reference:
        for kind, layouts in (("ref", reference[noun]), ("refined", refined[noun])):
            labels = layouts.cpu().numpy()
            top = CELL_PADDING + row * (TITLE_HEIGHT + frame_height + CELL_PADDING)
            for column, f in enumerate(frames_to_show):
                left = CELL_PADDING + column * (frame_width + CELL_PADDING)
                title = f"{noun} {kind} f{f} n={_instance_count(labels[f])}"
                grid.paste(_cell(frames[f], labels[f], title, font), (left, top))
            row += 1
    _save_atomically(grid, os.fspath(path))


def _check_inputs(preview_frames: torch.Tensor, reference: dict[str, torch.Tensor],
                  refined: dict[str, torch.Tensor], frames_to_show: list[int]) -> np.ndarray:
    """Validate the inputs; return the preview frames as a uint8 numpy array [F, H, W, 3]."""
    if preview_frames.dtype != torch.uint8 or preview_frames.dim() != 4 or preview_frames.shape[-1] != 3:
        raise ValueError(f"preview_frames must be uint8 [F, H, W, 3], got {preview_frames.dtype} "
                         f"{tuple(preview_frames.shape)}")
    num_frames = preview_frames.shape[0]
    if not reference or list(reference) != list(refined):
        raise ValueError(f"reference and refined must name the same nouns in the same order, got "
                         f"{list(reference)} and {list(refined)}")
    for noun in reference:
        for kind, labels in (("reference", reference[noun]), ("refined", refined[noun])):
            if labels.dim() != 3 or labels.shape[0] != num_frames or labels.is_floating_point():
                raise ValueError(f"{kind}[{noun!r}] must be integer labels [{num_frames}, h, w], got "
                                 f"{labels.dtype} {tuple(labels.shape)}")
    if not frames_to_show or any(not 0 <= f < num_frames for f in frames_to_show):
        raise ValueError(f"frames_to_show must be a non-empty list of indices in [0, {num_frames}), "
                         f"got {frames_to_show}")
    return preview_frames.cpu().numpy()


def _instance_count(labels: np.ndarray) -> int:
    """Number of instances (labels > 0) in one frame's label map [h, w]."""
    return int(np.unique(labels[labels > 0]).size)


def _cell(frame: np.ndarray, labels: np.ndarray, title: str, font: ImageFont.ImageFont) -> Image.Image:
    """One grid cell: title strip above `frame` (uint8 [H, W, 3]) with `labels` ([h, w]) over it."""
    frame_height, frame_width, _ = frame.shape
    cell = Image.new("RGB", (frame_width, TITLE_HEIGHT + frame_height), _BACKDROP)
    cell.paste(Image.fromarray(_overlay(frame, labels)), (0, TITLE_HEIGHT))
    ImageDraw.Draw(cell).text((2, 1), title, fill=_TEXT_COLOUR, font=font)
    return cell


def _overlay(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Blend the label colours over `frame`: uint8 [H, W, 3] -> uint8 [H, W, 3].

    Labels [h, w] are upscaled by nearest neighbour, pixel (y, x) reading label
    ((2y + 1) h // 2H, (2x + 1) w // 2W).
    """
    frame_height, frame_width, _ = frame.shape
    h, w = labels.shape
    rows = (2 * np.arange(frame_height) + 1) * h // (2 * frame_height)
    cols = (2 * np.arange(frame_width) + 1) * w // (2 * frame_width)
    upscaled = labels[rows[:, None], cols[None, :]]
    colours = np.zeros(upscaled.shape + (3,), dtype=np.float32)
    existing = (upscaled > LABEL_BACKGROUND) & (upscaled < LABEL_ADDED_BASE)
    added = upscaled >= LABEL_ADDED_BASE
    removed = upscaled == LABEL_REMOVED
    colours[existing] = _INSTANCE_COLOURS[(upscaled[existing] - 1) % len(_INSTANCE_COLOURS)]
    colours[added] = _ADDED_COLOURS[(upscaled[added] - LABEL_ADDED_BASE) % len(_ADDED_COLOURS)]
    colours[removed] = _REMOVED_COLOUR
    alpha = np.where(upscaled != LABEL_BACKGROUND, OVERLAY_ALPHA, 0.0).astype(np.float32)[..., None]
    blended = frame.astype(np.float32) * (1.0 - alpha) + colours * alpha
    hatch = removed & ((np.arange(frame_height)[:, None] + np.arange(frame_width)[None, :]) % HATCH_PERIOD < 2)
    blended[hatch] = _REMOVED_COLOUR
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _save_atomically(image: Image.Image, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".layout-", suffix=".png", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
