"""dit_core.diffusion: schedules, forward process, posterior, losses, respacing, bad input.

Every expectation is an independent closed form (formulas written out here in numpy/scipy) or a
Monte Carlo estimate, never the library's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from test_diffusion_analytic import (  # noqa: F401
    COV,
    SHAPE,
    _one_thread,
    class_samples,
    diffusion_and_oracle,
)
from torch import nn

from dit_core.diffusion import (
    DiffusionConfig,
    FlowMatching,
    GaussianDiffusion,
    create_diffusion,
    make_betas,
    space_timesteps,
)

# ---------------------------------------------------------------- config and bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"objective": "score"}, r"^diffusion.objective: 'score' is unknown.*\['eps', 'v', 'x0', 'flow'\]"),
        (
            {"schedule": "sigmoid"},
            r"^diffusion.schedule: 'sigmoid' is unknown.*\['linear', 'cosine', 'quadratic'\]",
        ),
        ({"timestep_sampling": "beta"}, r"\['uniform', 'logit_normal'\]"),
        ({"fixed_variance": "medium"}, r"\['large', 'small'\]"),
        ({"num_timesteps": 0}, "^diffusion.num_timesteps: must be >= 1"),
        ({"num_timesteps": 10.5}, "^diffusion.num_timesteps: must be an int"),
        ({"logit_normal_std": 0.0}, "^diffusion.logit_normal_std: must be a finite number > 0"),
        ({"vb_lambda": -1.0}, "^diffusion.vb_lambda: must be a finite number >= 0"),
        ({"betas": [0.1, 0.2]}, "^diffusion.betas: .*set diffusion.num_timesteps=2"),
        ({"betas": [0.1, 1.5], "num_timesteps": 2}, r"\(0, 1\)"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start <= beta_end"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionConfig(**kwargs)


def test_create_diffusion_types_and_learn_sigma():
    assert isinstance(create_diffusion(DiffusionConfig()), GaussianDiffusion)
    assert create_diffusion(DiffusionConfig()).learn_sigma is True
    assert create_diffusion(DiffusionConfig(objective="v", learn_sigma=False)).learn_sigma is False
    flow = create_diffusion(DiffusionConfig(objective="flow"))  # learn_sigma=True is ignored by flow
    assert isinstance(flow, FlowMatching) and flow.learn_sigma is False
    assert flow.num_timesteps == 1000
    with pytest.raises(ValueError, match="DiffusionConfig"):
        create_diffusion({"objective": "eps"})


def test_custom_betas_are_used_verbatim():
    betas = [0.01, 0.02, 0.05, 0.1]
    d = create_diffusion(DiffusionConfig(betas=betas, num_timesteps=4))
    np.testing.assert_allclose(d.betas.numpy(), betas)
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), np.cumprod(1 - np.array(betas)))


# ---------------------------------------------------------------- schedules


def test_linear_schedule_is_ddpm_default():
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999)
    # DDPM: sqrt(abar_T) ~ 6.4e-3, so x_T is N(0, I) up to a 4e-5 variance fraction of signal
    abar_T = math.exp(sum(math.log(1 - (1e-4 + k * (0.02 - 1e-4) / 999)) for k in range(1000)))
    assert create_diffusion(DiffusionConfig()).alphas_cumprod[-1].item() == pytest.approx(abar_T, rel=1e-9)
    assert abar_T == pytest.approx(4.04e-5, rel=0.01)
    # improved-DDPM scaling: for T = 100 the endpoints are 10x larger
    assert make_betas("linear", 100)[-1] == pytest.approx(0.2)


def test_cosine_schedule_matches_nichol_dhariwal():
    T, s = 1000, 0.008
    d = create_diffusion(DiffusionConfig(schedule="cosine", num_timesteps=T))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    want = np.array([f(t + 1) / f(0) for t in range(T)])
    abar = d.alphas_cumprod.numpy()
    unclipped = slice(0, 990)  # beta is capped at 0.999 only at the very end
    np.testing.assert_allclose(abar[unclipped], want[unclipped], rtol=1e-10)
    assert d.betas.max().item() == pytest.approx(0.999)


def test_quadratic_schedule_is_linear_in_sqrt_beta():
    betas = make_betas("quadratic", 1000)
    np.testing.assert_allclose(np.sqrt(betas), np.linspace(0.01, math.sqrt(0.02), 1000), rtol=1e-12)


def test_short_schedules_cap_beta_at_0_999():
    """T = 10 scales the endpoints by 100: beta_end = 2 would destroy the signal; every beta is capped."""
    scale, T = 100.0, 10
    linear = np.linspace(scale * 1e-4, scale * 0.02, T)
    quadratic = np.linspace(math.sqrt(scale * 1e-4), math.sqrt(scale * 0.02), T) ** 2
    for name, want in (("linear", linear), ("quadratic", quadratic)):
        betas = make_betas(name, T)
        assert want[-1] > 1 and betas.max() == 0.999, name
        np.testing.assert_allclose(betas, np.minimum(want, 0.999), rtol=1e-12, err_msg=name)


def test_cosine_betas_use_their_offset():
    """cosine_betas(T, s) follows Nichol & Dhariwal's abar with that s, not the default 0.008."""
    from dit_core.diffusion.schedules import cosine_betas

    T, s = 50, 0.05
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    want = np.array([1 - f(t + 1) / f(t) for t in range(T)])
    np.testing.assert_allclose(cosine_betas(T, s)[:-1], want[:-1], rtol=1e-10)  # the last is capped


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match=r"\['linear', 'cosine', 'quadratic'\]"):
        make_betas("sigmoid", 10)


