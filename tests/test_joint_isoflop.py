"""The joint IsoFLOP fit (approach 2): exact recovery of its own model, the t-interval's coverage,
and its use of budgets with two sizes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.isoflop import fit_isoflop
from analysis.joint_isoflop import fit_joint_isoflop

A_TRUE, G_TRUE, K_TRUE = 0.4, 2.0, 0.04  # N_opt = G C^a, curvature of ln L in ln N
BUDGETS = (3e10, 1e11, 3e11, 1e12)


def joint_model_sweep(noise=0.0, seed=0, sizes_per_budget=4, budgets=BUDGETS):
    """Points from the joint model itself: ln L = ln L*(C) + k (ln N - ln(G C^a))^2 (+ noise), sizes
    0.4 dex apart and off-centre by a budget-dependent shift, so the minima are not on the grid."""
    rng = np.random.default_rng(seed)
    rows = []
    for q, c in enumerate(budgets):
        n_opt = G_TRUE * c**A_TRUE
        ln_lstar = math.log(0.1) - 0.05 * math.log(c / 1e10)
        for i, n in enumerate(n_opt * 10 ** (0.4 * (np.arange(sizes_per_budget) - 1.3 + 0.2 * q))):
            ln_l = ln_lstar + K_TRUE * math.log(n / n_opt) ** 2 + noise * rng.standard_normal()
            rows.append(
                {
                    "N": n,
                    "D": c / (6 * n),
                    "C": c,
                    "loss": math.exp(ln_l),
                    "run_id": f"{q}-{i}",
                    "model": f"m{i}",
                }
            )
    return pd.DataFrame(rows)


def _slices(df):
    return [(c, g) for c, g in df.groupby("C")]


def test_recovers_its_own_model_exactly():
    jf = fit_joint_isoflop(_slices(joint_model_sweep()))
    assert jf.a == pytest.approx(A_TRUE, abs=1e-6)
    assert jf.n_opt.predict(1e13) == pytest.approx(G_TRUE * 1e13**A_TRUE, rel=1e-5)
    assert jf.curvature == pytest.approx(K_TRUE, rel=1e-5)
    assert jf.loss_opt[0] == pytest.approx(0.1 * 3.0**-0.05, rel=1e-6)
    # C = 6 N D, so D at each vertex is C / (6 N_opt): b = 1 - a exactly
    assert -jf.d_opt.params["alpha"] == pytest.approx(1 - A_TRUE, abs=1e-6)
    assert jf.dof == 16 - 4 - 3


def test_t_interval_of_a_covers_the_truth_at_its_level():
    covered, covered_amp, n_rep = 0, 0, 300
    for seed in range(n_rep):
        jf = fit_joint_isoflop(_slices(joint_model_sweep(noise=0.01, seed=seed)))
        lo, hi = jf.a_interval
        covered += lo <= A_TRUE <= hi
        lo, hi = jf.n_opt.t_interval["A"]  # N_opt = A C^a: ln A = ln G - a c0, by the delta method
        covered_amp += lo <= G_TRUE <= hi
    # binomial(300, 0.95): sd 1.3 %; an interval from the wrong dof or a missing s^2 misses this band
    assert 0.91 <= covered / n_rep <= 0.99
    assert 0.91 <= covered_amp / n_rep <= 0.99


def test_profile_and_record_of_the_fit():
    """`profile` is L*(C) exp(k (ln N - ln N_opt(C))^2) at the budget nearest C; `to_dict` holds
    every field the report and the results JSON read."""
    jf = fit_joint_isoflop(_slices(joint_model_sweep()))
    for q, c in enumerate(BUDGETS):
        n_opt = G_TRUE * c**A_TRUE
        got = jf.profile(c * 1.2, [n_opt, n_opt * math.e, n_opt / math.e**2])  # 1.2 C: still budget q
        want = jf.loss_opt[q] * np.exp(K_TRUE * np.array([0.0, 1.0, 4.0]))
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert (jf.n_opt.x_name, jf.n_opt.y_name, jf.d_opt.x_name, jf.d_opt.y_name) == (
        "C",
        "N_opt",
        "C",
        "D_opt",
    )
    d = jf.to_dict()
    assert d["a"] == jf.a and d["a_ci95"] == list(jf.a_interval) and d["a_ci95"][0] <= jf.a <= d["a_ci95"][1]
    assert d["interval"] == "t (9 degrees of freedom, Jacobian)"
    # the N_opt law's own interval says so too (it said "t (log-log least squares)" until session 60)
    assert jf.n_opt.to_dict()["interval"] == "t (9 degrees of freedom, Jacobian)"
    assert d["N_opt"] == jf.n_opt.to_dict() and d["D_opt"] == jf.d_opt.to_dict()
    assert d["curvature_log_loss"] == jf.curvature and d["budgets"] == list(BUDGETS)
    assert d["loss_opt"] == list(jf.loss_opt) and (d["n_points"], d["rmse_log"]) == (16, jf.rmse_log)
    assert jf.rmse_log < 1e-6


def test_budgets_with_two_sizes_count_and_fewer_than_three_budgets_give_none():
    df = joint_model_sweep(sizes_per_budget=2)
    df = pd.concat([df, joint_model_sweep(budgets=(1e12,), sizes_per_budget=4).assign(C=2e12)])
    jf = fit_joint_isoflop(_slices(df))
    assert len(jf.budgets) == 5 and jf.dof == 12 - 5 - 3
    assert fit_joint_isoflop(_slices(df[df["C"] < 2e11])) is None  # 2 budgets
    assert fit_joint_isoflop(_slices(joint_model_sweep(sizes_per_budget=2))) is None  # 1 dof
    fit = fit_isoflop(joint_model_sweep(sizes_per_budget=2, budgets=(*BUDGETS, 3e12)))
    assert fit.profiles == [] and fit.joint is not None and fit.a == pytest.approx(A_TRUE, abs=1e-6)


def test_flat_profiles_leave_a_unresolved():
    df = joint_model_sweep(noise=0.02, seed=1)
    df["loss"] = 0.05 * np.exp(0.02 * np.random.default_rng(0).standard_normal(len(df)))  # no optimum
    fit = fit_isoflop(df)
    assert fit.status.status == "not_identified"
    # flat profiles end the joint fit on a bound of its search: no finite interval (session 37's wording)
    assert any(
        "joint fit of 4 budgets" in r and "has no finite 95% interval" in r and "does not resolve" in r
        for r in fit.status.reasons
    ), fit.status.reasons
