"""Training slatte's video DiT (`slatte train`): moving digits or a video folder, in pixels or
a VAE's latent space, class-conditional with label dropout, the Gaussian diffusion objective."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ..data import CachedLatents, MovingDigits, VideoFolder
from ..diffusion.gaussian import ModelFn
from ..diffusion.objectives import make_objective
from ..lora import ADAPTER_DIR, add_lora, save_adapter, set_trainable, split_state_dict
from ..memory import check_fits, training_bytes
from ..models import VideoDiT, load_model, model_config, save_model
from ..ops.sequence_parallel import check_heads
from .config import TrainConfig
from .fsdp import shard_model


def build_dataset(cfg: TrainConfig) -> tuple[Dataset, int]:
    """The training dataset and its number of classes (0 when unlabelled)."""
    if cfg.data == "digits":
        data = MovingDigits(
            "train",
            num_frames=cfg.num_frames,
            size=cfg.size,
            digit_size=cfg.size // 2,
            num_digits=cfg.num_digits,
            seed=cfg.seed,
        )
        return data, (MovingDigits.num_classes if cfg.num_digits == 1 else 0)
    data = VideoFolder(
        cfg.data,
        num_frames=cfg.num_frames,
        size=cfg.size,
        frame_interval=cfg.frame_interval,
        channels=cfg.channels,
    )
    data.check_files()  # hours into a run is too late to find a broken video
    return data, data.num_classes


def build_codec(cfg: TrainConfig, device: torch.device):
    from ..data import PixelSpace, VAELatents

    if cfg.vae is None:
        return PixelSpace()
    return VAELatents(cfg.vae, device=device)


def build_model(
    cfg: TrainConfig, *, in_channels: int, input_size: int, num_classes: int
) -> VideoDiT:
    if cfg.init_from is not None:
        overrides = dict(cfg.model_overrides)
        return load_model(
            cfg.init_from,
            attention_backend=overrides.pop("attention_backend", None),
            sla=overrides.pop("sla", None),
        )
    return VideoDiT(
        model_config(
            cfg.model,
            input_size=input_size,
            num_frames=cfg.num_frames,
            in_channels=in_channels,
            num_classes=num_classes,
            **cfg.model_overrides,
        )
    )


class VideoDiTTask:
    """The `TrainTask` of `slatte train`: batches {"video": (B, F, C, H, W), "label": (B,)}."""

    collate_fn = None

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        # A LoRA model's state dict is not a model directory's (the adapters sit inside it):
        # sharded checkpoints hold it, and `save_model` writes the model directory and the adapter.
        self.whole_checkpoints = cfg.lora_rank is None
        self.dataset, num_classes = build_dataset(cfg)
        self.codec = build_codec(cfg, device)
        if cfg.latent_cache is not None:  # items are latents from here on: no encode per step
            self.dataset = CachedLatents(self.dataset, self.codec, cfg.latent_cache)
        self.model = build_model(
            cfg,
            in_channels=self.codec.channels(cfg.channels),
            input_size=cfg.size // self.codec.downsample,
            num_classes=num_classes,
        ).to(device)
        if cfg.lora_rank is not None:
            add_lora(self.model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
        if cfg.trained != "all":
            set_trainable(self.model, cfg.trained)
        self.model.enable_gradient_checkpointing(cfg.grad_checkpointing)
        check_heads(self.model.config.num_heads, cfg.sequence_parallel)  # fail before step 1
        processes = dist.get_world_size() if dist.is_initialized() else 1
        check_fits(
            training_bytes(
                self.model.config,
                max(1, cfg.batch_size // processes),
                grad_checkpointing=cfg.grad_checkpointing,
            ),
            device,
            f"training with batch size {cfg.batch_size}",
            "lower --batch-size (or --frames / --size), or add --grad-checkpointing",
        )
        self.objective = make_objective(
            "gaussian",
            learn_sigma=self.model.config.learn_sigma,
            min_snr_gamma=cfg.min_snr_gamma,
        )
        self.label_dropout = self.model.config.class_dropout_prob

    def inputs(self, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, Any]:
        x0 = batch["video"].to(device)
        if self.cfg.latent_cache is None:
            with torch.no_grad():
                x0 = self.codec.encode(x0)
        return x0, batch["label"].to(device)

    def model_fn(self, model: nn.Module, cond: torch.Tensor, drop: torch.Tensor) -> ModelFn:
        num_classes = self.model.config.num_classes
        if num_classes == 0:
            return lambda x_t, t: model(x_t, t, None)
        # Classifier-free guidance training: the null class replaces dropped labels.
        labels = torch.where(drop.to(cond.device), torch.full_like(cond, num_classes), cond)
        return lambda x_t, t: model(x_t, t, labels)

    def teacher_fn(self, cond: Any) -> ModelFn:
        raise ValueError("slatte train has no teacher: its objective is 'gaussian'")

    def train_mode(self) -> None:
        self.model.train()
        if self.model.y_embedder is not None:
            # Label dropout is drawn per sample by the trainer (independent of the number of
            # processes); eval mode keeps the embedder from dropping labels a second time.
            self.model.y_embedder.eval()

    def shard(self, model: nn.Module, precision: str) -> None:
        shard_model(model, precision=precision)

    def whole_model(self, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        whole = VideoDiT(self.model.config)
        whole.load_state_dict(state_dict)
        return whole

    def save_model(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], directory: Path
    ) -> None:
        """The model directory; with LoRA, the base weights (and trained SLA projections) there
        and the peft adapter beside it, in `ADAPTER_DIR`."""
        if self.cfg.lora_rank is None:
            save_model(model, directory, state_dict=state_dict)
            return
        base, adapter = split_state_dict(state_dict)
        with torch.device("meta"):  # only its config and key names are read
            plain = VideoDiT(self.model.config)
        save_model(plain, directory, state_dict=base)
        save_adapter(model, adapter, directory.parent / ADAPTER_DIR)

    def preview(self, ema: nn.Module, out_dir: Path) -> list[Path]:
        from ..sampling import SampleOptions, generate_and_save

        opts = SampleOptions(
            num_samples=min(4, max(1, self.model.config.num_classes or 4)),
            steps=self.cfg.sample_steps,
            seed=self.cfg.seed,
            # Previews need no video encoder (mp4 needs ffmpeg, which a GPU host may lack, and
            # a run must not fail after its last checkpoint for want of a preview).
            formats=("gif", "png"),
        )
        return generate_and_save(ema, opts, out_dir, codec=self.codec)


__all__ = ["VideoDiTTask", "build_codec", "build_dataset", "build_model"]