# ---------------------------------------------------------------- forward process and posterior


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_marginals_match_the_markov_chain(schedule):
    """Run x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z step by step; compare moments with q(x_t|x0)."""
    d = create_diffusion(DiffusionConfig(schedule=schedule, num_timesteps=100))
    betas = d.betas.numpy()
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x0 = torch.tensor([0.8, -0.3], dtype=torch.float64).expand(n, 2)
    x = x0.clone()
    checks = {0, 10, 99}
    for t in range(100):
        x = math.sqrt(1 - betas[t]) * x + math.sqrt(betas[t]) * torch.randn(
            n, 2, generator=g, dtype=torch.float64
        )
        if t in checks:
            tt = torch.full((n,), t)
            abar = float(d.alphas_cumprod[t])  # q(x_t | x0) = N(sqrt(abar) x0, (1 - abar) I)
            mean, var = math.sqrt(abar) * x0[0].numpy(), 1.0 - abar
            np.testing.assert_allclose(x.mean(0).numpy(), mean, atol=5 * math.sqrt(var / n))
            np.testing.assert_allclose(x.var(0).numpy(), [var, var], rtol=0.04)
            # q_sample draws have the same moments
            xs = d.q_sample(x0, tt, torch.randn(n, 2, generator=g, dtype=torch.float64))
            np.testing.assert_allclose(xs.var(0).numpy(), x.var(0).numpy(), rtol=0.05)


@pytest.mark.parametrize("t", [1, 5, 500, 999])
def test_posterior_is_bayes_rule(t):
    """q(x_{t-1} | x_t, x0) from generic Gaussian conditioning of the joint (x_{t-1}, x_t) given x0."""
    d = create_diffusion(DiffusionConfig())
    betas = make_betas("linear", 1000)
    abar = np.cumprod(1 - betas)
    a_prev, beta = abar[t - 1], betas[t]
    x0 = torch.tensor([[0.7, -1.2, 0.1]], dtype=torch.float64)
    x_t = torch.tensor([[0.3, 0.9, -2.0]], dtype=torch.float64)
    # joint given x0: x_{t-1} ~ N(sqrt(a_prev) x0, 1 - a_prev); x_t = sqrt(1-beta) x_{t-1} + sqrt(beta) z
    m1, v1 = math.sqrt(a_prev) * x0, 1 - a_prev
    m2, v2 = math.sqrt(1 - beta) * m1, (1 - beta) * v1 + beta
    cov12 = math.sqrt(1 - beta) * v1
    want_mean = m1 + cov12 / v2 * (x_t - m2)
    want_var = v1 - cov12**2 / v2
    mean, var, logvar = d.q_posterior_mean_variance(x0, x_t, torch.tensor([t]))
    np.testing.assert_allclose(mean.numpy(), want_mean.numpy(), rtol=1e-9, atol=1e-12)
    assert var.item() == pytest.approx(want_var, rel=1e-9)
    assert logvar.item() == pytest.approx(math.log(want_var), rel=1e-9)


