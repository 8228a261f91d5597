"""EasyCache for phase 1: reuse the transformer's cached transformation on stable steps.

The NUMINA authors' rule (wan/text2video.py, generate_numina): after `warmup` fully computed steps,
a step may reuse the last computed "transformation" Δ = output - input (per CFG branch), so the
output is approximated as input + Δ, while the accumulated error estimate E stays below `tau`.
Each reused step adds ε = k · mean|x_t - x_last| / mean|v_last|, where k, the transformation rate,
is mean|Δv| / mean|Δx| between the last two computed steps. A computed step resets E to 0.
With tau = 0 nothing is ever reused, so the run equals the uncached one exactly.
"""
from __future__ import annotations

import torch


class EasyCache:
    def __init__(self, tau: float, warmup: int, enabled: bool = True):
        self.tau = tau
        self.warmup = warmup
        self.enabled = enabled
        self.computed = 0
        self.skipped = 0
        self._rate: torch.Tensor | None = None          # k, 0-dim
        self._error = 0.0                                # E (host float: it decides a branch)
        self._last_input: torch.Tensor | None = None
        self._last_cond: torch.Tensor | None = None
        self._delta: tuple[torch.Tensor, torch.Tensor] | None = None

    def must_compute(self, step_index: int) -> bool:
        """Whether step `step_index` runs the transformer (True) or reuses the cache (False)."""
        return (not self.enabled or step_index < self.warmup or self._delta is None
                or self._error >= self.tau)

    def record(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        """Store a computed step: input `latents` and both CFG outputs, same shape, float32."""
        if self._last_cond is not None:
            input_change = (latents - self._last_input).abs().mean()
            output_change = (cond - self._last_cond).abs().mean()
            self._rate = torch.where(input_change > 1e-10, output_change / input_change,
                                     self._rate if self._rate is not None else torch.zeros_like(input_change))
        self._delta = (cond - latents, uncond - latents)
        self._last_input = latents.clone()
        self._last_cond = cond.clone()
        self._error = 0.0
        self.computed += 1

    def reuse(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate (cond, uncond) outputs for input `latents` and add this step's error estimate."""
        delta_cond, delta_uncond = self._delta
        if self._rate is not None:
            input_change = (latents - self._last_input).abs().mean()
            output_norm = self._last_cond.abs().mean().clamp_min(1e-10)
            self._error += float(self._rate * input_change / output_norm)   # one scalar sync per reused step
        self.skipped += 1
        return latents + delta_cond, latents + delta_uncond
