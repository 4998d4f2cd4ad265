"""The typed configuration of a training run (the CLI maps its flags onto this)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
PARALLEL_MODES = ("ddp", "fsdp")
# Model fields the training data decides; a model override may not set them.
DATA_DERIVED = {
    "input_size": "size (--size)",
    "num_frames": "num_frames (--frames)",
    "in_channels": "channels (--channels) or the VAE's latent channels",
    "num_classes": "the dataset",
}


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/digits"
    # model
    model: str = "Latte-digits"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # a slatte model directory to start from (fine-tuning)
    # data: "digits" (the embedded moving digits) or a folder of videos
    data: str = "digits"
    num_frames: int = 16
    size: int = 32
    frame_interval: int = 1
    channels: int = 1
    num_digits: int = 1
    vae: str | None = None  # local diffusers AutoencoderKL directory: train in its latent space
    latent_cache: str | None = None  # with `vae`: encode each clip once and keep it here
    num_workers: int = 0
    # optimisation
    steps: int = 1000
    batch_size: int = 8  # global, split over processes
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    # Min-SNR-γ loss weighting (None: the plain ε-MSE); 5 is the paper's choice
    min_snr_gamma: float | None = None
    precision: str = "fp32"
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model's forward (worth it on GPUs)
    # Joint video-image training: each step also trains on this many single frames, taken from
    # other clips and treated as 1-frame videos (0 = off).
    image_batch: int = 0
    seed: int = 0
    # several processes (torchrun): "ddp" replicates the model, "fsdp" shards it (FSDP2) and
    # writes sharded checkpoints; `sequence_parallel` processes split each clip's frames
    parallel: str = "ddp"
    sequence_parallel: int = 1
    # bookkeeping
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 3  # 0: keep all
    sample_every: int = 0  # 0: only at the end
    sample_steps: int = 50
    device: str = "cpu"

    def __post_init__(self) -> None:
        positive = (
            "num_frames",
            "size",
            "frame_interval",
            "steps",
            "batch_size",
            "log_every",
            "ckpt_every",
            "sample_steps",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        clash = sorted(set(self.model_overrides) & set(DATA_DERIVED))
        if clash:
            key = clash[0]
            raise ValueError(
                f"model option {key!r} follows the training data; set {DATA_DERIVED[key]} instead"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ValueError("parallel 'fsdp' supports precision fp32 or bf16, got 'fp16'")
        if not isinstance(self.sequence_parallel, int) or self.sequence_parallel < 1:
            raise ValueError(
                f"sequence_parallel must be a positive integer, got {self.sequence_parallel!r}"
            )
        if self.latent_cache is not None and self.vae is None:
            raise ValueError("latent_cache needs vae: only VAE latents are cached")
        if not isinstance(self.image_batch, int) or self.image_batch < 0:
            raise ValueError(f"image_batch must be an integer >= 0, got {self.image_batch!r}")
        if self.image_batch and self.sequence_parallel > 1:
            raise ValueError(
                "image_batch (joint video-image training) cannot be combined with "
                f"sequence_parallel={self.sequence_parallel}: a single frame cannot be split"
            )
        if self.num_frames % self.sequence_parallel:
            raise ValueError(
                f"sequence_parallel={self.sequence_parallel} splits the {self.num_frames} frames "
                "of a clip evenly: num_frames must be divisible by it"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(
                f"min_snr_gamma must be > 0 (or None: no weighting), got {self.min_snr_gamma}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if min(self.sample_every, self.num_workers, self.warmup_steps, self.keep_checkpoints) < 0:
            raise ValueError(
                "sample_every, num_workers, warmup_steps and keep_checkpoints must be >= 0"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training option(s): {sorted(unknown)}")
        return cls(**data)
