"""`slatte convert` and `slatte finetune`: argparse sub-commands, self-contained so that the main
CLI only has to call `add_convert_parser(sub)` and `add_finetune_parser(sub)`.

Each sets `func(args) -> int` as its handler; bad input raises ValueError / FileNotFoundError,
which the main CLI prints as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..flags import add_sla_arguments, sla_from_args

CONVERT_SOURCES = ("latte-official", "latte-diffusers", "merge-lora")


# --------------------------------------------------------------------------- convert
def add_convert_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`slatte convert latte-official CKPT OUT [--num-heads N] [--no-temporal-attentions]`,
    `slatte convert latte-diffusers DIR OUT` and `slatte convert merge-lora MODEL ADAPTER OUT`."""
    p = subparsers.add_parser(
        "convert",
        description=(
            "latte-official: an official Latte checkpoint (github.com/Vchitect/Latte): a .pt of "
            "models/latte.py or latte_img.py (unconditional or class-conditional), or a "
            "Latte-T2V transformer directory (models/latte_t2v.py: config.json plus "
            "diffusion_pytorch_model.safetensors/.bin or one .pt; or a pipeline directory with "
            "it in transformer/); latte-diffusers: a local diffusers LatteTransformer3DModel "
            "directory, or a pipeline directory with it in transformer/ (text-to-video). Either "
            "becomes a slatte VideoDiT directory (config.json + model.safetensors). merge-lora "
            "MODEL_DIR ADAPTER_DIR OUT: a slatte model directory with a peft LoRA adapter folded "
            "into its weights, written to OUT (MODEL_DIR is left as it is)."
        ),
    )
    p.add_argument("source", choices=CONVERT_SOURCES, help="what the checkpoint is")
    p.add_argument(
        "checkpoint",
        type=Path,
        help="the .pt file or Latte-T2V directory (latte-official), or the model directory "
        "(latte-diffusers)",
    )
    p.add_argument(
        "output",
        type=Path,
        help="the slatte model directory to write (merge-lora: the adapter folder)",
    )
    p.add_argument(
        "merged", type=Path, nargs="?", default=None, help="merge-lora only: the directory to write"
    )
    p.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="latte-official .pt only: attention heads (default: from the Latte size: S 6, B 12, "
        "L/XL 16)",
    )
    p.add_argument(
        "--no-temporal-attentions",
        dest="temporal_attentions",
        action="store_false",
        help="keep the spatial blocks only: an image model applied frame by frame (Latte-0 "
        "text-to-image: the official enable_temporal_attentions=False; Latte-img's image "
        "frames)",
    )
    p.set_defaults(func=run_convert)
    return p


def run_convert(args: argparse.Namespace) -> int:
    from ..models import save_model
    from .latte_convert import (
        convert_diffusers_latte,
        convert_official_checkpoint,
        load_diffusers_latte,
    )

    if (args.source == "merge-lora") != (args.merged is not None):
        raise ValueError(
            "merge-lora takes MODEL_DIR ADAPTER_DIR OUT; the other sources take CHECKPOINT OUT, "
            f"got {args.source} with {3 if args.merged is not None else 2} paths"
        )
    if args.source == "merge-lora":
        return _merge_lora(args.checkpoint, args.output, args.merged)
    if args.source == "latte-official":
        model = _read(
            lambda path: convert_official_checkpoint(
                path, num_heads=args.num_heads, temporal_attentions=args.temporal_attentions
            ),
            args.checkpoint,
            "an official Latte checkpoint (.pt) or Latte-T2V directory",
        )
    else:
        if args.num_heads is not None:
            raise ValueError(
                "--num-heads applies to latte-official only; diffusers configs name their heads"
            )
        model = convert_diffusers_latte(
            load_diffusers_latte(args.checkpoint), temporal_attentions=args.temporal_attentions
        )
    save_model(model, args.output)
    print(
        json.dumps(
            {
                "output": str(args.output),
                "config": model.config.to_dict(),
                "parameters": model.num_parameters(),
            }
        )
    )
    return 0


def _merge_lora(model_dir: Path, adapter_dir: Path, out: Path) -> int:
    from ..lora import load_adapter, merge_lora
    from ..models import load_model, save_model

    if out.resolve() == model_dir.resolve():
        raise ValueError(f"merge-lora writes a new model directory; OUT is MODEL_DIR ({out})")
    model = merge_lora(load_adapter(load_model(model_dir), adapter_dir))
    save_model(model, out)
    print(json.dumps({"output": str(out), "model": str(model_dir), "adapter": str(adapter_dir)}))
    return 0


def _read(load, path: Path, what: str):
    """`load(path)`, with a file that is not `what` (garbage, truncated, another format) an error
    naming it rather than the loader's own exception."""
    try:
        return load(path)
    except (ValueError, OSError):
        raise
    except Exception as err:  # torch.load / unpickling raise many unrelated types
        raise ValueError(
            f"cannot read {path} as {what}: it is corrupt or another format ({type(err).__name__})"
        ) from err


