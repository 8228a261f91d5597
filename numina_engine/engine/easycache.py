"""EasyCache: reuse the transformer's cached transformation on stable denoising steps.

The NUMINA authors' rule (wan/text2video.py, generate_numina, phase 1): after `warmup` fully computed
steps, a step may reuse the last computed "transformation" Δ = output - input (per CFG branch), so the
output is approximated as input + Δ, while the accumulated error estimate E stays below `tau`.
Each reused step adds ε = k · mean|x_t - x_last| / mean|v_last|, where k, the transformation rate,
is mean|Δv| / mean|Δx| between the last two computed steps. A computed step resets E to 0.
With tau = 0 nothing is ever reused, so the run equals the uncached one exactly.

Beyond phase 1 (`--cache-steps`, CACHE_STEPS), the same rule caches plain generation and NUMINA's
phase 2. A step has a `kind`: what the transformer computes there (None: the plain forward;
"modulated": phase 2's forward with the layout bias on the conditional row, whose cached Δ therefore
includes the bias). A step of another kind than the cached transformation's is always computed, and
the cache starts over from it: its rate k is forgotten (it was measured on the other kind), so the step
after it is computed too (a step is reused only once k is known, i.e. after two computed steps of one
kind). In phase 2 this is the step where delta(t) falls to its floor and the bias stops: reusing the
biased Δ there would keep biasing the video after NUMINA stops modulating it.
"""
from __future__ import annotations

import torch

# --cache-steps: which denoising runs besides phase 1 (NuminaConfig.easycache_enabled) use EasyCache.
# "plain": plain generation (--no-numina, or a prompt without a counted noun); "phase2": NUMINA's phase 2,
# whichever way it runs (modulated; regenerate-plain and phase-1-continued have no biased step, so the
# plain rule); "all": both.
CACHE_STEPS = ("off", "plain", "phase2", "all")


def caches(setting: str, run: str) -> bool:
    """Whether --cache-steps `setting` caches a run of part `run` ("plain" or "phase2")."""
    return setting in (run, "all")


class EasyCache:
    def __init__(self, tau: float, warmup: int, enabled: bool = True):
        self.tau = tau
        self.warmup = warmup
        self.enabled = enabled
        self.computed = 0
        self.reused: list[tuple[int, int]] = []         # (step, the computed step whose Δ it reused)
        self.restarts: list[int] = []                    # computed steps where the kind changed
        self._rate: torch.Tensor | None = None          # k, 0-dim
        self._error = 0.0                                # E (host float: it decides a branch)
        self._last_input: torch.Tensor | None = None
        self._last_cond: torch.Tensor | None = None
        self._delta: tuple[torch.Tensor, torch.Tensor] | None = None
        self._kind: str | None = None                    # kind of the cached Δ
        self._source_step: int | None = None             # the step that computed it

    def must_compute(self, step_index: int, kind: str | None = None) -> bool:
        """Whether step `step_index` (of kind `kind`) runs the transformer (True) or reuses the cache (False)."""
        return (not self.enabled or step_index < self.warmup or self._delta is None or kind != self._kind
                or self._rate is None or self._error >= self.tau)

    def record(self, step_index: int, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
               kind: str | None = None) -> None:
        """Store computed step `step_index` of kind `kind`: its input `latents` and both CFG outputs,
        float32, same shape."""
        self.computed += 1
        if not self.enabled:
            return
        if self._delta is not None and kind != self._kind:          # start over: k belongs to the old kind
            self.restarts.append(step_index)
            self._rate, self._last_cond = None, None
        if self._last_cond is not None:
            input_change = (latents - self._last_input).abs().mean()
            output_change = (cond - self._last_cond).abs().mean()
            self._rate = torch.where(input_change > 1e-10, output_change / input_change,
                                     self._rate if self._rate is not None else torch.zeros_like(input_change))
        self._delta = (cond - latents, uncond - latents)
        self._last_input = latents.clone()
        self._last_cond = cond.clone()
        self._error = 0.0
        self._kind, self._source_step = kind, step_index

    def reuse(self, step_index: int, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate (cond, uncond) outputs of step `step_index` for input `latents` and add this step's
        error estimate."""
        delta_cond, delta_uncond = self._delta
        input_change = (latents - self._last_input).abs().mean()
        output_norm = self._last_cond.abs().mean().clamp_min(1e-10)
        self._error += float(self._rate * input_change / output_norm)   # one scalar sync per reused step
        self.reused.append((step_index, self._source_step))
        return latents + delta_cond, latents + delta_uncond

    def summary(self) -> dict:
        """For report.json: the settings, steps computed and reused, which computed step each reused step
        took its transformation from ([step, from]), and where the cache started over."""
        return {"cached": self.enabled, "tau": self.tau, "warmup": self.warmup, "steps_computed": self.computed,
                "steps_reused": len(self.reused), "reused_steps": [list(pair) for pair in self.reused],
                "restarted_at": list(self.restarts)}
