"""Datasets (moving digits, video folders), video file I/O and the latent space codecs."""

from slatte.data.latents import CachedLatents, LatentCodec, PixelSpace, VAELatents
from slatte.data.moving_digits import MovingDigits, Trajectory
from slatte.data.video_folder import VideoFolder
from slatte.data.video_io import (
    VideoDecodeError,
    read_video,
    to_uint8_frames,
    write_frame_grid,
    write_video,
)

__all__ = [
    "CachedLatents",
    "LatentCodec",
    "MovingDigits",
    "PixelSpace",
    "Trajectory",
    "VAELatents",
    "VideoDecodeError",
    "VideoFolder",
    "read_video",
    "to_uint8_frames",
    "write_frame_grid",
    "write_video",
]
