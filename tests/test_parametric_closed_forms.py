"""analysis.parametric piece by piece, each against a closed form or a plain-numpy reference.

The fits themselves are tested on the Chinchilla data and on synthetic laws in test_analysis.py; these
fast tests pin down the objective, its helpers and the checks (they are the mutation-testing selection
for analysis/parametric.py, see docs/testing.md).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import special

from analysis import parametric as P

LAW = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.30}


def _points(n_points=12, seed=0, noise=0.01):
    rng = np.random.default_rng(seed)
    n = np.logspace(7, 9, n_points)
    d = np.logspace(9, 11, n_points)[rng.permutation(n_points)]
    loss = P.parametric_loss(LAW, n, d) * np.exp(noise * rng.standard_normal(n_points))
    return np.log(n), np.log(d), np.log(loss)


def _theta(law):
    return np.array([math.log(law["E"]), math.log(law["A"]), math.log(law["B"]), law["alpha"], law["beta"]])


def _reference_residuals(theta, log_n, log_d, log_loss):
    """log(E + A/N^alpha + B/D^beta) - log L, written out directly."""
    e, a, b, alpha, beta = theta
    pred = np.exp(e) + np.exp(a) * np.exp(-alpha * log_n) + np.exp(b) * np.exp(-beta * log_d)
    return np.log(pred) - log_loss


def test_huber_is_scipys_with_the_clamped_residual_as_derivative():
    r = np.linspace(-0.01, 0.01, 41)
    for delta in (1e-3, 4e-3):
        val, grad = P._huber(r, delta)
        np.testing.assert_allclose(val, special.huber(delta, r), rtol=1e-12, atol=1e-18)
        np.testing.assert_allclose(grad, np.clip(r, -delta, delta), rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("delta", [1e-3, 0.05])
def test_objective_is_the_summed_huber_of_log_residuals(delta):
    logs = _points()
    law = {**LAW, "alpha": 0.3, "B": 1000.0}
    theta = _theta(law)
    res = _reference_residuals(theta, *logs)
    f, g = P.objective(theta, *logs, delta)
    assert f == pytest.approx(special.huber(delta, res).sum(), rel=1e-12)
    fm, gm = P.objective(theta, *logs, delta, reduction="mean")
    assert fm == pytest.approx(f / len(res), rel=1e-12)
    np.testing.assert_allclose(gm, g / len(res), rtol=1e-12)
    # gradient: central differences of the reference objective, parameter by parameter
    for j in range(5):
        h = np.zeros(5)
        h[j] = 1e-6
        up = special.huber(delta, _reference_residuals(theta + h, *logs)).sum()
        down = special.huber(delta, _reference_residuals(theta - h, *logs)).sum()
        assert g[j] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9)


def test_grid_objective_scores_every_row_like_objective_across_chunks():
    logs = _points()
    rng = np.random.default_rng(1)
    thetas = _theta(LAW) + rng.normal(0, 0.3, size=(1100, 5))  # three chunks of 512
    scores = P.grid_objective(thetas, *logs, 1e-3)
    want = [special.huber(1e-3, _reference_residuals(t, *logs)).sum() for t in thetas]
    np.testing.assert_allclose(scores, want, rtol=1e-10)


def test_term_shares_are_each_terms_largest_fraction_of_the_loss():
    log_n, log_d, _ = _points()
    theta = _theta(LAW)
    n, d = np.exp(log_n), np.exp(log_d)
    terms = {
        "E": np.full_like(n, LAW["E"]),
        "N": LAW["A"] / n ** LAW["alpha"],
        "D": LAW["B"] / d ** LAW["beta"],
    }
    total = sum(terms.values())
    shares = P.term_shares(theta, log_n, log_d)
    assert set(shares) == {"E", "N", "D"}
    for k, v in terms.items():
        assert shares[k] == pytest.approx((v / total).max(), rel=1e-12)


def test_stationarity_is_the_imbalance_of_the_points_gradient_pulls():
    """max_j |sum_i c_ij| / sum_i |c_ij| with c_ij = huber'(r_i) d pred_i / d theta_j (finite differences)."""
    logs = _points(noise=0.02)
    theta = _theta({**LAW, "E": 1.5, "alpha": 0.36})
    delta = 0.01
    res = _reference_residuals(theta, *logs)
    dh = np.clip(res, -delta, delta)
    jac = np.empty((len(res), 5))
    for j in range(5):
        h = np.zeros(5)
        h[j] = 1e-6
        jac[:, j] = (_reference_residuals(theta + h, *logs) - _reference_residuals(theta - h, *logs)) / 2e-6
    c = dh[:, None] * jac
    ratio = np.abs(c.sum(0)) / np.abs(c).sum(0)
    assert P.stationarity(theta, *logs, delta) == pytest.approx(ratio.max(), rel=1e-5)
    free = np.array([False, True, False, True, False])
    assert P.stationarity(theta, *logs, delta, free) == pytest.approx(ratio[free].max(), rel=1e-5)
    assert P.stationarity(theta, *logs, delta, np.zeros(5, bool)) == 0.0
    # every residual of one sign: no pull cancels, the imbalance is exactly 1
    high = theta + np.array([1.0, 0, 0, 0, 0])
    assert P.stationarity(high, *logs, delta) == pytest.approx(1.0, rel=1e-12)


