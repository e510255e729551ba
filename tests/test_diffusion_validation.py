"""validation_loss: common random numbers, batch independence, eval mode, variance reduction."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_diffusion_analytic import COV, MU, SHAPE, GaussianOracle, _one_thread, make_oracle  # noqa: F401
from torch import nn

from dit_core.diffusion import (
    DiffusionConfig,
    create_diffusion,
    make_betas,
    validation_loss,
    validation_losses,
)


def gaussian_data(n, label=0, seed=0):
    L = np.linalg.cholesky(COV)
    x = MU[label] + np.random.default_rng(seed).standard_normal((n, 4)) @ L.T
    return torch.as_tensor(x).float().reshape(n, *SHAPE), torch.full((n,), label, dtype=torch.long)


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_values_depend_only_on_seed_and_example_index(objective):
    d = create_diffusion(DiffusionConfig(objective=objective, learn_sigma=False))
    oracle = make_oracle(d)
    x0, y = gaussian_data(40)
    full = validation_losses(d, oracle, x0, y, seed=3)
    assert full.shape == (40,) and full.dtype == torch.float64
    torch.testing.assert_close(validation_losses(d, oracle, x0, y, seed=3, batch_size=7), full)
    halves = torch.cat([
        validation_losses(d, oracle, x0[:15], y[:15], seed=3),
        validation_losses(d, oracle, x0[15:], y[15:], seed=3, index_offset=15),
    ])  # fmt: skip
    torch.testing.assert_close(halves, full)
    same_weights = copy.deepcopy(oracle)
    assert validation_loss(d, same_weights, x0, y, seed=3) == validation_loss(d, oracle, x0, y, seed=3)
    assert validation_loss(d, oracle, x0, y, seed=4) != validation_loss(d, oracle, x0, y, seed=3)


def test_matches_the_expected_loss_of_the_optimal_model():
    """Averaged over t ~ U{0..T-1}, the optimal eps-model's loss is the mean irreducible error."""
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    oracle = make_oracle(d)
    x0, y = gaussian_data(3000, seed=1)
    losses = validation_losses(d, oracle, x0, y, seed=0)
    abar = np.cumprod(1 - make_betas("linear", 1000))
    want = np.mean(
        [np.trace(np.eye(4) - (1 - ab) * np.linalg.inv(ab * COV + (1 - ab) * np.eye(4))) / 4 for ab in abar]
    )
    assert losses.mean().item() == pytest.approx(want, abs=4 * losses.std().item() / math.sqrt(len(losses)))


class DropoutNet(nn.Module):
    """A model whose output differs between train and eval mode (like DiT's label dropout)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, t, y):
        h = self.drop(self.lin(x.reshape(len(x), 4)) + 1e-3 * t[:, None].float())
        return h.reshape(len(x), 2, 2, 2)


def test_runs_in_eval_mode_without_grad_and_restores_training_flag():
    d = create_diffusion(DiffusionConfig(learn_sigma=True))
    model = DropoutNet().train()
    x0, y = gaussian_data(16)
    a = validation_loss(d, model, x0, y, seed=1)
    b = validation_loss(d, model, x0, y, seed=1)
    assert a == b and math.isfinite(a)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    vb = validation_loss(d, model, x0, y, seed=1, term="vb")
    mse = validation_loss(d, model, x0, y, seed=1, term="mse")
    assert a == pytest.approx(mse + vb, rel=1e-6)  # T * 1e-3 = 1


def test_common_random_numbers_reduce_variance_of_checkpoint_differences():
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    good = make_oracle(d)
    worse = GaussianOracle(MU + 0.5, COV, SHAPE, "eps", 1000, d.alphas_cumprod)
    x0, y = gaussian_data(128)
    crn, independent = [], []
    for s in range(12):
        base = validation_loss(d, good, x0, y, seed=s)
        crn.append(validation_loss(d, worse, x0, y, seed=s) - base)
        independent.append(validation_loss(d, worse, x0, y, seed=s + 1000) - base)
    assert np.all(np.array(crn) > 0)  # the worse model is always measured as worse
    assert np.var(crn) < np.var(independent) / 10


class ZeroModel(nn.Module):
    def forward(self, x, t, y=None):
        return torch.zeros_like(x)


def test_stratified_timesteps_reduce_variance():
    """v-objective, zero model, zero data: the loss is abar_t * |eps|^2 / D, so with D = 256 nearly all
    of its variance comes from t, which the golden-ratio timesteps stratify."""
    d = create_diffusion(DiffusionConfig(objective="v", learn_sigma=False))
    x0 = torch.zeros(256, 1, 16, 16)
    strat = [validation_loss(d, ZeroModel(), x0, None, seed=s) for s in range(30)]
    rand = [validation_loss(d, ZeroModel(), x0, None, seed=s, timesteps="random") for s in range(30)]
    abar = np.cumprod(1 - make_betas("linear", 1000))
    assert np.mean(strat) == pytest.approx(abar.mean(), rel=0.02)  # E_t[abar_t] * E|eps|^2 / D
    assert np.var(strat) < np.var(rand) / 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, "non-negative int"),
        ({"term": "kl"}, r"valid choices: \['loss', 'mse'\]"),
        ({"timesteps": "sobol"}, r"\['stratified', 'random'\]"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_input(kwargs, match):
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    x0, y = gaussian_data(4)
    with pytest.raises(ValueError, match=match):
        validation_loss(d, make_oracle(d), x0, y, **kwargs)


def test_empty_validation_set_is_refused_and_one_example_is_enough():
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    x0 = torch.zeros(0, *SHAPE)
    with pytest.raises(ValueError, match="^validation_loss needs at least one example$"):
        validation_loss(d, ZeroModel(), x0, None)
    # one example of zeros against the zero model: the eps loss is |eps|^2 / D at one timestep, finite
    one = validation_loss(d, ZeroModel(), torch.zeros(1, *SHAPE), None)
    assert math.isfinite(one) and one > 0


def test_per_example_draws_default_to_stratified_and_are_reproducible():
    from dit_core.diffusion.validation import example_noise, example_uniforms

    idx = torch.arange(6)
    assert torch.equal(example_uniforms(3, idx), example_uniforms(3, idx, "stratified"))
    rand = example_uniforms(3, idx, "random")
    assert torch.equal(rand, example_uniforms(3, idx, "random")) and not torch.equal(
        rand, example_uniforms(4, idx, "random")
    )
    assert torch.equal(rand[2:4], example_uniforms(3, torch.tensor([2, 3]), "random"))  # per example
    assert example_noise(3, torch.tensor([], dtype=torch.long), (1, 2, 2)).shape == (0, 1, 2, 2)
    # stratified: a golden-ratio sequence, so consecutive examples differ by the golden ratio (mod 1)
    u = example_uniforms(3, idx).numpy()
    np.testing.assert_allclose(np.mod(np.diff(u), 1.0), (math.sqrt(5) - 1) / 2, rtol=1e-12)
