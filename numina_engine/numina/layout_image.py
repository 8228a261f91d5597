"""layout.png: the reference and refined layouts of each noun over preview frames (Pillow only).

Readable at a glance whatever the model's size:

    header   what the image shows (one line per sentence)
    grid     for every noun two rows, labelled at the left: "<noun> / reference (phase 1)", the layout
             phase 1 found, then "<noun> / refined plan", what phase 2 was asked to produce; one column
             per shown latent frame, titled "frame <f>: n=<count>"
    legend   one swatch per colour: instances found (distinct colours, no reds or greens), instances the
             plan adds (greens), regions the plan removes (red, hatched), background (the preview as is)

Each cell is the preview frame, nearest-upscaled by a whole factor to at least MIN_FRAME_SIDE pixels on
its shorter side (the demo model's 32x32 frames become 128x128), with the labels (nearest-upscaled from
the token grid) blended over it.
"""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .config import LABEL_ADDED_BASE, LABEL_BACKGROUND, LABEL_REMOVED

__all__ = ["render_layout_png", "layout_png_size", "frame_scale", "frame_origin"]

MIN_FRAME_SIDE = 128  # pixels: frames are upscaled by a whole factor until their shorter side reaches this
LINE_HEIGHT = 14      # pixels per line of text (Pillow's default 11-px font)
CHAR_WIDTH = 6        # pixels per character of that font (for sizing the canvas)
CELL_PADDING = 6      # pixels between cells and around the grid
ROW_LABEL_WIDTH = 19 * CHAR_WIDTH   # the row labels' column at the left
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

HEADER = ("NUMINA layout: for each noun, the layout phase 1 found (reference)",
          "and the refined plan phase 2 was asked to produce; columns: latent frames.")
LEGEND = (("instance found (one colour each)", tuple(_INSTANCE_COLOURS[0].astype(int))),
          ("instance the plan adds", tuple(_ADDED_COLOURS[0].astype(int))),
          ("region the plan removes (hatched)", tuple(_REMOVED_COLOUR.astype(int))),
          ("background: the preview as is", None))
SWATCH = 10           # pixels, legend swatches


def frame_scale(frame_height: int, frame_width: int) -> int:
    """The whole factor frames are upscaled by in layout.png."""
    return max(1, math.ceil(MIN_FRAME_SIDE / min(frame_height, frame_width)))


def _header_height() -> int:
    return len(HEADER) * LINE_HEIGHT + CELL_PADDING


def _legend_height() -> int:
    return len(LEGEND) * LINE_HEIGHT + CELL_PADDING


def _text_width(lines) -> int:
    return max(len(line) for line in lines) * CHAR_WIDTH + 2 * CELL_PADDING


def frame_origin(row: int, column: int, frame_height: int, frame_width: int) -> tuple[int, int]:
    """(left, top) pixel of the (upscaled) preview frame in grid row `row` (2 per noun: reference, refined)
    and column `column`."""
    scale = frame_scale(frame_height, frame_width)
    cell_width, cell_height = frame_width * scale, LINE_HEIGHT + frame_height * scale
    left = CELL_PADDING + ROW_LABEL_WIDTH + column * (cell_width + CELL_PADDING)
    top = CELL_PADDING + _header_height() + row * (cell_height + CELL_PADDING) + LINE_HEIGHT
    return left, top


def layout_png_size(num_nouns: int, num_shown_frames: int, frame_height: int, frame_width: int) -> tuple[int, int]:
    """(width, height) in pixels of the image render_layout_png writes for these sizes."""
    scale = frame_scale(frame_height, frame_width)
    cell_width, cell_height = frame_width * scale, LINE_HEIGHT + frame_height * scale
    grid_width = ROW_LABEL_WIDTH + num_shown_frames * cell_width + (num_shown_frames + 1) * CELL_PADDING
    legend_width = _text_width([label for label, _ in LEGEND]) + SWATCH + CELL_PADDING
    width = max(grid_width, _text_width(HEADER), legend_width)
    rows = 2 * num_nouns
    height = (_header_height() + rows * cell_height + (rows + 1) * CELL_PADDING + _legend_height())
    return width, height


def render_layout_png(path: str | os.PathLike, preview_frames: torch.Tensor, reference: dict[str, torch.Tensor],
                      refined: dict[str, torch.Tensor], frames_to_show: list[int]) -> None:
    """Write the layout image to `path` as PNG, atomically (temporary file, then os.replace).

    preview_frames: uint8 [F, H, W, 3] RGB frames (any H, W).
    reference, refined: noun -> int32 [F, h, w] labels on the token grid (same nouns, same
        shape); rows follow reference's noun order.
    frames_to_show: frame indices in [0, F), one grid column each.
    """
    frames = _check_inputs(preview_frames, reference, refined, frames_to_show)
    _, frame_height, frame_width, _ = frames.shape
    scale = frame_scale(frame_height, frame_width)
    width, height = layout_png_size(len(reference), len(frames_to_show), frame_height, frame_width)
    image = Image.new("RGB", (width, height), _BACKDROP)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for index, line in enumerate(HEADER):
        draw.text((CELL_PADDING, CELL_PADDING + index * LINE_HEIGHT), line, fill=_TEXT_COLOUR, font=font)
    row = 0
    for noun in reference:
        for kind, layouts in (("reference (phase 1)", reference[noun]), ("refined plan", refined[noun])):
            labels = layouts.cpu().numpy()
            _, frame_top = frame_origin(row, 0, frame_height, frame_width)
            draw.text((CELL_PADDING, frame_top), _fit(noun), fill=_TEXT_COLOUR, font=font)
            draw.text((CELL_PADDING, frame_top + LINE_HEIGHT), kind, fill=_TEXT_COLOUR, font=font)
            for column, f in enumerate(frames_to_show):
                left, top = frame_origin(row, column, frame_height, frame_width)
                draw.text((left, top - LINE_HEIGHT), f"frame {f}: n={_instance_count(labels[f])}",
                          fill=_TEXT_COLOUR, font=font)
                upscaled = frames[f].repeat(scale, axis=0).repeat(scale, axis=1)
                image.paste(Image.fromarray(_overlay(upscaled, labels[f])), (left, top))
            row += 1
    legend_top = height - _legend_height()
    for index, (label, colour) in enumerate(LEGEND):
        top = legend_top + index * LINE_HEIGHT
        box = (CELL_PADDING, top + 1, CELL_PADDING + SWATCH, top + 1 + SWATCH)
        draw.rectangle(box, fill=colour, outline=_TEXT_COLOUR)          # no fill: background
        draw.text((2 * CELL_PADDING + SWATCH, top), label, fill=_TEXT_COLOUR, font=font)
    _save_atomically(image, os.fspath(path))


def _fit(noun: str) -> str:
    """The noun, cut to the row-label column's width."""
    limit = ROW_LABEL_WIDTH // CHAR_WIDTH - 1
    return noun if len(noun) <= limit else noun[:limit - 1] + "~"


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