def test_e_upper_bound_interpolates_the_profile_statistic():
    """stat(E) = n ln(f(E) / f0), with stat(0) = 0; the bound is where it crosses the threshold."""
    n, f0 = 10, 2.0
    es = [0.1, 0.2, 0.3]
    stats = [1.0, 2.0, 4.0]
    profile = [(e, f0 * math.exp(s / n)) for e, s in zip(es, stats)]
    assert P.e_upper_bound(profile, f0, n, 2.706, e_max=0.5) == pytest.approx(0.2 + 0.706 / 2 * 0.1, rel=1e-9)
    # crossing before the first profiled E: interpolated from E = 0
    assert P.e_upper_bound(profile, f0, n, 0.5, e_max=0.5) == pytest.approx(0.05, rel=1e-9)
    # never crossed: the largest E allowed
    assert P.e_upper_bound(profile, f0, n, 5.0, e_max=0.5) == 0.5
    # f0 below 1 (a small summed objective): the statistic is still relative to f0
    small = [(e, 0.5 * math.exp(s / n)) for e, s in zip(es, stats)]
    assert P.e_upper_bound(small, 0.5, n, 2.706, e_max=0.5) == pytest.approx(0.2 + 0.706 / 2 * 0.1, rel=1e-9)
    # a statistic exactly at the threshold is inside: at the last point, the bound is e_max
    exact = [(0.1, math.exp(1.0)), (0.2, math.exp(2.0))]
    assert P.e_upper_bound(exact, 1.0, 1, 2.0, e_max=0.7) == 0.7
    # a profile value below f0 (rounding) counts as f0, i.e. statistic 0
    low = [(0.1, f0 * 0.99), (0.2, f0 * math.exp(0.4))]
    assert P.e_upper_bound(low, f0, n, 2.0, e_max=1.0) == pytest.approx(0.1 + 0.5 * 0.1, rel=1e-9)


def test_check_points_returns_logs_and_names_each_problem():
    n, d, loss = np.logspace(6, 8, 6), np.logspace(9, 10, 6), np.linspace(2, 3, 6)
    out = P.check_points(n, d, loss)
    for got, x in zip(out, (n, d, loss)):
        np.testing.assert_allclose(got, np.log(x), rtol=1e-15)
    with pytest.raises(ValueError, match=r"same length, got \[6, 5, 6\]"):
        P.check_points(n, d[:5], loss)
    for i, name in enumerate(("N", "D", "loss")):
        arrs = [n.copy(), d.copy(), loss.copy()]
        arrs[i][2] = np.nan
        with pytest.raises(ValueError, match=rf"^{name} has non-finite values"):
            P.check_points(*arrs)
        arrs[i][2] = 0.0
        arrs[i][3] = -1.0
        with pytest.raises(ValueError, match=rf"^{name} must be > 0 everywhere \(2 rows are not\)"):
            P.check_points(*arrs)
    with pytest.raises(ValueError, match="5 parameters but only 5 points"):
        P.check_points(n[:5], d[:5], loss[:5])