# --------------------------------------------------------------------------- finetune
def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,F,H,W integers, got {text!r}") from None


def add_finetune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`slatte finetune MODEL_DIR OUTPUT_DIR [--mode distill|flow] [--data DIR] ...`."""
    from ..training.config import PARALLEL_MODES
    from .finetune_config import MODES, PRECISIONS, TRAINABLE, FinetuneConfig

    d = FinetuneConfig(model_dir="", output_dir="", latent_shape=(1, 1, 1, 1))
    p = subparsers.add_parser(
        "finetune",
        description=(
            "Switch the self-attention of a local diffusers WanTransformer3DModel directory to "
            "SLA and fine-tune it, by distillation from the dense model (default) or with the "
            "flow-matching loss on a folder of pre-encoded clips (*.safetensors with 'latents' "
            "(C, F, H, W) and optionally 'text' (L, text_dim)). Saves the EMA weights in "
            "diffusers format plus slatte_sla.json (load with "
            "slatte.integrations.from_pretrained_sla). Runs on slatte's trainer: checkpoints, "
            "metrics.jsonl and loss_curve.png in the run folder (--run-dir), exact --resume, "
            "DDP or FSDP2 under torchrun."
        ),
    )
    p.add_argument("model_dir", help="local diffusers transformer directory (config.json)")
    p.add_argument("output_dir", help="where to save the fine-tuned transformer")
    p.add_argument("--mode", choices=MODES, default=d.mode)
    p.add_argument("--data", default=None, help="folder of *.safetensors latent clips")
    p.add_argument(
        "--latent-shape",
        type=_shape,
        default=None,
        help="C,F,H,W of random latents when distilling without --data (e.g. 16,21,60,104)",
    )
    p.add_argument("--text-length", type=int, default=d.text_length)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="0 disables EMA")
    p.add_argument(
        "--trainable",
        choices=TRAINABLE,
        default=None,
        help="all, sla (the SLA projections), or with --lora-rank lora (the adapters) or "
        "lora+sla (default: lora with --lora-rank, else all)",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        help="train peft LoRA adapters of this rank on the frozen transformer; saved in "
        "OUTPUT_DIR/adapter (peft folder + diffusers' pytorch_lora_weights.safetensors)",
    )
    p.add_argument("--lora-alpha", type=float, default=None, help="default: the rank")
    p.add_argument(
        "--lora-targets",
        default=d.lora_targets,
        help="comma list of attn (to_q, to_k, to_v, to_out.0), mlp (ffn), adaln (time "
        f"embedding) (default: {d.lora_targets})",
    )
    p.add_argument("--shift", type=float, default=d.shift, help="noise-level shift (Wan: 3-5)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument(
        "--precision", choices=PRECISIONS, default=None, help="default: bf16 on CUDA, else fp32"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the forward")
    p.add_argument(
        "--parallel",
        choices=PARALLEL_MODES,
        default=d.parallel,
        help="under torchrun: ddp replicates the model, fsdp shards it (FSDP2)",
    )
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0 disables clipping")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="0: keep all")
    p.add_argument(
        "--run-dir", default=None, help="checkpoints and metrics (default: OUTPUT_DIR/training)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the run folder's latest checkpoint"
    )
    add_sla_arguments(p)
    p.add_argument(
        "--sla-backend", choices=("sla", "sla_reference"), default="sla", help="kernel or reference"
    )
    p.set_defaults(func=run_finetune)
    return p


def run_finetune(args: argparse.Namespace) -> int:
    from ..ops.sla import SLAConfig
    from .finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        model_dir=args.model_dir,
        output_dir=args.output_dir,
        mode=args.mode,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        ema_decay=args.ema_decay,
        trainable=args.trainable,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets,
        sla=sla_from_args(args, SLAConfig()),
        sla_backend=args.sla_backend,
        latent_shape=args.latent_shape,
        text_length=args.text_length,
        shift=args.shift,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        device=args.device,
        log_every=args.log_every,
        precision=args.precision,
        compile=args.compile,
        parallel=args.parallel,
        grad_clip=args.grad_clip,
        ckpt_every=args.ckpt_every,
        keep_checkpoints=args.keep_checkpoints,
        run_dir=args.run_dir,
    )
    result = finetune(cfg, resume=args.resume)
    if result["losses"]:  # the first process reports
        print(
            json.dumps(
                {
                    "output_dir": result["output_dir"],
                    "run_dir": result["run_dir"],
                    "final_loss": result["losses"][-1],
                }
            )
        )
    return 0


__all__ = ["add_convert_parser", "add_finetune_parser", "run_convert", "run_finetune"]
