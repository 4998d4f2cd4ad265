"""How a model call is split over processes: the sequence (frame) shard a video model runs on,
and ring / hybrid (Ulysses x ring) sequence-parallel attention.

The collectives live in `slatte.ops.sequence_parallel`; this package holds the one piece of
state they need, as a value the trainer and the sampler give the model, and the ring
decomposition of SLA and dense attention (`ring.py`).
"""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".ring": (
            "hybrid_attention",
            "hybrid_groups",
            "hybrid_sla",
            "ring_attention",
            "ring_block_map",
            "ring_sla",
        ),
        ".sequence": ("SequenceShard", "sequence_shard"),
    },
)
