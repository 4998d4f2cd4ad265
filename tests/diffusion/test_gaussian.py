"""GaussianDiffusion formulas against float64 references written here from the equations."""

import math

import numpy as np
import pytest
import torch

from slatte.diffusion import (
    GaussianDiffusion,
    create_diffusion,
    discretized_gaussian_log_likelihood,
    linear_beta_schedule,
    normal_kl,
)

T = 1000


def ref_schedule(num_timesteps: int = T) -> dict[str, np.ndarray]:
    betas = np.linspace(1e-4 * 1000 / num_timesteps, 0.02 * 1000 / num_timesteps, num_timesteps)
    alpha_bar = np.cumprod(1.0 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    return {"betas": betas, "alpha_bar": alpha_bar, "alpha_bar_prev": alpha_bar_prev}


def bcast(values: np.ndarray, t: np.ndarray, ndim: int) -> np.ndarray:
    return values[t].reshape(-1, *([1] * (ndim - 1)))


def test_linear_betas_endpoints_and_float64():
    betas = linear_beta_schedule(T)
    assert betas.dtype == torch.float64
    np.testing.assert_allclose(betas.numpy(), ref_schedule()["betas"], rtol=1e-12)
    short = linear_beta_schedule(250)
    assert short[0].item() == pytest.approx(4e-4) and short[-1].item() == pytest.approx(0.08)


def test_q_sample_matches_reference():
    ref = ref_schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 5, 5, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 417, 999])
    d = GaussianDiffusion(linear_beta_schedule(T))
    got = d.q_sample(x0, t, noise)
    ab = bcast(ref["alpha_bar"], t.numpy(), 5)
    want = np.sqrt(ab) * x0.double().numpy() + np.sqrt(1 - ab) * noise.double().numpy()
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_posterior_mean_variance_matches_reference():
    ref = ref_schedule()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    x_t = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 500, 999])
    d = GaussianDiffusion(linear_beta_schedule(T))
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t)
    tn = t.numpy()
    beta = bcast(ref["betas"], tn, 5)
    ab, abp = bcast(ref["alpha_bar"], tn, 5), bcast(ref["alpha_bar_prev"], tn, 5)
    # Bishop-style Gaussian conditioning of q(x_{t-1}|x0) on x_t = sqrt(1-beta) x_{t-1} + noise.
    want_var = beta * (1 - abp) / (1 - ab)
    want_mean = (
        np.sqrt(abp) * beta / (1 - ab) * x0.numpy()
        + np.sqrt(1 - beta) * (1 - abp) / (1 - ab) * x_t.numpy()
    )
    assert mean.dtype == torch.float64
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-10)
    np.testing.assert_allclose(var.numpy().reshape(-1), want_var.reshape(-1), rtol=1e-10)
    np.testing.assert_allclose(log_var.numpy().reshape(-1), np.log(want_var).reshape(-1))


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    m1, m2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    lv1, lv2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()),
        torch.distributions.Normal(m2, (0.5 * lv2).exp()),
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), want, rtol=1e-5, atol=1e-6)


def test_discretized_log_likelihood_matches_cdf_differences():
    x = torch.tensor([-1.0, -1.0, -0.5, 0.0, 127 / 255 * 2 - 1, 1.0, 1.0], dtype=torch.float64)
    means = torch.tensor([-0.9, 0.3, -0.45, 0.01, 0.02, 0.95, -0.2], dtype=torch.float64)
    log_scales = torch.log(torch.tensor([0.1, 0.2, 0.05, 0.3, 0.02, 0.1, 0.4], dtype=torch.float64))
    normal = torch.distributions.Normal(means, log_scales.exp())
    upper = normal.cdf(x + 1 / 255)
    lower = normal.cdf(x - 1 / 255)
    want = torch.where(x < -0.999, upper, torch.where(x > 0.999, 1 - lower, upper - lower)).log()
    got = discretized_gaussian_log_likelihood(x, means, log_scales)
    # The reference loses relative precision deep in the tail (index 1); log_ndtr does not.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    # A bin far out in the tail is floored at 1e-12 instead of giving -inf.
    far = discretized_gaussian_log_likelihood(
        torch.zeros(1), torch.ones(1) * 0.5, torch.log(torch.ones(1) * 0.01)
    )
    torch.testing.assert_close(far, torch.log(torch.tensor([1e-12])))


