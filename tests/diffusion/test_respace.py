"""Respacing: which steps are kept, the derived schedule, and the timesteps the model sees."""

import pytest
import torch

from slatte.diffusion import (
    GaussianDiffusion,
    SpacedDiffusion,
    create_diffusion,
    linear_beta_schedule,
    space_timesteps,
)


def test_space_timesteps_forms():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "ddim4") == [0, 3, 6, 9]
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    assert space_timesteps(1000, 250) == kept
    assert space_timesteps(1000, "1000") == list(range(1000))
    # Two sections of 5: first keeps both ends of 0..4, second keeps 5..9 evenly.
    assert space_timesteps(10, [2, 3]) == [0, 4, 5, 7, 9]
    assert space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]
    assert space_timesteps(10, 1) == [0]


@pytest.mark.parametrize(
    "bad, match",
    [
        ("ddimx", "bad DDIM respacing"),
        ("ddim0", "bad DDIM respacing"),
        ("fast", "bad timestep respacing"),
        ("10,,3", "bad timestep respacing"),
        ("1001", "can keep 1..1000 steps, got 1001"),
        (0, "can keep"),
        ([600, 600], "can keep 1..500 steps, got 600"),
    ],
)
def test_space_timesteps_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, bad)


def test_ddim_count_without_a_stride_raises():
    # No stride s gives len(range(0, 10, s)) == 6.
    with pytest.raises(ValueError, match="cannot take exactly 6"):
        space_timesteps(10, "ddim6")
    with pytest.raises(ValueError, match="cannot take exactly 2000"):
        space_timesteps(1000, "ddim2000")


def test_spaced_schedule_keeps_alphas_cumprod():
    base = GaussianDiffusion(linear_beta_schedule(1000))
    spaced = create_diffusion("ddim25")
    kept = spaced.timestep_map
    assert spaced.num_timesteps == 25
    torch.testing.assert_close(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12, atol=0)
    # q(x_t | x0) at a respaced index equals q at the original step.
    x0, noise = torch.randn(2, 2, 1, 4, 4), torch.randn(2, 2, 1, 4, 4)
    i = torch.tensor([3, 24])
    torch.testing.assert_close(spaced.q_sample(x0, i, noise), base.q_sample(x0, kept[i], noise))


def test_wrapper_passes_original_timesteps():
    spaced = SpacedDiffusion(linear_beta_schedule(1000), [0, 10, 500, 999])
    seen = []
    model = spaced.wrap_model(lambda x, t: seen.append(t) or x)
    model(torch.zeros(3), torch.tensor([0, 2, 3]))
    assert seen[0].tolist() == [0, 500, 999]
    # The full-schedule diffusion maps each index to itself.
    full = create_diffusion(None)
    assert torch.equal(full.model_timesteps(torch.tensor([7, 999])), torch.tensor([7, 999]))


def test_spaced_diffusion_rejects_out_of_range_steps():
    with pytest.raises(ValueError, match="subset of 0..999"):
        SpacedDiffusion(linear_beta_schedule(1000), [0, 1000])
    with pytest.raises(ValueError, match="int >= 20, got 10"):
        linear_beta_schedule(10)
