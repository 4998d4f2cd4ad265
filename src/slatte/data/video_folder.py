"""A dataset of the video files in a directory, for training on your own videos."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from slatte.data.video_io import VideoDecodeError, read_video

__all__ = ["VideoFolder"]

DEFAULT_EXTENSIONS = (".mp4", ".gif", ".webm", ".avi", ".mov")
# ITU-R BT.601 luma, the weights PIL and most decoders use for RGB → grey.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (F, C, H, W) so the short side is ``size``, then crop the centre size × size."""
    _, _, h, w = frames.shape
    scale = size / min(h, w)
    # max(size, ·) guards the short side against rounding below the crop.
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        frames = F.interpolate(
            frames, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return frames[:, :, top : top + size, left : left + size]


class VideoFolder(Dataset):
    """Every video file under ``root`` (recursive, sorted by relative path) as fixed-size clips.

    Items are ``{"video": (num_frames, channels, size, size) float32 in [-1, 1], "label": int}``.
    A clip takes ``num_frames`` frames, ``frame_interval`` apart, from the first frame (or from a
    random start when ``random_start``; the start is a pure function of ``(seed, index)``, so
    every pass, resumed run and data-loader worker sees the same clip of a video). Frames are resized so the short side is ``size`` and centre-cropped.
    ``channels=1`` converts to grey (BT.601 luma).

    Labels: if ``root/labels_file`` exists it must map each video's path relative to ``root``
    (with ``/`` separators) to an int ≥ 0; every video must have one, and every entry must name
    a video that is there. Without the file every label is -1.

    A video shorter than ``(num_frames - 1) * frame_interval + 1`` frames is an error naming the
    file, its length and what is needed (clips are never looped or padded silently).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        num_frames: int,
        size: int,
        frame_interval: int = 1,
        channels: int = 3,
        labels_file: str = "labels.json",
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        random_start: bool = False,
        seed: int = 0,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if frame_interval < 1:
            raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video folder {self.root} does not exist or is not a folder")
        self.num_frames = num_frames
        self.size = size
        self.frame_interval = frame_interval
        self.channels = channels
        self.random_start = random_start
        self.seed = seed
        suffixes = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        self.files = sorted(
            (p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        if not self.files:
            raise ValueError(
                f"no video files under {self.root} (looked for extensions {', '.join(suffixes)})"
            )
        self.labels = self._read_labels(self.root / labels_file)

    def _read_labels(self, labels_path: Path) -> list[int]:
        if not labels_path.is_file():
            return [-1] * len(self.files)
        try:
            mapping = json.loads(labels_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read labels file {labels_path}: {error}") from error
        if not isinstance(mapping, dict):
            raise ValueError(
                f"labels file {labels_path} must hold a JSON object mapping relative paths to "
                f"ints, got {type(mapping).__name__}"
            )
        keys = {path.relative_to(self.root).as_posix() for path in self.files}
        strays = sorted(set(mapping) - keys)
        if strays:
            raise ValueError(
                f"labels file {labels_path} names {len(strays)} file(s) that are not videos "
                f"under {self.root}: {_first(strays)}"
            )
        labels = []
        missing = []
        for path in self.files:
            key = path.relative_to(self.root).as_posix()
            if key not in mapping:
                missing.append(key)
                continue
            value = mapping[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"label for {key!r} in {labels_path} must be an int >= 0, got {value!r}"
                )
            labels.append(value)
        if missing:
            raise ValueError(
                f"labels file {labels_path} has no label for {len(missing)} video(s): "
                f"{_first(missing)}"
            )
        return labels

    def check_files(self) -> None:
        """Decode the first frame of every file, so that a broken one stops training before
        it starts rather than when the loader reaches it; the error names the broken files."""
        broken = []
        for path in self.files:
            try:
                read_video(path, max_frames=1)
            except VideoDecodeError as error:
                broken.append(f"{path.relative_to(self.root).as_posix()} ({error})")
        if broken:
            raise ValueError(
                f"{len(broken)} of the {len(self.files)} videos under {self.root} cannot be "
                f"decoded: {_first(broken)}"
            )

    @property
    def num_classes(self) -> int:
        """1 + the largest label, or 0 when the folder is unlabelled."""
        return max(self.labels) + 1

    def __repr__(self) -> str:
        return (
            f"VideoFolder(root={str(self.root)!r}, num_frames={self.num_frames}, "
            f"size={self.size}, frame_interval={self.frame_interval}, channels={self.channels}, "
            f"random_start={self.random_start}, seed={self.seed}, files={len(self.files)})"
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        path = self.files[index]
        needed = (self.num_frames - 1) * self.frame_interval + 1
        # Without a random start only the first `needed` frames are decoded.
        frames = read_video(path, max_frames=None if self.random_start else needed)
        if len(frames) < needed:
            raise ValueError(
                f"video {path} has {len(frames)} frames; needs at least {needed} "
                f"(num_frames={self.num_frames}, frame_interval={self.frame_interval})"
            )
        start = 0
        if self.random_start:
            rng = np.random.default_rng([self.seed, index % len(self.files)])
            start = int(rng.integers(len(frames) - needed + 1))
        chosen = frames[start : start + needed : self.frame_interval]  # (F, H, W, 3) uint8
        video = torch.from_numpy(chosen).permute(0, 3, 1, 2).float().div_(255.0)
        if self.channels == 1:
            video = torch.einsum("fchw,c->fhw", video, _LUMA)[:, None]
        video = resize_center_crop(video, self.size).clamp_(0.0, 1.0)
        return {"video": video.mul(2.0).sub(1.0).contiguous(), "label": self.labels[index]}


def _first(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")
