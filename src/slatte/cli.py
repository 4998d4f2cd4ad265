"""`slatte train | sample | bench | eval | convert | finetune`: the command line, mapping flags
onto the typed configs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import __version__
from .cli_checks import DEVICE_HELP, check_device, check_writable
from .flags import (
    add_flags,
    add_sla_arguments,
    attention_from_args,
    given,
    sla_from_args,
    sla_given,
)
from .pretrained import DEFAULT_MODEL, available

# Torch and everything that imports it are imported inside the command functions (and inside
# the parser of the one command given), so that `slatte --help` and `--version` answer at once.
DTYPE_NAMES = ("fp32", "bf16", "fp16")


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


# --------------------------------------------------------------------------- shared flags
def _add_attention_arguments(parser: argparse.ArgumentParser) -> None:
    from .ops.backends import BACKENDS

    parser.add_argument(
        "--attention",
        choices=BACKENDS,
        default=None,
        help="self-attention backend (default: the model's own)",
    )
    add_sla_arguments(parser)


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
TRAIN_DESCRIPTION = """\
Train a video DiT (default: Latte-digits on moving digits) into the run folder --out.

A run folder holds one run: train_config.json, metrics.jsonl, loss_curve.png, samples/ and
checkpoints/step_N/ with `latest` naming the newest. Nothing inside names the folder itself, so
a copied run folder is a run of its own. A folder that is not empty is refused unless --resume
(continue its run from its latest checkpoint, to its own --steps unless given) or --overwrite
(move it aside to FOLDER.old-TIMESTAMP and start anew). Paths inside the folder are recorded
relative to it and others absolute, so --resume works from any directory. Ctrl-C, or SIGTERM
(what torchrun sends its workers on Ctrl-C), saves a checkpoint at the current step and exits
with code 130; a second one stops at once."""


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .models.configs import BLOCK_PATTERNS
    from .training.config import TrainConfig

    p = sub.add_parser(
        "train", description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (only the length, logging, "
        "device and process layout may change)",
    )
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="move a previous run in --out aside (to OUT.old-TIMESTAMP) and start anew",
    )
    add_flags(p, TrainConfig)
    p.add_argument("--block-pattern", choices=BLOCK_PATTERNS, default=None)
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        type=_model_option,
        metavar="KEY=VALUE",
        help="override one field of the named model config, e.g. depth=6 (repeatable)",
    )
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


def _model_overrides(args: argparse.Namespace, model: str, init_from: str | None) -> dict:
    """Model config fields set by flags; --attention and --sla-* lay over the model's stored
    attention options (the init model's, else the named config's), field by field."""
    from .models.configs import MODEL_CONFIGS, VideoDiTConfig
    from .models.io import load_config
    from .ops.sla.config import SLAConfig

    overrides: dict[str, Any] = dict(args.model_option)
    if args.block_pattern:
        overrides["block_pattern"] = args.block_pattern
    if init_from is not None:
        stored = load_config(init_from)
        backend, sla = stored.attention_backend, stored.sla
    else:
        entry = {**MODEL_CONFIGS.get(model, {}), **overrides}
        default = {f.name: f for f in fields(VideoDiTConfig)}
        backend = entry.get("attention_backend", default["attention_backend"].default)
        sla = entry.get("sla") or default["sla"].default_factory()
        sla = SLAConfig.from_dict(sla) if isinstance(sla, dict) else sla
    new_backend, new_sla = attention_from_args(args, backend, sla)
    if (new_backend, new_sla) != (backend, sla):
        overrides.update(attention_backend=new_backend, sla=new_sla)
    return overrides


def _run_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train
    from .training.checkpoint import latest_checkpoint, load_training_state

    flags = given(args, TrainConfig)
    out = flags.pop("out_dir", TrainConfig.out_dir)
    flags["device"] = check_device(flags.get("device"))
    if args.resume:
        changed = [
            name
            for name, value in (
                ("--model-option", args.model_option),
                ("--block-pattern", args.block_pattern),
                ("--attention", args.attention),
            )
            if value
        ]
        if changed or sla_given(args):
            raise ValueError(
                f"a resumed run keeps its model: {', '.join(changed) or '--sla-*'} cannot change "
                "with --resume"
            )
        check_writable(out, folder=True)
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: {out} has no checkpoint to resume from")
        saved = TrainConfig.from_dict(json.loads(load_training_state(ckpt)["train_config"]))
        cfg = saved.resumed(out, flags)
    else:
        overrides = _model_overrides(
            args, flags.get("model", TrainConfig.model), flags.get("init_from")
        )
        cfg = TrainConfig(out_dir=out, model_overrides=overrides, **flags)
    check_writable(out, folder=True)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if result["checkpoint"] is not None:
        print(json.dumps(result, indent=2))
    return 0


# --------------------------------------------------------------------------- sample
def _add_sample(sub: argparse._SubParsersAction) -> None:
    from .diffusion.sampler_names import SAMPLER_NAMES
    from .guidance.cli_args import add_guidance_arguments
    from .sampling_options import FORMATS

    p = sub.add_parser(
        "sample",
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
        choices=SAMPLER_NAMES,
        default=None,
        help=f"default: sampling.json's, else {SAMPLE_DEFAULTS['sampler']}",
    )
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta, in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of mp4,gif,png")
    p.add_argument("--out", default="outputs/samples", help="output folder")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
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
    p.add_argument(
        "--lora",
        default=None,
        metavar="DIR",
        help="a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to "
        "apply to the model, e.g. a LoRA run's checkpoints/step_N/adapter",
    )
    p.add_argument(
        "--lora-scale", type=float, default=1.0, help="multiplies the adapter's update (0: off)"
    )
    add_guidance_arguments(p, from_model=True)  # unset ones filled by sampling_settings
    _add_attention_arguments(p)
    p.set_defaults(func=_run_sample)


# What `slatte sample` uses where neither a flag nor the model's sampling.json says otherwise.
SAMPLE_DEFAULTS = {"sampler": "ddpm", "steps": 50, "cfg_scale": 1.0, "guidance_rescale": 0.0}
_STG_FLAGS = ("stg_blocks", "stg_scale", "stg_strategy", "stg_window", "stg_adaptive")


def sampling_settings(args: argparse.Namespace, recommended: dict) -> dict[str, Any]:
    """The sampler, steps and guidance options: the flags given, then `recommended` (a
    sampling.json), then SAMPLE_DEFAULTS. Its STG terms apply only when no --stg-blocks was
    given; then --stg-scale / --stg-strategy / --stg-adaptive given alone apply to them
    (--stg-scale 0 drops them)."""
    from .guidance.config import DEFAULT_STRATEGY

    settings = {key: getattr(args, key) for key in (*SAMPLE_DEFAULTS, *_STG_FLAGS)}
    for key, fallback in SAMPLE_DEFAULTS.items():
        if settings[key] is None:
            settings[key] = recommended.get(key, fallback)
    terms = recommended.get("stg", [])
    if settings["stg_blocks"] or not terms:
        return settings
    settings["stg_blocks"] = [term["blocks"] for term in terms]
    if not settings["stg_scale"]:
        settings["stg_scale"] = [float(term.get("scale", 1.0)) for term in terms]
    if not settings["stg_strategy"]:
        settings["stg_strategy"] = [term.get("strategy", DEFAULT_STRATEGY) for term in terms]
    if not settings["stg_adaptive"] and any(term.get("adaptive") for term in terms):
        settings["stg_adaptive"] = [
            (term.get("adaptive"), term.get("adaptive_schedule", "constant")) for term in terms
        ]
    return settings


def _run_sample(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from .guidance.cli_args import guidance_from_options
    from .models import load_config, load_model
    from .ops.sequence_parallel import check_heads
    from .parallel import sequence_shard
    from .pretrained import pretrained_dir, sampling_defaults
    from .sampling import generate, generate_and_save
    from .sampling_options import SampleOptions
    from .training.distributed import DistInfo, close_distributed, init_distributed

    model_dir = (
        resolve_model_dir(args.checkpoint) if args.checkpoint else pretrained_dir(DEFAULT_MODEL)
    )
    settings = sampling_settings(args, sampling_defaults(model_dir))
    cfg_scale, stg_terms, rescale = guidance_from_options(settings)  # flag mistakes first
    if args.lora is None and args.lora_scale != 1.0:
        raise ValueError(f"--lora-scale {args.lora_scale} needs --lora DIR (an adapter folder)")
    stored = load_config(model_dir)
    backend, sla = attention_from_args(args, stored.attention_backend, stored.sla)
    check_writable(args.out, folder=True)
    device = check_device(args.device)
    info, device = init_distributed(device) if args.sequence_parallel else (DistInfo(), device)
    model = load_model(
        model_dir,
        device=device,
        dtype=_torch_dtype(args.dtype),
        attention_backend=backend,
        sla=sla,
    )
    if args.lora is not None:
        from .lora import load_adapter

        load_adapter(model, args.lora, scale=args.lora_scale).to(device, _torch_dtype(args.dtype))
    opts = SampleOptions(
        num_samples=args.num_samples,
        labels=tuple(args.classes) if args.classes else None,
        steps=settings["steps"],
        sampler=settings["sampler"],
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
def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .ops.backends import BACKENDS

    p = sub.add_parser(
        "bench",
        description="Time attention backends on random (B, H, N, D) inputs; prints progress, "
        "then JSON. On a CPU the 'sla' backend runs its PyTorch reference (the JSON says so).",
    )
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", default="sdpa,sla", help=f"comma list of {BACKENDS}")
    p.add_argument("--backward", action="store_true", help="time forward+backward")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument(
        "--dtype", choices=DTYPE_NAMES, default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument("--repeats", type=int, default=10)
    add_sla_arguments(p)
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import time_attention
    from .ops.sla.config import SLAConfig

    device = check_device(args.device)
    dtype = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    result = time_attention(
        [b.strip() for b in args.backends.split(",") if b.strip()],
        batch=args.batch,
        heads=args.heads,
        seq_len=args.seq_len,
        head_dim=args.head_dim,
        sla=sla_from_args(args, SLAConfig()),
        device=device,
        dtype=_torch_dtype(dtype),
        backward=args.backward,
        repeats=args.repeats,
        progress=True,
    )
    print(json.dumps(result, indent=2))
    return 0


# --------------------------------------------------------------------------- stg-search
STG_SEARCH_DESCRIPTION = """\
Choose a model's STG term and write it as sampling.json in --out (never into the model
directory): every (block, strategy) pair is ranked by a label-free signal on a few noised
inputs, the best --top are verified by sampling --num-videos each (for a digits model: digit
accuracy, then motion smoothness), and the chosen term is written with the model's other
recommended options. search.json beside it holds the ranking and the verification.

