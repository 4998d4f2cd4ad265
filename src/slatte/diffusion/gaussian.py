"""Gaussian diffusion with ε-prediction and learned-range variance (IDDPM, as DiT and Latte use).

Tensors are laid out (B, F, C, H, W) for video; ``channel_axis`` names the axis that holds C so
images (B, C, H, W) work with ``channel_axis=1``. With ``learn_sigma=True`` the model returns
2C channels on that axis: C channels of ε, then C channels of v ∈ [-1, 1] that interpolate the
log-variance between the posterior variance β̃_t (v = -1) and β_t (v = +1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from slatte.diffusion.schedules import extract

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PMeanVariance(NamedTuple):
    """The reverse-step Gaussian p(x_{t-1} | x_t) and the x0 it implies."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the batch axis: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit data in [-1, 1] under a binned Gaussian.

    Each value owns a bin of width 2/255; the two outermost bins extend to ±infinity so the
    probabilities sum to one. ``log_scales`` is log σ (half the log-variance).
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(
            "x, means and log_scales must have one shape, got "
            f"{tuple(x.shape)}, {tuple(means.shape)}, {tuple(log_scales.shape)}"
        )
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (x - means + 1.0 / 255.0)
    lower = inv_std * (x - means - 1.0 / 255.0)
    # log_ndtr keeps the tail bins accurate where 1 - Φ would round to zero.
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    bin_prob = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    log_bin = torch.log(bin_prob.clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, log_bin)
    )


