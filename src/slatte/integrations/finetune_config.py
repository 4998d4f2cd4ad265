"""What `slatte finetune` fine-tunes, on what and how long: a validated value, apart from the
fine-tuning code so that the command line builds its flags from it without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..lora import DEFAULT_TARGETS, LORA_TRAINABLE, check_lora_options, resolve_trainable
from ..ops.sla.config import SLAConfig
from ..training.config import PARALLEL_MODES, TrainConfig

MODES = ("distill", "flow")  # the objectives (by name) that train a flow-matching velocity
TRAINABLE = ("all", "sla", *LORA_TRAINABLE)
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class FinetuneConfig:
    """What to fine-tune, on what, and how long (validated at construction)."""

    model_dir: str
    output_dir: str
    mode: str = "distill"
    data: str | None = None
    steps: int = 100
    batch_size: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    trainable: str | None = None  # default: "lora" with lora_rank, else "all"
    lora_rank: int | None = None
    lora_alpha: float | None = None  # default: the rank
    lora_targets: str = DEFAULT_TARGETS
    sla: SLAConfig = field(default_factory=SLAConfig)
    sla_backend: str = "sla"
    latent_shape: tuple[int, ...] | None = None
    text_length: int = 8
    shift: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0
    device: str | None = None
    log_every: int = 10
    # The trainer's options: precision None is bf16 autocast on CUDA and fp32 elsewhere.
    precision: str | None = None
    compile: bool = False
    parallel: str = "ddp"
    grad_clip: float = 0.0  # 0: off
    ckpt_every: int = 500
    keep_checkpoints: int = 3  # 0: keep all
    run_dir: str | None = None  # default: OUTPUT_DIR/training

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_lora_options(self.lora_rank, self.lora_alpha, self.lora_targets)
        resolve_trainable(self.trainable, self.lora_rank, TRAINABLE)
        for name in ("steps", "batch_size", "text_length", "log_every", "ckpt_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (0 = no EMA), got {self.ema_decay!r}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {PRECISIONS} (or None: bf16 on CUDA, else fp32), "
                f"got {self.precision!r}"
            )
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.mode == "flow" and self.data is None:
            raise ValueError("mode 'flow' needs data: a folder of *.safetensors latents")
        if self.data is None and self.latent_shape is None:
            raise ValueError("without data, give latent_shape (C, F, H, W) for random latents")
        if self.latent_shape is not None and (
            len(self.latent_shape) != 4 or any(int(s) < 1 for s in self.latent_shape)
        ):
            raise ValueError(
                f"latent_shape must be four positive ints (C, F, H, W), got {self.latent_shape}"
            )
        if not isinstance(self.sla, SLAConfig):
            raise ValueError(f"sla must be an SLAConfig, got {type(self.sla).__name__}")

    @property
    def trained(self) -> str:
        """What is trained: `trainable`, or its default ("lora" with lora_rank, else "all")."""
        return resolve_trainable(self.trainable, self.lora_rank, TRAINABLE)

    def train_config(self) -> TrainConfig:
        """The trainer's configuration of this fine-tuning run (the model and data fields of
        `TrainConfig` only record what is trained: the task reads them from here)."""
        import torch  # here only: the command line reads this config before torch is needed

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_cuda = torch.device(device).type == "cuda"
        return TrainConfig(
            out_dir=self.run_dir or str(Path(self.output_dir) / "training"),
            model=self.model_dir,
            data=self.data or "random latents",
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            ema_decay=self.ema_decay,
            precision=self.precision or ("bf16" if on_cuda else "fp32"),
            grad_checkpointing=self.gradient_checkpointing,
            compile=self.compile,
            seed=self.seed,
            parallel=self.parallel,
            log_every=self.log_every,
            ckpt_every=self.ckpt_every,
            keep_checkpoints=self.keep_checkpoints,
            device=device,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_targets=self.lora_targets,
            trainable=self.trained,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sla"] = self.sla.to_dict()
        return data
