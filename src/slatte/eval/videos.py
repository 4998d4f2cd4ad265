"""Bringing any set of videos into the form the metrics read, and reading folders of videos.

Metrics take videos as a float tensor (B, F, C, H, W) in [-1, 1] (the layout slatte's sampler
and datasets use), C in {1, 3}, or a folder of video files. The digit networks read grey frames
of ``EVAL_SIZE`` pixels, so every video is converted to grey and resized to that first; a video
of another size is resized (short side) and centre-cropped, as ``VideoFolder`` does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from slatte.data.video_folder import DEFAULT_EXTENSIONS, resize_center_crop
from slatte.data.video_io import read_video

__all__ = [
    "EVAL_SIZE",
    "check_videos",
    "label_from_filename",
    "list_video_files",
    "load_video_folder",
    "to_eval_frames",
]

# Frame side (pixels) the shipped digit classifier and video encoder were trained at.
EVAL_SIZE = 32
# BT.601 luma, the RGB -> grey weights slatte's VideoFolder uses too.
_LUMA = (0.299, 0.587, 0.114)
_CLASS_IN_NAME = re.compile(r"class(\d+)")


def check_videos(videos: torch.Tensor) -> torch.Tensor:
    """Validate a batch of videos (B, F, C, H, W), C in {1, 3}; returns it as float32."""
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5:
        shape = tuple(videos.shape) if hasattr(videos, "shape") else type(videos).__name__
        raise ValueError(f"videos must be a tensor (B, F, C, H, W) in [-1, 1], got {shape}")
    if videos.shape[2] not in (1, 3):
        raise ValueError(f"videos must have C = 1 or 3 channels, got shape {tuple(videos.shape)}")
    if videos.shape[0] < 1 or videos.shape[1] < 1:
        raise ValueError(f"videos need B >= 1 and F >= 1, got shape {tuple(videos.shape)}")
    return videos.float()


def to_eval_frames(videos: torch.Tensor, size: int = EVAL_SIZE) -> torch.Tensor:
    """(B, F, C, H, W) in [-1, 1] -> grey (B, F, 1, size, size) in [-1, 1]."""
    videos = check_videos(videos)
    if videos.shape[2] == 3:
        luma = videos.new_tensor(_LUMA).view(1, 1, 3, 1, 1)
        videos = (videos * luma).sum(dim=2, keepdim=True)
    b, f = videos.shape[:2]
    if videos.shape[-2:] != (size, size):
        frames = resize_center_crop(videos.flatten(0, 1), size)  # (B·F, 1, size, size)
        videos = frames.reshape(b, f, 1, size, size)
    return videos.clamp(-1.0, 1.0)


def list_video_files(
    root: str | Path, extensions: Sequence[str] = DEFAULT_EXTENSIONS
) -> list[Path]:
    """Video files under ``root`` (recursive), sorted by relative path.

    Copies of one video in several formats (``slatte sample`` writes ``sample_00_class3.mp4``
    and ``.gif``) count once: of files that differ only in suffix, the one whose suffix comes
    first in ``extensions`` is kept (mp4 before gif: GIF merges repeated frames).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist or is not a folder")
    suffixes = tuple(e.lower() for e in extensions)
    chosen: dict[str, Path] = {}
    for path in root.rglob("*"):
        if not (path.is_file() and path.suffix.lower() in suffixes):
            continue
        key = path.relative_to(root).with_suffix("").as_posix()
        rank = suffixes.index(path.suffix.lower())
        if key not in chosen or rank < suffixes.index(chosen[key].suffix.lower()):
            chosen[key] = path
    if not chosen:
        raise ValueError(f"no video files under {root} (looked for {', '.join(suffixes)})")
    return sorted(chosen.values(), key=lambda p: p.relative_to(root).as_posix())


def load_video_folder(
    root: str | Path, *, num_frames: int | None = None
) -> tuple[torch.Tensor, list[Path]]:
    """Read every video under ``root`` into one (B, F, 3, H, W) float tensor in [-1, 1].

    All videos keep their first ``num_frames`` frames (default: as many as the shortest video
    has); a video shorter than ``num_frames`` is an error naming it. Frames are made square:
    resized (short side) and centre-cropped to the first video's short side, so a folder may mix
    sizes. Returns the videos and the files.
    """
    files = list_video_files(root)
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    clips = [read_video(path, max_frames=num_frames) for path in files]
    shortest = min(len(c) for c in clips)
    if num_frames is not None and shortest < num_frames:
        short = [str(p) for p, c in zip(files, clips, strict=True) if len(c) < num_frames]
        raise ValueError(
            f"{len(short)} video(s) have fewer than num_frames={num_frames} frames: "
            f"{', '.join(short[:5])}"
        )
    frames = num_frames or shortest
    side = min(clips[0].shape[1:3])
    videos = []
    for clip in clips:
        video = torch.from_numpy(np.ascontiguousarray(clip[:frames])).permute(0, 3, 1, 2)
        video = video.float().div_(127.5).sub_(1.0)  # (F, 3, H, W) in [-1, 1]
        if video.shape[-2:] != (side, side):
            video = resize_center_crop(video, side)
        videos.append(video)
    return torch.stack(videos), files


def label_from_filename(path: str | Path) -> int:
    """The class in a name such as ``sample_03_class7.mp4`` (slatte's sampler writes these)."""
    match = _CLASS_IN_NAME.search(Path(path).stem)
    if match is None:
        raise ValueError(
            f"cannot read a class label from the file name {Path(path).name!r}: expected "
            "'class<N>' in the name, e.g. sample_00_class3.mp4"
        )
    return int(match.group(1))
