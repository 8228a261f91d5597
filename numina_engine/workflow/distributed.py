"""Ranks of a `torchrun` launch, through torch.distributed: NCCL on GPUs, gloo on the CPU.

torchrun starts and supervises the processes and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; without
it (WORLD_SIZE unset or 1) this is one process and no process group is made. Each rank drives one GPU,
cuda:LOCAL_RANK.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserInputError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the launch. `device`: what its model runs on ("cuda:N", "cpu", or None for the
    engine's default on a single process)."""
    rank: int = 0
    world_size: int = 1
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, jobs: list, group: int = 1) -> list:
        """This rank's jobs: the list cut into runs of `group` consecutive jobs, every world_size-th run starting
        at run `rank` (the same split on every rank, whatever is already finished, so two ranks never make the
        same video)."""
        return [job for position, job in enumerate(jobs) if (position // group) % self.world_size == self.rank]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def start(device: str | None) -> Ranks:
    """Join the torchrun process group when there is one. `device`: the --device asked ("cpu", "cuda", None);
    under torchrun "cuda"/None become cuda:LOCAL_RANK and the backend is NCCL, "cpu" uses gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if device not in (None, "cpu", "cuda"):
        raise UserInputError(f"--device {device} cannot be used under torchrun: each rank takes cuda:LOCAL_RANK; "
                             f"pass --device cuda or --device cpu")
    if on_gpu:
        if local_rank >= torch.cuda.device_count():
            raise UserInputError(f"rank {rank} has LOCAL_RANK {local_rank} but this machine has "
                                 f"{torch.cuda.device_count()} GPUs: lower --nproc-per-node")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_gpu else "gloo",
                                device_id=torch.device(device) if on_gpu else None)
    return Ranks(rank=rank, world_size=world_size, device=device)


def stop(ranks: Ranks) -> None:
    """Leave the process group (no barrier: a rank that failed must not wait for the others)."""
    if ranks.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
