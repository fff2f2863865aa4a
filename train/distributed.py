"""Data-parallel training under ``torchrun``: process group, sharding, rank-0-only output.

``torchrun --nproc_per_node N -m train ...`` starts N copies of ``python -m
train``; torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``...) tells each which it is. Without it (plain ``python -m
train``), everything here is a no-op and training runs exactly as before.

Each process preloads the (small) arrays, draws the same epoch permutation
from the same seeded generator, and trains on its own shard of it
(:func:`shard`): together they see every image once per epoch, in batches of
``--batch-size`` per process. DistributedDataParallel averages gradients, so
the replicas stay identical, and only rank 0 writes logs, checkpoints and
reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the job.

    Attributes:
        rank: Global rank (0 writes everything).
        size: Number of processes.
        local_rank: Rank on this machine (its GPU index).
        local_size: Processes on this machine (they share its CPU cores).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, checkpoints and reports."""
        return self.rank == 0


def from_env() -> World:
    """The :class:`World` torchrun describes in the environment (one process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(rank=int(os.environ.get("RANK", "0")), size=size,
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))


def is_main_process() -> bool:
    """Whether this is rank 0 (the only process that prints and writes)."""
    return from_env().is_main


def setup(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on GPUs, Gloo on CPUs); returns this process's device.

    Each process on a machine takes the GPU of its local rank.
    """
    if not world.distributed:
        return device
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def cpu_threads(world: World, requested: int) -> int:
    """Torch CPU threads per process: the request, else this machine's cores shared out.

    torch's default is every core in every process; N processes on one
    machine would then each run N-times oversubscribed.
    """
    if requested or not world.distributed:
        return requested
    return max(1, (os.cpu_count() or 1) // world.local_size)


def shard(order: torch.Tensor, world: World) -> torch.Tensor:
    """This process's part of an epoch's permutation: every ``size``-th index, equal lengths.

    The tail that does not divide evenly is dropped (at most ``size - 1``
    images an epoch, a different few each epoch), so every process runs the
    same number of steps, as DistributedDataParallel needs.

    Example:
        >>> shard(torch.arange(7), World(rank=1, size=3)).tolist()
        [1, 4]
    """
    if not world.distributed:
        return order
    per_process = len(order) // world.size
    return order[world.rank::world.size][:per_process]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all processes (the values themselves with one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    """Wait for every process (no-op with one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