# ---------------------------------------------------------------- VB term and hybrid loss


def _kl(m1, v1, m2, v2):
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


@pytest.mark.parametrize("t", [1, 37, 999])
@pytest.mark.parametrize("var_value", [-1.0, 0.3, 1.0])
def test_vb_term_is_gaussian_kl_in_bits(t, var_value):
    d = create_diffusion(DiffusionConfig(learn_sigma=True))
    betas = make_betas("linear", 1000)
    alphas, abar = 1 - betas, np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    g = torch.Generator().manual_seed(t)
    x0, eps_pred, x_t = (torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    out = torch.cat([eps_pred, torch.full_like(eps_pred, var_value)], dim=1)
    got = d.vb_terms(out, x0, x_t, torch.full((2,), t))
    # DDPM eq. 7 (posterior) and eq. 11 (model mean from eps); improved DDPM eq. 15 (variance)
    post_var = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
    post_mean = (
        math.sqrt(abar_prev[t]) * betas[t] * x0 + math.sqrt(alphas[t]) * (1 - abar_prev[t]) * x_t
    ) / (1 - abar[t])
    model_mean = (x_t - betas[t] / math.sqrt(1 - abar[t]) * eps_pred) / math.sqrt(alphas[t])
    frac = (var_value + 1) / 2
    model_var = math.exp(frac * math.log(betas[t]) + (1 - frac) * math.log(post_var))
    want = _kl(post_mean.numpy(), post_var, model_mean.numpy(), model_var).mean(axis=(1, 2, 3)) / math.log(2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-8)


@pytest.mark.parametrize("var_value", [1.0, -1.0, 0.0])
def test_vb_term_at_t0_is_discretized_decoder_nll(var_value):
    d = create_diffusion(DiffusionConfig(learn_sigma=True))
    betas = make_betas("linear", 1000)
    beta0 = betas[0]
    abar = np.cumprod(1 - betas)
    post_var1 = betas[1] * (1 - abar[0]) / (1 - abar[1])  # beta~_0 = 0 is replaced by beta~_1 (DDPM)
    x0 = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0], dtype=torch.float64).reshape(5, 1, 1, 1)
    eps = torch.tensor([0.2, -1.0, 0.7, 1.5, -0.4], dtype=torch.float64).reshape(5, 1, 1, 1)
    x_t = math.sqrt(1 - beta0) * x0 + math.sqrt(beta0) * eps
    eps_pred = eps + torch.tensor([0.5, -0.3, 0.1, 0.0, 1.2], dtype=torch.float64).reshape(5, 1, 1, 1)
    out = torch.cat([eps_pred, torch.full_like(eps_pred, var_value)], dim=1)
    got = d.vb_terms(out, x0, x_t, torch.zeros(5, dtype=torch.long)).numpy()
    mean = ((x_t - math.sqrt(beta0) * eps_pred) / math.sqrt(1 - beta0)).flatten().numpy()
    # at t=0 the posterior mean of x_{-1} is x0_hat itself: coef1 = 1, coef2 = 0
    frac = (var_value + 1) / 2
    sd = math.exp(0.5 * (frac * math.log(beta0) + (1 - frac) * math.log(post_var1)))
    want = []
    for x, m in zip(x0.flatten().numpy(), mean):
        lo = -np.inf if x <= -1 + 1e-9 else x - 1 / 255
        hi = np.inf if x >= 1 - 1e-9 else x + 1 / 255
        want.append(-math.log(stats.norm.cdf(hi, m, sd) - stats.norm.cdf(lo, m, sd)) / math.log(2))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_vb_term_of_a_mixed_batch_is_each_rows_own_term():
    """Rows at t = 0 (decoder NLL) and t > 0 (KL) in one batch: each row's value and gradient are
    those of the row alone (on CPU the NLL is computed for the t = 0 rows only)."""
    d = create_diffusion(DiffusionConfig(learn_sigma=True))
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(5, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    out = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64).clamp(-1, 1).requires_grad_()
    t = torch.tensor([0, 7, 0, 999, 1])
    got = d.vb_terms(out, x0, x_t, t)
    (grad,) = torch.autograd.grad(got.sum(), out)
    for i in range(5):
        row = out[i : i + 1].detach().requires_grad_()
        want = d.vb_terms(row, x0[i : i + 1], x_t[i : i + 1], t[i : i + 1])
        (want_grad,) = torch.autograd.grad(want.sum(), row)
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad[i : i + 1], want_grad, rtol=1e-12, atol=0)
    assert got[0] != got[1] and torch.isfinite(got).all()
    assert d.vb_terms(out, x0, x_t, torch.full((5,), 3)).shape == (5,)  # no t = 0 row at all


