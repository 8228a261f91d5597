"""Ulysses sequence parallelism: this rank's share of the video tokens, and the collectives around it.

Under Ulysses of degree P, the L video tokens are padded with zero rows to a multiple of P and each
rank of the Ulysses group holds `local = padded / P` consecutive rows (rank r: rows r*local ..
(r+1)*local - 1) through a block's elementwise work, matmuls and cross-attention. Around
self-attention an all-to-all turns (local tokens, all H heads) into (all padded tokens, H/P heads)
and back; keys past the L real tokens are left out, so padding changes nothing. `WanDiT.forward`
takes its rows after the patch embedding and gathers the head's output; the attention interface
(attention.py, extraction.py) does the rest. A `SequenceShard` travels in `ForwardState.sequence`.

NUMINA under it: the within-frame statistics and maps are per head, so they stay on the rank that
holds the head; the head scores are gathered to pick each frame's best head, whose maps are summed
in from its rank; the noun maps (cross-attention on local rows, all heads) are gathered by rows; the
layout bias goes to each rank's own modulated rows, with the per-(frame, noun) reference sums
added up over the ranks (`PlanRows`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from ..numina.modulation import ModulationPlan, reference_sums


@dataclass(frozen=True)
class PlanRows:
    """The part of a ModulationPlan that concerns one rank's rows.

    plan: the ModulationPlan restricted to the modulated queries among this rank's rows (global query
    numbers kept, so its [M_local, T] tables line up with them); queries: int64 [M_local], those queries'
    local row numbers; reference_rows: int64 [R_local] local row numbers of the reference pixels on this
    rank; reference_weights: [F * n_nouns, R_local] their columns of plan.reference_weights.
    """
    plan: ModulationPlan
    queries: torch.Tensor
    reference_rows: torch.Tensor
    reference_weights: torch.Tensor

    def reference_sums(self, q: torch.Tensor) -> torch.Tensor:
        """This rank's part of the per-(frame, noun) sums of the reference pixels' queries: float32
        [F * n_nouns, C] from q [local, H, D] (this rank's rows of the conditional pass)."""
        return reference_sums(self.reference_weights, q.index_select(0, self.reference_rows).flatten(1))


class SequenceShard:
    """This rank's rows of an L-token sequence within a Ulysses group of `degree` ranks.

    group: the Ulysses process group (None: the default group); rank: this process's rank within it.
    """

    def __init__(self, group, rank: int, degree: int, length: int):
        if degree < 1 or not 0 <= rank < degree or length < 1:
            raise ValueError(f"bad sequence shard: rank {rank} of {degree}, {length} tokens")
        self.group, self.rank, self.degree, self.length = group, rank, degree, length
        self.local = -(-length // degree)                    # rows per rank, padding included
        self.padded = self.local * degree
        self.start = rank * self.local
        self._plan_rows: tuple[ModulationPlan, PlanRows] | None = None

    # ---------------------------------------------------------------- rows
    def local_rows(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's `local` rows of x along `dim` (x has `length` rows there; zero rows pad the last
        ranks), contiguous."""
        pad = self.padded - x.shape[dim]
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat((x, x.new_zeros(shape)), dim=dim)
        return x.narrow(dim, self.start, self.local).contiguous()

    def gather_rows(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """All ranks' rows of x along `dim` (x: this rank's `local` rows), padding dropped: `length` rows."""
        parts = [torch.empty_like(x) for _ in range(self.degree)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim).narrow(dim, 0, self.length)

    # ---------------------------------------------------------------- heads
    def heads_per_rank(self, heads: int) -> int:
        if heads % self.degree:
            raise ValueError(f"{heads} heads cannot be split over {self.degree} Ulysses ranks")
        return heads // self.degree

    def first_head(self, heads: int) -> int:
        """The first of this rank's heads (of `heads` in all) in the head-sharded layout."""
        return self.rank * self.heads_per_rank(heads)

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, local, H, D] (this rank's tokens, all heads) -> [B, padded, H/P, D] (all tokens, this
        rank's heads), by one all-to-all."""
        batch, local, heads, dim = x.shape
        per_rank = self.heads_per_rank(heads)
        send = x.reshape(batch, local, self.degree, per_rank, dim).permute(2, 0, 1, 3, 4).contiguous()
        received = torch.empty_like(send)                  # [P, B, local, H/P, D]: rank p's tokens
        dist.all_to_all_single(received, send, group=self.group)
        return received.permute(1, 0, 2, 3, 4).reshape(batch, self.padded, per_rank, dim)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, padded, H/P, D] -> [B, local, H, D]: the inverse of `to_heads`."""
        batch, padded, per_rank, dim = x.shape
        send = x.reshape(batch, self.degree, self.local, per_rank, dim).transpose(0, 1).contiguous()
        received = torch.empty_like(send)                  # [P, B, local, H/P, D]: rank p's heads
        dist.all_to_all_single(received, send, group=self.group)
        return received.permute(1, 2, 0, 3, 4).reshape(batch, self.local, self.degree * per_rank, dim)

    def gather_heads(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """All ranks' heads of x along `dim` (x: this rank's H/P heads there), in head order."""
        parts = [torch.empty_like(x) for _ in range(self.degree)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the group's ranks (a new tensor)."""
        total = x.clone()
        dist.all_reduce(total, group=self.group)
        return total

    # ---------------------------------------------------------------- modulation
    def plan_rows(self, plan: ModulationPlan) -> PlanRows:
        """The plan's rows on this rank (worked out once per plan: it reads the plan back to the host)."""
        if self._plan_rows is None or self._plan_rows[0] is not plan:    # one plan a run: keep only the last
            self._plan_rows = (plan, self._restrict(plan))
        return self._plan_rows[1]

    def _restrict(self, plan: ModulationPlan) -> PlanRows:
        stop = self.start + self.local
        queries = plan.modulated_queries
        mine = ((queries >= self.start) & (queries < stop)).nonzero().flatten()
        local_plan = replace(plan, modulated_queries=queries[mine], modulated_frame=plan.modulated_frame[mine],
                             removed_columns=plan.removed_columns[mine], circle_columns=plan.circle_columns[mine],
                             referenced_columns=plan.referenced_columns[mine])
        if plan.reference_queries is None:                 # weights over every query 0..L-1
            reference = torch.arange(self.start, min(stop, plan.num_queries), device=queries.device)
            weights = plan.reference_weights[:, self.start:self.start + reference.numel()]
        else:
            on_rank = ((plan.reference_queries >= self.start) & (plan.reference_queries < stop)).nonzero().flatten()
            reference = plan.reference_queries[on_rank]
            weights = plan.reference_weights.index_select(1, on_rank)
        return PlanRows(plan=local_plan, queries=queries[mine] - self.start,
                        reference_rows=reference - self.start, reference_weights=weights)
