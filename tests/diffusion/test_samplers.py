"""DDPM and DDIM samplers: oracle recovery, DDIM(eta=1) == DDPM, seeds, the step callback."""

import pytest
import torch

from slatte.diffusion import GaussianDiffusion, create_diffusion, ddim_sample, ddpm_sample

SHAPE = (2, 3, 2, 4, 4)  # (B, F, C, H, W)
BASE = create_diffusion(None)


def oracle(x0: torch.Tensor, learn_sigma: bool = True):
    """An ε-model that knows x0; it reads ᾱ at the ORIGINAL timestep it is given."""

    def model_fn(x_t, t):
        eps = BASE.predict_eps_from_x0(x_t, t, x0)
        return torch.cat([eps, torch.zeros_like(eps)], dim=2) if learn_sigma else eps

    return model_fn


def smooth_model(x_t, t):
    """A fixed, non-oracle ε-model with a learned-sigma head, to compare samplers."""
    eps = 0.5 * torch.tanh(x_t) + 1e-4 * t.float().reshape(-1, 1, 1, 1, 1)
    return torch.cat([eps, torch.full_like(x_t, 0.3)], dim=2)


@pytest.mark.parametrize("respacing", ["ddim20", "50", None])
def test_ddim_eta0_with_oracle_recovers_x0(respacing):
    x0 = torch.rand(SHAPE) * 2 - 1
    d = create_diffusion(respacing)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = ddim_sample(d, oracle(x0), SHAPE, noise=noise, eta=0.0)
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_ddpm_with_oracle_recovers_x0():
    x0 = torch.rand(SHAPE) * 2 - 1
    d = create_diffusion("25")
    out = ddpm_sample(d, oracle(x0), SHAPE, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_oracle_misses_x0_if_the_model_saw_respaced_indices():
    # Guards the test above: an oracle fed respaced indices would mis-read ᾱ and fail.
    x0 = torch.rand(SHAPE) * 2 - 1
    d = create_diffusion("ddim20")
    model = oracle(x0)
    unwrapped = GaussianDiffusion(d.betas)  # same schedule, but the model sees 0..19
    out = ddim_sample(unwrapped, model, SHAPE, generator=torch.Generator().manual_seed(0))
    assert (out - x0).abs().max() > 0.1


def test_ddim_eta1_equals_ddpm_with_fixed_variance():
    # DDIM with eta = 1 has σ² = β̃ and the DDPM posterior mean: the same Markov chain.
    d = create_diffusion("30", learn_sigma=False)

    def model(x, t):
        return smooth_model(x, t)[:, :, :2]

    a = ddpm_sample(
        d, model, SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    b = ddim_sample(
        d, model, SHAPE, eta=1.0, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_seed_reproduces_and_different_seeds_differ(sampler):
    d = create_diffusion("10")

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        if sampler == "ddpm":
            return ddpm_sample(d, smooth_model, SHAPE, generator=g)
        return ddim_sample(d, smooth_model, SHAPE, generator=g, eta=0.5)

    assert torch.equal(run(3), run(3))
    assert (run(3) - run(4)).abs().max() > 1e-2


def test_explicit_noise_equals_generator_noise():
    d = create_diffusion("ddim10")
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    a = ddim_sample(d, smooth_model, SHAPE, noise=noise)
    b = ddim_sample(d, smooth_model, SHAPE, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)


def test_step_callback_sees_every_step_and_can_replace_frames():
    d = create_diffusion("ddim8")
    x0 = torch.rand(SHAPE) * 2 - 1
    calls = []

    def pin_first_frame(i, t, x_t):
        calls.append((i, t.clone()))
        x_t = x_t.clone()
        x_t[:, 0] = d.q_sample(x0, t, torch.zeros_like(x0))[:, 0]
        return x_t

    out = ddim_sample(
        d,
        oracle(x0),
        SHAPE,
        generator=torch.Generator().manual_seed(0),
        step_callback=pin_first_frame,
    )
    assert [i for i, _ in calls] == list(range(7, -1, -1))
    assert calls[0][1].tolist() == [7, 7]
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)

    # The callback result is used: returning garbage for frame 0 changes the sample.
    def corrupt(i, t, x_t):
        return torch.where(torch.arange(SHAPE[1]).reshape(1, -1, 1, 1, 1) == 0, x_t + 5.0, x_t)

    bad = ddim_sample(
        d, smooth_model, SHAPE, generator=torch.Generator().manual_seed(0), step_callback=corrupt
    )
    good = ddim_sample(d, smooth_model, SHAPE, generator=torch.Generator().manual_seed(0))
    assert (bad[:, 0] - good[:, 0]).abs().min() > 1.0


def test_sampler_input_errors():
    d = create_diffusion("5")
    with pytest.raises(ValueError, match="noise has shape"):
        ddpm_sample(d, smooth_model, SHAPE, noise=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="4 channels on axis 2"):
        ddim_sample(d, lambda x, t: x, SHAPE, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_sample(d, smooth_model, SHAPE, eta=-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seed_gives_the_same_samples_on_cuda_and_cpu():
    d = create_diffusion("ddim10")

    def run(device):
        return ddim_sample(
            d,
            smooth_model,
            SHAPE,
            eta=0.5,
            device=device,
            generator=torch.Generator().manual_seed(11),
        )

    cuda = run("cuda")
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), run("cpu"), rtol=1e-4, atol=1e-4)
    x0 = torch.rand(SHAPE, device="cuda") * 2 - 1
    losses = create_diffusion(None).training_losses(
        smooth_model, x0, torch.tensor([0, 999], device="cuda")
    )
    assert losses["loss"].device.type == "cuda" and losses["loss"].isfinite().all()
