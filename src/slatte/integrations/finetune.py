"""SLA fine-tuning of a local diffusers video transformer (Wan2.1-style flow matching).

The transformer's self-attention is switched to SLA (`enable_sla`), then trained with one of
- `"distill"`: match the dense model's output. The teacher is the same weights with dense
  attention, frozen; inputs are flow-matching interpolations x_σ = (1 − σ) x0 + σ ε of latents
  from `data` (or of standard-normal latents of `latent_shape` without data) with the text
  states of each sample (or random ones);
- `"flow"`: the model's own flow-matching loss (velocity ε − x0, timestep 1000 σ, as Wan2.1
  trains) on a folder of pre-encoded samples.
A data folder holds one `*.safetensors` file per clip with `latents` (C, F, H, W) — the VAE
latents of the clip — and optionally `text` (L, text_dim), the text encoder's states.
Weights stay fp32 (AdamW master weights); on CUDA the forward runs under bf16 autocast. An EMA
of the weights (`slatte.training.ema`) is what gets saved, in diffusers format with the SLA
options (`save_pretrained_sla`), so `from_pretrained_sla(output_dir)` loads the result.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..ops.sla import SLAConfig
from ..training.ema import make_ema, update_ema
from .diffusers_common import SUPPORTED, model_spec
from .diffusers_sla import disable_sla, enable_sla, from_pretrained_sla, save_pretrained_sla

MODES = ("distill", "flow")
TRAINABLE = ("all", "sla")
FINETUNE_CLASSES = tuple(name for name, spec in SUPPORTED.items() if spec.flow_finetune)


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
    trainable: str = "all"
    sla: SLAConfig = field(default_factory=SLAConfig)
    sla_backend: str = "sla"
    latent_shape: tuple[int, ...] | None = None
    text_length: int = 8
    shift: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0
    device: str | None = None
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        for name in ("steps", "batch_size", "text_length", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (0 = no EMA), got {self.ema_decay!r}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
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


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class LatentClips:
    """A folder of `*.safetensors` clips: `latents` (C, F, H, W), optional `text` (L, D)."""

    def __init__(self, root: str | Path):
        if not Path(root).is_dir():
            raise FileNotFoundError(f"data folder {root} does not exist")
        self.files = sorted(Path(root).glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no *.safetensors clips in {root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        clip = load_file(str(self.files[index]))
        if "latents" not in clip or clip["latents"].dim() != 4:
            raise ValueError(f"{self.files[index]} needs a 'latents' tensor (C, F, H, W)")
        return clip


def _batch(
    cfg: FinetuneConfig,
    clips: LatentClips | None,
    text_dim: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents (B, C, F, H, W), text (B, L, text_dim)) for one step, on the CPU."""
    if clips is None:
        x0 = torch.randn((cfg.batch_size, *cfg.latent_shape), generator=generator)
        text = torch.randn((cfg.batch_size, cfg.text_length, text_dim), generator=generator)
        return x0, text
    rows = torch.randint(len(clips), (cfg.batch_size,), generator=generator).tolist()
    items = [clips[i] for i in rows]
    x0 = torch.stack([item["latents"].float() for item in items])
    if all("text" in item for item in items):
        length = max(item["text"].shape[0] for item in items)
        # Right-pad with zeros, as diffusers' Wan pipeline pads its 512 text states.
        text = torch.stack(
            [nn.functional.pad(item["text"].float(), (0, 0, 0, length - len(item["text"]))) for
             item in items]
        )  # fmt: skip
    else:
        text = torch.randn((cfg.batch_size, cfg.text_length, text_dim), generator=generator)
    return x0, text


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _sigmas(batch: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    sigma = torch.rand(batch, generator=generator)
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the fine-tuning `cfg` describes; returns {"losses": [...], "output_dir": ...}."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    clips = LatentClips(cfg.data) if cfg.data is not None else None

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
    teacher = None
    if cfg.mode == "distill":
        teacher = disable_sla(make_ema(student))  # a frozen dense copy of the same weights
    enable_sla(student, cfg.sla, backend=cfg.sla_backend)
    student.train()
    if cfg.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    if cfg.trainable == "sla":
        student.requires_grad_(False)
        params = [p for n, p in student.named_parameters() if ".sla.proj_l." in n]
        for p in params:
            p.requires_grad_(True)
    else:
        params = list(student.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = make_ema(student) if cfg.ema_decay > 0 else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    losses: list[float] = []
    for step in range(cfg.steps):
        x0, text = _batch(cfg, clips, text_dim, generator)
        noise = torch.randn(x0.shape, generator=generator)
        sigma = _sigmas(x0.shape[0], cfg.shift, generator)
        x0, text, noise, sigma = (t.to(device) for t in (x0, text, noise, sigma))
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1.0 - s) * x0 + s * noise
        timestep = sigma * 1000.0
        if teacher is not None:
            with torch.no_grad(), autocast:
                target = teacher(x_t, timestep, text, return_dict=False)[0].float()
        else:
            target = noise - x0
        with autocast:
            pred = student(x_t, timestep, text, return_dict=False)[0]
        loss = (pred.float() - target).square().mean()
        if not math.isfinite(loss.item()):
            raise ValueError(f"fine-tuning diverged: loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            update_ema(ema, student, cfg.ema_decay)
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            print(json.dumps({"step": step + 1, "loss": losses[-1]}), flush=True)

    result = ema if ema is not None else student
    save_pretrained_sla(result.eval(), cfg.output_dir)
    summary = {"losses": losses, "output_dir": str(cfg.output_dir)}
    config = asdict(cfg)
    config["sla"] = cfg.sla.to_dict()
    (Path(cfg.output_dir) / "slatte_finetune.json").write_text(
        json.dumps({"config": config, "final_loss": losses[-1]}, indent=2) + "\n"
    )
    return summary


__all__ = ["FINETUNE_CLASSES", "MODES", "TRAINABLE", "FinetuneConfig", "LatentClips", "finetune"]