def test_learned_range_variance_endpoints():
    d = GaussianDiffusion(linear_beta_schedule(T), learn_sigma=True)
    x_t = torch.randn(3, 2, 4, 4, 4)
    t = torch.tensor([3, 300, 999])
    eps = torch.randn_like(x_t)
    for v_value, table in ((1.0, d.betas), (-1.0, d.posterior_variance)):
        out = torch.cat([eps, torch.full_like(x_t, v_value)], dim=2)
        p = d.p_mean_variance(out, x_t, t)
        want = table[t].float().reshape(3, 1, 1, 1, 1).expand_as(x_t)
        torch.testing.assert_close(p.variance, want, rtol=1e-5, atol=0)
    # v = 0 sits halfway in log space: the geometric mean of the two endpoints.
    p = d.p_mean_variance(torch.cat([eps, torch.zeros_like(x_t)], dim=2), x_t, t)
    geo = (d.betas[t] * d.posterior_variance[t]).sqrt().float().reshape(3, 1, 1, 1, 1)
    torch.testing.assert_close(p.variance, geo.expand_as(x_t), rtol=1e-5, atol=0)


def test_p_mean_variance_pred_x0_and_fixed_variance():
    d = GaussianDiffusion(linear_beta_schedule(T), learn_sigma=False)
    x0 = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([10, 700])
    x_t = d.q_sample(x0, t, noise)
    p = d.p_mean_variance(noise, x_t, t)
    torch.testing.assert_close(p.pred_x0, x0)
    mean, var, _ = d.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(p.mean, mean)
    torch.testing.assert_close(p.variance, var)
    clipped = d.p_mean_variance(noise, x_t, t, clip_denoised=True)
    assert clipped.pred_x0.abs().max() <= 1.0


def test_image_layout_with_channel_axis_1():
    d = GaussianDiffusion(linear_beta_schedule(T), channel_axis=1)
    x_t = torch.randn(2, 3, 8, 8)
    out = torch.cat([torch.randn_like(x_t), torch.ones_like(x_t)], dim=1)
    p = d.p_mean_variance(out, x_t, torch.tensor([5, 6]))
    assert p.mean.shape == x_t.shape
    torch.testing.assert_close(p.variance[:, 0, 0, 0], d.betas[[5, 6]].float())


