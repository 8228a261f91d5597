"""NUMINA's settings, with the authors' defaults (H-EmbodVis/NUMINA, numina/config.py).

Spatial settings (DBSCAN eps, circle radius, placement grid) are in token-grid units of the
reference layer (one unit = one latent patch); a model that works at another scale stores its
own values in its checkpoint config and overrides these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import UserInputError

# Label conventions of a layout map (per noun, per frame, int32 [h, w]).
LABEL_BACKGROUND = 0      # not the noun
LABEL_REMOVED = -1        # an instance removed by refinement: its cross-attention is suppressed
LABEL_ADDED_BASE = 100    # instances added by refinement are 100, 101, ...; existing ones are 1..99

# `mode` picks, for every behaviour where the engine and the authors' code differ, one rule; a behaviour
# field set explicitly wins over its mode. README "Known differences" describes each rule.
MODES = ("authors", "engine")
# measured on the demo benchmark (docs/results/countbench_demo_h200.json): engine mode counted better than
# authors mode on the same prompts and seeds (0.604 vs 0.511, paired +0.093); README "Known differences"
DEFAULT_MODE = "engine"


class _Unset:
    """Default of a behaviour field: "take the mode's value" (None is a valid value of some fields)."""
    def __repr__(self) -> str:
        return "<from mode>"


_FROM_MODE = _Unset()

# behaviour field -> (valid values or a checker name, value in "authors" mode, value in "engine" mode)
BEHAVIOURS: dict[str, tuple[tuple, object, object]] = {
    "refine_paint_over": ((True, False), True, False),
    "head_pca": (("svd_lowrank", "exact"), "svd_lowrank", "exact"),
    "extraction_block_output": (("within_frame", "full"), "within_frame", "full"),
    "meanshift_bin_seeding": ((True, False), True, False),
    "meanshift_bandwidth_samples": (("an int >= 1", None), 1000, None),
    "when_nothing_to_modulate": (("regenerate_plain", "continue"), "regenerate_plain", "continue"),
    "sigma_grid": (("wan", "diffusers"), "wan", "diffusers"),
    "token_match": (("authors", "words"), "authors", "words"),
    "layout_instances": (("meanshift", "focus_clusters"), "meanshift", "meanshift"),
}


@dataclass(frozen=True)
class NuminaConfig:
    """NUMINA's settings. `mode` fills every behaviour field left unset (see BEHAVIOURS):
    "authors" reproduces the authors' code rule by rule, "engine" takes the engine's own rules."""
    mode: str = DEFAULT_MODE
    refine_paint_over: bool = _FROM_MODE                 # added instances paint over existing ones
    head_pca: str = _FROM_MODE                           # "svd_lowrank" (authors) | "exact"
    extraction_block_output: str = _FROM_MODE            # reference block's output: "within_frame" | "full"
    meanshift_bin_seeding: bool = _FROM_MODE             # MeanShift seeds from binned points (authors)
    meanshift_bandwidth_samples: int | None = _FROM_MODE  # points of the bandwidth estimate; None: all
    when_nothing_to_modulate: str = _FROM_MODE           # "regenerate_plain" (authors) | "continue"
    sigma_grid: str = _FROM_MODE                         # scheduler grid: "wan" (authors) | "diffusers"
    token_match: str = _FROM_MODE                        # noun -> tokens: "authors" | "words"
    layout_instances: str = _FROM_MODE                   # instances: "meanshift" proposals kept by the focus
    #                                                      (authors) | "focus_clusters" (the focus's DBSCAN clusters)
    pca_seed: int = 0                                    # seed of the randomized PCA (the run's seed)
    explicit_behaviours: frozenset = field(default=frozenset(), init=False, compare=False, repr=False)

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

    # which tokens of a counted noun NUMINA reads the cross-attention map from and writes the bias onto:
    # "noun" (the noun's own tokens, the authors' rule) or "phrase" (its count phrase: count word,
    # modifiers, compounds and the noun; numina/token_mapping.py)
    token_scope: str = "noun"

    # EasyCache (phase 1)
    easycache_enabled: bool = True
    easycache_tau: float = 0.05
    easycache_warmup: int = 10

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserInputError(f"unknown NUMINA mode {self.mode!r}; valid: {list(MODES)}")
        explicit = frozenset(name for name in BEHAVIOURS if getattr(self, name) is not _FROM_MODE)
        object.__setattr__(self, "explicit_behaviours", explicit)
        column = 1 if self.mode == "authors" else 2
        for name, spec in BEHAVIOURS.items():
            if name not in explicit:
                object.__setattr__(self, name, spec[column])
            _check_behaviour(name, getattr(self, name))
        if not 0 <= self.reference_step < self.total_steps:
            raise UserInputError(
                f"reference_step must be in [0, {self.total_steps - 1}] for {self.total_steps} steps, "
                f"got {self.reference_step}")
        if self.reference_layer < 0:
            raise UserInputError(f"reference_layer must be >= 0, got {self.reference_layer}")
        if self.token_scope not in ("noun", "phrase"):
            raise UserInputError(f"token_scope must be 'noun' or 'phrase', got {self.token_scope!r}")

    def delta(self, step_index: int) -> float:
        """Modulation strength at denoising step `step_index` (0-based)."""
        t = float(step_index)
        return self.modulation_min_delta * (
            self.modulation_offset - self.modulation_amplitude * math.tanh(t - self.modulation_center))

    def should_modulate(self, step_index: int) -> bool:
        """The authors modulate only while delta(t) exceeds its floor."""
        return self.delta(step_index) > self.modulation_min_delta

    def behaviours(self) -> dict:
        """{"mode": ..., every behaviour field: its resolved value}, for report.json."""
        return {"mode": self.mode, **{name: getattr(self, name) for name in BEHAVIOURS}}

    def with_overrides(self, **overrides) -> "NuminaConfig":
        """A copy with some fields changed; unknown names raise a TypeError that lists the valid ones.

        Behaviour fields that were filled by the mode are filled again by the copy's mode (so
        overriding `mode` changes them); explicitly set ones are kept unless overridden.
        """
        names = {f.name for f in fields(self) if f.init}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown NUMINA setting(s) {unknown}; valid: {sorted(names)}")
        current = {name: getattr(self, name) for name in names
                   if name not in BEHAVIOURS or name in self.explicit_behaviours}
        return NuminaConfig(**{**current, **overrides})


def _check_behaviour(name: str, value) -> None:
    valid = BEHAVIOURS[name][0]
    if name == "meanshift_bandwidth_samples":
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return
    elif any(value is v or (type(value) is type(v) and value == v) for v in valid):
        return
    raise UserInputError(f"NUMINA setting {name}={value!r} is not valid; valid: {list(valid)}")
