"""From a trained model to video files: guidance, sampler, decoding, writing mp4 / gif / png."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import LatentCodec, PixelSpace, write_frame_grid, write_video
from .diffusion import SAMPLERS, create_diffusion
from .diffusion.long_video import sample_long_video, seam_frames, seam_report, window_count
from .guidance import guided_model_fn
from .memory import check_fits, long_video_bytes, output_bytes
from .models import VideoDiT
from .sampling_options import FORMATS, SampleOptions


def resolve_labels(model: VideoDiT, opts: SampleOptions) -> torch.Tensor | None:
    """The class label of each sample, validated against the model's classes."""
    num_classes = model.config.num_classes
    if num_classes == 0:
        if opts.labels:
            raise ValueError("this model is unconditional (num_classes=0): give no --class")
        return None
    labels = (
        list(opts.labels) if opts.labels else [i % num_classes for i in range(opts.num_samples)]
    )
    if len(labels) == 1:
        labels = labels * opts.num_samples
    if len(labels) != opts.num_samples:
        raise ValueError(
            f"{len(labels)} class labels given for {opts.num_samples} samples: give one label "
            "or one per sample"
        )
    for label in labels:
        if not 0 <= label < num_classes:
            raise ValueError(
                f"class {label} is out of range: this model has classes 0..{num_classes - 1}"
            )
    return torch.tensor(labels, dtype=torch.long)


def check_memory(
    model: VideoDiT, opts: SampleOptions, codec: LatentCodec, *, formats: tuple[str, ...]
) -> None:
    """Refuse, before sampling, what cannot fit: the decoded videos on the host (and their
    writing in `formats`), and a long video's windows on the model's device."""
    cfg = model.config
    long_video = long_video_plan(model, opts)
    frames = (
        long_video[0]
        if long_video is not None
        else min(opts.num_frames or cfg.num_frames, cfg.num_frames)
    )
    what = f"sampling {opts.num_samples} videos of {frames:,} frames"
    if long_video is not None:
        total, window, overlap = long_video
        windows = window_count(total, window, overlap)
        # The model sees at most its window of frames at once; longer videos chain windows.
        what += f" ({windows:,} windows of the model's {window} frames, overlap {overlap})"
        check_fits(
            long_video_bytes(cfg, min(opts.batch_size, opts.num_samples), total, windows),
            next(model.parameters()).device,
            what,
            "ask for fewer --num-frames or a smaller --batch-size",
        )
    # One frame decoded gives the codec's output channels and size (a VAE's is not the model's).
    probe = codec.decode(torch.zeros(1, 1, cfg.in_channels, cfg.input_size, cfg.input_size))
    check_fits(
        output_bytes(opts.num_samples, frames, tuple(probe.shape[2:]), formats),
        torch.device("cpu"),
        what + (f", written as {','.join(formats)}" if formats else ""),
        "ask for fewer --num-samples or --num-frames"
        + (" (the png grid holds every video at once: leave out png)" if "png" in formats else ""),
    )


def long_video_plan(model: VideoDiT, opts: SampleOptions) -> tuple[int, int, int] | None:
    """(total frames, window, overlap) when `opts` asks for more frames than the model's window,
    else None."""
    window = model.config.num_frames
    total = opts.num_frames if opts.num_frames is not None else window
    if total <= window:
        return None
    overlap = opts.overlap if opts.overlap is not None else max(1, window // 4)
    if overlap >= window:
        raise ValueError(
            f"overlap must be smaller than the model's window of {window} frames, got {overlap}"
        )
    return total, window, overlap


@torch.no_grad()
def generate(
    model: VideoDiT, opts: SampleOptions, *, codec=None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample videos (N, F, C, H, W) in [-1, 1] (decoded by `codec`) and their labels.

    The initial noise and every sampler step draw from one CPU generator seeded with
    `opts.seed`, so a seed gives the same videos on any device.
    """
    codec = codec if codec is not None else PixelSpace()
    long_video = long_video_plan(model, opts)
    check_memory(model, opts, codec, formats=())
    labels = resolve_labels(model, opts)
    for term in opts.stg:
        term.validate_for(model)
    cfg = model.config
    device = next(model.parameters()).device
    sampler = SAMPLERS[opts.sampler]
    diffusion = create_diffusion(sampler.respacing(opts.steps), learn_sigma=cfg.learn_sigma)
    sampler_options = {"eta": opts.eta} if sampler.takes_eta else {}
    gen = torch.Generator().manual_seed(opts.seed)
    model.eval()
    videos = []
    batches = range(0, opts.num_samples, opts.batch_size)
    for start in tqdm(batches, desc="sample", disable=not opts.progress or len(batches) == 1):
        n = min(opts.batch_size, opts.num_samples - start)
        y = labels[start : start + n].to(device) if labels is not None else None
        model_fn = guided_model_fn(
            model, y=y, cfg_scale=opts.cfg_scale, stg=opts.stg, rescale=opts.rescale
        )
        frames = min(opts.num_frames or cfg.num_frames, cfg.num_frames)
        shape = (n, frames, cfg.in_channels, cfg.input_size, cfg.input_size)

        def sample_window(noise, step_callback=None, model_fn=model_fn, shape=shape):
            return sampler.sample(
                diffusion,
                model_fn,
                shape,
                noise=noise,
                generator=gen,
                # A long video shows one bar over its windows instead of one per window.
                progress=opts.progress and long_video is None,
                step_callback=step_callback,
                **sampler_options,
            )

        if long_video is None:
            x0 = sample_window(torch.randn(shape, generator=gen).to(device))
        else:
            total, _, overlap = long_video
            x0 = sample_long_video(
                sample_window,
                diffusion,
                shape,
                total_frames=total,
                overlap=overlap,
                generator=gen,
                noise_reuse=opts.noise_reuse,
                device=device,
                progress=opts.progress,
            ).video
        videos.append(codec.decode(x0).clamp(-1, 1).float().cpu())
    return torch.cat(videos), labels


def generate_and_save(
    model: VideoDiT, opts: SampleOptions, out_dir: str | Path, *, codec=None
) -> list[Path]:
    """Generate and write each sample as `sample_XX_classY.{mp4,gif}` plus one PNG grid; a long
    video also gets `seams.json`, how much it jumps where windows meet (`seam_report`)."""
    check_memory(model, opts, codec if codec is not None else PixelSpace(), formats=opts.formats)
    videos, labels = generate(model, opts, codec=codec)
    paths = save_videos(videos, labels, out_dir, fps=opts.fps, formats=opts.formats)
    long_video = long_video_plan(model, opts)
    if long_video is not None:
        total, window, overlap = long_video
        report = {
            "num_frames": total,
            "window": window,
            "overlap": overlap,
            "seams": seam_frames(total, window, overlap),
            **seam_report(videos, seam_frames(total, window, overlap)),
        }
        path = Path(out_dir) / "seams.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        paths.append(path)
    return paths


def save_videos(
    videos: torch.Tensor,
    labels: torch.Tensor | None,
    out_dir: str | Path,
    *,
    fps: int = 8,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, video in enumerate(videos):
        stem = f"sample_{i:02d}" + (f"_class{int(labels[i])}" if labels is not None else "")
        for fmt in ("mp4", "gif"):
            if fmt in formats:
                paths.append(write_video(out_dir / f"{stem}.{fmt}", video, fps=fps))
    if "png" in formats:
        paths.append(write_frame_grid(out_dir / "frames.png", videos))
    return paths
