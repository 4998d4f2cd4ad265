import json

import numpy as np
import pytest
import torch

from slatte.data.video_folder import VideoFolder, resize_center_crop
from slatte.data.video_io import VideoDecodeError, write_video


def _numbered_frames(num_frames: int, h: int, w: int) -> np.ndarray:
    """uint8 (F, H, W, 3): frame t is a flat colour whose red level encodes t."""
    frames = np.zeros((num_frames, h, w, 3), dtype=np.uint8)
    frames[..., 0] = (np.arange(num_frames) * 20)[:, None, None]
    frames[..., 1] = 100
    frames[..., 2] = 200
    return frames


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "videos"
    write_video(root / "b" / "clip.mp4", _numbered_frames(12, 48, 64))
    write_video(root / "a.gif", _numbered_frames(10, 40, 40))
    (root / "notes.txt").write_text("not a video")
    return root


def test_reads_mp4_and_gif(folder):
    ds = VideoFolder(folder, num_frames=4, size=32, frame_interval=3)
    assert [p.relative_to(folder).as_posix() for p in ds.files] == ["a.gif", "b/clip.mp4"]
    for i in range(len(ds)):
        item = ds[i]
        video = item["video"]
        assert video.shape == (4, 3, 32, 32) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1
        assert item["label"] == -1
        # Frames 0, 3, 6, 9 were taken: red level 20·t mapped to [-1, 1].
        red = video[:, 0].mean(dim=(1, 2))
        expected = torch.tensor([0, 60, 120, 180]) / 127.5 - 1
        torch.testing.assert_close(red, expected.float(), atol=0.05, rtol=0)
        torch.testing.assert_close(
            video[:, 2].mean(), torch.tensor(200 / 127.5 - 1), atol=0.05, rtol=0
        )
    assert ds.num_classes == 0


def test_grey_and_labels(folder):
    (folder / "labels.json").write_text(json.dumps({"a.gif": 3, "b/clip.mp4": 1}))
    ds = VideoFolder(folder, num_frames=2, size=16, channels=1)
    assert [ds[i]["label"] for i in range(2)] == [3, 1]
    assert ds.num_classes == 4
    video = ds[0]["video"]
    assert video.shape == (2, 1, 16, 16)
    luma = (0.299 * 0 + 0.587 * 100 + 0.114 * 200) / 127.5 - 1
    torch.testing.assert_close(video[0].mean(), torch.tensor(luma), atol=0.05, rtol=0)


def test_labels_must_cover_every_video(folder):
    (folder / "labels.json").write_text(json.dumps({"a.gif": 3}))
    with pytest.raises(ValueError, match="b/clip.mp4"):
        VideoFolder(folder, num_frames=2, size=16)
    (folder / "labels.json").write_text(json.dumps({"a.gif": 3, "b/clip.mp4": -2}))
    with pytest.raises(ValueError, match="int >= 0"):
        VideoFolder(folder, num_frames=2, size=16)
    (folder / "labels.json").write_text(json.dumps({"a.gif": 3, "b/clip.mp4": 1.5}))
    with pytest.raises(ValueError, match=r"'b/clip.mp4'.*int >= 0, got 1.5"):
        VideoFolder(folder, num_frames=2, size=16)


def test_labels_naming_files_that_are_not_there_are_an_error(folder):
    labels = {"a.gif": 3, "b/clip.mp4": 1, "gone.mp4": 7, "b/clip.gif": 2}
    (folder / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=r"names 2 file\(s\) .*: b/clip.gif, gone.mp4"):
        VideoFolder(folder, num_frames=2, size=16)


def test_check_files_names_every_video_that_cannot_be_decoded(folder):
    (folder / "c.gif").write_bytes(b"GIF89a truncated")
    (folder / "d.mp4").write_bytes(b"")
    ds = VideoFolder(folder, num_frames=2, size=16)  # cheap: nothing decoded yet
    with pytest.raises(ValueError, match=r"2 of the 4 videos .* c.gif .*d.mp4"):
        ds.check_files()
    (folder / "c.gif").unlink()
    (folder / "d.mp4").unlink()
    VideoFolder(folder, num_frames=2, size=16).check_files()


def test_random_start_is_deterministic(folder):
    kwargs = {"num_frames": 3, "size": 16, "random_start": True, "seed": 1}
    a, b = VideoFolder(folder, **kwargs), VideoFolder(folder, **kwargs)
    torch.testing.assert_close(a[1]["video"], b[1]["video"], rtol=0, atol=0)
    starts = set()
    for seed in range(8):
        c = VideoFolder(folder, **{**kwargs, "seed": seed})
        starts.add(round(float(c[1]["video"][0, 0].mean() + 1) * 127.5 / 20))
    assert len(starts) > 1 and max(starts) <= 12 - 3


def test_resize_center_crop_takes_the_middle():
    frames = torch.zeros(1, 1, 20, 40)
    frames[..., 10:30] = 1.0  # the central 20 columns
    out = resize_center_crop(frames, 10)
    assert out.shape == (1, 1, 10, 10)
    # The crop is the lit middle; only its edge columns catch some antialiasing blur.
    assert out[..., 1:-1].min() > 0.99 and out.min() > 0.8
    torch.testing.assert_close(out, out.flip(-1))


def test_errors(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="missing"):
        VideoFolder(tmp_path / "missing", num_frames=2, size=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no video files.*\.mp4"):
        VideoFolder(empty, num_frames=2, size=16)
    with pytest.raises(ValueError, match="has 10 frames; needs at least 13"):
        VideoFolder(folder, num_frames=5, size=16, frame_interval=3)[0]
    (folder / "zz_broken.mp4").write_bytes(b"\x00garbage" * 100)
    ds = VideoFolder(folder, num_frames=2, size=16)
    with pytest.raises(VideoDecodeError, match="zz_broken.mp4"):
        ds[2]
    with pytest.raises(ValueError, match="channels"):
        VideoFolder(folder, num_frames=2, size=16, channels=2)
