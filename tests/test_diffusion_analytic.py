"""The analytic test "model": the exact optimal denoiser for Gaussian data, checked by Monte Carlo.

For x0 ~ N(mu_y, Sigma) and x_t = a x0 + s eps (Gaussian diffusion: a = sqrt(abar_t), s = sqrt(1-abar_t);
flow: a = 1 - t, s = t), x_t ~ N(a mu, K) with K = a^2 Sigma + s^2 I, and
    E[eps | x_t] = s K^{-1} (x_t - a mu),     E[x0 | x_t] = mu + a Sigma K^{-1} (x_t - a mu).
The other sampler tests import `GaussianOracle` from here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dit_core.diffusion import DiffusionConfig, create_diffusion


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread avoids oversubscribing the shared CPU cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class GaussianOracle(nn.Module):
    """Bayes-optimal prediction for class-conditional Gaussian data, with the DiT model interface.

    means: (K + 1, D) class means, the last row is the null (unconditional) class; cov: (D, D).
    objective: what to output ("eps", "v", "x0", "flow" = velocity noise - x0).
    learn_sigma: append C constant variance channels equal to `var_value`.
    It records the batch size of every call in `calls`.
    """

    def __init__(self, means, cov, shape, objective="eps", num_timesteps=1000, alphas_cumprod=None,
                 learn_sigma=False, var_value=-1.0):  # fmt: skip
        super().__init__()
        self.means = torch.as_tensor(np.asarray(means), dtype=torch.float64)
        self.cov = torch.as_tensor(np.asarray(cov), dtype=torch.float64)
        self.shape = tuple(shape)
        self.objective = objective
        self.T = num_timesteps
        self.abar = None if alphas_cumprod is None else torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.learn_sigma = learn_sigma
        self.var_value = var_value
        self.num_classes = self.means.shape[0] - 1
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls: list[int] = []

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) (N,) float64 for model timesteps t (N,)."""
        if self.objective == "flow":
            u = t.double() / self.T
            return 1.0 - u, u
        idx = t.long()
        assert torch.equal(idx.double(), t.double()), "Gaussian diffusion must pass integer timesteps"
        abar = self.abar[idx]
        return abar.sqrt(), (1.0 - abar).sqrt()

    def posterior(self, x, t, y):
        """(E[x0 | x_t], E[eps | x_t]) as (N, D) float64."""
        n, d = x.shape[0], self.cov.shape[0]
        xf = x.reshape(n, d).double()
        uniq, inverse = torch.unique(t.double(), return_inverse=True)  # samplers: one t per call
        ua, us = self.coefficients(uniq)
        a, s = ua[inverse], us[inverse]
        mu = self.means[y.long()]
        eye = torch.eye(d, dtype=torch.float64)
        kinv = torch.linalg.inv(ua[:, None, None] ** 2 * self.cov + us[:, None, None] ** 2 * eye)
        r = torch.einsum("nij,nj->ni", kinv[inverse], xf - a[:, None] * mu)
        eps = s[:, None] * r
        x0 = mu + a[:, None] * r @ self.cov
        return x0, eps

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        x0, eps = self.posterior(x, t, y)
        a, s = (c[:, None] for c in self.coefficients(t.double()))
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "flow": eps - x0}[self.objective]
        out = out.reshape(x.shape).to(x.dtype)
        if self.learn_sigma:
            out = torch.cat([out, torch.full_like(out, self.var_value)], dim=1)
        return out

    def forward_with_cfg(self, x, t, y, cfg_scale, guide_channels=None):
        """Official DiT convention: x = [h; h], y = [labels; null]; guided output for both halves."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        g = guide_channels if guide_channels is not None else self.shape[0]
        cond, uncond = out[: len(half), :g], out[len(half) :, :g]
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), out[:, g:]], dim=1)


SHAPE = (1, 2, 2)  # D = 4
MU = np.array([[0.5, -1.0, 0.25, 1.5], [-0.5, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # classes 0, 1, null
_A = np.array([[1.0, 0.3, 0.0, -0.2], [0.0, 0.8, 0.4, 0.0], [0.2, 0.0, 0.6, 0.1], [0.0, -0.3, 0.0, 0.5]])
COV = _A @ _A.T + 0.05 * np.eye(4)


def make_oracle(diffusion, objective=None, **kwargs) -> GaussianOracle:
    objective = objective or diffusion.objective
    abar = None if objective == "flow" else diffusion.alphas_cumprod
    return GaussianOracle(MU, COV, SHAPE, objective, diffusion.num_timesteps, abar, **kwargs)


def diffusion_and_oracle(objective: str):
    """A fixed-variance diffusion for `objective` and its exact optimal model (`GaussianOracle`)."""
    diffusion = create_diffusion(DiffusionConfig(objective=objective, learn_sigma=False))
    return diffusion, make_oracle(diffusion)


def class_samples(label: int, z: torch.Tensor) -> torch.Tensor:
    """x0 (N, *SHAPE) float64 of class `label`: MU[label] + L z for standard normal z (N, 4), L L^T = COV."""
    L = torch.linalg.cholesky(torch.as_tensor(COV))
    return (torch.as_tensor(MU[label]) + z.double() @ L.T).reshape(len(z), *SHAPE)


@pytest.mark.parametrize("objective", ["eps", "v", "x0", "flow"])
def test_oracle_is_the_conditional_expectation(objective):
    """Regressing the training target on x_t over Monte Carlo draws recovers the oracle's linear map."""
    diffusion, oracle = diffusion_and_oracle(objective)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = class_samples(0, torch.randn(n, 4, generator=g, dtype=torch.float64))
    noise = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    if objective == "flow":
        t = torch.full((n,), 0.4, dtype=torch.float64)
        x_t = diffusion.noised(x0, noise, t)
        target = noise - x0
    else:
        t = torch.full((n,), 300, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t, noise)
        target = diffusion.training_target(x0, noise, t)
    pred = oracle(x_t, diffusion.model_timesteps(t), torch.zeros(n, dtype=torch.long)).double()
    # residuals of the oracle are uncorrelated with x_t and have zero mean (orthogonality principle)
    resid = (target - pred).reshape(n, 4)
    xc = x_t.reshape(n, 4) - x_t.reshape(n, 4).mean(0)
    cross = resid.T @ xc / n
    assert resid.mean(0).abs().max() < 0.01
    assert cross.abs().max() < 0.01
