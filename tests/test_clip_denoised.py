"""clip_denoised: the sampler clamps each step's x0 estimate to [-1, 1] (pixel-space data)."""

from __future__ import annotations

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
