"""The typed configuration of a training run (the CLI maps its flags onto this)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..flags import flag, flag_names
from ..lora import DEFAULT_TARGETS, check_lora_options, resolve_trainable
from ..ops.sla.config import SLAConfig

PRECISIONS = ("fp32", "bf16", "fp16")
PARALLEL_MODES = ("ddp", "fsdp")
TRAINABLE = ("all", "sla", "lora", "lora+sla")
# Model fields the training data decides; a model override may not set them.
DATA_DERIVED = {
    "input_size": "size (--size)",
    "num_frames": "num_frames (--frames)",
    "in_channels": "channels (--channels) or the VAE's latent channels",
    "num_classes": "the dataset",
}


# Fields that name files or folders (data: unless it names the built-in dataset).
PATH_FIELDS = ("init_from", "data", "vae", "latent_cache")
DATA_KEYWORDS = ("digits",)


def _is_keyword(name: str, value: str) -> bool:
    return name == "data" and value in DATA_KEYWORDS


def _is_path(name: str, value: str | None) -> bool:
    """Whether `value` of field `name` is a path that exists (from the current directory)."""
    return value is not None and not _is_keyword(name, value) and Path(value).exists()


def _same_value(name: str, given: Any, saved: Any) -> bool:
    if name in PATH_FIELDS and _is_path(name, given) and _is_path(name, saved):
        return Path(given).resolve() == Path(saved).resolve()
    return given == saved


# What a resumed run may change: its length, logging, device and the split over processes.
# Everything else shapes the data, the model or the optimisation and stays as the run began.
RESUMABLE = (
    "steps",
    "log_every",
    "ckpt_every",
    "keep_checkpoints",
    "sample_every",
    "sample_steps",
    "device",
    "compile",
    "num_workers",
    "parallel",
    "sequence_parallel",
)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Each field with `flag` metadata is a `slatte train` flag."""

    out_dir: str = field(default="runs/digits", metadata=flag("run folder", name="out"))
    # model
    model: str = field(default="Latte-digits", metadata=flag("named model config (see README)"))
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = field(
        default=None, metadata=flag("start from this slatte model directory (fine-tuning)")
    )
    data: str = field(default="digits", metadata=flag("'digits' or a folder of videos"))
    num_frames: int = field(default=16, metadata=flag("frames per clip", name="frames"))
    size: int = field(default=32, metadata=flag("frame size in pixels (square)"))
    frame_interval: int = field(default=1, metadata=flag("take every N-th frame of a video"))
    channels: int = field(
        default=1, metadata=flag("1 (grey) or 3 (RGB) for a video folder", choices=(1, 3))
    )
    num_digits: int = field(
        default=1, metadata=flag("digits per moving-digits clip", choices=(1, 2))
    )
    vae: str | None = field(
        default=None,
        metadata=flag("local diffusers AutoencoderKL folder: train in its latent space"),
    )
    latent_cache: str | None = field(
        default=None, metadata=flag("with --vae: encode each clip once and keep it here")
    )
    num_workers: int = field(default=0, metadata=flag("data loader processes", name="workers"))
    # optimisation
    steps: int = field(
        default=1000,
        metadata=flag("total optimisation steps (with --resume: the run's own unless given)"),
    )
    batch_size: int = field(default=8, metadata=flag("global batch size, split over processes"))
    lr: float = field(default=1e-4, metadata=flag("AdamW learning rate"))
    weight_decay: float = field(default=0.0, metadata=flag("AdamW weight decay"))
    warmup_steps: int = field(default=0, metadata=flag("linear learning-rate warm-up steps"))
    grad_clip: float = field(default=1.0, metadata=flag("gradient norm clip (0 = off)"))
    ema_decay: float = field(default=0.9999, metadata=flag("EMA decay of the saved weights"))
    min_snr_gamma: float | None = field(
        default=None,
        metadata=flag("Min-SNR-γ loss weighting, e.g. 5, the paper's (default: the plain ε-MSE)"),
    )
    precision: str = field(default="fp32", metadata=flag("training precision", choices=PRECISIONS))
    grad_checkpointing: bool = field(
        default=False, metadata=flag("recompute activations in backward (less memory)")
    )
    compile: bool = field(
        default=False, metadata=flag("torch.compile the model's forward (worth it on GPUs)")
    )
    image_batch: int = field(
        default=0,
        metadata=flag(
            "joint video-image training: single frames of other clips per step, each treated "
            "as a 1-frame video (0 = off)"
        ),
    )
    seed: int = field(default=0, metadata=flag("seed of the weights, data order and noise"))
    # LoRA (peft): adapters on a frozen model, saved as a peft adapter beside the model directory
    lora_rank: int | None = field(
        default=None, metadata=flag("train LoRA adapters of this rank on the frozen model")
    )
    lora_alpha: float | None = field(
        default=None,
        metadata=flag("LoRA alpha (update scaled by alpha / rank)", shown_default="the rank"),
    )
    lora_targets: str = field(
        default=DEFAULT_TARGETS,
        metadata=flag("comma list of attn (qkv, proj, cross-attention), mlp, adaln"),
    )
    trainable: str | None = field(
        default=None,
        metadata=flag(
            "what is trained: all, the SLA projections (sla), or with --lora-rank the adapters "
            "(lora) or the adapters and the SLA projections (lora+sla)",
            choices=TRAINABLE,
            shown_default="lora with --lora-rank, else all",
        ),
    )
    parallel: str = field(
        default="ddp",
        metadata=flag(
            "under torchrun: 'ddp' replicates the model, 'fsdp' shards it (FSDP2, sharded "
            "checkpoints that resume on any number of processes)",
            choices=PARALLEL_MODES,
        ),
    )
    sequence_parallel: int = field(
        default=1,
        metadata=flag(
            "processes that split each clip's frames (Ulysses; divides the process count)"
        ),
    )
    # bookkeeping
    log_every: int = field(default=10, metadata=flag("steps between metric lines"))
    ckpt_every: int = field(default=500, metadata=flag("steps between checkpoints"))
    keep_checkpoints: int = field(
        default=3, metadata=flag("checkpoints kept on disk, newest first (0 = all)")
    )
    sample_every: int = field(
        default=0, metadata=flag("steps between preview samples (0 = only at the end)")
    )
    sample_steps: int = field(default=50, metadata=flag("sampling steps of the previews"))
    device: str = field(
        default="cpu",
        metadata=flag("cpu, cuda or cuda:N", shown_default="cuda if available, else cpu"),
    )

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
        for name in ("sample_every", "num_workers", "warmup_steps", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

        check_lora_options(self.lora_rank, self.lora_alpha, self.lora_targets)
        resolve_trainable(self.trainable, self.lora_rank, TRAINABLE)
        if self.lora_rank is not None and self.parallel == "fsdp":
            raise ValueError("LoRA training runs with parallel 'ddp', got 'fsdp'")

    @property
    def trained(self) -> str:
        """What is trained: `trainable`, or its default ("lora" with a LoRA rank, else "all")."""
        return resolve_trainable(self.trainable, self.lora_rank, TRAINABLE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_run_folder(self, run_dir: str | Path) -> dict[str, Any]:
        """`to_dict` as the run folder `run_dir` records it: the folder is "." (itself) and the
        paths of PATH_FIELDS are relative to it when inside it, else absolute, so that the folder
        works from any directory and a copy of it is a run of its own."""
        data = {**self.to_dict(), "out_dir": "."}
        root = Path(run_dir).resolve()
        for name in PATH_FIELDS:
            if _is_path(name, data[name]):
                path = Path(data[name]).resolve()
                data[name] = str(path.relative_to(root) if path.is_relative_to(root) else path)
        return data

    def resumed(self, out_dir: str, changes: dict[str, Any]) -> TrainConfig:
        """This config (a run's saved one, `for_run_folder`) continued in `out_dir` with
        `changes`: its paths inside the folder are found there, and only RESUMABLE fields may
        differ from the run's values (a path given again may be spelled another way)."""
        paths = {
            name: str(Path(out_dir) / value)
            for name in PATH_FIELDS
            if (value := getattr(self, name)) is not None
            and not _is_keyword(name, value)
            and (Path(out_dir) / value).exists()
        }
        saved = replace(self, **paths)
        fixed = {
            k: v
            for k, v in changes.items()
            if k not in RESUMABLE and not _same_value(k, v, getattr(saved, k))
        }
        if fixed:
            raise ValueError(
                f"a resumed run keeps its {flag_names(TrainConfig, list(fixed))} "
                f"({', '.join(f'{k}={getattr(saved, k)!r}' for k in fixed)}); only "
                f"{flag_names(TrainConfig, RESUMABLE)} may change"
            )
        return replace(saved, out_dir=out_dir, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config of `to_dict` (or of a run folder's train_config.json): `asdict` wrote a
        model override's SLAConfig as a dict, which becomes an SLAConfig again."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training option(s): {sorted(unknown)}")
        overrides = data.get("model_overrides")
        if isinstance(overrides, dict) and isinstance(overrides.get("sla"), dict):
            data = {
                **data,
                "model_overrides": {**overrides, "sla": SLAConfig.from_dict(overrides["sla"])},
            }
        return cls(**data)