class ConstantModel(nn.Module):
    """Outputs [p_mean; p_var] everywhere, so gradients per channel group are easy to read."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.p_mean = nn.Parameter(torch.tensor(0.3))
        self.p_var = nn.Parameter(torch.tensor(0.2))
        self.c = channels

    def forward(self, x, t, y=None):
        n, _, h, w = x.shape
        return torch.cat([self.p_mean.expand(n, self.c, h, w), self.p_var.expand(n, self.c, h, w)], 1)


def test_hybrid_loss_is_mse_plus_vb_with_stop_gradient():
    d = create_diffusion(DiffusionConfig(learn_sigma=True))
    model = ConstantModel()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 100, 500, 999])
    terms = d.training_losses(model, x0, t, noise=noise)
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (6,)
    np.testing.assert_allclose(
        terms["mse"].detach().numpy(), ((noise - 0.3) ** 2).mean((1, 2, 3)).numpy(), rtol=1e-5
    )
    # lambda = 1e-3 on L_vlb = T * L_t: with T = 1000 the loss is DiT's mse + vb
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    terms["vb"].sum().backward()
    assert model.p_mean.grad.item() == 0.0 and model.p_var.grad.abs().item() > 0
    model.zero_grad()
    d.training_losses(model, x0, t, noise=noise)["mse"].sum().backward()
    assert model.p_var.grad.item() == 0.0 and model.p_mean.grad.abs().item() > 0


def test_vb_weight_scales_with_respaced_length():
    d = create_diffusion(DiffusionConfig(num_timesteps=250, vb_lambda=2e-3))
    x0, noise = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    terms = d.training_losses(ConstantModel(), x0, torch.tensor([3, 100]), noise=noise)
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.5 * terms["vb"])


def test_wrong_output_channels_is_a_clear_error():
    d = create_diffusion(DiffusionConfig(learn_sigma=False))
    with pytest.raises(ValueError, match="learn_sigma=diffusion.learn_sigma"):
        d.training_losses(ConstantModel(), torch.zeros(2, 1, 2, 2), torch.tensor([1, 2]))


# ---------------------------------------------------------------- objectives at the optimum


def _irreducible_mse(objective: str, a: float, s: float) -> float:
    """min_f E||target - f(x_t)||^2 / D for target = P x0 + Q eps and x0 ~ N(mu, COV)."""
    P, Q = {"eps": (0.0, 1.0), "x0": (1.0, 0.0), "v": (-s, a), "flow": (-1.0, 1.0)}[objective]
    eye = np.eye(4)
    K = a * a * COV + s * s * eye
    cross = P * a * COV + Q * s * eye
    cond = P * P * COV + Q * Q * eye - cross @ np.linalg.solve(K, cross.T)
    return float(np.trace(cond) / 4)


@pytest.mark.parametrize("objective", ["eps", "v", "x0", "flow"])
def test_optimal_model_reaches_the_irreducible_loss(objective):
    d, oracle = diffusion_and_oracle(objective)
    g = torch.Generator().manual_seed(1)
    n = 20_000
    x0 = class_samples(1, torch.as_tensor(np.random.default_rng(0).standard_normal((n, 4)))).float()
    y = torch.ones(n, dtype=torch.long)
    for t_value in [100, 600] if objective != "flow" else [0.2, 0.7]:
        if objective == "flow":
            t = torch.full((n,), t_value, dtype=torch.float64)
            a, s = 1 - t_value, t_value
        else:
            t = torch.full((n,), t_value)
            abar = float(np.cumprod(1 - make_betas("linear", 1000))[t_value])
            a, s = math.sqrt(abar), math.sqrt(1 - abar)
        noise = torch.randn(n, *SHAPE, generator=g)
        mse = d.training_losses(oracle, x0, t, {"y": y}, noise=noise)["loss"].double()
        want = _irreducible_mse(objective, a, s)
        assert mse.mean().item() == pytest.approx(want, abs=4 * mse.std().item() / math.sqrt(n))


# ---------------------------------------------------------------- timestep sampling


def test_uniform_timesteps_cover_all_steps():
    d = create_diffusion(DiffusionConfig(num_timesteps=10))
    t = d.sample_timesteps(20_000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (20_000,)
    counts = torch.bincount(t, minlength=10).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("objective", ["flow", "eps"])
def test_logit_normal_timesteps(objective):
    cfg = DiffusionConfig(objective=objective, timestep_sampling="logit_normal", logit_normal_mean=0.5,
                          logit_normal_std=0.8)  # fmt: skip
    d = create_diffusion(cfg)
    t = d.sample_timesteps(5000, "cpu", torch.Generator().manual_seed(0)).double()
    u = (
        t
        if objective == "flow"
        else (t + torch.rand(t.shape, generator=torch.Generator().manual_seed(1))) / 1000
    )
    logit = torch.log(u / (1 - u)).numpy()
    assert stats.kstest(logit, stats.norm(0.5, 0.8).cdf).pvalue > 1e-3


# ---------------------------------------------------------------- respacing


def test_space_timesteps_conventions():
    assert space_timesteps(1000, "ddim50") == list(range(19, 1000, 20))  # DDIM's stride, down from T-1
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, 1) == [999]  # one step: the noisiest (sampling starts there)
    sections = space_timesteps(300, "10,5,1")
    assert len(sections) == 16 and sections[:10] == list(range(0, 100, 11))[:10]
    assert sections[-2:] == [199, 299]  # a one-step section keeps its noisiest step


@pytest.mark.parametrize(
    "spec, match", [("2000", "at most 1000"), ("ddim0", "at least 1"), ("abc", "cannot parse")]
)
def test_space_timesteps_bad_input(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "quadratic"])
@pytest.mark.parametrize("spec", ["250", "ddim50", "10,20,30"])
def test_respaced_betas_reproduce_alphas_cumprod(schedule, spec):
    d = create_diffusion(DiffusionConfig(schedule=schedule))
    r = d.respace(spec)
    kept = space_timesteps(1000, spec)
    abar = np.cumprod(1 - make_betas(schedule, 1000))
    np.testing.assert_allclose(np.cumprod(1 - r.betas.numpy()), abar[kept], rtol=1e-10)
    assert r.num_timesteps == len(kept)
    assert r.timestep_map.tolist() == kept


def test_respaced_model_sees_original_timesteps():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x, t, y=None):
            seen.append(t.clone())
            return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    r = create_diffusion(DiffusionConfig()).respace("ddim10")
    r.training_losses(Recorder(), torch.zeros(3, 1, 2, 2), torch.tensor([0, 4, 9]))
    assert seen[0].tolist() == [99, 499, 999]


def test_timestep_dtype_mismatch_is_a_clear_error():
    x0 = torch.zeros(2, 1, 2, 2)
    gauss = create_diffusion(DiffusionConfig(learn_sigma=True))
    with pytest.raises(ValueError, match="integer step indices"):
        gauss.training_losses(ConstantModel(), x0, torch.tensor([0.5, 0.1]))
    flow = create_diffusion(DiffusionConfig(objective="flow"))
    with pytest.raises(ValueError, match=r"floats in \[0, 1\]"):
        flow.training_losses(ConstantModel(), x0, torch.tensor([1, 2]))


# ---------------------------------------------------------------- schedule defaults, flow conversions


def test_schedule_functions_default_to_the_published_constants():
    """DDPM's beta_1 = 1e-4, beta_T = 0.02 (Ho et al. 2020) and the cosine offset s = 0.008 (Nichol &
    Dhariwal 2021), when the schedule functions are called without them."""
    from dit_core.diffusion.schedules import cosine_alpha_bar, linear_betas, quadratic_betas

    for betas in (linear_betas(1000), quadratic_betas(1000)):
        assert betas[0] == pytest.approx(1e-4, rel=1e-12) and betas[-1] == pytest.approx(0.02, rel=1e-12)
    quad = quadratic_betas(500)  # endpoints scale by 1000 / T
    assert quad[0] == pytest.approx(2e-4, rel=1e-12) and quad[-1] == pytest.approx(0.04, rel=1e-12)
    t = np.array([0.0, 0.5, 1.0])
    want = np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(cosine_alpha_bar(t), want, rtol=1e-12)


def test_flow_velocity_converts_back_to_data_and_noise():
    """x_t = (1 - t) x0 + t n with v = n - x0: x0 = x_t - t v and n = x_t + (1 - t) v."""
    fm = create_diffusion(DiffusionConfig(objective="flow"))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, *SHAPE, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    x0_hat, noise_hat = fm.predict_x0_eps(noise - x0, x_t, t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(noise_hat, noise, rtol=1e-12, atol=1e-12)
    out = torch.zeros_like(x0)
    losses = fm.losses_from_output(out, x0, x_t, t, noise)
    want = ((noise - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["mse"].double(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss"], losses["mse"], rtol=0, atol=0)


def test_flow_refuses_other_objectives_with_a_message():
    with pytest.raises(ValueError, match=r"^FlowMatching needs objective='flow', got 'eps'$"):
        FlowMatching(DiffusionConfig(objective="eps"))


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_timesteps_are_reproducible_from_the_generator_and_flow_times_are_float64(objective):
    d = create_diffusion(DiffusionConfig(objective=objective))
    draw = lambda seed: d.sample_timesteps(2000, "cpu", torch.Generator().manual_seed(seed))
    torch.testing.assert_close(draw(3), draw(3), rtol=0, atol=0)
    assert not torch.equal(draw(3), draw(4))
    if objective == "flow":  # "float64-precise floats in [0, 1]": most are not float32 numbers
        t = draw(3)
        assert t.dtype == torch.float64
        assert (t.float().double() != t).float().mean().item() > 0.9


def test_logit_normal_step_indices_stay_in_range_at_the_extremes():
    """A wide logit-normal puts sigmoid(.) at exactly 0 or 1 in float64: floor(s T) must stay in [0, T)."""
    cfg = DiffusionConfig(timestep_sampling="logit_normal", logit_normal_mean=0.0, logit_normal_std=10.0)
    d = create_diffusion(cfg)
    u = torch.tensor([0.0, 1e-300, 0.5, 1.0 - 1e-16, 1.0], dtype=torch.float64)
    t = d.timesteps_from_uniform(u)
    assert t.tolist() == [0, 0, 500, 999, 999]


def test_timesteps_without_a_generator_use_the_global_rng():
    d = create_diffusion(DiffusionConfig(num_timesteps=10))
    torch.manual_seed(0)
    a = d.sample_timesteps(500, "cpu")
    torch.manual_seed(0)
    assert torch.equal(a, d.sample_timesteps(500, "cpu")) and a.dtype == torch.long
    assert sorted(a.unique().tolist()) == list(range(10))


def test_fixed_small_variance_is_the_posterior_variance():
    """DDPM's fixed variances: "small" = beta~_t (log clipped at t = 0), "large" = beta_t (t = 0: beta~_1)."""
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    post = betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])  # beta~_t for t >= 1
    t = torch.tensor([0, 1, 500, 999])
    x = torch.zeros(4, *SHAPE, dtype=torch.float64)
    small = create_diffusion(DiffusionConfig(learn_sigma=False, fixed_variance="small"))
    large = create_diffusion(DiffusionConfig(learn_sigma=False, fixed_variance="large"))
    want_small = np.log(np.r_[post[0], post[0], post[499], post[998]])
    want_large = np.log(np.r_[post[0], betas[1], betas[500], betas[999]])
    np.testing.assert_allclose(small.model_log_variance(None, t, x).flatten().numpy(), want_small, rtol=1e-10)
    np.testing.assert_allclose(large.model_log_variance(None, t, x).flatten().numpy(), want_large, rtol=1e-10)


