import itertools

import pytest

from slatte.training.distributed import DistInfo
from slatte.training.trainer import StepBatchSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_step_batches_cover_each_epoch_once_and_resume_at_any_step():
    full = take(StepBatchSampler(10, 4, DistInfo(), seed=3, start=0), 5)  # 20 positions = 2 epochs
    flat = [i for batch in full for i in batch]
    assert sorted(flat[:10]) == list(range(10))
    assert sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # a new permutation each epoch
    resumed = take(StepBatchSampler(10, 4, DistInfo(), seed=3, start=3), 2)
    assert resumed == full[3:5]


def test_ranks_split_the_global_batch():
    one = take(StepBatchSampler(50, 6, DistInfo(), seed=1, start=2), 3)
    parts = [
        take(StepBatchSampler(50, 6, DistInfo(rank=r, world_size=3), seed=1, start=2), 3)
        for r in range(3)
    ]
    for step in range(3):
        assert [i for r in range(3) for i in parts[r][step]] == one[step]


def test_batch_not_divisible_by_world_size_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(10, 5, DistInfo(rank=0, world_size=2), seed=0, start=0)
