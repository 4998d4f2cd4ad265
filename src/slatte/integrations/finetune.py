"""SLA fine-tuning of a local diffusers video transformer (Wan2.1-style flow matching) on the
one trainer (`slatte.training`): its checkpoints, exact resume, metrics, plots, bf16,
`torch.compile` and DDP / FSDP2 under `torchrun`.

The transformer's self-attention is switched to SLA (`enable_sla`), then trained towards one of
the objectives of `slatte.diffusion.objectives`, by name (`mode`):
- `"distill"`: match the dense model's velocity. The teacher is the same weights with dense
  attention, frozen; inputs are flow-matching interpolations x_σ = (1 − σ) x0 + σ ε of latents
  from `data` (or of standard-normal latents of `latent_shape` without data) with the text
  states of each sample (or random ones);
- `"flow"`: the model's own flow-matching loss (velocity ε − x0, timestep 1000 σ, as Wan2.1
  trains) on a folder of pre-encoded samples.
A data folder holds one `*.safetensors` file per clip with `latents` (C, F, H, W) — the VAE
latents of the clip — and optionally `text` (L, text_dim), the text encoder's states.
Weights stay fp32 (AdamW master weights); on CUDA the forward runs under bf16 autocast by
default. The run folder (`run_dir`, default `OUTPUT_DIR/training`) holds the checkpoints,
`metrics.jsonl` and the loss curve; the EMA of the weights is what gets saved, in diffusers
format with the SLA options (`save_pretrained_sla`), so `from_pretrained_sla(output_dir)` loads
the result. With `lora_rank`, peft LoRA adapters are trained on the frozen transformer (with its
SLA projections under `trainable="lora+sla"`) and saved in `output_dir/adapter`.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import Dataset

from ..diffusion.gaussian import ModelFn
from ..diffusion.objectives import make_objective
from ..lora import (
    ADAPTER_DIR,
    ADAPTER_NAME,
    add_lora,
    has_lora,
    save_adapter,
    set_trainable,
    split_state_dict,
)
from ..training.config import TrainConfig
from ..training.ema import make_ema
from ..training.fsdp import shard_model
from ..training.trainer import Trainer
from .diffusers_common import SUPPORTED, model_spec
from .diffusers_sla import disable_sla, enable_sla, from_pretrained_sla, save_pretrained_sla
from .finetune_config import MODES, TRAINABLE, FinetuneConfig

FINETUNE_CLASSES = tuple(name for name, spec in SUPPORTED.items() if spec.flow_finetune)
RANDOM_CLIPS = 1 << 16  # random latents without data: this many distinct clips, then repeated


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _random_text(seed: int, index: int, length: int, dim: int) -> torch.Tensor:
    """Text states (length, dim) of clip `index` for clips without any: a pure function of
    (seed, index), so a resumed run sees the same ones."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn((length, dim), generator=generator)


class LatentClips(Dataset):
    """A folder of `*.safetensors` clips: `latents` (C, F, H, W), optional `text` (L, D); a clip
    without text gets random text states of (`text_length`, `text_dim`)."""

    def __init__(self, root: str | Path, *, text_length: int, text_dim: int, seed: int):
        if not Path(root).is_dir():
            raise FileNotFoundError(f"data folder {root} does not exist")
        self.files = sorted(Path(root).glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no *.safetensors clips in {root}")
        self.text_length, self.text_dim, self.seed = text_length, text_dim, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        clip = load_file(str(self.files[index]))
        if "latents" not in clip or clip["latents"].dim() != 4:
            raise ValueError(f"{self.files[index]} needs a 'latents' tensor (C, F, H, W)")
        if "text" not in clip:
            clip["text"] = _random_text(self.seed, index, self.text_length, self.text_dim)
        return clip


class RandomClips(Dataset):
    """Standard-normal latents (C, F, H, W) and text states (L, D), each clip a pure function of
    (seed, index): what distillation trains on without data."""

    def __init__(
        self, latent_shape: tuple[int, ...], *, text_length: int, text_dim: int, seed: int
    ):
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.text_length, self.text_dim, self.seed = text_length, text_dim, seed

    def __len__(self) -> int:
        return RANDOM_CLIPS

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 7_919 + index)
        latents = torch.randn(self.latent_shape, generator=generator)
        text = _random_text(self.seed, index, self.text_length, self.text_dim)
        return {"latents": latents, "text": text}


