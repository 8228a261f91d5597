"""Layouts read off a counting-world video: where each noun's objects really are, at token resolution.

NUMINA builds its layouts from attention maps; on the counting world the truth is in the pixels, so
a video's layout can be read exactly: the noun's colour (counter.classify_pixels), its 8-connected
components of at least the counter's minimum area, each scaled down to the DiT's token grid. Used as
"oracle layouts" (what NUMINA's layout stage would give if it were perfect) and as ground truth for
the layout and localisation stages of bench/numina_stages.py.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .counter import _EIGHT_CONNECTED, classify_pixels, default_min_area
from .scenes import COLOURS, kind_of_noun

# A token belongs to a component when the component covers at least this fraction of its pixels.
TOKEN_COVERAGE = 0.5


def noun_pixel_masks(frames, noun: str) -> np.ndarray:
    """bool [T, H, W]: the pixels of `noun`'s colour in uint8 frames [T, H, W, 3]."""
    kind = kind_of_noun(noun)
    if kind is None:
        raise ValueError(f"{noun!r} names no object of the counting world")
    return classify_pixels(frames) == list(COLOURS).index(kind.colour)


def token_masks(pixel_masks: np.ndarray, patch: tuple[int, int]) -> torch.Tensor:
    """float32 [T, h, w]: the fraction of each token's pixels (patch ph x pw) that the mask covers."""
    masks = torch.from_numpy(np.ascontiguousarray(pixel_masks)).to(torch.float32)[:, None]
    return F.avg_pool2d(masks, kernel_size=patch, stride=patch)[:, 0]


def component_layout(frames, noun: str, patch: tuple[int, int] = (2, 2), min_area: int | None = None) -> torch.Tensor:
    """int32 [T, h, w] labels (0 background, 1..K the noun's objects, per frame) at token resolution.

    frames: uint8 [T, H, W, 3]; patch: pixels per token (height, width). A token takes the label of
    the component covering at least TOKEN_COVERAGE of it (components never share a token in this
    world: objects are more than a pixel apart, and a token is 2 px); an object too thin to cover any
    token whole enough still gets the token it covers most, so every counted object is in the layout.
    """
    masks = noun_pixel_masks(frames, noun)
    min_area = default_min_area() if min_area is None else min_area
    t, height, width = masks.shape
    layout = torch.zeros((t, height // patch[0], width // patch[1]), dtype=torch.int32)
    for frame in range(t):
        labels, found = ndimage.label(masks[frame], structure=_EIGHT_CONNECTED)
        areas = np.bincount(labels.ravel(), minlength=found + 1)
        instance = 0
        for component in range(1, found + 1):
            if areas[component] < min_area:
                continue
            instance += 1
            coverage = token_masks((labels == component)[None], patch)[0]
            tokens = coverage >= TOKEN_COVERAGE
            if not tokens.any():
                tokens = coverage == coverage.max()
            layout[frame][tokens & (layout[frame] == 0)] = instance
    return layout
