"""How a model call is split over processes: the sequence (frame) shard a video model runs on.

The collectives live in `slatte.ops.sequence_parallel`; this package holds the one piece of
state they need, as a value the trainer and the sampler give the model.
"""

from .sequence import SequenceShard, sequence_shard

__all__ = ["SequenceShard", "sequence_shard"]
