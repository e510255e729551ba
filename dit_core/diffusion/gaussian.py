"""Discrete-time Gaussian diffusion (DDPM family): eps / v / x0 objectives, posterior, hybrid loss.

Forward process: q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I), abar_t = prod_{s<=t} (1 - beta_s),
t = 0..T-1. With learn_sigma the model outputs [prediction; v] (2*C channels) and the reverse log
variance is v' log beta_t + (1 - v') log beta~_t with v' = (v + 1) / 2 (improved DDPM, eq. 15).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from .base import Diffusion, broadcast_to, mean_flat
from .config import DiffusionConfig
from .respace import respaced_betas, space_timesteps
from .schedules import make_betas


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats."""
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bins: int = 256
) -> torch.Tensor:
    """Elementwise log-probability (nats) of data x in [-1, 1], quantised to `bins` levels, under
    N(mean, exp(log_scale)^2) integrated over each bin (the edge bins extend to +-infinity)."""
    half_bin = 1.0 / (bins - 1)
    inv_scale = torch.exp(-log_scale)
    log_cdf_upper = torch.special.log_ndtr((x - mean + half_bin) * inv_scale)  # the bottom bin
    log_sf_lower = torch.special.log_ndtr(-(x - mean - half_bin) * inv_scale)  # the top bin
    # An inner bin's mass Phi(u) - Phi(l), in log space on the mean's lower side (the bin reflected
    # there has the same mass): float32's ndtr is 0 below z = -5.5 and 1 above 5.3, so a difference of
    # two of them put every bin 5 sigma out at a floor (27.6 nats, no gradient).
    far = -(x - mean).abs()
    log_upper = torch.special.log_ndtr((far + half_bin) * inv_scale)
    log_ratio = torch.special.log_ndtr((far - half_bin) * inv_scale) - log_upper  # log Phi(l)/Phi(u) < 0
    log_mass = log_upper + torch.log(-torch.expm1(log_ratio.clamp(max=-1e-12)))
    edge = 1.0 - half_bin
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_mass))


def decoder_nll_bits(x0: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """-log p(x0 | x_1) in bits per dimension (N,) under the discretised Gaussian decoder."""
    return mean_flat(-discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance)) / math.log(2.0)


