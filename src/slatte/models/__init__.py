"""Video diffusion transformers: the Latte-style VideoDiT, named configs, save/load."""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".configs": ("BLOCK_PATTERNS", "MODEL_CONFIGS", "VideoDiTConfig", "model_config"),
        ".io": ("FORMAT_VERSION", "load_config", "load_model", "save_model"),
        ".latte": ("BlockContext", "LatteBlock", "VideoDiT", "cat_contexts"),
    },
)
