"""Training: the loop, EMA, checkpoints, distributed setup."""

from .config import TrainConfig
from .trainer import Trainer, TrainingError, train

__all__ = ["TrainConfig", "Trainer", "TrainingError", "train"]
