"""Training: the loop, EMA, checkpoints, distributed setup."""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".config": ("TrainConfig",),
        ".trainer": ("Trainer", "TrainingError", "train"),
    },
)