def test_bounds_clamping_and_at_bound():
    cfg = P.ParametricConfig(exponent_bounds=(0.0, 2.5), e_floor_frac=1e-4)
    log_loss = np.log([0.5, 0.2, 0.8])
    bounds = P._bounds(cfg, log_loss)
    assert bounds[0] == (pytest.approx(math.log(0.2 * 1e-4)), None)
    assert bounds[1:] == [(None, None), (None, None), (0.0, 2.5), (0.0, 2.5)]
    theta = np.array([-100.0, -50.0, 80.0, -1.0, 3.0])
    np.testing.assert_allclose(P._clip(theta, bounds), [math.log(0.2e-4), -50.0, 80.0, 0.0, 2.5], rtol=1e-15)
    at = P._at_bound(np.array([math.log(0.2e-4) + 5e-7, 1.0, 1.0, 2.5 - 5e-7, 1.0]), bounds)
    np.testing.assert_array_equal(at, [True, False, False, True, False])
    at = P._at_bound(np.array([math.log(0.2e-4) + 2e-6, 1.0, 1.0, 2e-6, 2.5 - 2e-6]), bounds)
    assert not at.any()


def test_grid_is_the_product_of_the_axes_plus_loss_anchored_e():
    cfg = P.ParametricConfig(e_grid=(0.0, 1.0), e_fractions=(0.5,), a_grid=(2.0,), b_grid=(3.0, 4.0),
                             alpha_grid=(0.5,), beta_grid=(0.25, 0.75))  # fmt: skip
    assert P._grid(replace(cfg, e_fractions=()), np.log([0.4])).shape == (2 * 1 * 2 * 1 * 2, 5)
    grid = P._grid(cfg, np.log([0.4, 0.9]))
    assert grid.shape == (3 * 4, 5)
    assert sorted(set(grid[:, 0])) == pytest.approx(sorted([0.0, 1.0, math.log(0.5 * 0.4)]))
    assert {tuple(r) for r in grid[:, 1:]} == {(2.0, b, 0.5, be) for b in (3.0, 4.0) for be in (0.25, 0.75)}
    full = P._grid(P.ParametricConfig(e_fractions=()), np.log([0.4]))  # Hoffmann et al.'s 4,500 starts
    assert full.shape == (4500, 5)


def test_converged_is_stationary_or_an_exact_fit():
    cfg = P.ParametricConfig(stationarity_tol=1e-3)
    assert P._converged(1.0, 0.9e-3, 10, cfg) and not P._converged(1.0, 1e-3, 10, cfg)
    # exact fit: every log residual below ~1e-6, i.e. summed huber below n * 0.5e-12
    assert P._converged(10 * 0.5e-12 * 0.99, 0.5, 10, cfg)
    assert not P._converged(10 * 0.5e-12 * 1.01, 0.5, 10, cfg)
    mean = P.ParametricConfig(reduction="mean")
    assert P._converged(0.4e-12, 0.5, 10, mean) and not P._converged(0.6e-12, 0.5, 10, mean)


def test_theta_and_params_round_trip_and_allocation_exponents():
    params = P._theta_to_params(_theta(LAW))
    assert params == pytest.approx(LAW, rel=1e-12)
    fit = P.ParametricFit(params=dict(LAW), objective=0.0, converged=True, n_points=10, n_starts=1,
                          n_converged_starts=1, stationarity=0.0, config=P.ParametricConfig())  # fmt: skip
    np.testing.assert_allclose(fit.theta, _theta(LAW), rtol=1e-12)
    assert fit.a == pytest.approx(0.30 / 0.64) and fit.b == pytest.approx(0.34 / 0.64)
    fit.params = {**LAW, "E": 0.0, "alpha": 0.0, "beta": 0.0}
    assert fit.theta[0] == -np.inf and math.isnan(fit.a) and math.isnan(fit.b)
    assert fit.se == {} and fit.conf_int() == {} and fit.correlation() is None


