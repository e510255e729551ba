"""Session 39: the model and training options combined as a researcher would (docs/_s39_options.md)."""

from __future__ import annotations

import pytest
import torch
from test_diffusion_analytic import SHAPE, make_oracle

from dit_core.diffusion import DiffusionConfig, create_diffusion, sample
from dit_core.diffusion.respace import space_timesteps


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- one sampling step


def test_one_evenly_spaced_step_is_the_noisiest():
    """Both ends for 2+ steps; a single step keeps T-1 (was 0, the least noisy step)."""
    assert space_timesteps(1000, 1) == space_timesteps(1000, "1") == [999]
    assert space_timesteps(1000, 2) == [0, 999]
    assert space_timesteps(1, 1) == [0]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m"])
def test_one_step_sampling_returns_the_posterior_mean_at_the_noisiest_step(sampler):
    """A 1-step sampler (``--steps 1``) starts from pure noise x_T, so its one model evaluation must be
    at t = T-1, and it returns E[x0 | x_T] (~ the class mean: abar_T = 4e-5). It used to evaluate at
    t = 0 (abar 0.9999), reading the start noise as almost clean data and returning it nearly unchanged."""
    diffusion = create_diffusion(DiffusionConfig(learn_sigma=False))
    oracle = make_oracle(diffusion)
    n = 64
    noise = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 2
    out = sample(oracle, diffusion, (n, *SHAPE), y, sampler=sampler, steps=1, noise=noise,
                 generator=torch.Generator().manual_seed(1))  # fmt: skip
    want, _ = oracle.posterior(noise.double(), torch.full((n,), 999), y)
    torch.testing.assert_close(out.double().reshape(n, -1), want, rtol=0, atol=2e-4)
    means = oracle.means[y]  # and that is the class mean, up to the signal abar_T leaves
    assert (out.double().reshape(n, -1) - means).abs().max() < 0.05


# ---------------------------------------------------------------- class labels at sampling time


def _tiny_dit(**kw):
    from dit_core.models import DiT

    torch.manual_seed(0)
    return DiT(depth=1, hidden_size=16, num_heads=2, patch_size=2, input_size=4, in_channels=1, num_classes=3,
               frequency_embedding_size=8, **kw)  # fmt: skip


@pytest.mark.parametrize(
    "dropout, y, match",
    [
        (0.0, None, r"y=None means the null label, which this model does not have .*labels in 0\.\.2"),
        (0.0, [3, 0], r"label 3 is outside the model's labels 0\.\.2 \(no null label"),
        (0.1, [4, 0], r"label 4 is outside the model's labels 0\.\.2 \(and the null label 3\)"),
        (0.1, [0, -1], r"label -1 is outside"),
    ],
)
def test_sampling_refuses_labels_the_model_has_no_embedding_for(dropout, y, match):
    """Was an IndexError 'index out of range in self' from the embedding (on CUDA a device assert)."""
    model = _tiny_dit(class_dropout_prob=dropout)
    diffusion = create_diffusion(DiffusionConfig())
    y = None if y is None else torch.tensor(y)
    with pytest.raises(ValueError, match=match):
        sample(model, diffusion, (2, 1, 4, 4), y, steps=2)


def test_sampling_takes_every_label_the_model_has():
    """The edges: 0, num_classes - 1, and the null label (and y=None) only where it was trained."""
    diffusion = create_diffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    with_null = _tiny_dit(class_dropout_prob=0.1)
    for y in (torch.tensor([0, 2, 3]), None):
        assert sample(with_null, diffusion, (3, 1, 4, 4), y, steps=2, generator=g).shape == (3, 1, 4, 4)
    without = _tiny_dit(class_dropout_prob=0.0)
    assert (
        sample(without, diffusion, (2, 1, 4, 4), torch.tensor([0, 2]), steps=2, generator=g).isfinite().all()
    )
