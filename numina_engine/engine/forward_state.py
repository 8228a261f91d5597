"""The per-forward-call state that NUMINA hands down `WanDiT.forward` to the attention interface.

One explicit object instead of flags set on modules: what to extract and where, the modulation plan
and its strength for this step, and where to stop. `None` everywhere means plain Wan.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numina.config import NuminaConfig
from ..numina.modulation import ModulationPlan


@dataclass
class Extraction:
    """Take attention maps at block `layer` from batch row `batch_index` (the conditional pass).

    Inputs: `grid` = token grid (f, h, w); `noun_tokens` int32 [n_nouns, T] text positions of each
    counted noun, padded with -1. `frames_per_chunk` bounds the memory of the within-frame maps
    (chunk x heads x N x N float32 at a time, N = h*w): Wan2.1's 21 latent frames at 480p fit in
    one chunk (2.45 GB), where head scoring is fastest.
    Filled in by the attention interface during the forward call:
      `self_maps`   float32 [f, N, N]  within-frame self-attention map of each frame's best head,
      `best_head`   int64   [f],  `head_scores` float32 [f, heads],
      `noun_maps`   float32 [n_nouns, f, N]  noun probability mass, mean over tokens and heads.
    """
    layer: int
    grid: tuple[int, int, int]
    noun_tokens: torch.Tensor
    config: NuminaConfig
    batch_index: int = 0
    frames_per_chunk: int = 21
    self_maps: torch.Tensor | None = None
    best_head: torch.Tensor | None = None
    head_scores: torch.Tensor | None = None
    noun_maps: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.self_maps is not None and self.noun_maps is not None


@dataclass
class Modulation:
    """Bias the conditional row's cross-attention in every block by the layout plan.

    `delta` is a 0-dim float32 tensor on the device (the step's strength), so that a captured CUDA
    graph can replay with a new value written into it.
    """
    plan: ModulationPlan
    delta: torch.Tensor
    config: NuminaConfig
    batch_index: int = 0


@dataclass
class ForwardState:
    extraction: Extraction | None = None
    modulation: Modulation | None = None
    stop_after_layer: int | None = None   # return early once this block has run (nothing later is used)
