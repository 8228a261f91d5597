"""Rendering scenes of the counting world into clips, vectorised in torch (CPU or CUDA).

Shapes are hard-edged: a pixel belongs to an object when its centre is inside the shape. For an
object of centre (cx, cy) and radius r, with (dx, dy) = pixel centre - (cx, cy):
  circle:   dx^2 + dy^2 <= r^2
  square:   max(|dx|, |dy|) <= SQUARE_HALF_SIDE * r
  triangle: -r <= dy <= r and 2 |dx| <= dy + r  (apex up, base 2r wide, height 2r)
  ring:     (RING_INNER r)^2 < dx^2 + dy^2 <= r^2
  diamond:  |dx| + |dy| <= r
  cross:    two arms of half width CROSS_HALF_WIDTH * r reaching r (|dx| <= w and |dy| <= r, or
            |dy| <= w and |dx| <= r)
Every shape lies inside its bounding square [cx - r, cx + r] x [cy - r, cy + r].
"""
from __future__ import annotations

import torch

from .scenes import BACKGROUND, COLOURS, CROSS_HALF_WIDTH, RING_INNER, SHAPES, SQUARE_HALF_SIDE, Scenes, WorldConfig


def _inside_circle(dx, dy, r):
    return dx * dx + dy * dy <= r * r


def _inside_square(dx, dy, r):
    return torch.maximum(dx.abs(), dy.abs()) <= SQUARE_HALF_SIDE * r


def _inside_triangle(dx, dy, r):
    return (dy >= -r) & (dy <= r) & (2 * dx.abs() <= dy + r)


def _inside_ring(dx, dy, r):
    d2 = dx * dx + dy * dy
    return (d2 <= r * r) & (d2 > (RING_INNER * r) ** 2)


def _inside_diamond(dx, dy, r):
    return dx.abs() + dy.abs() <= r


def _inside_cross(dx, dy, r):
    w = CROSS_HALF_WIDTH * r
    return ((dx.abs() <= w) & (dy.abs() <= r)) | ((dy.abs() <= w) & (dx.abs() <= r))


_INSIDE = {"circle": _inside_circle, "square": _inside_square, "triangle": _inside_triangle,
           "ring": _inside_ring, "diamond": _inside_diamond, "cross": _inside_cross}
assert tuple(_INSIDE) == SHAPES, "one inside-test per shape, in SHAPES order"


def object_centres(scenes: Scenes, config: WorldConfig, device=None) -> torch.Tensor:
    """float32 [N, K, F, 2]: (x, y) of each object's centre in each frame, pixels."""
    device = _device(scenes, device)
    frame = torch.arange(config.frames, device=device, dtype=torch.float32)
    centre, velocity = scenes.centre.to(device), scenes.velocity.to(device)
    return centre[:, :, None, :] + frame[None, None, :, None] * velocity[:, None, None, :]


def object_masks(scenes: Scenes, config: WorldConfig, device=None) -> torch.Tensor:
    """bool [N, K, F, H, W]: the pixels of each object in each frame (all False in unused slots).

    device: where to compute (default: the scenes' device).
    """
    device = _device(scenes, device)
    position = object_centres(scenes, config, device)                       # [N, K, F, 2]
    pixel = torch.arange(config.size, device=device, dtype=torch.float32) + 0.5
    dx = pixel.view(1, 1, 1, 1, -1) - position[..., 0, None, None]           # [N, K, F, 1, W]
    dy = pixel.view(1, 1, 1, -1, 1) - position[..., 1, None, None]           # [N, K, F, H, 1]
    radius = scenes.radius.to(device)[:, :, None, None, None]
    shape = scenes.shape.to(device)[:, :, None, None, None]
    masks = torch.zeros(dx.shape[:3] + (config.size, config.size), dtype=torch.bool, device=device)
    for index, inside in enumerate(_INSIDE.values()):
        masks |= (shape == index) & inside(dx, dy, radius)
    return masks & scenes.valid.to(device)[:, :, None, None, None]


def render_uint8(scenes: Scenes, config: WorldConfig, device=None) -> torch.Tensor:
    """uint8 [N, F, H, W, 3]: the clips as RGB pixels (objects in COLOURS on BACKGROUND)."""
    return _render_rgb(scenes, config, device).to(torch.uint8)


def render(scenes: Scenes, config: WorldConfig, device=None) -> torch.Tensor:
    """float32 [N, 3, F, H, W] in [-1, 1]: the clips of render_uint8 as pixel / 127.5 - 1."""
    return (_render_rgb(scenes, config, device) / 127.5 - 1.0).permute(0, 4, 1, 2, 3).contiguous()


def _render_rgb(scenes: Scenes, config: WorldConfig, device) -> torch.Tensor:
    """float32 [N, F, H, W, 3] holding whole pixel values 0..255."""
    device = _device(scenes, device)
    masks = object_masks(scenes, config, device).to(torch.float32)
    background = torch.tensor(BACKGROUND, dtype=torch.float32, device=device)
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32, device=device) - background
    offset = palette[scenes.colour.to(device).clamp(min=0)]                  # [N, K, 3]
    # Objects never overlap, so each pixel receives at most one object's colour.
    return background + torch.einsum("nkfhw,nkc->nfhwc", masks, offset)


def _device(scenes: Scenes, device) -> torch.device:
    return torch.device(device) if device is not None else scenes.centre.device
