"""Video diffusion transformers: the Latte-style VideoDiT, named configs, save/load."""

from .configs import BLOCK_PATTERNS, MODEL_CONFIGS, VideoDiTConfig, model_config
from .io import FORMAT_VERSION, load_config, load_model, save_model
from .latte import BlockContext, LatteBlock, VideoDiT, cat_contexts

__all__ = [
    "BLOCK_PATTERNS",
    "FORMAT_VERSION",
    "MODEL_CONFIGS",
    "BlockContext",
    "LatteBlock",
    "VideoDiT",
    "VideoDiTConfig",
    "cat_contexts",
    "load_config",
    "load_model",
    "model_config",
    "save_model",
]