class GaussianDiffusion(Diffusion):
    """DDPM-family diffusion over T discrete steps (possibly a respaced subset of a longer process).

    `timestep_map[i]` is the original (trained) step index of step i; the model always receives it.
    Schedule arrays are float64 torch tensors of shape (T,), cast to the data's dtype (at least float32)
    at gather time.
    """

    def __init__(
        self,
        config: DiffusionConfig,
        betas: np.ndarray | None = None,
        timestep_map: Sequence[int] | None = None,
    ):
        super().__init__(config)
        if config.objective == "flow":
            raise ValueError(
                "GaussianDiffusion handles objective 'eps', 'v' or 'x0'; use FlowMatching for 'flow'"
            )
        betas = betas if betas is not None else config.betas
        if betas is None:
            betas = make_betas(config.schedule, config.num_timesteps, config.beta_start, config.beta_end)
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0 or not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must be a non-empty 1-D sequence of values in (0, 1]")
        T = self.num_timesteps = len(betas)
        self.timestep_map = torch.as_tensor(
            np.arange(T) if timestep_map is None else np.asarray(timestep_map), dtype=torch.long
        )
        if len(self.timestep_map) != T:
            raise ValueError(f"timestep_map has {len(self.timestep_map)} entries for {T} steps")
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # log of the posterior variance with its t=0 entry (which is 0) replaced by the t=1 entry.
        post_var_floor = np.concatenate([post_var[1:2], post_var[1:]]) if T > 1 else betas.copy()
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        self.betas = as_t(betas)
        self.alphas_cumprod = as_t(abar)
        self.alphas_cumprod_prev = as_t(abar_prev)
        self.posterior_variance = as_t(post_var)
        self.posterior_log_variance_clipped = as_t(np.log(post_var_floor))
        self.posterior_mean_coef1 = as_t(betas * np.sqrt(abar_prev) / (1.0 - abar))
        self.posterior_mean_coef2 = as_t((1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar))
        # DDPM's "fixed large" variance: beta_t, with the t=0 entry replaced by beta~_1.
        self.fixed_large_variance = as_t(np.concatenate([post_var[1:2], betas[1:]]) if T > 1 else betas)
        self._device_cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    # ------------------------------------------------------------------ basics
    def _gather(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Schedule array `name` at step indices t (N,) -> (N, 1, ..., 1) on x's device, in x's dtype
        or float32 if that is wider (as ADM's ``.float()``: in bf16 abar rounds to 1 at the first steps,
        which took the noise out of x_t); the float64 array is cast once per device and dtype."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        key = (name, x.device, dtype)
        if key not in self._device_cache:
            self._device_cache[key] = getattr(self, name).to(device=x.device, dtype=dtype)
        return broadcast_to(self._device_cache[key][t.to(x.device).long()], x)

    def timesteps_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        s = super().timesteps_from_uniform(u)
        return torch.clamp((s * self.num_timesteps).floor().long(), 0, self.num_timesteps - 1)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return self.timestep_map.to(t.device)[t.long()]

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, (N, ...)."""
        abar = self._gather("alphas_cumprod", t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x0): mean (N, ...), variance and clipped log variance (N, 1, ...)."""
        at = functools.partial(self._gather, t=t, x=x_t)
        mean = at("posterior_mean_coef1") * x0 + at("posterior_mean_coef2") * x_t
        return mean, at("posterior_variance"), at("posterior_log_variance_clipped")

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model's mean channels regress onto: eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0."""
        if self.objective == "eps":
            return noise
        if self.objective == "x0":
            return x0
        abar = self._gather("alphas_cumprod", t, x0)
        return abar.sqrt() * noise - (1.0 - abar).sqrt() * x0

    # ------------------------------------------------------------------ reverse process
    def split_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model output (N, C or 2C, ...) -> (prediction (N, C, ...), variance values in [-1, 1] or None)."""
        if not self.learn_sigma:
            return out, None
        return torch.chunk(out, 2, dim=1)

    def predict_x0_eps(
        self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert the objective's prediction (N, C, ...) into (x0_hat, eps_hat)."""
        abar = self._gather("alphas_cumprod", t, x_t)
        a, s = abar.sqrt(), (1.0 - abar).sqrt()
        if self.objective == "eps":
            return (x_t - s * pred) / a, pred
        if self.objective == "x0":
            return pred, (x_t - a * pred) / s
        return a * x_t - s * pred, s * x_t + a * pred  # v-prediction

    def model_log_variance(
        self, var_values: torch.Tensor | None, t: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Reverse-step log variance: learned interpolation, or fixed "large"/"small" ((N, 1, ...) then)."""
        log_small = self._gather("posterior_log_variance_clipped", t, x)
        if var_values is not None:
            log_large = self._gather("betas", t, x).log()
            frac = (var_values + 1.0) / 2.0
            return frac * log_large + (1.0 - frac) * log_small
        if self.config.fixed_variance == "small":
            return log_small
        return self._gather("fixed_large_variance", t, x).log()

    def p_mean_variance(
        self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Reverse step p(x_{t-1} | x_t) from a model output: mean, log_variance, pred_x0, pred_eps."""
        self._check_output(out, x_t)
        pred, var_values = self.split_output(out)
        x0_hat, eps_hat = self.predict_x0_eps(pred, x_t, t)
        mean, _, _ = self.q_posterior_mean_variance(x0_hat, x_t, t)
        log_variance = self.model_log_variance(var_values, t, x_t)
        return {"mean": mean, "log_variance": log_variance, "pred_x0": x0_hat, "pred_eps": eps_hat}

    def vb_terms(
        self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_t in bits per dimension (N,): KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, and the
        discretised-Gaussian decoder NLL -log p(x0 | x_1) at t = 0 (data assumed in [-1, 1])."""
        true_mean, _, true_logvar = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(out, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])) / math.log(2.0)
        if t.device.type != "cpu":  # every row, selected without a host sync
            return torch.where(t == 0, decoder_nll_bits(x0, p["mean"], p["log_variance"]), kl)
        # On CPU, only the rows at t = 0 (1 in T): the decoder NLL is ~5% of a tiny model's step.
        rows = (t == 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return kl
        log_var = p["log_variance"].expand_as(x0)
        return kl.index_put((rows,), decoder_nll_bits(x0[rows], p["mean"][rows], log_var[rows]))

    # ------------------------------------------------------------------ training
    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.q_sample(x0, t, noise)

    def losses_from_output(
        self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """{"loss", "mse"[, "vb"]}, each (N,). With learn_sigma: loss = mse + vb_lambda * T * vb, where
        the vb term sees the mean prediction through a stop-gradient (only the variance learns from it)."""
        pred, var_values = self.split_output(out)
        terms = {"mse": mean_flat((self.training_target(x0, noise, t) - pred.float()) ** 2)}
        if var_values is None:
            terms["loss"] = terms["mse"]
            return terms
        frozen = torch.cat([pred.detach(), var_values], dim=1).float()
        terms["vb"] = self.vb_terms(frozen, x0.float(), x_t.float(), t)
        terms["loss"] = terms["mse"] + self.config.vb_lambda * self.num_timesteps * terms["vb"]
        return terms

    # ------------------------------------------------------------------ respacing
    def respace(self, section_counts: str | int | Sequence[int]) -> GaussianDiffusion:
        """A diffusion over a subset of this one's steps (see `space_timesteps`) with betas that keep
        alphas_cumprod at the kept steps; the model still receives the original step indices."""
        kept = space_timesteps(self.num_timesteps, section_counts)
        betas = respaced_betas(self.alphas_cumprod.numpy(), kept)
        cfg = replace(self.config, betas=None)
        return GaussianDiffusion(cfg, betas=betas, timestep_map=self.timestep_map[kept].tolist())
