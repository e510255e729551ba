"""clip_denoised: the sampler clamps each step's x0 estimate to [-1, 1] (pixel-space data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dit_core.diffusion import DiffusionConfig, create_diffusion, sample


class ConstantEps(nn.Module):
    """Predicts eps = -3 everywhere: x0_hat = (x - s eps) / a lies far above 1 at every step."""

    num_classes = 4

    def forward(self, x, t, y):
        return torch.full_like(x, -3.0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_clipping_keeps_samples_in_the_data_range_and_is_off_by_default(sampler):
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    noise = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(sampler=sampler, steps=10, noise=noise, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(8, dtype=torch.long)
    plain = sample(ConstantEps(), d, noise.shape, y, **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    clipped = sample(ConstantEps(), d, noise.shape, y, clip_denoised=True, **kw)
    assert plain.max() > 2.0  # unclipped x0 estimates leave the data range
    # the last step returns the (clipped) x0 estimate itself: inside [-1, 1]
    assert clipped.min() >= -1.0 and clipped.max() <= 1.0
    if sampler == "ddim":  # deterministic: every x0 estimate is above 1, so all saturate at 1
        torch.testing.assert_close(clipped, torch.ones_like(clipped))


def test_flow_refuses_clipping():
    fm = create_diffusion(DiffusionConfig(objective="flow"))
    with pytest.raises(ValueError, match="clip_denoised is for Gaussian diffusion"):
        sample(ConstantEps(), fm, (2, 1, 4, 4), None, sampler="euler", steps=2, clip_denoised=True)


@pytest.mark.parametrize("i", [0, 30, 99])
def test_clipped_step_is_the_posterior_of_the_clamped_x0_estimate(i):
    """ADM's clip_denoised, written out in float64 numpy: x0c = clamp(x0_hat, -1, 1),
    eps = (x - sqrt(abar_i) x0c) / sqrt(1 - abar_i), mean = coef1 x0c + coef2 x; variance untouched."""
    from dit_core.diffusion.samplers import _gaussian_predict

    d = create_diffusion(DiffusionConfig(learn_sigma=False, num_timesteps=100))
    x = torch.linspace(-3.0, 3.0, 2 * 1 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4)
    # eps_hat = 4 x - 1: its x0 estimate spans far beyond [-1, 1] on both sides
    p = _gaussian_predict(d, lambda x_, t_: 4.0 * x_ - 1.0, x, i)
    q = _gaussian_predict(d, lambda x_, t_: 4.0 * x_ - 1.0, x, i, clip=True)

    betas = np.linspace(1e-4 * 10, 0.02 * 10, 100)  # DDPM's linear endpoints scaled by 1000 / T
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    x0_hat = p["pred_x0"].numpy()
    assert x0_hat.min() < -1.0 and x0_hat.max() > 1.0  # both sides are clipped
    x0c = np.clip(x0_hat, -1.0, 1.0)
    eps = (x.numpy() - math.sqrt(abar[i]) * x0c) / math.sqrt(1.0 - abar[i])
    coef1 = betas[i] * math.sqrt(abar_prev[i]) / (1.0 - abar[i])
    coef2 = (1.0 - abar_prev[i]) * math.sqrt(1.0 - betas[i]) / (1.0 - abar[i])
    np.testing.assert_allclose(q["pred_x0"].numpy(), x0c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(q["pred_eps"].numpy(), eps, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(q["mean"].numpy(), coef1 * x0c + coef2 * x.numpy(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(q["log_variance"], p["log_variance"], rtol=0, atol=0)


def test_clipping_bounds_the_samples_from_below_too():
    """eps = +3 everywhere: every x0 estimate lies far below -1, so deterministic DDIM ends at -1."""

    class PlusThree(ConstantEps):
        def forward(self, x, t, y):
            return torch.full_like(x, 3.0)

    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)).clamp(-2.0, 2.0)
    y = torch.zeros(4, dtype=torch.long)
    out = sample(PlusThree(), d, noise.shape, y, sampler="ddim", steps=10, noise=noise, clip_denoised=True)
    torch.testing.assert_close(out, -torch.ones_like(out))