def collate_clips(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{"latents": (B, C, F, H, W), "text": (B, L, D)}, text right-padded with zeros to the
    longest in the batch, as diffusers' Wan pipeline pads its 512 text states."""
    length = max(item["text"].shape[0] for item in items)
    text = [
        nn.functional.pad(item["text"].float(), (0, 0, 0, length - item["text"].shape[0]))
        for item in items
    ]
    return {
        "latents": torch.stack([item["latents"].float() for item in items]),
        "text": torch.stack(text),
    }


# ---------------------------------------------------------------------------------------------
# The trainer's task
# ---------------------------------------------------------------------------------------------


def _velocity_fn(model: nn.Module, text: torch.Tensor) -> ModelFn:
    """`model` called as Wan is: latents (B, C, F, H, W), timesteps, text states → velocity."""
    return lambda x_t, t: model(x_t, t, text, return_dict=False)[0]


class DiffusersFinetuneTask:
    """The `TrainTask` (`slatte.training.task`) of SLA fine-tuning a diffusers transformer;
    `cfg` says everything (the trainer's `train_cfg` is derived from it)."""

    collate_fn = staticmethod(collate_clips)
    whole_checkpoints = False  # the model directory is diffusers' format: sharded checkpoints
    label_dropout = 0.0
    preview = None  # videos need the pipeline's text encoder and VAE, which fine-tuning lacks

    def __init__(self, cfg: FinetuneConfig, train_cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.objective = make_objective(cfg.mode, shift=cfg.shift)
        student = from_pretrained_sla(cfg.model_dir, torch_dtype=torch.float32).to(
            device
        )  # master weights
        if not model_spec(student).flow_finetune:
            # The loop calls the model as Wan does (latents (B, C, F, H, W), velocity output).
            raise ValueError(
                f"fine-tuning supports {FINETUNE_CLASSES}, got {type(student).__name__} "
                f"from {cfg.model_dir}"
            )
        text_dim = student.config.text_dim
        # A frozen dense copy of the same weights.
        self.teacher = disable_sla(make_ema(student)) if self.objective.needs_teacher else None
        enable_sla(student, cfg.sla, backend=cfg.sla_backend)
        if cfg.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        if cfg.lora_rank is not None:
            add_lora(
                student,
                rank=cfg.lora_rank,
                alpha=cfg.lora_alpha,
                targets=cfg.lora_targets,
                family="diffusers",
            )
        if cfg.trained != "all":
            set_trainable(student, cfg.trained)
        self.model = student
        texts = {"text_length": cfg.text_length, "text_dim": text_dim, "seed": cfg.seed}
        self.dataset = (
            LatentClips(cfg.data, **texts)
            if cfg.data is not None
            else RandomClips(cfg.latent_shape, **texts)
        )

    def inputs(
        self, batch: dict[str, torch.Tensor], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["latents"].to(device), batch["text"].to(device)

    def model_fn(self, model: nn.Module, cond: torch.Tensor, drop: torch.Tensor) -> ModelFn:
        return _velocity_fn(model, cond)  # label_dropout is 0: nothing is ever dropped

    def teacher_fn(self, cond: torch.Tensor) -> ModelFn:
        return _velocity_fn(self.teacher, cond)

    def train_mode(self) -> None:
        self.model.train()

    def shard(self, model: nn.Module, precision: str) -> None:
        shard_model(model, precision=precision, sla_units=False)

    def whole_model(self, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        """The plain SLA model (no adapters) holding `state_dict`, whole weights on the CPU;
        with LoRA, the base part of an adapted model's state dict."""
        whole = enable_sla(
            type(self.model).from_config(self.model.config),
            self.cfg.sla,
            backend=self.cfg.sla_backend,
        )
        whole.load_state_dict(split_state_dict(state_dict)[0])
        return whole

    def save_model(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], directory: Path
    ) -> None:
        """The model directory; with LoRA, the base model there and the adapter beside it in
        `ADAPTER_DIR`: a peft adapter folder, plus the same weights in diffusers' LoRA file
        (`pytorch_lora_weights.safetensors`, keys under "transformer.") that a pipeline's
        `load_lora_weights(folder)` reads."""
        # `model` itself holds the weights unless FSDP shards it or adapters sit in it.
        sharded = any(isinstance(p, DTensor) for p in model.parameters())
        if not (sharded or has_lora(model)):
            save_pretrained_sla(model, directory)
            return
        save_pretrained_sla(self.whole_model(state_dict), directory)
        if has_lora(model):
            from diffusers import WanPipeline  # its LoRA writer serves any "transformer" pipeline

            adapter = split_state_dict(state_dict)[1]
            adapter_dir = save_adapter(model, adapter, directory.parent / ADAPTER_DIR)
            WanPipeline.save_lora_weights(
                adapter_dir,
                transformer_lora_layers=adapter,
                transformer_lora_adapter_metadata=model.peft_config[ADAPTER_NAME].to_dict(),
            )


def finetune(cfg: FinetuneConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run (or, with `resume`, continue from the run folder's latest checkpoint) the fine-tuning
    `cfg` describes; returns {"losses": [the logged losses], "output_dir": ..., "run_dir": ...}.
    """
    train_cfg = cfg.train_config()
    trainer = Trainer(train_cfg, resume=resume, task=functools.partial(DiffusersFinetuneTask, cfg))
    result = trainer.fit()
    run_dir = Path(train_cfg.out_dir)
    if result["checkpoint"] is None:  # not the first process
        return {"losses": [], "output_dir": cfg.output_dir, "run_dir": str(run_dir)}
    # The last checkpoint's model directory is the EMA in diffusers format + slatte_sla.json.
    shutil.copytree(Path(result["checkpoint"]) / "model", cfg.output_dir, dirs_exist_ok=True)
    if cfg.lora_rank is not None:  # diffusers' loaders ignore the subfolder
        adapter = Path(cfg.output_dir) / ADAPTER_DIR
        shutil.copytree(Path(result["checkpoint"]) / ADAPTER_DIR, adapter, dirs_exist_ok=True)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in metrics]
    (Path(cfg.output_dir) / "slatte_finetune.json").write_text(
        json.dumps({"config": cfg.to_dict(), "final_loss": losses[-1]}, indent=2) + "\n"
    )
    return {"losses": losses, "output_dir": str(cfg.output_dir), "run_dir": str(run_dir)}


__all__ = [
    "FINETUNE_CLASSES",
    "MODES",
    "TRAINABLE",
    "DiffusersFinetuneTask",
    "FinetuneConfig",
    "LatentClips",
    "RandomClips",
    "finetune",
]
