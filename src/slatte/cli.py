"""`slatte train | sample | bench`: the command line, mapping flags onto the typed configs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .eval.cli import add_eval_parser
from .guidance.config import DEFAULT_STRATEGY
from .integrations.cli import add_convert_parser, add_finetune_parser
from .ops.attention import BACKENDS
from .ops.sla.config import FEATURE_MAPS, LINEAR_SCOPES, PROJECTIONS, SLAConfig
from .pretrained import DEFAULT_MODEL, available
from .stg_search import add_stg_search_parser

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- shared flags
def _add_attention_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("attention")
    group.add_argument(
        "--attention",
        choices=BACKENDS,
        default=None,
        help="self-attention backend (default: the model's own)",
    )
    group.add_argument(
        "--sla-critical",
        type=float,
        default=0.05,
        help="fraction of key blocks computed exactly (default 0.05)",
    )
    group.add_argument(
        "--sla-negligible",
        type=float,
        default=0.10,
        help="fraction of key blocks skipped (default 0.10)",
    )
    group.add_argument("--sla-block-q", type=int, default=64, help="query block size (64)")
    group.add_argument("--sla-block-k", type=int, default=64, help="key block size (64)")
    group.add_argument("--sla-feature-map", choices=FEATURE_MAPS, default="softmax")
    group.add_argument("--sla-linear-scope", choices=LINEAR_SCOPES, default="marginal")
    group.add_argument(
        "--sla-projection",
        choices=PROJECTIONS,
        default="learned",
        help="'learned' (trainable, zero at the start) or 'identity' (fixed; an ablation)",
    )


def _sla_from_args(args: argparse.Namespace) -> SLAConfig:
    return SLAConfig(
        critical=args.sla_critical,
        negligible=args.sla_negligible,
        block_q=args.sla_block_q,
        block_k=args.sla_block_k,
        feature_map=args.sla_feature_map,
        linear_scope=args.sla_linear_scope,
        projection=args.sla_projection,
    )


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (config.json inside), a run folder (its latest checkpoint's model) or,
    where no such path exists, the name of a shipped model (`slatte.pretrained.available()`)."""
    from .pretrained import pretrained_dir
    from .training.checkpoint import latest_checkpoint

    path = Path(path)
    if not path.exists():
        # An existing path wins, so a local folder that happens to share a shipped name is used.
        if str(path) in available():
            return pretrained_dir(str(path))
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist and is no shipped model name; "
            f"shipped: {list(available())}"
        )
    if (path / "config.json").is_file():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is not None:
        return ckpt / "model"
    raise FileNotFoundError(
        f"{path} is neither a model directory (config.json + model.safetensors) nor a run "
        "folder with a 'latest' checkpoint"
    )


# --------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    from .training.config import PARALLEL_MODES, PRECISIONS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a video DiT (default: Latte-digits on moving digits)")
    p.add_argument("--out", default=d.out_dir, help=f"run folder (default {d.out_dir})")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run folder's latest checkpoint"
    )
    p.add_argument("--model", default=d.model, help="named model config (see README)")
    p.add_argument("--init-from", default=None, help="start from this slatte model directory")
    p.add_argument("--block-pattern", choices=("alternating", "full"), default=None)
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        type=_model_option,
        metavar="KEY=VALUE",
        help="override one field of the named model config, e.g. depth=6 (repeatable)",
    )
    p.add_argument("--data", default=d.data, help="'digits' or a folder of videos")
    p.add_argument("--frames", type=int, default=d.num_frames, help="frames per clip")
    p.add_argument("--size", type=int, default=d.size, help="frame size in pixels (square)")
    p.add_argument("--frame-interval", type=int, default=d.frame_interval)
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=d.channels,
        help="1 (grey) or 3 (RGB) for a video folder",
    )
    p.add_argument("--num-digits", type=int, choices=(1, 2), default=d.num_digits)
    p.add_argument(
        "--vae", default=None, help="local diffusers AutoencoderKL folder (latent training)"
    )
    p.add_argument(
        "--latent-cache", default=None, help="with --vae: encode each clip once, keep it here"
    )
    p.add_argument("--workers", type=int, default=d.num_workers, help="data loader processes")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0 = off")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument(
        "--min-snr-gamma",
        type=float,
        default=d.min_snr_gamma,
        help="Min-SNR-γ loss weighting, e.g. 5 (default: none, the plain ε-MSE)",
    )
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (worth it on GPUs)"
    )
    p.add_argument(
        "--image-batch",
        type=int,
        default=d.image_batch,
        help="joint video-image training: single frames of other clips per step (0 = off)",
    )
    p.add_argument(
        "--parallel",
        choices=PARALLEL_MODES,
        default=d.parallel,
        help="under torchrun: 'ddp' replicates the model, 'fsdp' shards it (FSDP2, sharded "
        "checkpoints that resume on any number of processes)",
    )
    p.add_argument(
        "--sequence-parallel",
        type=int,
        default=d.sequence_parallel,
        help="processes that split each clip's frames (Ulysses; divides the process count)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        default=d.keep_checkpoints,
        help="checkpoints kept on disk, newest first (0 = all)",
    )
    p.add_argument("--sample-every", type=int, default=d.sample_every, help="0 = only at the end")
    p.add_argument("--sample-steps", type=int, default=d.sample_steps)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    _add_attention_arguments(p)
    p.set_defaults(func=_run_train)


