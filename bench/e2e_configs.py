"""bench/e2e.py's engine configurations: the named (attention, cache_steps, offload) triples and the warm-up plan.

A configuration is what one engine setting costs a whole video: the DiT's self-attention ("bf16" SDPA or
"fp8", engine/attention.py), EasyCache beyond phase 1 (--cache-steps, engine/easycache.py) and the offload
mode (engine/offload.py). `--configs NAME ...` names several (CONFIGURATIONS); without it the single flags
--attention/--cache-steps/--offload make one (`configurations_from_args`). Nothing here needs CUDA.

Step caching: `caches(setting, run)` is `setting in (run, "all")`, and request.cache_steps has no other
consumer, so "all" caches a plain run exactly as "plain" does and a NUMINA run exactly as "phase2" does
(phase 1 is cached by NUMINA's own setting in every case). With "bf16" (cache off) beside "cache-all",
one run times all four --cache-steps settings: plain (off: bf16's plain, plain/all: cache-all's plain)
and NUMINA (off/plain: bf16's NUMINA, phase2/all: cache-all's NUMINA).
"""
from __future__ import annotations

from dataclasses import dataclass

from numina_engine.engine.easycache import CACHE_STEPS
from numina_engine.engine.offload import OFFLOAD_MODES
from numina_engine.kernels.dispatch import ATTENTION_CHOICES


@dataclass(frozen=True)
class Configuration:
    """One engine setting every generation of a configuration runs with."""
    name: str
    attention: str          # ATTENTION_CHOICES
    cache_steps: str        # CACHE_STEPS
    offload: str            # OFFLOAD_MODES

    def __post_init__(self) -> None:
        for field, value, choices in (("attention", self.attention, ATTENTION_CHOICES),
                                      ("cache_steps", self.cache_steps, CACHE_STEPS),
                                      ("offload", self.offload, OFFLOAD_MODES)):
            if value not in choices:
                raise ValueError(f"configuration {self.name!r}: {field} {value!r} is not one of {', '.join(choices)}")


def configuration_name(attention: str, cache_steps: str, offload: str) -> str:
    """The name of a triple: its settings that differ from (bf16, off, none), joined by '-' ("bf16" for none)."""
    parts = ([attention] if attention != "bf16" else []) + ([f"cache-{cache_steps}"] if cache_steps != "off" else []) \
        + ([f"offload-{offload}"] if offload != "none" else [])
    return "-".join(parts) or "bf16"


# --configs NAME: (attention, cache_steps, offload)
CONFIGURATIONS = {
    "bf16": ("bf16", "off", "none"),
    "cache-all": ("bf16", "all", "none"),
    "fp8": ("fp8", "off", "none"),
    "fp8-cache-all": ("fp8", "all", "none"),
    "offload-full": ("bf16", "off", "full"),
    "offload-text-encoder": ("bf16", "off", "text-encoder"),
}
CACHE_ALL_NOTE = ("--cache-steps all caches a plain run exactly as --cache-steps plain does and a NUMINA run exactly "
                  "as --cache-steps phase2 does (engine/easycache.py caches()): this configuration's plain run is "
                  "what --cache-steps plain times, its NUMINA run what --cache-steps phase2 times")


def named_configuration(name: str) -> Configuration:
    """CONFIGURATIONS[name] as a Configuration; an unknown name is a ValueError listing the known ones."""
    if name not in CONFIGURATIONS:
        raise ValueError(f"unknown configuration {name!r}; known: {', '.join(CONFIGURATIONS)}")
    return Configuration(name, *CONFIGURATIONS[name])


def configurations_from_args(names: list[str] | None, attention: str | None, cache_steps: str | None,
                             offload: str | None) -> list[Configuration]:
    """The configurations to time, in order: `names` (--configs), or the one the single flags make (a flag
    left out, None, takes its default: bf16, off, none). ValueError for an unknown or repeated name, or
    for --configs together with a single flag (a configuration names all three settings)."""
    if names is None:
        triple = (attention or "bf16", cache_steps or "off", offload or "none")
        return [Configuration(configuration_name(*triple), *triple)]
    given = [flag for flag, value in (("--attention", attention), ("--cache-steps", cache_steps),
                                      ("--offload", offload)) if value is not None]
    if given:
        raise ValueError(f"--configs names whole configurations: leave out {', '.join(given)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--configs names {', '.join(repeated)} more than once")
    return [named_configuration(name) for name in names]


def warmup_plan(configurations: list[Configuration]) -> list[tuple[str, str] | None]:
    """For each configuration, the (attention, offload) of the warm-up to run just before it, or None.

    A warm-up (a short NUMINA run with phase 2 forced) precedes the first configuration of each attention
    kind (its kernels compile: the FP8 kernel) and of each offload mode (its first-call work: the text
    encoder's move to the CPU, the streamed encoding, the VAE's host cache, the extraction's other map
    budget and so other chunk shapes); one warm-up at the configuration's own pair covers both. Caching
    needs none: a reused step runs a few elementwise torch ops, no compilation.
    """
    attentions, offloads, plan = set(), set(), []
    for configuration in configurations:
        new = configuration.attention not in attentions or configuration.offload not in offloads
        plan.append((configuration.attention, configuration.offload) if new else None)
        attentions.add(configuration.attention)
        offloads.add(configuration.offload)
    return plan
