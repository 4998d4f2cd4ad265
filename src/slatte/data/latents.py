"""The space the diffusion model works in: pixels, or the latents of a local diffusers VAE.

A codec maps videos (B, F, C, H, W) in [-1, 1] to the model's space and back. ``PixelSpace`` is
the identity. ``VAELatents`` runs a diffusers ``AutoencoderKL`` frame by frame, as Latte does,
and applies the VAE's ``scaling_factor`` exactly once each way (0.18215 for the SD VAEs).
``CachedLatents`` encodes each item of a dataset once and keeps it on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

__all__ = ["CachedLatents", "LatentCodec", "PixelSpace", "VAELatents"]


@runtime_checkable
class LatentCodec(Protocol):
    """Maps videos (B, F, C, H, W) to the model's space (B, F, c, H/d, W/d) and back."""

    downsample: int
    """Spatial downsampling factor d from pixels to the model's space."""

    def channels(self, data_channels: int) -> int:
        """Channels c of the model's space for data with ``data_channels`` channels."""
        ...

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def _check_5d(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    if x.ndim != 5 or (channels is not None and x.shape[2] != channels):
        wanted = "(B, F, C, H, W)" + (f" with C={channels}" if channels is not None else "")
        raise ValueError(f"{name} must be {wanted}, got shape {tuple(x.shape)}")


class PixelSpace:
    """The identity codec: the model works on the pixels, with the data's channels."""

    downsample = 1

    def __repr__(self) -> str:
        return "PixelSpace()"

    def channels(self, data_channels: int) -> int:
        return data_channels

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        _check_5d("video", video)
        return video

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_5d("latents", latents)
        return latents


class VAELatents:
    """Latents of a diffusers ``AutoencoderKL`` read from a local directory (never a hub).

    ``vae_dir`` holds the VAE's ``config.json`` and weights, or is a pipeline directory with a
    ``vae/`` subfolder. Frames are encoded independently, ``batch_size`` images at a time.
    ``encode`` returns ``(z - shift_factor) * scaling_factor`` (shift 0 unless the config sets
    one) with z the posterior's mode, or a sample of it when ``sample=True``; ``decode`` undoes
    exactly that and clamps to [-1, 1]. Outputs are float32 on ``device``.
    """

    def __init__(
        self,
        vae_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        sample: bool = False,
        batch_size: int = 32,
    ) -> None:
        try:
            from diffusers import AutoencoderKL
        except ImportError as error:
            raise ImportError(
                "VAELatents needs diffusers; install it with: pip install 'slatte[diffusers]'"
            ) from error
        vae_dir = Path(vae_dir)
        if (vae_dir / "vae" / "config.json").is_file() and not (vae_dir / "config.json").is_file():
            vae_dir = vae_dir / "vae"
        if not (vae_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"no VAE at {vae_dir}: expected a local diffusers AutoencoderKL directory "
                f"(config.json + weights, or a pipeline folder with vae/); hub names are not "
                f"downloaded"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.vae_dir = vae_dir.resolve()
        self.device = torch.device(device)
        self.dtype = dtype
        self.sample = sample
        self.batch_size = batch_size
        self.vae = AutoencoderKL.from_pretrained(
            self.vae_dir, local_files_only=True, torch_dtype=dtype
        )
        self.vae.to(self.device).eval().requires_grad_(False)
        config = self.vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.in_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)

    def channels(self, data_channels: int) -> int:
        """The VAE's latent channels; ``data_channels`` must be what the VAE encodes."""
        if data_channels != self.in_channels:
            raise ValueError(
                f"the VAE at {self.vae_dir} encodes {self.in_channels}-channel video, but the "
                f"data has {data_channels} channel(s); use {self.in_channels}-channel data"
            )
        return self.latent_channels

    def __repr__(self) -> str:
        return f"VAELatents(vae_dir={str(self.vae_dir)!r}, sample={self.sample})"

    def _per_frame(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Apply ``fn`` to (B·F, C, H, W) images in chunks and restore (B, F, ...)."""
        b, f = x.shape[:2]
        images = x.reshape(b * f, *x.shape[2:])  # (B·F, C, H, W)
        out = [
            fn(chunk.to(self.device, self.dtype)).float() for chunk in images.split(self.batch_size)
        ]
        out_images = torch.cat(out)
        return out_images.reshape(b, f, *out_images.shape[1:])  # (B, F, C', H', W')

    @torch.no_grad()
    def encode(
        self, video: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, F, C, H, W) in [-1, 1] → scaled latents (B, F, c, H/d, W/d)."""
        _check_5d("video", video, self.in_channels)
        h, w = video.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(
                f"video height and width must be multiples of the VAE's downsampling "
                f"{self.downsample}, got {h}×{w}"
            )

        def encode_images(images: torch.Tensor) -> torch.Tensor:
            dist = self.vae.encode(images).latent_dist
            z = dist.sample(generator) if self.sample else dist.mode()
            return (z - self.shift_factor) * self.scaling_factor

        return self._per_frame(encode_images, video)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, F, c, h, w) → video (B, F, C, h·d, w·d) in [-1, 1]."""
        _check_5d("latents", latents, self.latent_channels)

        def decode_images(z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(z / self.scaling_factor + self.shift_factor).sample

        return self._per_frame(decode_images, latents).clamp_(-1.0, 1.0)


class CachedLatents(Dataset):
    """``dataset`` with each video encoded by ``codec`` once and kept in ``cache_dir``.

    Items are ``{"video": latents (F, c, h, w), "label": int}``. The first access to an index
    encodes it and writes ``cache_dir/{index:08d}.safetensors`` (to a temporary name, then
    renamed, so concurrent workers and crashes never leave a torn file); later accesses read it.
    ``cache_dir/cache.json`` records ``repr(dataset)``, ``repr(codec)`` and the length; a cache
    made for something else is refused rather than silently reused.
    """

    def __init__(self, dataset: Dataset, codec: LatentCodec, cache_dir: str | Path) -> None:
        self.dataset = dataset
        self.codec = codec
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        identity = {"dataset": repr(dataset), "codec": repr(codec), "length": len(dataset)}
        meta_path = self.cache_dir / "cache.json"
        if meta_path.is_file():
            recorded = json.loads(meta_path.read_text())
            if recorded != identity:
                raise ValueError(
                    f"latent cache {self.cache_dir} was made for {recorded}, not for "
                    f"{identity}; use another cache_dir or delete this one"
                )
        else:
            _atomic_write_text(meta_path, json.dumps(identity, indent=2))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        from safetensors.torch import load_file, save_file

        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of length {len(self)}")
        path = self.cache_dir / f"{index:08d}.safetensors"
        if path.is_file():
            stored = load_file(path)
            return {"video": stored["latents"], "label": int(stored["label"])}
        item = self.dataset[index]
        latents = self.codec.encode(item["video"][None])[0].float().cpu().contiguous()
        label = torch.tensor(int(item["label"]), dtype=torch.int64)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({"latents": latents, "label": label}, tmp)
        os.replace(tmp, path)
        return {"video": latents, "label": int(label)}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