def test_output_shape_error_names_the_expected_shape():
    d = create_diffusion(DiffusionConfig(learn_sigma=True))

    class Wrong(nn.Module):
        def forward(self, x, t, y=None):
            return torch.zeros(x.shape[0], x.shape[1], *x.shape[2:])

    with pytest.raises(
        ValueError, match=r"has shape \(2, 3, 4, 5\) but this diffusion expects \(2, 6, 4, 5\) "
    ):
        d.training_losses(Wrong(), torch.zeros(2, 3, 4, 5), torch.tensor([1, 2]))


def test_space_timesteps_with_a_list_of_section_counts_and_its_messages():
    assert space_timesteps(100, [2, 3]) == space_timesteps(100, "2,3")
    kept = space_timesteps(100, (2, 3))
    assert len(kept) == 5 and kept[0] == 0 and kept[-1] == 99 and max(k for k in kept if k < 50) == 49
    with pytest.raises(
        ValueError, match=r"^section_counts is empty; give e.g. '250', 'ddim50' or '10,15,20'$"
    ):
        space_timesteps(100, [])
    with pytest.raises(ValueError, match=r"^timestep respacing \[0\] asks for 0 steps"):
        space_timesteps(100, [0])
    with pytest.raises(ValueError, match=r"^timestep respacing 'ddim0' asks for 0 steps"):
        space_timesteps(100, "ddim0")


