import pytest
import torch

from slatte.data.latents import CachedLatents, LatentCodec, PixelSpace, VAELatents
from slatte.data.moving_digits import MovingDigits

SCALING = 0.3  # tests/conftest.py: TINY_VAE_SCALING


@pytest.fixture()
def vae_dir(tiny_vae_dir):
    return tiny_vae_dir


def test_pixel_space_is_identity():
    codec = PixelSpace()
    assert isinstance(codec, LatentCodec)
    for channels in (1, 3):
        video = torch.randn(2, 3, channels, 8, 8)
        assert codec.encode(video) is video and codec.decode(video) is video
        assert codec.channels(channels) == channels
    assert codec.downsample == 1
    with pytest.raises(ValueError, match=r"\(B, F, C, H, W\)"):
        codec.encode(torch.randn(3, 1, 8, 8))


def test_vae_scaling_applied_once_each_way(vae_dir):
    codec = VAELatents(vae_dir, device="cpu", dtype=torch.float32)
    assert isinstance(codec, LatentCodec)
    assert codec.channels(1) == 4 and codec.downsample == 2
    assert codec.scaling_factor == SCALING
    video = torch.rand(2, 3, 1, 16, 16) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, 3, 4, 8, 8)
    with torch.no_grad():
        frames = video.reshape(6, 1, 16, 16)
        raw = codec.vae.encode(frames).latent_dist.mode()
        torch.testing.assert_close(latents.reshape(6, 4, 8, 8), raw * SCALING)
        decoded_raw = codec.vae.decode(raw).sample.clamp(-1, 1)
    decoded = codec.decode(latents)
    assert decoded.shape == video.shape
    torch.testing.assert_close(decoded.reshape(6, 1, 16, 16), decoded_raw, atol=1e-5, rtol=1e-5)
    # Frames are independent: encoding a batch in chunks gives the same latents.
    small_batches = VAELatents(vae_dir, device="cpu", batch_size=4)
    torch.testing.assert_close(small_batches.encode(video), latents, atol=1e-5, rtol=1e-5)


def test_vae_errors(tmp_path, vae_dir):
    pytest.importorskip("diffusers")
    with pytest.raises(FileNotFoundError, match="no VAE"):
        VAELatents(tmp_path / "nowhere", device="cpu")
    codec = VAELatents(vae_dir, device="cpu")
    with pytest.raises(ValueError, match="C=1"):
        codec.encode(torch.zeros(1, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="3 channel"):
        codec.channels(3)
    with pytest.raises(ValueError, match="multiples"):
        codec.encode(torch.zeros(1, 2, 1, 15, 16))


def test_pipeline_folder_with_vae_subfolder(tmp_path, vae_dir):
    pytest.importorskip("diffusers")
    pipeline = tmp_path / "pipe"
    (pipeline / "vae").mkdir(parents=True)
    for f in vae_dir.iterdir():
        (pipeline / "vae" / f.name).write_bytes(f.read_bytes())
    assert VAELatents(pipeline, device="cpu").latent_channels == 4


class _CountingCodec(PixelSpace):
    def __init__(self):
        self.calls = 0

    def encode(self, video):
        self.calls += 1
        return super().encode(video) * 2


def test_cached_latents(tmp_path):
    dataset = MovingDigits(num_frames=3, size=16, digit_size=8, length=4)
    codec = _CountingCodec()
    cached = CachedLatents(dataset, codec, tmp_path / "cache")
    first = [cached[i] for i in range(4)]
    assert codec.calls == 4
    again = CachedLatents(dataset, codec, tmp_path / "cache")
    for i in range(4):
        item = again[i]
        torch.testing.assert_close(item["video"], first[i]["video"], rtol=0, atol=0)
        torch.testing.assert_close(item["video"], dataset[i]["video"] * 2, rtol=0, atol=0)
        assert item["label"] == dataset[i]["label"]
    assert codec.calls == 4  # read back, not encoded again
    other = MovingDigits(num_frames=3, size=16, digit_size=8, length=4, seed=9)
    with pytest.raises(ValueError, match="cache"):
        CachedLatents(other, codec, tmp_path / "cache")
