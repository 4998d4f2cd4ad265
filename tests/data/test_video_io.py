import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from slatte.data import video_io
from slatte.data.video_io import (
    VideoDecodeError,
    read_video,
    to_uint8_frames,
    write_frame_grid,
    write_video,
)


def _pattern(num_frames: int, channels: int, h: int, w: int) -> torch.Tensor:
    """A smooth moving gradient in [-1, 1]: easy to compress, so lossy codecs stay close."""
    y = torch.linspace(-1, 1, h)[:, None]
    x = torch.linspace(-1, 1, w)[None, :]
    frames = [torch.sin(2 * x + 0.5 * y + 0.3 * t).expand(h, w) for t in range(num_frames)]
    video = torch.stack(frames)[:, None] * 0.8  # (F, 1, H, W)
    return video.expand(num_frames, channels, h, w).contiguous()


@pytest.mark.parametrize(("suffix", "tolerance"), [(".mp4", 2.0), (".gif", 1.0)])
@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip(tmp_path, suffix, tolerance, channels):
    video = _pattern(7, channels, 32, 48)
    path = write_video(tmp_path / "deep" / "dir" / f"clip{suffix}", video, fps=8)
    assert path.is_file()
    frames = read_video(path)
    assert frames.shape == (7, 32, 48, 3) and frames.dtype == np.uint8
    # imageio (what users will read it with) sees the same frame count and size.
    assert iio.imread(path, index=None).shape[:3] == (7, 32, 48)
    expected = to_uint8_frames(video).astype(np.float32)
    assert np.abs(frames.astype(np.float32) - expected).mean() < tolerance


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_imageio_fallback_decodes_like_pyav(tmp_path, monkeypatch, suffix):
    path = write_video(tmp_path / f"clip{suffix}", _pattern(5, 3, 16, 24))
    with_av = read_video(path)
    monkeypatch.setattr(video_io, "_HAVE_AV", False)
    without_av = read_video(path)
    assert without_av.shape == with_av.shape
    assert np.abs(without_av.astype(int) - with_av.astype(int)).max() <= 2
    assert read_video(path, max_frames=3).shape[0] == 3


def test_mp4_small_and_odd_sizes(tmp_path):
    small = write_video(tmp_path / "small.mp4", _pattern(3, 3, 8, 8))
    assert read_video(small).shape == (3, 8, 8, 3)
    # yuv420p needs even sides: odd sides are padded by one pixel.
    odd = write_video(tmp_path / "odd.mp4", _pattern(4, 1, 15, 17))
    assert read_video(odd).shape == (4, 16, 18, 3)


def test_uint8_input_and_max_frames(tmp_path):
    frames = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    frames[:, :, :8] = 255
    frames[np.arange(5), 0, 0] = np.arange(5)[:, None] * 40  # make frames differ
    path = write_video(tmp_path / "u8.gif", frames)
    out = read_video(path)
    assert out.shape == (5, 16, 16, 3)
    assert out[:, 8, 2].min() > 240 and out[:, 8, 12].max() < 15
    assert read_video(path, max_frames=2).shape[0] == 2


def test_png_strip_and_grid(tmp_path):
    strip = write_video(tmp_path / "strip.png", _pattern(6, 1, 10, 12))
    assert Image.open(strip).size == (6 * 12, 10)  # PIL: (width, height)
    batch = torch.stack([_pattern(4, 3, 8, 8), -_pattern(4, 3, 8, 8)])
    grid = write_frame_grid(tmp_path / "grid.png", batch, padding=2)
    image = np.asarray(Image.open(grid))
    assert image.shape == (2 * 8 + 2, 4 * 8 + 3 * 2, 3)
    # Row 2, frame 3 sits at its tile.
    expected = to_uint8_frames(batch[1])[2]
    np.testing.assert_array_equal(image[10:18, 20:28], expected)


def test_float_conversion_is_exact_at_the_ends():
    video = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(4, 1, 1, 1)
    assert to_uint8_frames(video)[:, 0, 0, 0].tolist() == [0, 128, 255, 255]


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "x.avi2", torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"C in \(1, 3\)"):
        write_video(tmp_path / "x.mp4", torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", torch.zeros(3, 8, 8))
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video" * 50)
    with pytest.raises(VideoDecodeError, match="corrupt.mp4"):
        read_video(corrupt)
