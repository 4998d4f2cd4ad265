"""Long videos by window-by-window extension: plan, conditioning callback, sampling, report."""

from __future__ import annotations

import json

import pytest
import torch

from slatte.cli import main
from slatte.diffusion import create_diffusion
from slatte.diffusion.long_video import (
    ConditionOnFrames,
    sample_long_video,
    seam_frames,
    seam_report,
    window_count,
    window_starts,
)
from slatte.models import VideoDiT, model_config, save_model
from slatte.sampling import SampleOptions, generate


def tiny_model() -> VideoDiT:
    torch.manual_seed(0)
    model = VideoDiT(model_config("Latte-T/2", input_size=8, num_frames=4))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero everywhere, so the output depends on the input
        for param in model.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model.eval()


def test_window_plan_covers_the_video():
    assert window_starts(64, 16, 4) == [0, 12, 24, 36, 48]
    assert seam_frames(64, 16, 4) == [16, 28, 40, 52]
    assert window_starts(10, 4, 1) == [0, 3, 6]  # 4 + 3 + 3 frames
    assert window_starts(11, 4, 1) == [0, 3, 6, 9]  # the last window is trimmed
    assert window_starts(4, 4, 1) == [0]
    for total in (1, 4, 10, 11, 64, 1000):
        assert window_count(total, 4, 1) == len(window_starts(total, 4, 1))
    assert window_count(10**15, 16, 4) == 83_333_333_333_333  # counted, not listed
    with pytest.raises(ValueError, match="overlap must lie in"):
        window_starts(64, 16, 16)


def test_condition_callback_replaces_known_frames_noised_to_step_t():
    diffusion = create_diffusion("10")
    frames = torch.randn(2, 3, 1, 4, 4)
    x_t = torch.randn(2, 5, 1, 4, 4)
    t = torch.full((2,), 7)
    callback = ConditionOnFrames(diffusion, frames, generator=torch.Generator().manual_seed(4))
    out = callback(7, t, x_t)
    noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out[:, :3], diffusion.q_sample(frames, t, noise=noise))
    assert torch.equal(out[:, 3:], x_t[:, 3:])
    reused = ConditionOnFrames(diffusion, frames, reuse_noise=noise)
    torch.testing.assert_close(reused(7, t, x_t)[:, :3], out[:, :3])  # the same fixed noise


def _long(model, seed, *, noise_reuse=False):
    from slatte.diffusion import ddpm_sample

    diffusion = create_diffusion("3", learn_sigma=model.config.learn_sigma)
    y = torch.tensor([1, 2])

    def sample_window(noise, step_callback):
        return ddpm_sample(
            diffusion,
            lambda x, t: model(x, t, y),
            noise.shape,
            noise=noise,
            generator=gen,
            step_callback=step_callback,
        )

    gen = torch.Generator().manual_seed(seed)
    shape = (2, 4, 1, 8, 8)
    return sample_long_video(
        sample_window,
        diffusion,
        shape,
        total_frames=9,
        overlap=2,
        generator=gen,
        noise_reuse=noise_reuse,
    )


@pytest.mark.parametrize("noise_reuse", [False, True])
def test_long_video_length_overlap_and_determinism(noise_reuse):
    model = tiny_model()
    result = _long(model, seed=5, noise_reuse=noise_reuse)
    assert result.video.shape == (2, 9, 1, 8, 8)
    assert len(result.windows) == 4  # 4 + 2 + 2 + 2 (trimmed to 9) frames
    assert result.seams == (4, 6, 8)
    for before, after in zip(result.windows, result.windows[1:], strict=False):
        assert torch.equal(after[:, :2], before[:, -2:])  # overlap frames = conditioning frames
    stitched = torch.cat([result.windows[0]] + [w[:, 2:] for w in result.windows[1:]], dim=1)
    assert torch.equal(result.video, stitched[:, :9])
    again = _long(model, seed=5, noise_reuse=noise_reuse)
    assert torch.equal(again.video, result.video)
    assert not torch.allclose(_long(model, seed=6, noise_reuse=noise_reuse).video, result.video)


