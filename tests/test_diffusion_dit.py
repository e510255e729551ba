"""Integration: dit_core.diffusion with the real DiT (tiny), losses, training steps and samplers."""

from __future__ import annotations

import math

import pytest
import torch
from test_diffusion_analytic import _one_thread  # noqa: F401

from dit_core import models
from dit_core.diffusion import DiffusionConfig, create_diffusion, sample, validation_loss


def tiny_dit(learn_sigma: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                      num_classes=3, learn_sigma=learn_sigma)  # fmt: skip


@pytest.mark.parametrize("objective", ["eps", "v", "flow"])
def test_training_steps_reduce_the_loss(objective):
    d = create_diffusion(DiffusionConfig(objective=objective))
    model = tiny_dit(d.learn_sigma)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 1, 8, 8, generator=g).clamp(-1, 1)
    y = torch.randint(0, 3, (8,), generator=g)
    t = d.sample_timesteps(8, "cpu", g)
    noise = torch.randn(x0.shape, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        terms = d.training_losses(model, x0, t, {"y": y}, noise=noise)
        assert terms["loss"].shape == (8,)
        loss = terms["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]
    val = validation_loss(d, model, x0, y, seed=0)
    assert math.isfinite(val) and model.training


@pytest.mark.parametrize(
    "objective, sampler", [("eps", "ddim"), ("eps", "ddpm"), ("flow", "heun"), ("flow", "euler")]
)
def test_samplers_run_with_guidance(objective, sampler):
    d = create_diffusion(DiffusionConfig(objective=objective))
    model = tiny_dit(d.learn_sigma)
    y = torch.tensor([0, 2, 3])  # 3 = null class
    x = sample(model, d, (3, 1, 8, 8), y, sampler=sampler, steps=4, cfg_scale=4.0,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