def _model_option(text: str) -> tuple[str, object]:
    """`KEY=VALUE` with VALUE read as JSON where it parses (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. depth=6), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _run_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train
    from .training.checkpoint import latest_checkpoint, load_training_state

    overrides: dict = dict(args.model_option)
    if args.block_pattern:
        overrides["block_pattern"] = args.block_pattern
    if args.attention:
        overrides["attention_backend"] = args.attention
        if args.attention != "sdpa":
            overrides["sla"] = _sla_from_args(args)
    cfg = TrainConfig(
        out_dir=args.out,
        model=args.model,
        model_overrides=overrides,
        init_from=args.init_from,
        data=args.data,
        num_frames=args.frames,
        size=args.size,
        frame_interval=args.frame_interval,
        channels=args.channels,
        num_digits=args.num_digits,
        vae=args.vae,
        latent_cache=args.latent_cache,
        num_workers=args.workers,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        ema_decay=args.ema_decay,
        min_snr_gamma=args.min_snr_gamma,
        precision=args.precision,
        grad_checkpointing=args.grad_checkpointing,
        compile=args.compile,
        image_batch=args.image_batch,
        parallel=args.parallel,
        sequence_parallel=args.sequence_parallel,
        seed=args.seed,
        log_every=args.log_every,
        ckpt_every=args.ckpt_every,
        keep_checkpoints=args.keep_checkpoints,
        sample_every=args.sample_every,
        sample_steps=args.sample_steps,
        device=args.device,
    )
    if args.resume:
        ckpt = latest_checkpoint(args.out)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: {args.out} has no checkpoint to resume from")
        saved = TrainConfig.from_dict(json.loads(load_training_state(ckpt)["train_config"]))
        # A resumed run keeps everything that shapes the data and the model; only the length,
        # logging, device and the split over processes may change.
        cfg = TrainConfig.from_dict(
            {
                **saved.to_dict(),
                **{
                    k: getattr(cfg, k)
                    for k in (
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
                },
            }
        )
    result = train(cfg, resume=args.resume)
    if result["checkpoint"] is not None:
        print(json.dumps(result, indent=2))
    return 0


# --------------------------------------------------------------------------- sample
def _add_sample(sub) -> None:
    from .guidance.cli_args import add_guidance_arguments
    from .sampling import FORMATS, SAMPLERS

    p = sub.add_parser(
        "sample",
        help="generate videos from a trained model (default: the shipped one)",
        description="Generate videos. Without --checkpoint, the model that ships with slatte "
        f"({DEFAULT_MODEL}). A model directory's sampling.json (the shipped ones have one) "
        "sets the sampler, steps and guidance it recommends; flags override each of them, "
        "--stg-blocks replaces its STG terms and --stg-scale 0 switches them off.",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a model directory (config.json + model.safetensors), a run folder, or the name "
        f"of a shipped model ({', '.join(available())}; default: {DEFAULT_MODEL}); "
        "an existing path wins over a name",
    )
    p.add_argument(
        "--class",
        dest="classes",
        type=int,
        action="append",
        default=None,
        help="class label; repeat for one per sample (default: 0, 1, 2, ...)",
    )
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"sampling steps (respaced; default: sampling.json's, else {SAMPLE_DEFAULTS['steps']})",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help=f"default: sampling.json's, else {SAMPLE_DEFAULTS['sampler']}",
    )
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of mp4,gif,png")
    p.add_argument("--out", default="outputs/samples", help="output folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="frames per video (default: the model's); more than the model's window samples "
        "window by window, each conditioned on the previous one's last --overlap frames",
    )
    p.add_argument(
        "--overlap", type=int, default=None, help="long videos: frames shared by windows (W/4)"
    )
    p.add_argument(
        "--noise-reuse",
        action="store_true",
        help="long videos: re-noise the shared frames with the noise they were made from",
    )
    p.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="under torchrun: split each video's frames over all processes (Ulysses)",
    )
    add_guidance_arguments(p, from_model=True)  # filled in by apply_sampling_defaults
    _add_attention_arguments(p)
    p.set_defaults(func=_run_sample)


# What `slatte sample` uses where neither a flag nor the model's sampling.json says otherwise.
SAMPLE_DEFAULTS = {"sampler": "ddpm", "steps": 50, "cfg_scale": 1.0, "guidance_rescale": 0.0}


def apply_sampling_defaults(args: argparse.Namespace, recommended: dict) -> None:
    """Fill the sampling options the user left unset: from `recommended` (a sampling.json),
    then from SAMPLE_DEFAULTS. Its STG terms apply only when no --stg-blocks was given; then
    --stg-scale / --stg-strategy / --stg-adaptive given alone apply to them (--stg-scale 0
    drops them)."""
    for key, fallback in SAMPLE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, recommended.get(key, fallback))
    terms = recommended.get("stg", [])
    if args.stg_blocks or not terms:
        return
    args.stg_blocks = [term["blocks"] for term in terms]
    if not args.stg_scale:
        args.stg_scale = [float(term.get("scale", 1.0)) for term in terms]
    if not args.stg_strategy:
        args.stg_strategy = [term.get("strategy", DEFAULT_STRATEGY) for term in terms]
    if not args.stg_adaptive and any(term.get("adaptive") for term in terms):
        args.stg_adaptive = [
            (term.get("adaptive"), term.get("adaptive_schedule", "constant")) for term in terms
        ]


def _run_sample(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from .guidance.cli_args import guidance_from_args
    from .models import load_model
    from .ops.sequence_parallel import check_heads
    from .parallel import sequence_shard
    from .pretrained import pretrained_dir, sampling_defaults
    from .sampling import SampleOptions, generate, generate_and_save
    from .training.distributed import DistInfo, close_distributed, init_distributed

    model_dir = (
        resolve_model_dir(args.checkpoint) if args.checkpoint else pretrained_dir(DEFAULT_MODEL)
    )
    apply_sampling_defaults(args, sampling_defaults(model_dir))
    cfg_scale, stg_terms, rescale = guidance_from_args(args)  # flag mistakes before sampling
    sla = _sla_from_args(args) if args.attention and args.attention != "sdpa" else None
    info, device = (
        init_distributed(args.device) if args.sequence_parallel else (DistInfo(), args.device)
    )
    model = load_model(
        model_dir,
        device=device,
        dtype=DTYPES[args.dtype],
        attention_backend=args.attention,
        sla=sla,
    )
    opts = SampleOptions(
        num_samples=args.num_samples,
        labels=tuple(args.classes) if args.classes else None,
        steps=args.steps,
        sampler=args.sampler,
        eta=args.eta,
        cfg_scale=cfg_scale,
        stg=tuple(stg_terms),
        rescale=rescale,
        seed=args.seed,
        batch_size=args.batch_size,
        fps=args.fps,
        formats=tuple(f for f in args.formats.split(",") if f),
        num_frames=args.num_frames,
        overlap=args.overlap,
        noise_reuse=args.noise_reuse,
        progress=info.is_main,
    )
    check_heads(model.config.num_heads, info.world_size)  # before any sampling starts
    # Every process samples the same videos (same seed), each computing its share of the frames.
    with model.sequence_parallel(sequence_shard(dist.group.WORLD if info.enabled else None)):
        if info.is_main:
            for path in generate_and_save(model, opts, args.out):
                print(path)
        else:
            generate(model, opts)
    close_distributed()
    return 0


# --------------------------------------------------------------------------- bench
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time attention backends on this machine (JSON)")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", default="sdpa,sla", help=f"comma list of {BACKENDS}")
    p.add_argument("--backward", action="store_true", help="time forward+backward")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument("--repeats", type=int, default=10)
    _add_attention_arguments(p)
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import time_attention

    backends = [b for b in args.backends.split(",") if b]
    dtype = (
        DTYPES[args.dtype]
        if args.dtype
        else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    )
    result = time_attention(
        backends,
        batch=args.batch,
        heads=args.heads,
        seq_len=args.seq_len,
        head_dim=args.head_dim,
        sla=_sla_from_args(args),
        device=args.device,
        dtype=dtype,
        backward=args.backward,
        repeats=args.repeats,
    )
    print(json.dumps(result, indent=2))
    return 0


# --------------------------------------------------------------------------- entry
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slatte", description="Fast video diffusion transformers: train, sample, benchmark."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_bench(sub)
    add_eval_parser(sub)
    add_convert_parser(sub)
    add_finetune_parser(sub)
    add_stg_search_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .training.trainer import TrainingError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, TrainingError) as err:
        if os.environ.get("SLATTE_DEBUG"):
            raise
        print(f"slatte {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