def test_noise_reuse_changes_the_new_frames():
    model = tiny_model()
    fresh, reused = _long(model, seed=5), _long(model, seed=5, noise_reuse=True)
    assert torch.equal(fresh.windows[0], reused.windows[0])  # the first window is unconditioned
    assert not torch.allclose(fresh.video[:, 4:], reused.video[:, 4:])


def test_seam_report_flags_a_jump_at_the_seam():
    ramp = torch.linspace(0, 1, 8)[None, :, None, None, None].expand(1, 8, 1, 2, 2)
    smooth = seam_report(ramp, [4])
    assert smooth["seam_jump_ratio"] == pytest.approx(1.0, rel=1e-5)
    jumped = ramp.clone()
    jumped[:, 4:] += 1.0
    assert seam_report(jumped, [4])["seam_jump_ratio"] > 5


def test_generate_long_video_and_cli_report(tmp_path):
    model = tiny_model()
    opts = SampleOptions(
        num_samples=1, steps=2, num_frames=7, overlap=1, progress=False, formats=("png",)
    )
    videos, _ = generate(model, opts)
    assert videos.shape == (1, 7, 1, 8, 8)
    assert torch.equal(generate(model, opts)[0], videos)

    save_model(model, tmp_path / "model")
    out = tmp_path / "samples"
    code = main(
        [
            "sample",
            "--checkpoint",
            str(tmp_path / "model"),
            "--num-samples",
            "1",
            "--steps",
            "2",
            "--num-frames",
            "10",
            "--overlap",
            "2",
            "--formats",
            "gif",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    report = json.loads((out / "seams.json").read_text())
    assert report["seams"] == [4, 6, 8] and report["num_frames"] == 10
    assert report["seam_jump_ratio"] > 0


def test_long_video_shows_its_windows_and_the_time_left(capsys):
    model = tiny_model()
    diffusion = create_diffusion("1", learn_sigma=model.config.learn_sigma)
    gen = torch.Generator().manual_seed(0)
    sample_long_video(
        lambda noise, callback: noise,  # the sampler itself is not what is shown
        diffusion,
        (1, 4, 1, 8, 8),
        total_frames=9,
        overlap=2,
        generator=gen,
        progress=True,
    )
    bar = capsys.readouterr().err
    assert "windows" in bar and "4/4" in bar and "<" in bar  # "[elapsed<left]"


def test_sampling_refuses_what_its_written_output_cannot_fit(monkeypatch, tmp_path):
    # 2 samples of 1000 frames of 1×8×8 in 333 windows: the windows and the video on the device
    # take 1.19 MB, the decoded floats 512 KB (two copies: 1.02 MB); the png grid adds every
    # video's RGB frames and the grid (768 KB): 1.28 MB. With 1.25 MB of memory all but the
    # written output fit.
    import slatte.memory
    from slatte.sampling import generate_and_save

    monkeypatch.setattr(slatte.memory, "device_memory", lambda device: 1_250_000)
    model = tiny_model()
    opts = dict(num_samples=2, steps=1, num_frames=1000, overlap=1, progress=False)
    with pytest.raises(ValueError) as refused:
        generate_and_save(model, SampleOptions(**opts, formats=("png",)), tmp_path / "out")
    message = str(refused.value)
    assert message.startswith(
        "sampling 2 videos of 1,000 frames (333 windows of the model's 4 frames, overlap 1), "
        "written as png needs at least"
    )
    assert "leave out png" in message
    assert not (tmp_path / "out").exists()  # refused before anything was sampled or written
    with pytest.raises(ValueError, match="smaller --batch-size"):  # the windows do not fit
        monkeypatch.setattr(slatte.memory, "device_memory", lambda device: 1_100_000)
        generate_and_save(model, SampleOptions(**opts, formats=("gif",)), tmp_path / "out")
