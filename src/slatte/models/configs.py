"""The video DiT configuration (typed, validated) and the registry of named architectures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..ops.backends import BACKENDS
from ..ops.sla.config import SLAConfig

BLOCK_PATTERNS = ("alternating", "full", "spatial")
MODULATIONS = ("adaln", "table")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class VideoDiTConfig:
    """Architecture and input geometry of a Latte-style video DiT.

    Inputs are (B, F, C, H, W) with F <= num_frames, C = in_channels, H = W = input_size.
    `block_pattern`: "alternating" (Latte's best variant: spatial, temporal, spatial, ... blocks;
    depth must be even), "full" (every block attends over all frames × patches jointly) or
    "spatial" (no block mixes frames: an image model applied frame by frame, such as Latte-0
    text-to-image, i.e. Latte-T2V sampled with `enable_temporal_attentions=False`; no temporal
    embedding is added).
    `num_classes = 0` makes the model unconditional; otherwise label `num_classes` is the null
    class. `text_dim` enables cross-attention to text embeddings of that width.
    `class_embed_init_std`: the label embedding's initial std; DiT's 0.02 leaves the label a
    ~1% signal beside the timestep embedding, which a small model then learns to use only very
    late (measured on moving digits); ADM's 1.0 makes the classes distinct from the first step.

    Options that exist to hold PixArt-style models such as diffusers' `LatteTransformer3DModel`
    (the defaults are DiT / official Latte):
    `cross_attn_norm`: the cross-attention reads LayerNorm-ed hidden states (True) or the
    hidden states as they are (False, PixArt-α / diffusers Latte).
    `block_modulation`: each block's six modulation vectors come from its own adaLN linear of
    SiLU(c) ("adaln", DiT) or from one linear of SiLU(c) shared by all blocks plus a learned
    (6, D) table per block ("table", PixArt-α's adaLN-single).
    `final_modulation`: the final layer's (shift, scale) come from an adaLN linear of SiLU(c)
    ("adaln", DiT) or are a learned (2, D) table plus c itself ("table", PixArt-α).
    `single_frame_temporal_embed`: a one-frame input gets frame 0's temporal embedding like
    any other (True), or none, being an image (False, Latte's image convention as in diffusers).
    """

    input_size: int
    num_frames: int
    in_channels: int
    hidden_size: int
    depth: int
    num_heads: int
    patch_size: int = 2
    mlp_ratio: float = 4.0
    num_classes: int = 0
    class_dropout_prob: float = 0.1
    class_embed_init_std: float = 0.02
    learn_sigma: bool = True
    block_pattern: str = "alternating"
    text_dim: int | None = None
    attention_backend: str = "sdpa"
    sla: SLAConfig = field(default_factory=SLAConfig)
    qk_norm: bool = False
    cross_attn_norm: bool = True
    block_modulation: str = "adaln"
    final_modulation: str = "adaln"
    single_frame_temporal_embed: bool = True

    def __post_init__(self) -> None:
        for name in ("input_size", "num_frames", "in_channels", "hidden_size", "depth"):
            _check_int(name, getattr(self, name), 1)
        _check_int("num_heads", self.num_heads, 1)
        _check_int("patch_size", self.patch_size, 1)
        _check_int("num_classes", self.num_classes, 0)
        if self.input_size % self.patch_size:
            raise ValueError(
                f"input_size ({self.input_size}) must be divisible by patch_size "
                f"({self.patch_size})"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if self.hidden_size % 4:
            raise ValueError(
                f"hidden_size must be a multiple of 4 (2-D sin-cos position embedding), "
                f"got {self.hidden_size}"
            )
        mlp_ratio = self.mlp_ratio
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        p = self.class_dropout_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"class_dropout_prob must lie in [0, 1), got {p!r}")
        std = self.class_embed_init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
            raise ValueError(f"class_embed_init_std must be a positive number, got {std!r}")
        _check_bool("learn_sigma", self.learn_sigma)
        _check_bool("qk_norm", self.qk_norm)
        _check_bool("cross_attn_norm", self.cross_attn_norm)
        _check_bool("single_frame_temporal_embed", self.single_frame_temporal_embed)
        for name in ("block_modulation", "final_modulation"):
            if getattr(self, name) not in MODULATIONS:
                raise ValueError(
                    f"{name} must be one of {MODULATIONS}, got {getattr(self, name)!r}"
                )
        if self.block_pattern not in BLOCK_PATTERNS:
            raise ValueError(
                f"block_pattern must be one of {BLOCK_PATTERNS}, got {self.block_pattern!r}"
            )
        if self.block_pattern == "alternating" and self.depth % 2:
            raise ValueError(
                f"block_pattern 'alternating' pairs spatial and temporal blocks, so depth must "
                f"be even; got depth={self.depth}"
            )
        if self.text_dim is not None:
            _check_int("text_dim", self.text_dim, 1)
        if self.attention_backend not in BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {BACKENDS}, got {self.attention_backend!r}"
            )
        if not isinstance(self.sla, SLAConfig):
            raise ValueError(f"sla must be an SLAConfig, got {type(self.sla).__name__}")

    @property
    def out_channels(self) -> int:
        """Output channels: noise, plus the variance interpolation values with learned sigma."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        """Patches per side of a frame."""
        return self.input_size // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        return self.grid_size**2

    def block_kinds(self) -> tuple[str, ...]:
        """The kind of each block: "spatial" / "temporal" (alternating), "full" or "spatial"."""
        if self.block_pattern in ("full", "spatial"):
            return (self.block_pattern,) * self.depth
        return tuple("spatial" if i % 2 == 0 else "temporal" for i in range(self.depth))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sla"] = self.sla.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoDiTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown model config key(s) {sorted(unknown)}; allowed: {sorted(known)}"
            )
        data = dict(data)
        if isinstance(data.get("sla"), dict):
            data["sla"] = SLAConfig.from_dict(data["sla"])
        return cls(**data)

    def replace(self, **changes: Any) -> VideoDiTConfig:
        """A copy with `changes` applied (validated again)."""
        return replace(self, **changes)


# Named architectures. The data geometry given with each is a default that `model_config`
# overrides take precedence over: Latte's 256² setting (16 frames of 32×32×4 SD-VAE latents) for
# the paper sizes, 16 frames of 32×32 greyscale moving digits for the CPU ones.
_LATENT_256 = {"input_size": 32, "num_frames": 16, "in_channels": 4, "num_classes": 0}
_DIGITS = {"input_size": 32, "num_frames": 16, "in_channels": 1, "num_classes": 10}

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "Latte-S/2": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 2, **_LATENT_256},
    "Latte-B/2": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 2, **_LATENT_256},
    "Latte-L/2": {
        "depth": 24,
        "hidden_size": 1024,
        "num_heads": 16,
        "patch_size": 2,
        **_LATENT_256,
    },
    "Latte-XL/2": {
        "depth": 28,
        "hidden_size": 1152,
        "num_heads": 16,
        "patch_size": 2,
        **_LATENT_256,
    },
    # Tiny, for tests.
    "Latte-T/2": {
        "depth": 2,
        "hidden_size": 64,
        "num_heads": 2,
        "patch_size": 2,
        **_DIGITS,
        "input_size": 16,
        "num_frames": 4,
    },
    # The CPU default: a few minutes of training on 2 cores already draws moving digits.
    "Latte-digits": {"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 2, **_DIGITS},
}


def model_config(name: str, **overrides: Any) -> VideoDiTConfig:
    """The named architecture with `overrides` applied (e.g. `num_classes=101`)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {sorted(MODEL_CONFIGS)}")
    return VideoDiTConfig.from_dict({**MODEL_CONFIGS[name], **overrides})