def test_create_diffusion_defaults_and_refuses_other_types():
    d = create_diffusion()
    assert isinstance(d, GaussianDiffusion) and d.config == DiffusionConfig()
    with pytest.raises(ValueError, match=r"^create_diffusion takes a DiffusionConfig, got int$"):
        create_diffusion(5)


@pytest.mark.parametrize("betas", [[0.5, 1.5], [0.0, 0.1], [-0.1, 0.2], [], [[0.1, 0.2]]])
def test_custom_betas_outside_the_unit_interval_are_refused(betas):
    with pytest.raises(ValueError, match=r"^betas must be a non-empty 1-D sequence of values in \(0, 1\]$"):
        GaussianDiffusion(DiffusionConfig(learn_sigma=False), betas=np.asarray(betas))


def test_a_single_step_diffusion_uses_beta_as_its_variance():
    """T = 1: no posterior step exists, so both fixed variances fall back to beta_0."""
    d = GaussianDiffusion(DiffusionConfig(learn_sigma=False), betas=np.array([0.3]))
    t, x = torch.tensor([0]), torch.zeros(1, *SHAPE, dtype=torch.float64)
    assert d.model_log_variance(None, t, x).item() == pytest.approx(math.log(0.3), rel=1e-12)
    assert d.posterior_log_variance_clipped.tolist() == pytest.approx([math.log(0.3)])
    assert d.alphas_cumprod_prev.tolist() == [1.0]


