"""The frame shard of a video model under Ulysses sequence parallelism."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..ops.sequence_parallel import group_size


@dataclass(frozen=True)
class SequenceShard:
    """How the frames of a video are split over a sequence-parallel group.

    `group` P processes; this one holds frames [frame_offset, frame_offset + F/P) of
    `total_frames`. `full_sequence`: the model takes and returns whole videos (sampling; it
    splits the input and gathers the output) rather than this process's frames (training, where
    the loss is computed on the local frames).
    """

    group: dist.ProcessGroup
    rank: int
    size: int
    full_sequence: bool

    def frame_offset(self, local_frames: int) -> int:
        return self.rank * local_frames

    def split_frames(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This process's contiguous slice of `x` along `dim` (the frame axis)."""
        frames = x.shape[dim]
        if frames % self.size:
            raise ValueError(
                f"sequence parallelism over {self.size} processes splits frames evenly: the "
                f"number of frames ({frames}) must be divisible by {self.size}"
            )
        return x.chunk(self.size, dim=dim)[self.rank]

    def gather_frames(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Concatenate every process's slice along `dim`, in rank order (not differentiable:
        training computes its loss on the local frames instead)."""
        x = x.contiguous()  # all_gather's buffers must not copy a view's strides
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=dim)


def sequence_shard(
    group: dist.ProcessGroup | None, *, full_sequence: bool = True
) -> SequenceShard | None:
    """This process's shard of a video split over `group`; None for a `None` group or a group of
    one process (nothing to split).

    Every process of the group must make the same model calls with the same inputs (for
    `full_sequence=True`) or with its own frame slice (`full_sequence=False`).
    """
    size = group_size(group)
    if size == 1:
        return None
    return SequenceShard(group, dist.get_rank(group), size, full_sequence=full_sequence)
