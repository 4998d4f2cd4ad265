"""Flow matching: the loss against its definition, Euler with an oracle, the σ shift."""

import pytest
import torch

from slatte.diffusion import flow_euler_sample, flow_matching_loss, shift_sigmas

SHAPE = (2, 3, 2, 4, 4)


def test_shift_sigmas_endpoints_and_formula():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    for shift in (1.0, 3.0, 0.5):
        out = shift_sigmas(s, shift)
        assert out[0] == 0 and out[-1] == 1
        assert (out[1:] > out[:-1]).all()
    torch.testing.assert_close(shift_sigmas(s, 1.0), s)
    # shift 3 at σ = 0.5: 1.5 / 2 = 0.75, so more steps are spent at high noise.
    assert shift_sigmas(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shift must be > 0"):
        shift_sigmas(s, 0.0)


def oracle_velocity(x0, seen):
    def model_fn(x_t, t):
        seen.append(t.clone())
        sigma = (t / 1000).reshape(-1, 1, 1, 1, 1)
        return (x_t - x0) / sigma  # = ε - x0 on the straight path through x0

    return model_fn


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (7, 3.0)])
def test_euler_with_oracle_recovers_x0(steps, shift):
    x0 = torch.randn(SHAPE, dtype=torch.float64)
    seen = []
    out = flow_euler_sample(
        oracle_velocity(x0, seen),
        SHAPE,
        steps=steps,
        shift=shift,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, x0)
    assert len(seen) == steps
    assert seen[0].tolist() == [1000.0, 1000.0]
    if steps == 7:
        want = shift_sigmas(torch.tensor(6 / 7, dtype=torch.float64), shift) * 1000
        assert seen[1][0].item() == pytest.approx(want.item(), rel=1e-6)


def test_euler_seeds():
    model = lambda x, t: torch.tanh(x)
    run = lambda seed: flow_euler_sample(
        model, SHAPE, steps=3, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(run(1), run(1))
    assert (run(1) - run(2)).abs().max() > 1e-2


def test_flow_matching_loss_matches_definition():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = torch.tensor([0.25, 0.9])
    seen = {}

    def model_fn(x_t, tt):
        seen["x_t"], seen["t"] = x_t, tt
        return 0.5 * x_t

    loss = flow_matching_loss(model_fn, x0, t, noise)["loss"]
    sigma = t.reshape(-1, 1, 1, 1, 1)
    x_t = (1 - sigma) * x0 + sigma * noise
    torch.testing.assert_close(seen["x_t"], x_t)
    torch.testing.assert_close(seen["t"], t * 1000)
    torch.testing.assert_close(loss, ((0.5 * x_t - (noise - x0)) ** 2).mean(dim=(1, 2, 3, 4)))
    # The true velocity has zero loss.
    perfect = flow_matching_loss(lambda x, tt: noise - x0, x0, t, noise)["loss"]
    assert perfect.abs().max() == 0


def test_flow_errors():
    x0 = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="must match its input shape"):
        flow_matching_loss(lambda x, t: torch.cat([x, x], dim=2), x0)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        flow_euler_sample(lambda x, t: x, SHAPE, steps=0)
