"""Process-group setup for `torchrun`: one process per GPU (or per CPU worker with gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group that `torchrun` describes in the environment, if any.

    Returns the process's rank info and the device it should use (cuda:LOCAL_RANK under
    torchrun on GPUs). Without torchrun's variables this is a single process and changes nothing.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(), torch.device(device)
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    use_cuda = torch.device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, torch.device(f"cuda:{info.local_rank}") if use_cuda else torch.device(device)


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class ParallelLayout:
    """How the processes split the work: `data` says which share of the global batch this
    process trains on (rank / world size over data-parallel replicas); the `sequence_group`
    (None without sequence parallelism) holds the processes that share those samples and split
    their frames."""

    data: DistInfo
    sequence_group: dist.ProcessGroup | None
    sequence_size: int


def parallel_layout(info: DistInfo, sequence_parallel: int) -> ParallelLayout:
    """Split the `info.world_size` processes into groups of `sequence_parallel` consecutive ranks
    (consecutive ranks share a node under torchrun, so the all-to-alls stay on NVLink).

    Collective: every process must call it (it creates the process groups).
    """
    world = info.world_size
    if sequence_parallel < 1 or world % sequence_parallel:
        raise ValueError(
            f"sequence_parallel must be a positive divisor of the number of processes ({world}), "
            f"got {sequence_parallel}; launch with torchrun --nproc-per-node a multiple of it"
        )
    if sequence_parallel == 1:
        return ParallelLayout(data=info, sequence_group=None, sequence_size=1)
    mine = None
    for start in range(0, world, sequence_parallel):
        group = dist.new_group(list(range(start, start + sequence_parallel)))
        if start <= info.rank < start + sequence_parallel:
            mine = group
    data = DistInfo(
        rank=info.rank // sequence_parallel,
        world_size=world // sequence_parallel,
        local_rank=info.local_rank,
    )
    return ParallelLayout(data=data, sequence_group=mine, sequence_size=sequence_parallel)


def mean_over_processes(values: list[float], device: torch.device) -> list[float]:
    """The mean of each value over all processes (the values unchanged in a single process).

    Every process's values must weigh the same (equal batch shares), so that this is the mean
    over the global batch.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()
