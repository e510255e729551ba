"""Samplers against closed forms: with the exact denoiser for Gaussian data N(mu, Sigma), every sampler
must reproduce mu and Sigma (deterministic samplers exactly up to discretisation, computed through
their affine map; stochastic ones within Monte Carlo error). Also CFG, inversion and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_diffusion_analytic import COV, MU, SHAPE, _one_thread, make_oracle  # noqa: F401

from dit_core.diffusion import DiffusionConfig, create_diffusion, invert, sample

D = 4


def diffusion_and_oracle(objective="eps", schedule="linear", learn_sigma=False, **oracle_kwargs):
    d = create_diffusion(DiffusionConfig(objective=objective, schedule=schedule, learn_sigma=learn_sigma))
    return d, make_oracle(d, learn_sigma=learn_sigma, **oracle_kwargs)


def affine_moments(oracle, d, label=0, **kwargs):
    """Exact mean and covariance of a deterministic sampler's output for z ~ N(0, I).

    With the linear oracle the sampler is an affine map x = M z + b, so running it on z = 0 and the
    unit vectors gives b and M; then E[x] = b and Cov[x] = M M^T with no sampling error."""
    z = torch.cat([torch.zeros(1, D), torch.eye(D)]).reshape(D + 1, *SHAPE)
    y = torch.full((D + 1,), label, dtype=torch.long)
    x = sample(oracle, d, z.shape, y, noise=z, **kwargs).reshape(D + 1, D).double()
    M = (x[1:] - x[0]).T
    return x[0].numpy(), (M @ M.T).numpy()


@pytest.mark.parametrize(
    "objective, schedule, sampler, steps, mean_tol, cov_tol",
    [
        ("eps", "linear", "ddim", 250, 0.01, 0.025),  # mean: x_T is N(0, I) but abar_T = 4e-5 > 0
        ("v", "cosine", "ddim", 100, 1e-3, 0.045),
        ("x0", "quadratic", "ddim", 100, 0.035, 0.045),
        ("flow", "linear", "euler", 200, 1e-4, 0.02),
        ("flow", "linear", "ddim", 200, 1e-4, 0.02),
        ("flow", "linear", "heun", 10, 1e-4, 0.005),
        ("eps", "cosine", "dpmpp_2m", 50, 1e-3, 0.015),  # DDIM needs ~5x the steps for this covariance
    ],
)
def test_deterministic_samplers_reproduce_gaussian_data(
    objective, schedule, sampler, steps, mean_tol, cov_tol
):
    d, oracle = diffusion_and_oracle(objective, schedule)
    mean, cov = affine_moments(oracle, d, sampler=sampler, steps=steps)
    np.testing.assert_allclose(mean, MU[0], atol=mean_tol)
    np.testing.assert_allclose(cov, COV, atol=cov_tol)


@pytest.mark.parametrize(
    "objective, schedule, sampler, steps, order",
    [
        ("eps", "cosine", "ddim", 20, 1),
        ("flow", "linear", "euler", 20, 1),
        ("flow", "linear", "heun", 32, 2),
        ("eps", "cosine", "dpmpp_2m", 20, 2),
        ("eps", "linear", "dpmpp_2m", 40, 2),
    ],
)
def test_sampler_convergence_order(objective, schedule, sampler, steps, order):
    """Doubling the steps divides the covariance error by 2 (first order) or 4 (Heun and
    DPM-Solver++(2M), second order)."""
    d, oracle = diffusion_and_oracle(objective, schedule)
    err = [
        np.abs(affine_moments(oracle, d, sampler=sampler, steps=k)[1] - COV).max() for k in (steps, 2 * steps)
    ]
    assert math.log2(err[0] / err[1]) == pytest.approx(order, abs=0.25)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("schedule", ["linear", "quadratic"])
def test_dpmpp_2m_matches_diffusers_scheduler(schedule):
    """Our DPM-Solver++(2M) against diffusers' `DPMSolverMultistepScheduler` (dpmsolver++, order 2,
    last step first order to sigma = 0) on the same trained timesteps and the same denoiser."""
    from diffusers import DPMSolverMultistepScheduler

    d, oracle = diffusion_and_oracle("eps", schedule)
    steps, n = 10, 6
    ref = DPMSolverMultistepScheduler(
        trained_betas=d.betas.tolist(), algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero"
    )
    ref.set_timesteps(timesteps=d.respace(steps).timestep_map.flip(0).tolist())
    z = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x = z.clone()
    for t in ref.timesteps:
        x = ref.step(oracle(x, torch.full((n,), int(t)), y), t, x).prev_sample
    ours = sample(oracle, d, z.shape, y, sampler="dpmpp_2m", steps=steps, noise=z)
    assert oracle.calls[-steps:] == [n] * steps
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=0)
    ddim = sample(oracle, d, z.shape, y, sampler="ddim", steps=steps, noise=z)
    assert (ddim - x).abs().max() > 1e-2  # the second-order correction is not a no-op


def _mc_check(x, mean, cov, z_max=4.5):
    n = x.shape[0]
    x = x.reshape(n, D).double()
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    z_mean = np.abs(x.mean(0).numpy() - mean) / se_mean
    z_cov = np.abs(torch.cov(x.T).numpy() - cov) / se_cov
    assert z_mean.max() < z_max, f"mean off by {z_mean.max():.1f} standard errors"
    assert z_cov.max() < z_max, f"covariance off by {z_cov.max():.1f} standard errors"


@pytest.mark.parametrize(
    "objective, sampler, steps, eta, learn_sigma",
    [
        ("eps", "ddpm", 250, 0.0, False),  # fixed "large" variance
        ("v", "ddpm", 250, 0.0, True),  # learned-range variance channel set to +1 (beta_t)
        ("eps", "ddim", 250, 1.0, False),
        ("x0", "ddim", 250, 0.0, False),
        ("flow", "ddpm", 100, 0.0, False),
        ("flow", "heun", 10, 0.0, False),
    ],
)
def test_samplers_match_gaussian_data_within_sampling_error(objective, sampler, steps, eta, learn_sigma):
    d, oracle = diffusion_and_oracle(objective, learn_sigma=learn_sigma, var_value=1.0)
    n = 4000
    x = sample(oracle, d, (n, *SHAPE), torch.ones(n, dtype=torch.long), sampler=sampler, steps=steps, eta=eta,
               generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert x.shape == (n, *SHAPE)
    _mc_check(x, MU[1], COV)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    d, oracle = diffusion_and_oracle()
    y = torch.zeros(8, dtype=torch.long)
    run = lambda seed, eta: sample(oracle, d, (8, *SHAPE), y, steps=20, eta=eta,
                                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
    assert torch.equal(run(0, 0.0), run(0, 0.0))
    noise = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(0, 0.0), sample(oracle, d, (8, *SHAPE), y, steps=20, noise=noise))
    assert torch.equal(run(1, 1.0), run(1, 1.0))
    # with eta = 1 the same starting noise but other step noise gives other samples
    a = sample(
        oracle, d, (8, *SHAPE), y, steps=20, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(2)
    )
    b = sample(
        oracle, d, (8, *SHAPE), y, steps=20, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(3)
    )
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "objective, sampler, steps, explicit_tol, iters, exact_tol",
    [
        ("eps", "ddim", 50, 0.3, 6, 1e-4),
        ("eps", "ddim", 10, 1.0, 10, 2e-4),  # big steps: sqrt(abar) ratios up to 2.9 between levels
        ("v", "ddim", 25, 0.6, 6, 1e-4),
        ("flow", "euler", 25, 0.4, 6, 1e-4),
        ("flow", "heun", 10, 0.01, 6, 1e-4),
    ],
)
def test_inversion_round_trip(objective, sampler, steps, explicit_tol, iters, exact_tol):
    d, oracle = diffusion_and_oracle(objective)
    n = 32
    L = np.linalg.cholesky(COV)
    x0 = torch.as_tensor(MU[0] + np.random.default_rng(0).standard_normal((n, D)) @ L.T).float()
    x0 = x0.reshape(n, *SHAPE)
    y = torch.zeros(n, dtype=torch.long)
    errors = []
    for k in (0, iters):
        z = invert(oracle, d, x0, y, sampler=sampler, steps=steps, fixed_point_iters=k)
        back = sample(oracle, d, x0.shape, y, sampler=sampler, steps=steps, noise=z)
        errors.append((back - x0).abs().max().item())
    assert errors[0] < explicit_tol  # the classic explicit inversion: O(1/steps)
    assert errors[1] < exact_tol  # fixed-point refined: exact up to float32


# ---------------------------------------------------------------- classifier-free guidance


@pytest.mark.parametrize("objective, sampler, steps", [("eps", "ddim", 100), ("flow", "heun", 10)])
@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_guidance_moves_the_mean_as_expected(objective, sampler, steps, scale):
    """Class 0 ~ N(mu_0, S), null ~ N(mu_null, S): the guided denoiser is the exact denoiser of
    N(mu_null + w (mu_0 - mu_null), S), because the prediction is affine in the mean."""
    d, oracle = diffusion_and_oracle(objective)
    mean, cov = affine_moments(oracle, d, sampler=sampler, steps=steps, cfg_scale=scale)
    want = MU[2] + scale * (MU[0] - MU[2])
    np.testing.assert_allclose(mean, want, atol=0.02)
    np.testing.assert_allclose(cov, COV, atol=0.05)
    # every model evaluation was ONE batched forward of 2N = 2 * 5 rows
    evals = steps * (2 if sampler == "heun" else 1)
    assert oracle.calls == [2 * (D + 1)] * evals


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional():
    d, oracle = diffusion_and_oracle()
    noise = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1, 2, 0])  # label 2 is the null class
    cond = sample(oracle, d, noise.shape, y, steps=10, noise=noise)
    assert oracle.calls == [6] * 10  # scale 1: plain conditional forward, no doubled batch
    via_cfg = sample(oracle, d, noise.shape, y, steps=10, noise=noise, cfg_scale=1.0 + 1e-12)
    torch.testing.assert_close(via_cfg, cond, atol=1e-5, rtol=0)
    uncond = sample(oracle, d, noise.shape, None, steps=10, noise=noise)
    guided0 = sample(oracle, d, noise.shape, y, steps=10, noise=noise, cfg_scale=0.0)
    torch.testing.assert_close(guided0, uncond, atol=1e-5, rtol=0)


def test_guide_channels_reach_the_model_and_learned_sigma_is_not_guided():
    d, oracle = diffusion_and_oracle(learn_sigma=True, var_value=0.5)
    seen = []
    original = oracle.forward_with_cfg

    def spy(x, t, y, cfg_scale, guide_channels=None):
        out = original(x, t, y, cfg_scale, guide_channels)
        seen.append((guide_channels, out[:, 1:].unique().tolist()))
        return out

    oracle.forward_with_cfg = spy
    x = sample(
        oracle, d, (4, *SHAPE), torch.zeros(4, dtype=torch.long), steps=3, cfg_scale=3.0, guide_channels=1
    )
    assert x.shape == (4, *SHAPE)
    assert seen == [(1, [0.5])] * 3


# ---------------------------------------------------------------- bad input and bookkeeping


@pytest.mark.parametrize(
    "objective, kwargs, match",
    [
        ("eps", {"sampler": "dpm++"}, r"valid choices: \['ddpm', 'ddim', 'dpmpp_2m', 'euler', 'heun'\]"),
        ("eps", {"sampler": "euler"}, r"valid choices: \['ddpm', 'ddim', 'dpmpp_2m'\]"),
        ("eps", {"steps": 1001}, "larger than the 1000 trained timesteps"),
        ("flow", {"steps": 1001}, "larger than the 1000 trained timesteps"),
        ("eps", {"steps": 0}, "steps must be an int >= 1"),
        ("eps", {"cfg_scale": -0.5}, "cfg_scale must be >= 0"),
        ("eps", {"eta": 1.5}, r"eta must lie in \[0, 1\]"),
        ("flow", {"sampler": "heun", "eta": 0.5}, "only applies to sampler='ddim'"),
        ("eps", {"noise": torch.zeros(3, 1, 2, 2)}, "noise has shape"),
        ("eps", {"y": torch.zeros(3, dtype=torch.long)}, r"y must have shape \(2,\)"),
    ],
)
def test_sample_bad_input(objective, kwargs, match):
    d, oracle = diffusion_and_oracle(objective)
    kwargs = {"y": torch.zeros(2, dtype=torch.long), **kwargs}
    y = kwargs.pop("y")
    with pytest.raises(ValueError, match=match):
        sample(oracle, d, (2, *SHAPE), y, **kwargs)
    assert oracle.calls == []


def test_invert_bad_input():
    d, oracle = diffusion_and_oracle()
    x0 = torch.zeros(2, *SHAPE)
    with pytest.raises(ValueError, match=r"valid choices: \['ddpm', 'ddim', 'dpmpp_2m'\]"):
        invert(oracle, d, x0, None, sampler="heun")
    with pytest.raises(ValueError, match="cannot be inverted"):
        invert(oracle, d, x0, None, sampler="ddpm")
    with pytest.raises(ValueError, match="not 'dpmpp_2m'; use 'ddim'"):
        invert(oracle, d, x0, None, sampler="dpmpp_2m")
    with pytest.raises(ValueError, match="fixed_point_iters"):
        invert(oracle, d, x0, None, fixed_point_iters=-1)


def test_sample_restores_training_flag_and_shows_progress(capsys):
    d, oracle = diffusion_and_oracle()
    oracle.train()
    x = sample(oracle, d, (3, *SHAPE), torch.zeros(3, dtype=torch.long), steps=4, progress=True)
    assert oracle.training and x.shape == (3, *SHAPE) and not x.requires_grad
    assert "4/4" in capsys.readouterr().err
    assert math.isfinite(x.sum().item())


@pytest.mark.parametrize(
    "objective, call, sampler, label",
    [
        ("eps", "sample", "ddim", "ddim"),
        ("eps", "invert", "ddim", "ddim-invert"),
        ("flow", "sample", "euler", "euler"),
        ("flow", "invert", "heun", "heun-invert"),
    ],
)
def test_progress_bar_is_labelled_and_off_by_default(capsys, objective, call, sampler, label):
    """progress=True draws one bar named after the sampler (and "-invert"); the default draws nothing."""
    d, oracle = diffusion_and_oracle(objective)
    x = torch.zeros(2, *SHAPE)
    y = torch.zeros(2, dtype=torch.long)
    run = (
        (lambda **kw: sample(oracle, d, x.shape, y, noise=x, **kw))
        if call == "sample"
        else (lambda **kw: invert(oracle, d, x, y, **kw))
    )
    run(sampler=sampler, steps=3)
    assert capsys.readouterr().err == ""
    run(sampler=sampler, steps=3, progress=True)
    err = capsys.readouterr().err
    assert f"{label}:" in err and "3/3" in err


class ZeroVelocity(torch.nn.Module):
    """v = 0: x0_hat = eps_hat = x, so every flow step is x' = a' x + sqrt(s'^2 - sigma^2) x + sigma z."""

    num_classes = 4

    def forward(self, x, t, y):
        return torch.zeros_like(x)


def test_flow_ddpm_is_the_ancestral_step_with_its_closed_form_variance():
    """Two steps 1 -> 0.5 -> 0 from x = 0: the first adds sigma z with sigma = (s'/s) sqrt(s^2 -
    (a/a')^2 s'^2) = 0.5 (eta = 1), the second is deterministic (s' = 0). So the samples are 0.5 z:
    variance 0.25 for "ddpm", 0 for the deterministic samplers; a seeded generator repeats them."""
    d = create_diffusion(DiffusionConfig(objective="flow"))
    shape = (4000, *SHAPE)
    zeros = torch.zeros(shape)
    kw = dict(steps=2, noise=zeros, y=None)
    out = sample(ZeroVelocity(), d, shape, sampler="ddpm", generator=torch.Generator().manual_seed(0), **kw)
    var = out.double().var().item()
    n = out.numel()
    assert var == pytest.approx(0.25, abs=5 * 0.25 * math.sqrt(2 / n))
    assert out.double().mean().item() == pytest.approx(0.0, abs=5 * 0.5 / math.sqrt(n))
    again = sample(ZeroVelocity(), d, shape, sampler="ddpm", generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    for sampler in ("ddim", "euler", "heun"):
        det = sample(ZeroVelocity(), d, shape, sampler=sampler, **kw)
        assert det.abs().max().item() == 0.0


class LinearEps(torch.nn.Module):
    """eps_hat(x, t) = 0.5 x + t / 1000, with t the trained step index the model receives."""

    num_classes = 4

    def forward(self, x, t, y):
        return 0.5 * x + t.view(-1, 1, 1, 1).to(x.dtype) / 1000


def test_two_step_explicit_ddim_inversion_is_the_closed_form():
    """steps = 2 keeps trained steps (0, 999). Without refinement the inversion is x1 = a0 x + s0 e(x, 0)
    (from clean data x0_hat = x), then x2 = a1 x0_1 + s1 e1 with e1 = e(x1, 0), x0_1 = (x1 - s0 e1) / a0
    (the model evaluated at the less noisy level)."""
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    (a0, s0), (a1, s1) = [(math.sqrt(abar[i]), math.sqrt(1 - abar[i])) for i in (0, 999)]
    x = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(2, 1, 2, 2)
    z = invert(LinearEps(), d, x.float(), None, sampler="ddim", steps=2).double()
    xn = x.numpy()
    x1 = a0 * xn + s0 * (0.5 * xn)
    e1 = 0.5 * x1
    want = a1 * (x1 - s0 * e1) / a0 + s1 * e1
    np.testing.assert_allclose(z.numpy(), want, rtol=1e-5, atol=1e-6)


def test_flow_time_grid_is_uniform_in_float64():
    from dit_core.diffusion.samplers import _time_grid

    assert _time_grid(3) == pytest.approx([1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0], rel=1e-15, abs=0)


def test_ddim_noise_at_eta_one_is_the_ddpm_posterior_std():
    """x' = a' x0 + sqrt(s'^2 - sigma^2) eps + sigma z, sigma^2 = (1 - abar') / (1 - abar) (1 - abar / abar')
    at eta = 1 (DDIM paper eq. 16), and eta scales sigma."""
    from dit_core.diffusion.samplers import ddim_step

    abar, abar_n = 0.3, 0.6
    cur, nxt = (math.sqrt(abar), math.sqrt(1 - abar)), (math.sqrt(abar_n), math.sqrt(1 - abar_n))
    sigma = math.sqrt((1 - abar_n) / (1 - abar) * (1 - abar / abar_n))
    zeros = torch.zeros(20_000, dtype=torch.float64)
    for eta in (1.0, 0.5):
        out = ddim_step(zeros, zeros, cur, nxt, eta=eta, generator=torch.Generator().manual_seed(0))
        assert out.std().item() == pytest.approx(eta * sigma, rel=0.03)
    ones = torch.ones(3, dtype=torch.float64)  # the deterministic part
    det = ddim_step(ones, 2 * ones, cur, nxt, eta=0.0)
    torch.testing.assert_close(det, (nxt[0] + 2 * nxt[1]) * ones)