def test_optimal_allocation_defaults_to_six_flops_and_handles_zero_exponents():
    n, d, loss = P.optimal_allocation(LAW, 1e21)
    assert 6.0 * n * d == pytest.approx(1e21, rel=1e-12)
    g = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / 0.64)
    assert n == pytest.approx(g * (1e21 / 6.0) ** (0.30 / 0.64), rel=1e-12)
    assert loss == pytest.approx(P.parametric_loss(LAW, n, d), rel=1e-12)
    assert P.optimal_allocation({**LAW, "alpha": 0.0}, 1e21)[0] == 0.0
    assert P.optimal_allocation({**LAW, "beta": 0.0}, 1e21)[0] == np.inf


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"delta": 0.0}, "delta must be > 0"),
        ({"delta": math.nan}, "delta must be > 0"),  # a NaN Huber threshold: every objective NaN
        ({"reduction": "median"}, "reduction must be 'sum' or 'mean'"),
        ({"n_starts": 0}, "n_starts must be >= 1"),
        ({"exponent_bounds": (-0.1, 3.0)}, "exponent_bounds must be 0 <= lo < hi"),
        ({"exponent_bounds": (1.0, 1.0)}, "exponent_bounds must be 0 <= lo < hi"),
        ({"e_floor_frac": 0.0}, "0 < e_floor_frac < e_at_floor_frac < 1"),
        ({"e_floor_frac": 1e-3}, "0 < e_floor_frac < e_at_floor_frac < 1"),
        ({"e_at_floor_frac": 1.0}, "0 < e_floor_frac < e_at_floor_frac < 1"),
    ],
)
def test_parametric_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.ParametricConfig(**kwargs)
    # the boundary values just inside are accepted
    P.ParametricConfig(
        delta=1e-9, n_starts=1, exponent_bounds=(0.0, 1e-9), e_floor_frac=1e-9, e_at_floor_frac=0.999
    )


# ---------------------------------------------------------------- starts, E at its floor, assess


def test_variable_projection_start_is_exact_on_noise_free_data():
    """At the true exponents (on the varpro grid) L is exactly linear in (E, A, B): NNLS recovers them."""
    law = {"E": 0.5, "A": 40.0, "B": 300.0, "alpha": 0.35, "beta": 0.3}
    logs = _points(noise=0.0)
    logs = (logs[0], logs[1], np.log(P.parametric_loss(law, np.exp(logs[0]), np.exp(logs[1]))))
    cfg = P.ParametricConfig(n_varpro_starts=2)
    assert 0.35 in cfg.varpro_exponents and 0.3 in cfg.varpro_exponents
    starts = P._varpro_starts(*logs, cfg)
    assert len(starts) == 2
    np.testing.assert_allclose(starts[0], _theta(law), rtol=1e-6, atol=1e-6)
    assert P._varpro_starts(*logs, P.ParametricConfig(n_varpro_starts=0)) == []


def test_grid_starts_are_the_best_grid_points_including_loss_anchored_e():
    """Diffusion-scale losses (~0.1) lie below every E of Hoffmann's grid (e >= -1, E >= 0.37): the best
    starts are the e = ln(f * min loss) ones."""
    law = {"E": 0.05, "A": 2.0, "B": 30.0, "alpha": 0.3, "beta": 0.35}
    log_n, log_d, _ = _points(noise=0.0)
    log_loss = np.log(P.parametric_loss(law, np.exp(log_n), np.exp(log_d)))
    cfg = P.ParametricConfig(n_starts=5, n_varpro_starts=0)
    starts = P._grid_starts(log_n, log_d, log_loss, cfg)
    assert len(starts) == 5
    anchored = {log_loss.min() + math.log(f) for f in cfg.e_fractions}
    assert all(min(abs(s[0] - e) for e in anchored) < 1e-12 for s in starts)
    scores = P.grid_objective(np.array(starts), log_n, log_d, log_loss, cfg.delta)
    all_scores = P.grid_objective(P._grid(cfg, log_loss), log_n, log_d, log_loss, cfg.delta)
    np.testing.assert_allclose(scores, np.sort(all_scores)[:5], rtol=1e-12)


def test_optimal_allocation_without_exponents_is_undefined_and_silent():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        n, d, _ = P.optimal_allocation({**LAW, "alpha": 0.0, "beta": 0.0}, 1e21)
    assert math.isnan(n) and math.isnan(d)


def _fit(**kw):
    base = dict(params=dict(LAW), objective=0.0, converged=True, n_points=10, n_starts=1,
                n_converged_starts=1, stationarity=1e-6, config=P.ParametricConfig())  # fmt: skip
    return P.ParametricFit(**{**base, **kw})


