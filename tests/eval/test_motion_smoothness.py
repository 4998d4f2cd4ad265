import pytest
import torch

from slatte.data import MovingDigits
from slatte.eval.motion import centre_of_mass, motion_smoothness


@pytest.fixture(scope="module")
def real():
    data = MovingDigits("test", length=48, seed=7, speed=(1.0, 4.0))
    return torch.stack([data[i]["video"] for i in range(len(data))])


def _jitter(videos, amplitude, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = videos.clone()
    for b in range(videos.shape[0]):
        for f in range(videos.shape[1]):
            dy, dx = torch.randint(-amplitude, amplitude + 1, (2,), generator=gen).tolist()
            out[b, f] = torch.roll(videos[b, f], (dy, dx), dims=(-2, -1))
    return out


def test_centre_of_mass_of_a_moving_square_is_exact():
    video = -torch.ones(1, 5, 1, 32, 32)
    for t in range(5):
        video[0, t, 0, 10 : 10 + 3, 2 + 4 * t : 2 + 4 * t + 3] = 1.0
    track = centre_of_mass(video)[0]
    expected = torch.tensor([[11.0, 3.0 + 4 * t] for t in range(5)])
    torch.testing.assert_close(track, expected)


def test_real_moving_digits_are_smooth_and_jittered_ones_are_not(real):
    smooth = motion_smoothness(real)
    assert smooth.smoothness >= 0.98, smooth
    assert min(smooth.per_video) >= 0.9
    for amplitude in (1, 2):
        jittered = motion_smoothness(_jitter(real, amplitude))
        assert jittered.smoothness < 0.8, (amplitude, jittered.smoothness)
        assert jittered.residual_px > 2 * smooth.residual_px


def test_shuffled_frames_are_not_smooth_but_a_still_digit_is(real):
    order = torch.randperm(real.shape[1], generator=torch.Generator().manual_seed(0))
    assert motion_smoothness(real[:, order]).smoothness < 0.7
    still = real[:, :1].expand_as(real)
    assert motion_smoothness(still).smoothness == 1.0


def test_size_does_not_change_the_scale(real):
    # The same motion drawn at 64 px scores like at 32 px: positions are measured at 32 px.
    big = torch.nn.functional.interpolate(real.flatten(0, 1), scale_factor=2, mode="nearest")
    big = big.reshape(*real.shape[:3], 64, 64)
    assert motion_smoothness(big).smoothness >= 0.98


def test_bad_input():
    with pytest.raises(ValueError, match=">= 3 frames"):
        motion_smoothness(torch.zeros(1, 2, 1, 32, 32))
    with pytest.raises(ValueError, match="tolerance"):
        motion_smoothness(torch.zeros(1, 4, 1, 32, 32), tolerance=-1)
