"""NUMINA's settings, with the authors' defaults (H-EmbodVis/NUMINA, numina/config.py).

Spatial settings (DBSCAN eps, circle radius, placement grid) are in token-grid units of the
reference layer (one unit = one latent patch); a model that works at another scale stores its
own values in its checkpoint config and overrides these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..errors import UserInputError

# Label conventions of a layout map (per noun, per frame, int32 [h, w]).
LABEL_BACKGROUND = 0      # not the noun
LABEL_REMOVED = -1        # an instance removed by refinement: its cross-attention is suppressed
LABEL_ADDED_BASE = 100    # instances added by refinement are 100, 101, ...; existing ones are 1..99

EXTRACTION_BLOCK_OUTPUTS = ("within_frame", "full")


@dataclass(frozen=True)
class NuminaConfig:
    total_steps: int = 50
    reference_step: int = 20
    reference_layer: int = 15

    # head scoring: score = alpha * std + beta * block variance + gamma * mean Sobel magnitude
    sa_alpha: float = 1.0
    sa_beta: float = 1.0
    sa_gamma: float = 0.1
    sa_block_grid: int = 8

    # layout construction
    meanshift_bandwidth: float | None = None   # None: estimated from the quantile below
    meanshift_quantile: float = 0.2
    dbscan_eps: float = 3.0
    dbscan_min_samples: int = 5
    cross_attn_peak_ratio: float = 0.05
    semantic_overlap_tau: float = 0.2

    # refinement
    circle_radius: int = 5
    lambda_center: float = 1.0
    lambda_temporal: float = 8.0
    placement_grid_step: int = 2

    # modulation strength: delta(t) = scale * (offset - amplitude * tanh(t - center))
    modulation_center: float = 25.0
    modulation_amplitude: float = 3.0
    modulation_offset: float = 4.0
    modulation_min_delta: float = 0.25
    suppress_scale: float = 10.0
    circle_bias_k: float = 0.8

    # EasyCache (phase 1)
    easycache_enabled: bool = True
    easycache_tau: float = 0.05
    easycache_warmup: int = 10

    # Extraction pass: the reference block's self-attention output, "full" (the true attention) or
    # "within_frame" (block-diagonal, as the authors' extraction returns).
    extraction_block_output: str = "full"

    def __post_init__(self) -> None:
        if self.extraction_block_output not in EXTRACTION_BLOCK_OUTPUTS:
            raise UserInputError(f"extraction_block_output must be one of {EXTRACTION_BLOCK_OUTPUTS}, "
                                 f"got {self.extraction_block_output!r}")
        if not 0 <= self.reference_step < self.total_steps:
            raise UserInputError(
                f"reference_step must be in [0, {self.total_steps - 1}] for {self.total_steps} steps, "
                f"got {self.reference_step}")
        if self.reference_layer < 0:
            raise UserInputError(f"reference_layer must be >= 0, got {self.reference_layer}")

    def delta(self, step_index: int) -> float:
        """Modulation strength at denoising step `step_index` (0-based)."""
        t = float(step_index)
        return self.modulation_min_delta * (
            self.modulation_offset - self.modulation_amplitude * math.tanh(t - self.modulation_center))

    def should_modulate(self, step_index: int) -> bool:
        """The authors modulate only while delta(t) exceeds its floor."""
        return self.delta(step_index) > self.modulation_min_delta

    def with_overrides(self, **overrides) -> "NuminaConfig":
        """A copy with some fields changed; unknown names raise a TypeError that lists the valid ones."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown NUMINA setting(s) {unknown}; valid: {sorted(names)}")
        return replace(self, **overrides)
