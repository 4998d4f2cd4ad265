"""Reading and writing video files: mp4 (H.264), gif and png frame strips.

Videos in slatte are float tensors (F, C, H, W) in [-1, 1]; files hold uint8 (F, H, W, C) RGB.
Decoding uses PyAV when it is installed (fast, seeks nothing, stops early) and imageio otherwise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "VideoDecodeError",
    "read_video",
    "to_uint8_frames",
    "write_frame_grid",
    "write_video",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# PyAV is optional (`slatte[video]`); imageio + imageio-ffmpeg is the fallback decoder.
_HAVE_AV = importlib.util.find_spec("av") is not None


class VideoDecodeError(ValueError):
    """A file could not be decoded as a video (corrupt, truncated, or not a video)."""


def to_uint8_frames(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """Convert a video to uint8 RGB frames (F, H, W, 3).

    Accepts a float (F, C, H, W) tensor/array in [-1, 1] with C in {1, 3} (values outside are
    clipped), or uint8 frames (F, H, W, C) with C in {1, 3}.
    """
    array = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.ndim != 4:
        raise ValueError(
            f"a video must be (F, C, H, W) float in [-1, 1] or (F, H, W, C) uint8, "
            f"got shape {tuple(array.shape)}"
        )
    if array.dtype == np.uint8:
        frames = array
    elif np.issubdtype(array.dtype, np.floating):
        if array.shape[1] not in (1, 3):
            raise ValueError(
                f"a float video must be (F, C, H, W) with C in (1, 3), got shape {array.shape}"
            )
        scaled = np.rint((np.clip(array.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5)
        frames = scaled.astype(np.uint8).transpose(0, 2, 3, 1)
    else:
        raise ValueError(f"a video must be float or uint8, got dtype {array.dtype}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.shape[-1] != 3:
        raise ValueError(f"uint8 frames must be (F, H, W, C) with C in (1, 3), got {frames.shape}")
    if frames.shape[0] < 1:
        raise ValueError("a video needs at least one frame, got 0")
    return np.ascontiguousarray(frames)


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio.v2 as imageio

    # yuv420p (the pixel format every player accepts) subsamples chroma 2×2, so H.264 needs even
    # sides: pad odd ones by repeating the last row/column. macro_block_size=1 stops imageio
    # from rescaling sides that are not multiples of 16.
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=1,
        quality=None,
        # High quality so that a read-back is close to what was written, even at 16×16.
        output_params=["-crf", "12"],
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    # loop=0 loops forever. Pillow merges consecutive identical frames into one longer frame,
    # so a still clip reads back with fewer frames but plays for the same time.
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=max(int(round(1000.0 / fps)), 1),
        loop=0,
        optimize=False,
    )


def _grid(rows: list[np.ndarray], padding: int, pad_value: int) -> np.ndarray:
    """Tile rows of frames (each (F, H, W, 3) with equal F, H, W) into one (H', W', 3) image."""
    f, h, w, _ = rows[0].shape
    height = len(rows) * h + (len(rows) - 1) * padding
    width = f * w + (f - 1) * padding
    canvas = np.full((height, width, 3), pad_value, dtype=np.uint8)
    for r, frames in enumerate(rows):
        for c, frame in enumerate(frames):
            y, x = r * (h + padding), c * (w + padding)
            canvas[y : y + h, x : x + w] = frame
    return canvas


def write_frame_grid(
    path: str | Path,
    videos: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    *,
    padding: int = 0,
    pad_value: int = 255,
) -> Path:
    """Write a batch of videos as one PNG: one row per video, its frames side by side.

    ``videos`` is (B, F, C, H, W) float in [-1, 1], or a sequence of videos each accepted by
    :func:`to_uint8_frames` (all of one shape). The image is
    (B·H + (B-1)·padding) × (F·W + (F-1)·padding). Returns the path.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if isinstance(videos, torch.Tensor | np.ndarray) and videos.ndim == 5:
        videos = list(videos)
    rows = [to_uint8_frames(v) for v in videos]
    if not rows:
        raise ValueError("write_frame_grid needs at least one video, got none")
    shapes = {r.shape for r in rows}
    if len(shapes) != 1:
        raise ValueError(f"all videos in a grid must have one shape, got {sorted(shapes)}")
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_grid(rows, padding, pad_value)).save(path)
    return path


def write_video(path: str | Path, video: torch.Tensor | np.ndarray, *, fps: float = 8) -> Path:
    """Write one video; the format follows the suffix.

    ``video`` is (F, C, H, W) float in [-1, 1] or (F, H, W, C) uint8, C in {1, 3}.

    - ``.mp4``: H.264, yuv420p. Odd sides are padded by one edge pixel (yuv420p needs even
      sides), so an odd-sized video reads back one pixel larger there; even sides are kept.
    - ``.gif``: looping forever at ``fps``.
    - ``.png``: a strip of the frames side by side, (H, F·W).

    Parent directories are created. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    writers = {".mp4": _write_mp4, ".gif": _write_gif}
    if suffix not in (*writers, ".png"):
        raise ValueError(f"unsupported video suffix {suffix!r} in {path}; use .mp4, .gif or .png")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frames = to_uint8_frames(video)
    if suffix == ".png":
        return write_frame_grid(path, [frames])
    path.parent.mkdir(parents=True, exist_ok=True)
    writers[suffix](path, frames, fps)
    return path


def _iter_frames_av(path: Path) -> Iterator[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path} has no video stream")
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _iter_frames_imageio(path: Path) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    for frame in iio.imiter(path):
        frame = np.asarray(frame)
        if frame.ndim == 2:  # greyscale
            frame = np.repeat(frame[..., None], 3, axis=-1)
        yield np.ascontiguousarray(frame[..., :3]).astype(np.uint8, copy=False)


def read_video(path: str | Path, *, max_frames: int | None = None) -> np.ndarray:
    """Decode a video (or a single image) into uint8 RGB frames (F, H, W, 3).

    Stops after ``max_frames`` frames when given. Uses PyAV when installed, imageio otherwise.
    Raises :class:`FileNotFoundError` for a missing file and :class:`VideoDecodeError` (naming
    the file) when it cannot be decoded or holds no frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        frame_iter = _iter_frames_imageio(path)
    elif _HAVE_AV:
        frame_iter = _iter_frames_av(path)
    else:
        frame_iter = _iter_frames_imageio(path)
    frames: list[np.ndarray] = []
    try:
        for frame in frame_iter:
            frames.append(frame)
            if max_frames is not None and len(frames) >= max_frames:
                break
    except VideoDecodeError:
        raise
    except Exception as error:  # decoders raise many unrelated types for a bad file
        raise VideoDecodeError(f"cannot decode video {path}: {error}") from error
    finally:
        close = getattr(frame_iter, "close", None)
        if close is not None:
            close()
    if not frames:
        raise VideoDecodeError(f"video {path} contains no frames")
    return np.stack(frames)
