"""Datasets (moving digits, video folders), video file I/O and the latent space codecs."""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".latents": ("CachedLatents", "LatentCodec", "PixelSpace", "VAELatents"),
        ".moving_digits": ("MovingDigits", "Trajectory"),
        ".video_folder": ("VideoFolder",),
        ".video_io": (
            "VideoDecodeError",
            "read_video",
            "to_uint8_frames",
            "write_frame_grid",
            "write_video",
        ),
    },
)