A diffusers pipeline directory (model_index.json) is searched on the transformer's inputs at
three steps of one pipeline run with the --prompts, without verification, and the chosen term is
written as an STGGuidance config, guider_config.json in --out (Wan2.2's two experts: each
searched on the steps it runs, the low-noise expert's choice in --out/guider_2/)."""

# The flags that only a diffusers pipeline takes.
_PIPELINE_ONLY = (
    "prompt",
    "negative_prompt",
    "cfg_scale_2",
    "height",
    "width",
    "num_frames",
    "dtype",
)


def _add_stg_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stg-search",
        description=STG_SEARCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        help="a model directory, a run folder, a shipped model's name or a diffusers pipeline "
        "directory (model_index.json)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for sampling.json (a diffusers pipeline: guider_config.json) and search.json",
    )
    p.add_argument(
        "--num-inputs", type=int, default=4, help="noised inputs (diffusers: videos) for the signal"
    )
    p.add_argument("--top", type=int, default=3, help="pairs verified by sampling")
    p.add_argument("--num-videos", type=int, default=5, help="videos per verified pair")
    p.add_argument(
        "--steps",
        type=int,
        default=10,
        help="sampling steps of the verification (diffusers: of the run that makes the inputs)",
    )
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="default: sampling.json's, else 4 (diffusers: 5)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    d = p.add_argument_group("diffusers pipelines")
    d.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a prompt of the inputs (required; repeat for several, cycled over --num-inputs)",
    )
    d.add_argument("--negative-prompt", default=None, help="default: the pipeline's")
    d.add_argument(
        "--cfg-scale-2", type=float, default=None,
        help="Wan2.2: the low-noise expert's (transformer_2) CFG scale; default: --cfg-scale",
    )  # fmt: skip
    d.add_argument("--height", type=int, default=None, help="default: the pipeline's")
    d.add_argument("--width", type=int, default=None, help="default: the pipeline's")
    d.add_argument("--num-frames", type=int, default=None, help="default: the pipeline's")
    d.add_argument(
        "--dtype", choices=DTYPE_NAMES, default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    p.set_defaults(func=_run_stg_search)


def _run_stg_search(args: argparse.Namespace) -> int:
    args.device = check_device(args.device)
    if (Path(args.model) / "model_index.json").is_file():
        from .integrations.diffusers_stg_search import run_diffusers_stg_search

        return run_diffusers_stg_search(args)
    given = [f"--{name.replace('_', '-')}" for name in _PIPELINE_ONLY if getattr(args, name)]
    if given:
        raise ValueError(
            f"{', '.join(given)} apply to a diffusers pipeline directory (model_index.json); "
            f"{args.model} is a slatte model"
        )
    from .models import load_model
    from .pretrained import sampling_defaults
    from .stg_search import stg_search, write_sampling_json

    model_dir = resolve_model_dir(args.model)
    model = load_model(model_dir, device=args.device).eval()
    result = stg_search(
        model,
        recommended=sampling_defaults(model_dir),
        num_inputs=args.num_inputs,
        top=args.top,
        num_videos=args.num_videos,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
    )
    path = write_sampling_json(result.sampling, args.out, model_dir)
    (Path(args.out) / "search.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(json.dumps({"chosen": result.to_dict()["chosen"], "seconds": result.seconds}))
    print(path)
    return 0


# --------------------------------------------------------------------------- entry
# The commands, each with its one-line summary and the function that adds its parser; only the
# parser of the command given is built, so the others' imports (torch) are not paid for.
def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .eval.cli import add_eval_parser

    add_eval_parser(sub)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from .integrations.cli import add_convert_parser

    add_convert_parser(sub)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    from .integrations.cli import add_finetune_parser

    add_finetune_parser(sub)


COMMANDS = {
    "train": ("train a video DiT (default: Latte-digits on moving digits)", _add_train),
    "sample": ("generate videos from a trained model (default: the shipped one)", _add_sample),
    "bench": ("time attention backends on this machine (JSON)", _add_bench),
    "eval": (
        "score a folder of videos: digit accuracy, Fréchet distances, motion (JSON)",
        _add_eval,
    ),
    "convert": (
        "convert a checkpoint of another codebase into a slatte model directory",
        _add_convert,
    ),
    "finetune": ("fine-tune a local diffusers Wan transformer with SLA attention", _add_finetune),
    "stg-search": (
        "choose STG blocks and strategies for a model and write them as its sampling.json "
        "(a diffusers pipeline: as an STGGuidance config)",
        _add_stg_search,
    ),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `slatte` parser, with the full parser of the command named in `argv` (every
    command's when `argv` is None)."""
    parser = argparse.ArgumentParser(
        prog="slatte", description="Fast video diffusion transformers: train, sample, benchmark."
    )
    parser.add_argument("--version", action="version", version=f"slatte {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (summary, add) in COMMANDS.items():
        if chosen is None or name == chosen:
            add(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    from .training.trainer import TrainingError, TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        print(f"slatte {args.command}: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"slatte {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, TrainingError) as err:
        if os.environ.get("SLATTE_DEBUG"):
            raise
        print(f"slatte {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