def test_wrong_output_channels_raise():
    d = GaussianDiffusion(linear_beta_schedule(T), learn_sigma=True)
    x_t = torch.randn(2, 3, 4, 8, 8)
    with pytest.raises(ValueError, match=r"8 channels on axis 2.*got \(2, 3, 4, 8, 8\)"):
        d.p_mean_variance(torch.randn_like(x_t), x_t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must lie in"):
        d.q_sample(x_t, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="betas must lie"):
        GaussianDiffusion(torch.tensor([0.0, 0.1]))


def _vb_reference(d, out, x0, x_t, t):
    """The VB term from the formulas, in float64, in bits per dim, T/1000-scaled."""
    c = x0.shape[2]
    eps, v = out[:, :, :c], out[:, :, c:]
    ref = ref_schedule(d.num_timesteps)
    tn = t.numpy()
    beta = torch.from_numpy(bcast(ref["betas"], tn, 5))
    ab, abp = (torch.from_numpy(bcast(ref[k], tn, 5)) for k in ("alpha_bar", "alpha_bar_prev"))
    post_var = beta * (1 - abp) / (1 - ab)
    post_var_t1 = ref["betas"][1] * (1 - ref["alpha_bar"][0]) / (1 - ref["alpha_bar"][1])
    post_var_clipped = torch.where(
        torch.from_numpy(tn == 0).reshape(-1, 1, 1, 1, 1), post_var_t1, post_var
    )
    frac = (v + 1) / 2
    log_var = frac * beta.log() + (1 - frac) * post_var_clipped.log()
    pred_x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def posterior_mean(start):
        return abp.sqrt() * beta / (1 - ab) * start + (1 - beta).sqrt() * (1 - abp) / (1 - ab) * x_t

    q = torch.distributions.Normal(posterior_mean(x0), post_var_clipped.sqrt())
    p = torch.distributions.Normal(posterior_mean(pred_x0), (0.5 * log_var).exp())
    kl = torch.distributions.kl_divergence(q, p).mean(dim=(1, 2, 3, 4)) / math.log(2)
    upper, lower = p.cdf(x0 + 1 / 255), p.cdf(x0 - 1 / 255)
    prob = torch.where(x0 < -0.999, upper, torch.where(x0 > 0.999, 1 - lower, upper - lower))
    nll = -prob.log().mean(dim=(1, 2, 3, 4)) / math.log(2)
    return torch.where(t == 0, nll, kl) * d.num_timesteps / 1000


@pytest.mark.parametrize("num_timesteps", [T, 250])
def test_training_losses_vb_and_mse_match_direct_computation(num_timesteps):
    d = create_diffusion(None, learn_sigma=True, num_timesteps=num_timesteps)
    g = torch.Generator().manual_seed(3)
    shape = (3, 2, 2, 4, 4)
    # Quantised data in [-1, 1] with both edges present, as the t=0 likelihood assumes.
    x0 = torch.randint(0, 256, shape, generator=g).double() / 127.5 - 1.0
    x0[0, 0, 0, 0, :2] = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    out = torch.cat(
        [0.8 * noise + 0.1, torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1], dim=2
    )
    t = torch.tensor([0, 1, 240])
    seen_t = []

    def model_fn(x, tt):
        seen_t.append(tt)
        return out

    losses = d.training_losses(model_fn, x0, t, noise)
    torch.testing.assert_close(seen_t[0], t)
    torch.testing.assert_close(losses["mse"], ((0.2 * noise - 0.1) ** 2).mean(dim=(1, 2, 3, 4)))
    x_t = d.q_sample(x0, t, noise)
    torch.testing.assert_close(
        losses["vb"], _vb_reference(d, out, x0, x_t, t), rtol=1e-7, atol=1e-9
    )
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    assert (losses["vb"] > 0).all()


def test_vb_term_does_not_train_the_mean():
    d = create_diffusion(None, learn_sigma=True)
    x0 = torch.rand(2, 2, 1, 4, 4) * 2 - 1
    out = torch.randn(2, 2, 2, 4, 4, requires_grad=True)
    losses = d.training_losses(lambda x, t: out, x0, torch.tensor([0, 400]))
    (grad,) = torch.autograd.grad(losses["vb"].sum(), out)
    assert grad[:, :, :1].abs().max() == 0  # ε channels: stop-gradient
    assert grad[:, :, 1:].abs().max() > 0  # v channels: trained by the VB term


def test_fixed_variance_loss_is_mse_only():
    d = create_diffusion(None, learn_sigma=False)
    x0 = torch.randn(2, 2, 1, 4, 4)
    noise = torch.randn_like(x0)
    losses = d.training_losses(lambda x, t: torch.zeros_like(x), x0, torch.tensor([3, 9]), noise)
    torch.testing.assert_close(losses["loss"], (noise**2).mean(dim=(1, 2, 3, 4)))
    assert (losses["vb"] == 0).all()


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_min_snr_weighting_scales_only_the_mse_term(learn_sigma):
    d = create_diffusion(None, learn_sigma=learn_sigma)
    x0 = torch.randn(4, 2, 1, 4, 4)
    noise = torch.randn_like(x0)
    # Nearly clean (SNR >> 5), SNR near 5 on either side, very noisy (SNR << 5).
    t = torch.tensor([2, 120, 140, 900])
    out = torch.randn(
        4, 2, 2 if learn_sigma else 1, 4, 4, generator=torch.Generator().manual_seed(0)
    )
    plain = d.training_losses(lambda x, t_: out, x0, t, noise)
    weighted = d.training_losses(lambda x, t_: out, x0, t, noise, min_snr_gamma=5.0)
    alpha_bar = ref_schedule()["alpha_bar"][t.numpy()]
    snr = alpha_bar / (1.0 - alpha_bar)
    weight = torch.from_numpy(np.minimum(snr, 5.0) / snr).float()
    assert weight[0] < 0.01 and weight[-1] == 1.0 and 0.5 < weight[1] < 1.0 and weight[2] == 1.0
    torch.testing.assert_close(weighted["mse"], plain["mse"])
    torch.testing.assert_close(weighted["vb"], plain["vb"])
    torch.testing.assert_close(weighted["loss"], weight * plain["mse"] + plain["vb"])
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0 .* got 0"):
        d.training_losses(lambda x, t_: out, x0, t, noise, min_snr_gamma=0.0)


def test_schedule_tables_move_to_a_device_once_and_give_the_same_coefficients():
    from slatte.diffusion import create_diffusion
    from slatte.diffusion.schedules import extract

    diffusion = create_diffusion("ddim10")
    meta = torch.device("meta")  # every .to("meta") makes a new tensor: only a cache repeats one
    first = diffusion.on_device("posterior_log_variance_clipped", meta)
    assert diffusion.on_device("posterior_log_variance_clipped", meta) is first
    t = torch.tensor([0, 3, 9])
    like = torch.zeros(3, 2, 1, 4, 4)
    for name in ("log_betas", "sqrt_alphas_cumprod", "posterior_mean_coef2"):
        assert torch.equal(
            diffusion.coefficient(name, t, like), extract(getattr(diffusion, name), t, like)
        )
    assert torch.allclose(diffusion.log_betas, diffusion.betas.log())
    assert torch.equal(diffusion.model_timesteps(t), diffusion.timestep_map[t])
