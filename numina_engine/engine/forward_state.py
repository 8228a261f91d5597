"""The per-forward-call state that NUMINA hands down `WanDiT.forward` to the attention interface.

One explicit object instead of flags set on modules: what to extract and where (`Extraction`, with
the extraction work in extraction.py), the modulation plan and its strength for this step, and
where to stop, and this rank's share of the tokens under Ulysses sequence parallelism
(`SequenceShard`, sequence_shard.py). `None` everywhere means plain Wan on one process.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numina.config import NuminaConfig
from ..numina.modulation import ModulationPlan
from .extraction import Extraction
from .sequence_shard import SequenceShard

__all__ = ["Extraction", "ForwardState", "Modulation"]


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
    sequence: SequenceShard | None = None  # Ulysses: this rank's token rows (None: all tokens here)
