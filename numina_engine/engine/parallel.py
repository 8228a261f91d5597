"""One video on several ranks: CFG parallel and Ulysses sequence parallel around the Wan DiT.

A `ParallelPlan` splits a torchrun world of `cfg x ulysses` ranks: rank r is CFG rank r // ulysses
(0: the conditional row, 1: the unconditional one) and Ulysses rank r % ulysses within its CFG group.
`choose_plan` checks the plan against the world size and the model's head count before any weights
load. `parallelize` puts a `ParallelDiT` in the model's place; the pipeline runs on every rank (its one
parallel hook is `agree_on_layouts`), and every rank gets the same predictions:

- CFG parallel (cfg 2): in a batched CFG call each CFG group computes its own row and the two rows
  are all-gathered (one collective per step). A call of the conditional row alone (NUMINA's
  extraction pass, phase 2's first step) runs on CFG group 0 only, and its results (the prediction, or
  the extracted maps) are broadcast to group 1. NUMINA's extraction and bias therefore stay on the
  conditional row's ranks. Phase 1's EasyCache decides from the predictions and the latents: each
  prediction has one producer and reaches every rank by a collective, so they are the same bits on
  every rank, and so is every decision taken from them.
- Ulysses (degree P, dividing the head count): a `SequenceShard` in `ForwardState.sequence`
  (sequence_shard.py) gives each rank L/P of the tokens (padded and masked when P does not divide L).
- The layouts NUMINA plans from are broadcast from rank 0 (`agree_on_layouts`), so that every rank
  builds the same modulation plan and takes the same branch of phase 2.

CUDA graphs are not used under a plan (collectives inside captured graphs are not checked here).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import UserInputError
from .config import WanConfig
from .forward_state import ForwardState
from .sequence_shard import SequenceShard

CFG_DEGREES = (1, 2)


@dataclass(frozen=True)
class ParallelPlan:
    """cfg: 1 (both CFG rows on every rank) or 2 (one row per CFG group); ulysses: ranks sharing a row's tokens."""
    cfg: int
    ulysses: int

    @property
    def world_size(self) -> int:
        return self.cfg * self.ulysses

    def cfg_rank(self, rank: int) -> int:
        return rank // self.ulysses

    def ulysses_rank(self, rank: int) -> int:
        return rank % self.ulysses

    def describe(self) -> str:
        return f"{self.cfg} CFG x {self.ulysses} Ulysses"


def parse_parallel(text: str | None) -> tuple[int, int] | None:
    """--parallel "CFG,ULYSSES" (e.g. "2,2") -> (2, 2); None or "auto" -> None (chosen from the world size)."""
    if text is None or text.strip().lower() == "auto":
        return None
    parts = text.split(",")
    try:
        degrees = tuple(int(part) for part in parts)
    except ValueError:
        degrees = ()
    if len(degrees) != 2 or min(degrees) < 1:
        raise UserInputError(f"--parallel {text!r}: give CFG,ULYSSES degrees, e.g. 2,2 (CFG 1 or 2, Ulysses >= 1), "
                             f"or auto")
    return degrees


def _heads_hint(num_heads: int) -> str:
    return ", ".join(str(p) for p in range(1, num_heads + 1) if num_heads % p == 0)


