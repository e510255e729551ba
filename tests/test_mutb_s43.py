"""Session 43 (mutb): the hand-placed mutants of analysis/{isoflop,laws,bootstrap,influence}.py and
sweeps/{design,grid,cost}.py that survived, killed against closed forms and reference
implementations (tests/hand_mutants.txt; docs/testing.md)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.optimize import minimize_scalar

from analysis import isoflop as I
from analysis.bootstrap import (
    BootstrapResult,
    bootstrap_points,
    draw_resamples,
    percentile_interval,
    resample_indices,
)
from analysis.laws import cluster_budgets, compute_frontier, fit_power_law

# ------------------------------------------------------------------------------------------- isoflop
C2, C1, C0 = 0.05, -2.0, 25.0  # loss = C2 (ln N)^2 + C1 ln N + C0: vertex at ln N = 20


def _slice(c, ln_n=(18.0, 19.0, 20.5, 21.0, 22.0), shift=0.0, run="r", **cols):
    n = np.exp(np.asarray(ln_n))
    x = np.log(n) - shift
    rows = {"N": n, "D": c / (6 * n), "C": np.full(len(n), float(c)), "loss": C2 * x**2 + C1 * x + C0,
            "run_id": [f"{run}-{c:.0e}-{i}" for i in range(len(n))], **cols}  # fmt: skip
    return pd.DataFrame(rows)


def _allocation_points(a: float) -> pd.DataFrame:
    """Three exact parabolas whose vertices follow N_opt = e^20 (C / 1e20)^a, D = C / (6 N)."""
    budgets = (1e20, 1e21, 1e22)
    return pd.concat(
        [
            _slice(
                c,
                ln_n=20 + a * math.log(c / 1e20) + np.array([-2.0, -1.0, 0.5, 1.0, 2.0]),
                shift=a * math.log(c / 1e20),
            )
            for c in budgets
        ],  # fmt: skip
        ignore_index=True,
    )


def test_the_minima_of_exact_parabolas_give_the_allocation_exponents():
    fit = I.fit_isoflop(_allocation_points(0.6))
    assert fit.minima_a == pytest.approx(0.6, abs=1e-9)
    assert fit.a == pytest.approx(0.6, abs=1e-6) and fit.b == pytest.approx(0.4, abs=1e-6)
    per_budget = I.fit_isoflop(_allocation_points(0.6), joint=False)
    assert per_budget.a == pytest.approx(0.6, abs=1e-9) and per_budget.b == pytest.approx(0.4, abs=1e-9)
    assert per_budget.d_opt.params["A"] == pytest.approx(1e20**0.6 / (6 * math.exp(20)), rel=1e-6)


def test_a_slice_is_labelled_by_the_median_compute_of_its_points():
    g = _slice(1e20).assign(C=[1e20, 1e20, 1e20, 1.04e20, 1.08e20])
    (p,) = I.isoflop_profiles(g)
    assert p.compute == 1e20


def test_a_group_spanning_more_than_two_gaps_of_compute_is_no_slice():
    g = _slice(1e20, budget=np.full(5, 1e20), final=np.full(5, True))
    assert len(I.isoflop_profiles(g)) == 1
    spread = g.assign(C=np.logspace(19.0, 20.9, 5))  # 1.9 dex: continuous compute, not one budget
    assert I.isoflop_profiles(spread) == [] and I.slice_sides(spread) == []


def test_seed_weights_fit_the_parabola_as_repeated_points():
    rng = np.random.default_rng(3)
    g = _slice(1e20, ln_n=np.linspace(18.0, 22.0, 6))
    g["loss"] += rng.normal(0, 0.01, len(g))
    w = np.array([1, 3, 1, 2, 1, 4])
    weighted = I.fit_isoflop(g, weights=w, joint=False).profiles[0]
    repeated = I.fit_isoflop(g.loc[g.index.repeat(w)].reset_index(drop=True), joint=False).profiles[0]
    assert weighted.n_opt == pytest.approx(repeated.n_opt, rel=1e-9)
    np.testing.assert_allclose(weighted.coef, repeated.coef, rtol=1e-9)


def test_of_two_patch_sizes_with_equal_budgets_the_smaller_is_the_main_one():
    pts = pd.concat(
        [
            _allocation_points(0.5).assign(patch_size=p, run_id=lambda d, p=p: d["run_id"] + f"-p{p}")
            for p in (4, 2)
        ],  # fmt: skip
        ignore_index=True,
    )
    assert I.fit_isoflop(pts).patch == 2 and I.fit_isoflop(pts, joint=False).patch == 2


# ---------------------------------------------------------------------------------------------- laws


def test_pure_law_t_intervals_are_those_of_scipy_linregress():
    lx = np.log(np.array([1e18, 3e18, 1e19, 4e19, 1e20, 3e20]))
    ly = 0.3 - 0.25 * lx + np.array([0.02, -0.01, 0.03, -0.04, 0.01, 0.0])
    fit = fit_power_law(np.exp(lx), np.exp(ly), saturating=False)
    ref = stats.linregress(lx, ly)
    q = stats.t.ppf(0.975, len(lx) - 2)
    assert fit.params["alpha"] == pytest.approx(-ref.slope, rel=1e-10)
    lo, hi = fit.t_interval["alpha"]
    assert (lo, hi) == pytest.approx((-ref.slope - q * ref.stderr, -ref.slope + q * ref.stderr), rel=1e-9)
    lo, hi = fit.t_interval["A"]
    half = q * ref.intercept_stderr
    assert (lo, hi) == pytest.approx(
        (math.exp(ref.intercept - half), math.exp(ref.intercept + half)), rel=1e-9
    )


def test_rmse_log_is_the_root_mean_square_of_the_log_residuals():
    lx = np.array([0.0, 1.0, 2.0])
    r = 0.01 * np.array([1.0, -2.0, 1.0])  # orthogonal to 1 and lx: the fit is the exact line
    fit = fit_power_law(np.exp(lx), np.exp(1.0 - 0.5 * lx + r), saturating=False)
    assert fit.params["alpha"] == pytest.approx(0.5, abs=1e-12)
    assert fit.rmse_log == pytest.approx(0.01 * math.sqrt(2.0), rel=1e-9)


def test_budget_clusters_split_at_the_gap_and_are_labelled_by_their_median():
    c = pd.Series([1e20, 1.02e20, 1.05e20, 1e21])
    assert cluster_budgets(c).tolist() == [1.02e20, 1.02e20, 1.02e20, 1e21]


def _one_point_runs(rows):
    return pd.DataFrame(
        [
            {"C": c, "loss": y, "N": n, "D": c / (6 * n), "run_id": f"r{i}", "model": f"m{n:g}"}
            for i, (c, n, y) in enumerate(rows)
        ]  # fmt: skip
    )


def test_sizes_tied_at_a_budget_are_one_point_at_their_geometric_mean():
    fr = compute_frontier(_one_point_runs([(1e20, 1e8, 3.0), (1e20, 4e8, 3.0)]))
    assert len(fr) == 1 and fr["N"].iloc[0] == pytest.approx(2e8, rel=1e-12)


def test_a_budget_that_only_equals_the_best_so_far_is_not_on_the_frontier():
    fr = compute_frontier(_one_point_runs([(1e20, 1e8, 3.0), (1e21, 2e8, 3.0), (1e22, 4e8, 2.5)]))
    assert fr["C"].tolist() == [1e20, 1e22]


def test_curve_frontier_starts_at_the_first_evaluations_and_keeps_d_equal_c_over_6n():
    rows = []
    for n, first in ((1e8, 1e18), (3e8, 1e19)):  # the larger model is first evaluated a decade later
        for c in np.logspace(math.log10(first), 21, 7):
            rows.append({"C": c, "loss": 5 * c**-0.05 + 1e8 / n * 0.1 * (c < 1e20), "N": n,
                         "D": c / (6 * n), "run_id": f"r{n:g}", "model": f"m{n:g}"})  # fmt: skip
    fr = compute_frontier(pd.DataFrame(rows))
    assert fr["C"].iloc[0] == pytest.approx(1e18, rel=1e-9)
    np.testing.assert_allclose(fr["D"], fr["C"] / (6 * fr["N"]), rtol=1e-9)


# ----------------------------------------------------------------------------------------- bootstrap

NORMAL = stats.norm.ppf((np.arange(200_000) + 0.5) / 200_000)  # a standard normal's quantiles


def test_percentile_intervals_of_a_normal_are_its_two_sided_quantiles():
    z = stats.norm.ppf(0.975)
    assert percentile_interval(NORMAL) == pytest.approx((-z, z), abs=1e-3)
    res = BootstrapResult({"x": NORMAL[::10]}, 20_000)
    lo, hi = res.interval_of(lambda p: np.array([p["x"], 2 * p["x"]]))
    np.testing.assert_allclose(lo, [-z, -2 * z], atol=2e-3)
    np.testing.assert_allclose(hi, [z, 2 * z], atol=2e-3)


def test_an_unbounded_side_stays_unbounded():
    assert percentile_interval([1.0, 2.0, 3.0] + [math.inf] * 10)[1] == math.inf


def test_se_is_the_sample_standard_deviation():
    assert BootstrapResult({"x": np.array([1.0, 2.0, 3.0, 4.0])}, 4).se()["x"] == pytest.approx(
        math.sqrt(5 / 3)
    )


def test_forty_refits_are_enough_for_a_95_interval():
    assert not BootstrapResult({"x": np.arange(40.0)}, 40).too_few()
    assert BootstrapResult({"x": np.arange(39.0)}, 40).too_few()


def test_resamples_draw_every_point_and_whole_groups_with_replacement():
    rng = np.random.default_rng(0)
    picked = np.concatenate([resample_indices(3, rng) for _ in range(50)])
    assert set(picked.tolist()) == {0, 1, 2}
    groups = np.array([0, 0, 1, 2, 3])
    draws = draw_resamples(5, 50, seed=0, groups=groups)
    assert any(len(set(groups[d].tolist())) < 4 for d in draws)
    for d in draws:  # whole groups: run 0's two points come together
        assert (d == 0).sum() == (d == 1).sum()


def test_failures_and_bounds_are_counted_not_hidden():
    def fit_one(idx):
        k = int(idx.sum())
        if k % 3 == 0:
            return None
        return {"x": float(k), "_bound_x": float(k % 2 == 0)}

    res = bootstrap_points(fit_one, 6, 60, seed=1, workers=1)
    draws = draw_resamples(6, 60, seed=1)
    ok = [int(d.sum()) for d in draws if int(d.sum()) % 3]
    assert res.n_failed == 60 - len(ok) > 0 and res.share_failed == pytest.approx(res.n_failed / 60)
    assert res.share_at_bound()["x"] == pytest.approx(np.mean([k % 2 == 0 for k in ok]))


# ---------------------------------------------------------------------------------------------- cost


def test_guidance_doubles_sampling_only_for_a_model_trained_with_label_dropout():
    from sweeps.cost import cell_eval_flops
    from sweeps.grid import SweepSpec, expand

    (cell,) = expand(SweepSpec(families=["S"], budgets=[1e15]))
    fwd = 2e9 * cell.forward_gflops  # true FLOPs of one forward pass
    assert cell.steps < 10_000  # sampling runs once, at the last step
    ov = {"eval.eval_every": 10_000, "eval.num_samples": 10, "eval.steps": 5, "eval.cfg_scale": 4.0}
    assert cell_eval_flops(cell, ov) == pytest.approx(10 * 5 * 2 * fwd, rel=1e-12)
    # no null class learned: the sampler cannot guide, one forward pass per step
    unguided = cell_eval_flops(cell, ov | {"model.class_dropout_prob": 0.0})
    assert unguided == pytest.approx(10 * 5 * fwd, rel=1e-12)


# -------------------------------------------------------------------------------------------- design


def test_size_targets_are_log_spaced_and_centred_on_the_prior():
    from sweeps.design import size_targets

    t = size_targets(1e6, 5, 4.0)
    np.testing.assert_allclose(t, 1e6 * 4.0 ** np.array([-1.0, -0.5, 0.0, 0.5, 1.0]), rtol=1e-12)
    assert math.exp(np.log(t).mean()) == pytest.approx(1e6, rel=1e-12)


def test_place_sizes_is_the_least_squares_choice_of_a_brute_force_search():
    from sweeps.design import Candidate, place_sizes, size_targets

    rng = np.random.default_rng(7)
    for trial in range(12):
        ln_n = np.sort(rng.uniform(10.0, 16.0, 9))
        cands = [Candidate(None, float(math.exp(x)), 0.0) for x in ln_n]
        k, spread, ratio = 3 + trial % 2, 3.0, math.exp(rng.uniform(0.3, 1.2))
        picked = place_sizes(cands, math.exp(13.0), k, spread, ratio)
        t = np.log(size_targets(math.exp(13.0), k, spread))
        feasible = [
            s for s in itertools.combinations(range(9), k) if all(np.diff(ln_n[list(s)]) >= math.log(ratio))
        ]
        if not feasible:
            continue
        best = min(feasible, key=lambda s: float(np.sum((ln_n[list(s)] - t) ** 2)))
        assert [c.n for c in picked] == [cands[i].n for i in best]
    # squares, not absolute distances: targets e^10, e^11 and neighbours >= e^1.1 apart; e^10 and e^11.15
    # miss by 0 and 0.15 (squares 0.0225), e^9.8 and e^11 by 0.2 and 0 (squares 0.04; absolute 0.2 > 0.15)
    cands = [Candidate(None, math.exp(x), 0.0) for x in (9.8, 10.0, 11.0, 11.15)]
    picked = place_sizes(cands, math.exp(10.5), 2, math.exp(0.5), math.exp(1.1))
    assert [math.log(c.n) for c in picked] == pytest.approx([10.0, 11.15], abs=1e-12)


def test_parametric_prior_is_the_minimum_of_the_law_on_the_isoflop_line():
    from sweeps.design import FitPrior

    law = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28, "k": 6.0}  # Hoffmann et al.
    prior = FitPrior("results.json", "parametric", law)
    for c in (1e18, 5.76e23):
        res = minimize_scalar(
            lambda ln_n, c=c: (
                law["A"] * math.exp(-law["alpha"] * ln_n)
                + law["B"] * (c / (law["k"] * math.exp(ln_n))) ** -law["beta"]
            ),
            bounds=(5.0, 40.0),
            method="bounded",
            options={"xatol": 1e-10},
        )
        assert prior.n_opt(c, 2) == pytest.approx(math.exp(res.x), rel=1e-6)
    pure = FitPrior("results.json", "isoflop", {"A": 0.1, "alpha": -0.5})
    assert pure.n_opt(4e20, 2) == pytest.approx(0.1 * 2e10, rel=1e-12)


def test_the_ratio_prior_puts_about_r_tokens_per_parameter():
    """C ~ 6 N x tokens seen and tokens seen = R N give N ~ sqrt(C / (6 R)); DiT's adaLN and attention
    make FLOPs per token differ from 6 N by well under 2x."""
    from sweeps.design import make_prior
    from sweeps.grid import SweepSpec

    prior = make_prior(SweepSpec(design="isoflop", budgets=[1e15]))
    for c in (1e15, 1e17):
        assert 0.5 < prior.n_opt(c, 2) / math.sqrt(c / (6 * 20.0)) < 2.0


def test_the_anchor_grows_the_last_minimum_with_the_prior():
    from sweeps.design import _anchor

    class Prior:
        def n_opt(self, compute, patch):
            return 1e3 * compute**0.5

    centre = _anchor(_slice(1e20), 1e20, Prior(), 4e20, 2)
    assert centre.n == pytest.approx(math.exp(20.0) * 2.0, rel=1e-9)


# ------------------------------------------------------------------------------------------ grid


def test_a_budget_must_be_positive():
    from sweeps.grid import parse_budget

    assert parse_budget("3e15") == 3e15
    for bad in ("0", "-1e15", "nan"):
        with pytest.raises(ValueError, match="must be a positive number"):
            parse_budget(bad)


def test_a_cell_of_exactly_min_steps_steps_is_kept():
    from sweeps.grid import SweepSpec, expand, left_out

    spec = SweepSpec(families=["S", "B"], budgets=[1e15])
    steps = {c.model.name: c.steps for c in expand(spec)}
    at = spec.replace(min_steps=steps["S"])
    assert [c.model.name for c in expand(at)] == ["S"] and [c.model.name for c in left_out(at)] == ["B"]


# ------------------------------------------------------------------------------------------ influence


def test_influence_ranks_by_the_log_ratio_of_n_opt_and_skips_missing_refits():
    from analysis.influence import QUANTITIES, Influence

    full = dict.fromkeys(QUANTITIES, 1.0)
    table = pd.DataFrame({"run_id": ["a", "b", "c"], "n_opt": [0.4, 2.0, math.nan]})
    inf = Influence(1e20, full | {"n_opt": 1e9}, table.assign(n_opt=table["n_opt"] * 1e9))
    np.testing.assert_allclose(inf.ratio("n_opt"), [0.4, 2.0, math.nan])
    assert inf.most_influential() == "a"  # |ln 0.4| > |ln 2|
    assert inf.spread("n_opt") == pytest.approx((0.4e9, 2e9))


def test_a_saturating_fit_of_an_exact_law_returns_its_parameters():
    x = np.logspace(2, 8, 9)
    fit = fit_power_law(x, 0.5 + 20.0 * x**-0.3)
    assert fit.params == pytest.approx({"E": 0.5, "A": 20.0, "alpha": 0.3}, rel=1e-6)
    np.testing.assert_allclose(fit.predict(x), 0.5 + 20.0 * x**-0.3, rtol=1e-8)


def test_an_edge_size_tied_with_another_is_no_evidence_of_censoring():
    g = _slice(1e20, ln_n=(18.0, 19.0, 20.0)).assign(loss=[2.0, 2.0, 2.5])
    (s,) = I.slice_sides(g)
    assert s.side == "interior" and s.sizes == pytest.approx(tuple(np.exp([18.0, 19.0, 20.0])))
    (won,) = I.slice_sides(g.assign(loss=[1.9, 2.0, 2.5]))
    assert won.side == "below"


def test_cell_ids_keep_four_digits_of_a_budget():
    from sweeps.grid import format_budget

    assert [format_budget(b) for b in (1e15, 1.5e15, 1.2346e15, 3e20)] == [
        "1e15",
        "1.5e15",
        "1.235e15",
        "3e20",
    ]


def test_influence_summary_is_the_closed_form_optimum_and_withholds_an_unidentified_one():
    from types import SimpleNamespace

    from analysis.influence import fit_summary

    params = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. (2022)
    pf = SimpleNamespace(params=params, a=0.28 / 0.62, allocation_identified=True)
    an = SimpleNamespace(parametric=pf, flops_per_param_datum=6.0)
    g = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
    out = fit_summary(an, 6e21)
    assert out["n_opt"] == pytest.approx(g * 1e21 ** (0.28 / 0.62), rel=1e-12)
    assert out["a"] == pytest.approx(0.28 / 0.62) and math.isnan(out["holdout"])
    pf.allocation_identified = False
    out = fit_summary(an, 6e21)
    assert math.isnan(out["n_opt"]) and math.isnan(out["a"]) and out["alpha"] == 0.34
    assert math.isfinite(out["pred_loss"])


def test_a_run_s_row_shows_its_final_point():
    from test_analysis import synthetic_isoflop

    from analysis.influence import run_influence
    from analysis.pipeline import AnalysisConfig

    final = synthetic_isoflop(budgets=(1e18, 1e19, 1e20), n_sizes=5)
    early = final.assign(C=final["C"] / 2, D=final["D"] / 2, loss=final["loss"] + 0.5)
    pts = pd.concat([early, final], ignore_index=True)
    inf = run_influence(pts, 1e21, AnalysisConfig(n_bootstrap=0))
    want = final.set_index("run_id").loc[inf.table["run_id"]]
    np.testing.assert_allclose(inf.table["C"], want["C"], rtol=1e-12)
    np.testing.assert_allclose(inf.table["loss"], want["loss"], rtol=1e-12)


def test_flow_matching_models_learn_no_variance():
    from sweeps.grid import model_learns_sigma

    assert model_learns_sigma({}) and not model_learns_sigma({"diffusion.objective": "flow"})
    assert not model_learns_sigma({"diffusion.learn_sigma": False})
