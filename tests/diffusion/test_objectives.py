"""Objectives by name: each reaches the loss it names, with its own noise levels."""

import pytest
import torch

from slatte.diffusion import OBJECTIVES, SAMPLERS, flow_matching_loss, make_objective
from slatte.diffusion.flow import shift_sigmas

SHAPE = (2, 3, 1, 4, 4)


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def test_objectives_are_reached_by_name_and_draw_their_noise_levels():
    assert set(OBJECTIVES) == {"gaussian", "flow", "distill"}
    gaussian = make_objective("gaussian")
    t = gaussian.draw_t(torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and 0 <= int(t) < 1000
    flow = make_objective("flow", shift=3.0)
    u = torch.rand(1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(flow.draw_t(torch.Generator().manual_seed(1)), shift_sigmas(u, 3.0))
    with pytest.raises(ValueError, match=r"objective must be one of .*got 'x'"):
        make_objective("x")


def test_flow_and_distill_targets_differ_as_named():
    x0, noise = _batch()
    t = torch.tensor([0.3, 0.7])

    def model_fn(x, tt):
        return 0.5 * x

    def teacher_fn(x, tt):
        return torch.ones_like(x)

    flow = make_objective("flow").losses(model_fn, x0, t, noise)["loss"]
    torch.testing.assert_close(flow, flow_matching_loss(model_fn, x0, t, noise)["loss"])
    distill = make_objective("distill")
    assert distill.needs_teacher and not make_objective("flow").needs_teacher
    got = distill.losses(model_fn, x0, t, noise, teacher_fn=teacher_fn)["loss"]
    sigma = t.reshape(-1, 1, 1, 1, 1)
    x_t = (1 - sigma) * x0 + sigma * noise
    torch.testing.assert_close(got, ((0.5 * x_t - 1.0) ** 2).mean(dim=(1, 2, 3, 4)))
    with pytest.raises(ValueError, match="needs a teacher_fn"):
        distill.losses(model_fn, x0, t, noise)


def test_gaussian_objective_is_the_diffusion_loss():
    x0, noise = _batch()
    objective = make_objective("gaussian", learn_sigma=False, min_snr_gamma=5.0)
    t = torch.tensor([10, 900])

    def model_fn(x, tt):
        return 0.1 * x

    expected = objective.diffusion.training_losses(model_fn, x0, t, noise=noise, min_snr_gamma=5.0)
    got = objective.losses(model_fn, x0, t, noise)
    assert set(got) == set(expected)
    for key in got:
        torch.testing.assert_close(got[key], expected[key])


def test_samplers_by_name_respace_as_named():
    assert SAMPLERS["ddpm"].respacing(50) == "50" and not SAMPLERS["ddpm"].takes_eta
    assert SAMPLERS["ddim"].respacing(50) == "ddim50" and SAMPLERS["ddim"].takes_eta