def choose_plan(world_size: int, num_heads: int, requested: tuple[int, int] | None = None) -> ParallelPlan:
    """The plan for `world_size` ranks and a DiT of `num_heads` heads; raises UserInputError when none fits.

    requested: (cfg, ulysses) as --parallel gave it, or None: CFG 2 when the world size is even (one
    collective a step), the rest Ulysses, else CFG 1 and Ulysses over every rank.
    """
    if requested is not None:
        cfg, ulysses = requested
        if cfg not in CFG_DEGREES:
            raise UserInputError(f"--parallel {cfg},{ulysses}: the CFG degree must be 1 or 2 (CFG has two rows), "
                                 f"got {cfg}")
        if cfg * ulysses != world_size:
            raise UserInputError(f"--parallel {cfg},{ulysses} needs {cfg * ulysses} ranks but {world_size} were "
                                 f"started: launch with torchrun --nproc-per-node {cfg * ulysses}, or change --parallel")
        if num_heads % ulysses:
            raise UserInputError(f"--parallel {cfg},{ulysses}: the model's {num_heads} attention heads cannot be "
                                 f"split over {ulysses} Ulysses ranks; the Ulysses degree must divide {num_heads} "
                                 f"({_heads_hint(num_heads)})")
        return ParallelPlan(cfg, ulysses)
    for cfg in (2, 1):
        if world_size % cfg == 0 and num_heads % (world_size // cfg) == 0:
            return ParallelPlan(cfg, world_size // cfg)
    raise UserInputError(f"no CFG x Ulysses split fits {world_size} ranks and the model's {num_heads} heads (CFG 1 or "
                         f"2 times a Ulysses degree dividing {num_heads}: {_heads_hint(num_heads)}); launch a world "
                         f"size that fits, e.g. torchrun --nproc-per-node 2")


def world_size_from_env() -> int:
    """The torchrun world size (1 without torchrun), read before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def read_dit_config(ckpt_dir: str | Path | None) -> WanConfig:
    """The DiT's architecture from the checkpoint's config file alone (no weights read)."""
    from .loading import EMBEDDED_DEFAULT, _read_json, detect_layout

    path = EMBEDDED_DEFAULT if ckpt_dir is None else Path(ckpt_dir).expanduser().resolve()
    if detect_layout(path) == "official":
        return WanConfig.from_official_json(_read_json(path / "config.json", "Wan2.1 DiT config"))
    return WanConfig.from_diffusers_json(_read_json(path / "transformer" / "config.json",
                                                    "diffusers transformer config"))


CUDA_GRAPHS_UNSUPPORTED = "not supported under --parallel"    # report.json's reason: see ParallelDiT.forward


class ParallelDiT(nn.Module):
    """A WanDiT run under a ParallelPlan: same call as `WanDiT.forward`, same result on every rank.

    Every rank of the plan calls it with the same arguments (the pipeline runs on every rank). A
    batch of two is the CFG pair (row 0 conditional); a batch of one is the conditional row alone.
    """

    def __init__(self, dit: nn.Module, plan: ParallelPlan, rank: int):
        super().__init__()
        if dist.get_world_size() != plan.world_size:
            raise ValueError(f"plan {plan.describe()} needs {plan.world_size} ranks, the process group has "
                             f"{dist.get_world_size()}")
        self.dit = dit
        self.plan = plan
        self.rank = rank
        self.cfg_rank = plan.cfg_rank(rank)
        self.ulysses_rank = plan.ulysses_rank(rank)
        # every rank makes every group, in the same order (torch.distributed's rule)
        ulysses_groups = [_group(range(c * plan.ulysses, (c + 1) * plan.ulysses)) for c in range(plan.cfg)]
        cfg_groups = [_group(range(u, plan.world_size, plan.ulysses)) for u in range(plan.ulysses)]
        self.ulysses_group = ulysses_groups[self.cfg_rank]
        self.cfg_group = cfg_groups[self.ulysses_rank]
        self.conditional_source = self.ulysses_rank          # global rank of this rank's partner in CFG group 0
        self._shards: dict[int, SequenceShard] = {}

    @property
    def config(self) -> WanConfig:
        return self.dit.config

    @property
    def kernels(self):
        """The wrapped DiT's KernelChoice (which attention it runs: report.json names it)."""
        return self.dit.kernels

    def token_grid(self, latent_shape) -> tuple[int, int, int]:
        return self.dit.token_grid(latent_shape)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                state: ForwardState | None = None) -> torch.Tensor | None:
        """As `WanDiT.forward`: latents [B, C, F, H, W], timestep [B], context [B, T, text_dim]; returns
        float32 [B, out_dim, F, H, W] (None after `state.stop_after_layer`), the same on every rank."""
        if latents.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"CUDA graphs are {CUDA_GRAPHS_UNSUPPORTED} (pipeline.generate runs a ParallelDiT "
                               f"eagerly)")
        if self.plan.cfg == 1:
            return self._row_forward(latents, timestep, context, state)
        if latents.shape[0] == 2:
            row = self.cfg_rank
            flow = self._row_forward(latents[row:row + 1], timestep[row:row + 1], context[row:row + 1],
                                     _state_for_row(state, row))
            if flow is None:
                return None
            rows = [torch.empty_like(flow) for _ in range(2)]
            dist.all_gather(rows, flow.contiguous(), group=self.cfg_group)
            return torch.cat(rows)
        if latents.shape[0] != 1:
            raise ValueError(f"under CFG parallel a DiT call holds the CFG pair or the conditional row, got a batch "
                             f"of {latents.shape[0]}")
        flow = self._row_forward(latents, timestep, context, state) if self.cfg_rank == 0 else None
        return self._share_conditional(flow, latents, state)

    def _row_forward(self, latents, timestep, context, state):
        if self.plan.ulysses > 1:
            length = math.prod(self.dit.token_grid(latents.shape))
            if length not in self._shards:
                self._shards[length] = SequenceShard(self.ulysses_group, self.ulysses_rank, self.plan.ulysses, length)
            state = replace(state if state is not None else ForwardState(), sequence=self._shards[length])
        return self.dit(latents, timestep, context, state=state)

    def _share_conditional(self, flow, latents: torch.Tensor, state: ForwardState | None):
        """CFG group 0's results of a conditional-only call, broadcast to group 1."""
        extraction = state.extraction if state is not None else None
        if extraction is not None:
            frames, height, width = extraction.grid
            tokens = height * width
            shapes = {"self_maps": ((frames, tokens, tokens), torch.float32), "best_head": ((frames,), torch.int64),
                      "head_scores": ((frames, self.config.num_heads), torch.float32),
                      "noun_maps": ((extraction.noun_tokens.shape[0], frames, tokens), torch.float32)}
            if not extraction.with_self_maps:            # none made (every rank has the same request)
                shapes = {"noun_maps": shapes["noun_maps"]}
            for name, (shape, dtype) in shapes.items():
                value = getattr(extraction, name).contiguous() if self.cfg_rank == 0 else torch.empty(
                    shape, dtype=dtype, device=latents.device)
                dist.broadcast(value, src=self.conditional_source, group=self.cfg_group)
                setattr(extraction, name, value)
        if state is not None and state.stop_after_layer is not None:
            return None
        if self.cfg_rank != 0:
            batch, _, frames, height, width = latents.shape
            flow = torch.empty(batch, self.config.out_dim, frames, height, width, dtype=torch.float32,
                               device=latents.device)
        dist.broadcast(flow, src=self.conditional_source, group=self.cfg_group)
        return flow

    def broadcast_from_main(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank (same shape and dtype on every rank; in place)."""
        dist.broadcast(tensor, src=0)
        return tensor


def _group(ranks):
    ranks = list(ranks)
    return dist.new_group(ranks) if len(ranks) > 1 else None


def _state_for_row(state: ForwardState | None, row: int) -> ForwardState | None:
    """The part of a CFG pair's state that concerns batch row `row`, renumbered as row 0 of a batch of one."""
    if state is None:
        return None
    if state.extraction is not None:
        raise ValueError("under CFG parallel the extraction runs in a conditional-only call, not in a CFG pair")
    modulation = state.modulation
    if modulation is not None:
        modulation = replace(modulation, batch_index=0) if modulation.batch_index == row else None
    return replace(state, modulation=modulation)


def parallelize(model, plan: ParallelPlan, rank: int):
    """The WanModel `model` with its DiT run under `plan` (this process is `rank` of the plan's world)."""
    return replace(model, dit=ParallelDiT(model.dit, plan, rank))


def agree_on_layouts(dit: nn.Module, refined: dict[str, torch.Tensor], changed: bool
                     ) -> tuple[dict[str, torch.Tensor], bool]:
    """Rank 0's refined layouts ({noun: int32 [F, h, w]}) and `changed` on every rank (unchanged on one process),
    so that every rank builds the same modulation plan and runs the same phase 2."""
    if not isinstance(dit, ParallelDiT):
        return refined, changed
    device = next(dit.parameters()).device           # where the backend's collectives run (NCCL: the GPU)
    flag = dit.broadcast_from_main(torch.tensor([int(changed)], device=device))
    agreed = {noun: dit.broadcast_from_main(labels.to(device, copy=True).contiguous()).to(labels.device)
              for noun, labels in refined.items()}
    return agreed, bool(flag.item())