class GaussianDiffusion:
    """Forward process, reverse-step parameters and the hybrid training loss.

    Args:
        betas: 1-D tensor (or sequence) of noise variances, each in (0, 1]; kept in float64.
        learn_sigma: the model predicts ε and a learned-range variance (2C output channels);
            otherwise ε only (C channels) and the variance is fixed to β̃_t.
        channel_axis: axis of the channels in x_t and in the model output.
    """

    def __init__(
        self,
        betas: torch.Tensor | list[float],
        *,
        learn_sigma: bool = True,
        channel_axis: int = 2,
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1], got min {betas.min().item()} max {betas.max().item()}"
            )
        if channel_axis < 1:
            raise ValueError(f"channel_axis must be >= 1 (axis 0 is the batch), got {channel_axis}")
        self.learn_sigma = learn_sigma
        self.channel_axis = channel_axis
        self._device_tables: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.betas = betas
        self.log_betas = betas.log()
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)

        # β̃_t, the variance of q(x_{t-1} | x_t, x0).
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # β̃_0 is 0, whose log is -inf; IDDPM substitutes β̃_1 there. The t=0 step adds no noise,
        # so the value only enters the learned-range interpolation and the t=0 likelihood.
        if self.num_timesteps > 1:
            clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        else:
            clipped = betas.clone()
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = (
            betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )

    def on_device(self, name: str, device: torch.device) -> torch.Tensor:
        """The schedule table `name` (e.g. "alphas_cumprod") on `device`, copied there once:
        copying a CPU table on every call made each GPU training step wait for the host."""
        key = (name, device)
        table = self._device_tables.get(key)
        if table is None:
            table = self._device_tables[key] = getattr(self, name).to(device)
        return table

    def coefficient(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`extract` of the table `name` at timesteps `t`, shaped to broadcast against `like`."""
        return extract(self.on_device(name, t.device), t, like)

    # ------------------------------------------------------------------ timesteps
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the model sees for schedule indices ``t`` (identity here)."""
        return t

    def wrap_model(self, model_fn: ModelFn) -> ModelFn:
        """Wrap ``model_fn`` so it receives :meth:`model_timesteps` of the schedule indices."""

        def wrapped(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model_fn(x_t, self.model_timesteps(t))

        return wrapped

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        # Range-checked on the CPU only: reading GPU values back would stall every step. On a
        # GPU an index >= T still fails in the gather; callers draw t with randint.
        if (
            t.device.type == "cpu"
            and t.numel()
            and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps)
        ):
            raise ValueError(
                f"t must lie in [0, {self.num_timesteps - 1}], got min {int(t.min())} "
                f"max {int(t.max())}"
            )

    # ------------------------------------------------------------------ forward process
    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x0) = N(√ᾱ_t x0, (1 - ᾱ_t) I)."""
        self._check_t(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        return (
            self.coefficient("sqrt_alphas_cumprod", t, x0) * x0
            + self.coefficient("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        self._check_t(t, x_t)
        mean = (
            self.coefficient("posterior_mean_coef1", t, x_t) * x0
            + self.coefficient("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self.coefficient("posterior_variance", t, x_t)
        log_variance = self.coefficient("posterior_log_variance_clipped", t, x_t)
        return mean, variance, log_variance

    def predict_x0_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """Invert x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε for x0."""
        return (
            self.coefficient("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.coefficient("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_x0(
        self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
    ) -> torch.Tensor:
        """Invert x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε for ε."""
        return (
            self.coefficient("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0
        ) / self.coefficient("sqrt_recipm1_alphas_cumprod", t, x_t)

    # ------------------------------------------------------------------ reverse process
    def split_model_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split the model output into (ε, v); v is None when the variance is fixed."""
        axis = self.channel_axis
        if x_t.ndim <= axis:
            raise ValueError(
                f"x_t has {x_t.ndim} dims, so channel_axis={axis} does not exist "
                f"(shape {tuple(x_t.shape)})"
            )
        channels = x_t.shape[axis]
        expected = 2 * channels if self.learn_sigma else channels
        expected_shape = list(x_t.shape)
        expected_shape[axis] = expected
        if list(model_output.shape) != expected_shape:
            raise ValueError(
                f"model output must have shape {tuple(expected_shape)} ({expected} channels on "
                f"axis {axis}, learn_sigma={self.learn_sigma}), got {tuple(model_output.shape)}"
            )
        if not self.learn_sigma:
            return model_output, None
        eps, v = torch.split(model_output, channels, dim=axis)
        return eps, v

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
    ) -> PMeanVariance:
        """Parameters of p(x_{t-1} | x_t) from a model output (not the model itself).

        Taking the output lets guidance combine several model calls however it likes before
        the step. With ``clip_denoised`` the predicted x0 is clamped to [-1, 1].
        """
        self._check_t(t, x_t)
        eps, v = self.split_model_output(model_output, x_t)
        if v is None:
            variance = self.coefficient("posterior_variance", t, x_t)
            log_variance = self.coefficient("posterior_log_variance_clipped", t, x_t)
        else:
            min_log = self.coefficient("posterior_log_variance_clipped", t, x_t)
            max_log = self.coefficient("log_betas", t, x_t)
            frac = (v + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = torch.exp(log_variance)
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return PMeanVariance(mean, variance, log_variance, pred_x0)

    # ------------------------------------------------------------------ training
    def vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample variational-bound term in bits per dimension, shape (B,).

        KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, and the discretized-Gaussian
        negative log-likelihood of x0 (data in [-1, 1]) for t = 0.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance)
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        min_snr_gamma: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses (each shape (B,)): ``loss``, ``mse`` (of ε) and ``vb``.

        With a learned variance the loss is IDDPM's hybrid: MSE(ε) + the variational bound,
        where the bound sees the predicted ε through a stop-gradient (so it trains only the
        variance) and is scaled by T/1000 (λ = 0.001 per term at T = 1000). With a fixed
        variance ``vb`` is zero and the loss is the MSE alone.

        ``min_snr_gamma``: Min-SNR-γ weighting (Hang et al. 2023) of the MSE term in the loss,
        min(SNR_t, γ) / SNR_t for ε-prediction: the nearly clean timesteps, whose ε is hard to
        see and whose gradients conflict with the rest, weigh less. ``mse`` stays unweighted.
        """
        self._check_t(t, x0)
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(
                f"min_snr_gamma must be > 0 (or None: no weighting), got {min_snr_gamma}"
            )
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        x_t = self.q_sample(x0, t, noise)
        model_output = self.wrap_model(model_fn)(x_t, t)
        # Losses in at least float32, whatever precision the model ran in.
        dtype = torch.promote_types(x0.dtype, torch.float32)
        model_output, x0, x_t, noise = (a.to(dtype) for a in (model_output, x0, x_t, noise))
        eps, v = self.split_model_output(model_output, x_t)
        mse = mean_flat((noise - eps) ** 2)
        if v is None:
            vb = torch.zeros_like(mse)
        else:
            frozen = torch.cat([eps.detach(), v], dim=self.channel_axis)
            vb = self.vb_terms_bpd(frozen, x0, x_t, t) * (self.num_timesteps / 1000.0)
        weighted = mse
        if min_snr_gamma is not None:
            snr = self.on_device("snr", t.device)[t].to(dtype)
            weighted = mse * snr.clamp(max=min_snr_gamma) / snr
        return {"loss": weighted + vb, "mse": mse, "vb": vb}