def _boot(alpha, beta, n_failed=0, vanished=None):
    from analysis.bootstrap import BootstrapResult

    alpha, beta = np.asarray(alpha, float), np.asarray(beta, float)
    samples = {"alpha": alpha, "beta": beta, "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}
    at = {k: np.asarray(v, float) for k, v in (vanished or {}).items()}  # as bootstrap_points keeps them
    return BootstrapResult(samples=samples, n_requested=len(alpha) + n_failed, n_failed=n_failed, at_bound=at)


def test_assess_ok_fit_identifies_the_allocation():
    fit = _fit(bootstrap=_boot(np.linspace(0.3, 0.4, 40), np.linspace(0.25, 0.35, 40)))  # 40: a 95% interval
    st = fit.assess()
    assert st.status == "ok" and st.reasons == [] and fit.allocation_identified
    assert set(fit.conf_int()) == {"alpha", "beta", "a", "b"}
    assert fit.conf_int()["a"] == pytest.approx(fit.bootstrap.conf_int()["a"])
    assert fit.conf_int(0.5)["alpha"] == pytest.approx(fit.bootstrap.conf_int(0.5)["alpha"])


def test_assess_names_each_failure():
    st = _fit(converged=False, stationarity=0.0123).assess()
    assert st.status == "not_identified"
    assert st.reasons == ["the fit did not reach a stationary point (imbalance 0.0123)"]

    (reason,) = _fit(e_at_floor=True, e_upper=0.0456).assess().reasons
    assert reason.startswith(
        "E ran to its floor (E -> 0 fits best): refitted with E = 0; E < 0.0456 (loss units;"
    )
    assert reason.endswith("add larger budgets (longer runs) so the losses bend towards their floor")

    alpha = np.r_[np.zeros(5), np.linspace(0.0, 0.1, 16)]  # a quarter of the refits at the bound 0
    fit = _fit(params={**LAW, "alpha": 0.05}, level=0.9, bootstrap=_boot(alpha, np.linspace(0.25, 0.35, 21)))
    lo, hi = fit.bootstrap.conf_int(0.9)["alpha"]
    assert lo == 0.0
    (reason,) = fit.assess().reasons
    assert reason.startswith(
        f"alpha's 90% interval [0, {hi:.3g}] includes 0 (estimate 0.05): the loss's dependence"
    )
    assert "on model size N is not resolved, so N_opt, a and b are withheld; add model sizes" in reason
    assert not fit.allocation_identified

    fit = _fit(
        params={**LAW, "beta": 3.0}, bootstrap=_boot(np.linspace(0.3, 0.4, 40), np.linspace(2.8, 3.0, 40))
    )
    lo, hi = fit.bootstrap.conf_int()["beta"]
    (reason,) = fit.assess().reasons
    assert reason.startswith(
        f"beta reached its upper bound 3 (95% interval [{lo:.3g}, {hi:.3g}]): the data D term"
    )
    assert reason.endswith("add budgets spanning at least 10x in D (longer runs of each model)")
    assert not fit.allocation_identified

    fit = _fit(vanished={"N": True, "D": False})
    (reason,) = fit.assess().reasons
    assert reason.startswith("the N term (A/N^alpha) vanished in the fit (< 0.1% of every predicted loss)")
    assert not fit.allocation_identified
    share = [1.0] * 6 + [0.0] * 34  # 15% of the 40 refits lost the D term: above the 2.5% tail
    fit = _fit(
        bootstrap=_boot(
            np.linspace(0.3, 0.4, 40), np.linspace(0.25, 0.35, 40), vanished={"D_term_vanished": share}
        )
    )
    (reason,) = fit.assess().reasons
    assert reason.startswith("the D term (B/D^beta) vanished in 15% of the bootstrap refits")
    assert "dependence on data D is not resolved" in reason and not fit.allocation_identified

    fit = _fit(bootstrap=_boot(np.linspace(0.3, 0.4, 40), np.linspace(0.25, 0.35, 40), n_failed=20))
    (reason,) = fit.assess().reasons  # 40 refits: enough for a 95% interval, the share its only reason
    assert reason == "33% of the bootstrap refits failed to converge: the intervals describe only the rest"
    assert fit.allocation_identified  # failed refits widen nothing, they are reported


def test_correlation_needs_three_refits():
    few = _fit(bootstrap=_boot([0.3, 0.35], [0.3, 0.32]))
    assert few.correlation() is None and _fit().correlation() is None


def _boot_full(n=20, n_failed=0, seed=0):
    """A bootstrap of every reported quantity around LAW, with ln-space E, A, B."""
    from analysis.bootstrap import BootstrapResult

    rng = np.random.default_rng(seed)
    s = {k: v * np.exp(0.05 * rng.standard_normal(n)) for k, v in LAW.items()}
    s.update({f"ln_{k}": np.log(s[k]) for k in ("E", "A", "B")})
    s["a"], s["b"] = s["beta"] / (s["alpha"] + s["beta"]), s["alpha"] / (s["alpha"] + s["beta"])
    at = {"alpha": np.r_[np.ones(2), np.zeros(n - 2)], "beta": np.zeros(n)}
    return BootstrapResult(samples=s, n_requested=n + n_failed, n_failed=n_failed, at_bound=at)


def test_summary_table_rows_are_the_estimates_errors_and_intervals():
    fit = _fit(bootstrap=_boot_full(n_failed=5), level=0.9, n_starts=12, n_converged_starts=9, objective=0.25)
    fit.status = fit.assess()
    lines = fit.summary().splitlines()
    assert lines[0] == (
        "Parametric law L(N, D) = E + A/N^alpha + B/D^beta "
        "(Huber delta=0.001 on log L, sum; alpha, beta in [0, 3])"
    )
    assert lines[1] == "points: 10   objective: 0.25   converged: True (9/12 starts)"
    assert lines[2].split() == ["param", "estimate", "std.err", "5%", "95%"]
    se, ci = fit.bootstrap.se(), fit.bootstrap.conf_int(0.9)
    rows = {line.split()[0]: line for line in lines[3:10]}
    assert list(rows) == ["E", "A", "B", "alpha", "beta", "a", "b"]
    for k in ("E", "A", "B", "alpha", "a"):
        tok = rows[k].split()
        ln = k in ("E", "A", "B")
        want = [LAW.get(k, fit.a), se[f"ln_{k}" if ln else k], *ci[k]]
        got = [float(t) for t in (tok[1], tok[2], *tok[-2:])]
        np.testing.assert_allclose(got, want, rtol=1e-3)
        assert (tok[3] == "(ln)") == ln and len(tok) == (6 if ln else 5)
    assert lines[10] == (
        "bootstrap: 25 resamples of points, 5 failed (20%, not in the intervals); "
        "at a bound: alpha 10% (kept); "
        "90% percentile intervals; std.err of E, A, B in ln units"
    )
    assert lines[11] == fit.status.text()
    floor = _fit(e_at_floor=True, e_upper=0.01234, params={**LAW, "E": 0.0})
    floor.status = floor.assess()
    text = floor.summary()
    assert "E = 0 (at its floor); E < 0.01234 at 95% (one-sided, profile)" in text
    assert "bootstrap:" not in text and "at a bound: none" not in text
    withheld = _fit(vanished={"N": True})
    withheld.status = withheld.assess()
    rows = {line.split()[0]: line for line in withheld.summary().splitlines()[3:10]}
    assert rows["a"] == f"{'a':>8} {'withheld':>12}" and rows["b"] == f"{'b':>8} {'withheld':>12}"
    assert rows["alpha"].split()[1:3] == ["0.34", "nan"]


def test_to_dict_is_the_json_report():
    import json

    fit = _fit(
        bootstrap=_boot_full(), at_bound={"E": False, "alpha": True}, vanished={"N": False, "D": False}
    )
    fit.status = fit.assess()
    d = json.loads(json.dumps(fit.to_dict()))
    assert {k: d[k] for k in LAW} == LAW
    assert d["a"] == pytest.approx(fit.a) and d["b"] == pytest.approx(fit.b)
    assert (d["objective"], d["converged"], d["n_points"]) == (0.0, True, 10)
    assert d["status"] == fit.status.status and d["reasons"] == list(fit.status.reasons)
    assert d["exponent_bounds"] == [0.0, 3.0] and d["at_bound"] == {"E": False, "alpha": True}
    assert (
        d["E_at_floor"] is False and d["E_upper95"] is None and d["term_vanished"] == {"N": False, "D": False}
    )
    assert d["se"] == pytest.approx(fit.se)
    assert d["ci95"] == {k: pytest.approx(list(v)) for k, v in fit.conf_int().items()}
    assert set(d["ci95"]) == {"E", "A", "B", "alpha", "beta", "a", "b"}
    assert d["bootstrap"] == json.loads(json.dumps(fit.bootstrap.to_dict(fit.level)))
    assert d["correlation"]["keys"] == ["ln_E", "ln_A", "ln_B", "alpha", "beta"]
    np.testing.assert_allclose(d["correlation"]["matrix"], fit.correlation(), rtol=1e-12)
    withheld = _fit(bootstrap=_boot_full(), vanished={"N": True})
    withheld.status = withheld.assess()
    w = withheld.to_dict()
    assert w["a"] is None and w["b"] is None and w["ci95"]["a"] is None and w["ci95"]["alpha"] is not None
    few = _fit(bootstrap=_boot_full(n=2)).to_dict()
    assert few["correlation"]["matrix"] is None
    assert "se" not in _fit().to_dict()


def test_e_at_its_floor_is_refitted_at_zero_with_a_profile_bound():
    """Losses of a law without E (E = 0): the fit sets E = 0 and bounds it from the profile."""
    law = {"E": 0.0, "A": 40.0, "B": 300.0, "alpha": 0.35, "beta": 0.3}
    n = np.logspace(6, 8, 16)
    d = np.logspace(8, 10, 16)[np.random.default_rng(0).permutation(16)]
    loss = P.parametric_loss(law, n, d)  # noise-free: the best E is 0
    fit = P.fit_parametric(n, d, loss)
    assert fit.e_at_floor and fit.params["E"] == 0.0 and fit.at_bound["E"]
    assert 0 < fit.e_upper < loss.min()
    es = [e for e, _ in fit.e_profile]
    assert es == sorted(es) and es[0] == pytest.approx(1e-3 * loss.min()) and len(es) == 15
    f0 = max(fit.objective, 1e-300)
    stats = [0.0] + [16 * math.log(max(f, f0) / f0) for _, f in fit.e_profile]  # E = 0 first
    es = [0.0, *es]
    j = max(i for i, s in enumerate(stats) if s <= 2.706)  # the bound lies between E_j and E_j+1
    assert es[j] <= fit.e_upper <= es[j + 1]
    assert fit.params["alpha"] == pytest.approx(0.35, abs=0.03) and fit.params["beta"] == pytest.approx(
        0.3, abs=0.03
    )
    assert any(r.startswith("E ran to its floor") for r in fit.status.reasons)


def test_bootstrap_refits_are_reproducible_from_the_seed():
    logs = _points(n_points=14, noise=0.003)
    n, d, loss = (np.exp(x) for x in logs)
    cfg = P.ParametricConfig(polish_ftol=None, polish_gtol=None, n_starts=2, n_varpro_starts=1,
                             bootstrap_n_starts=1, bootstrap_n_varpro_starts=1)  # fmt: skip
    a = P.fit_parametric(n, d, loss, cfg, n_bootstrap=4, seed=3)
    b = P.fit_parametric(n, d, loss, cfg, n_bootstrap=4, seed=3)
    assert a.bootstrap.n_requested == 4 and a.bootstrap.n_ok + a.bootstrap.n_failed == 4
    for k, v in a.bootstrap.samples.items():
        np.testing.assert_array_equal(v, b.bootstrap.samples[k])
    ok = a.bootstrap.samples
    np.testing.assert_allclose(ok["a"], ok["beta"] / (ok["alpha"] + ok["beta"]), rtol=1e-12)
    np.testing.assert_allclose(ok["b"], ok["alpha"] / (ok["alpha"] + ok["beta"]), rtol=1e-12)
    np.testing.assert_allclose(ok["ln_E"], np.log(ok["E"]), rtol=1e-12)
    assert {"alpha", "beta", "E", "N_term_vanished", "D_term_vanished"} <= set(a.bootstrap.at_bound)
    one_size = P.bootstrap_parametric(a, np.full(14, 1e8), d, loss, 2, seed=0)  # one N: nothing to fit
    assert one_size.n_failed == 2


def test_assess_leaves_exponents_inside_their_bounds_alone():
    fit = _fit(
        params={**LAW, "beta": 2.5}, bootstrap=_boot(np.linspace(0.3, 0.4, 40), np.linspace(2.4, 2.6, 40))
    )
    assert fit.assess().reasons == [] and fit.allocation_identified
    every = _fit(bootstrap=_boot_full(n=4, n_failed=4))  # half failed, every alpha refit at a bound
    every.bootstrap.at_bound["alpha"] = np.ones(4)
    assert "4 failed (50%, not in the intervals); at a bound: alpha 100% (kept)" in every.summary()