def test_schedule_endpoints_reach_make_betas():
    for name in ("linear", "quadratic"):
        betas = make_betas(name, 1000, beta_start=2e-4, beta_end=0.01)
        assert betas[0] == pytest.approx(2e-4, rel=1e-12) and betas[-1] == pytest.approx(0.01, rel=1e-12)
    d = create_diffusion(DiffusionConfig(num_timesteps=4))
    abar = np.cumprod(1 - np.linspace(0.025, 5.0, 4).clip(max=0.999))
    np.testing.assert_allclose(d.alphas_cumprod_prev.numpy(), np.r_[1.0, abar[:-1]], rtol=1e-12)


def test_diffusion_config_boundaries_and_field_names():
    DiffusionConfig(beta_start=0.01, beta_end=0.01)  # equal endpoints: a constant schedule
    DiffusionConfig(num_timesteps=1)
    with pytest.raises(ValueError, match=r"^diffusion.beta_start: needs 0 < beta_start <= beta_end < 1, "):
        DiffusionConfig(beta_end=1.0)
    with pytest.raises(ValueError, match=r"^diffusion.num_timesteps: must be >= 1, got 0$"):
        DiffusionConfig(num_timesteps=0)
    for field in ("timestep_sampling", "fixed_variance"):
        with pytest.raises(ValueError, match=rf"^diffusion.{field}: 'bogus' is unknown; choose one of \["):
            DiffusionConfig(**{field: "bogus"})
