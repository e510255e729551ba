"""Session 44 (mutd): tests that kill the hand-placed mutants of the session-44 block of
`tests/hand_mutants.txt` (the analysis pipeline, the report, the plots' arithmetic, the rest of
`analysis.runs`, the launcher's planning, the executor's set-up and the MLflow schema). Each checks a
closed form, a hand-worked table or an independent computation; fakes stand in for MLflow and submitit.
Test names hold ``mutd`` (the table's -k selections pick them by it)."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import pipeline, plots, report
from analysis import runs as arun
from analysis.bootstrap import percentile_interval
from analysis.parametric import optimal_allocation
from analysis.pipeline import (
    UNRESOLVED_APPROACH1,
    AnalysisConfig,
    Estimate,
    HoldoutResult,
    Prediction,
    analyze,
    budget_labels,
    holdout_prepared,
    largest_compute_runs,
    predict,
    prepare,
    ranking_check,
    remove_outliers,
    residual_summary,
    residuals,
    seed_weights,
    several_lrs,
)
from analysis.status import CENSORED, NOT_IDENTIFIED, Status
from dit_core import tracking
from sweeps import executor as sx
from sweeps import runner
from sweeps.grid import ExecutorSpec

LAW = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.30}


def law_points(budgets=(1e18, 1e19, 1e20, 1e21), n_sizes=7, noise=0.002, seed=3, k=6.0) -> pd.DataFrame:
    """One final point per run on IsoFLOP slices of LAW (N +-1 decade around each optimum, D = C/(kN))."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n0 = optimal_allocation(LAW, c, k)[0]
        for i, n in enumerate(n0 * np.logspace(-1, 1, n_sizes)):
            d = c / (k * n)
            loss = (LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d ** LAW["beta"]) * math.exp(
                noise * rng.standard_normal()
            )
            rows.append({"N": n, "D": d, "C": c, "loss": loss, "run_id": f"c{c:.0e}-{i}", "model": f"m{i}"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def an():
    """A known law, FID = 50 L^4 (1 + noise), C = 6 N D but 1.05x on three points (the median stays 6),
    a bootstrap of 10 (50% intervals: 10 refits are enough for them, and the status is ok)."""
    pts = law_points(n_sizes=5)
    pts.loc[[0, 6, 12], "C"] *= 1.05
    rng = np.random.default_rng(1)
    pts["fid"] = 50.0 * pts["loss"] ** 4 * np.exp(0.02 * rng.standard_normal(len(pts)))
    return analyze(pts, AnalysisConfig(n_bootstrap=10, seed=0, level=0.5))


# ----------------------------------------------------------------------------------------------
# analysis.pipeline


def test_mutd_pl_flops_per_param_datum_is_the_median_not_the_mean(an):
    per = an.points["C"] / (an.points["N"] * an.points["D"])
    assert an.flops_per_param_datum == pytest.approx(6.0) and per.mean() > 6.01


def test_mutd_pl_outliers_match_a_hand_computed_robust_sigma_rule():
    """The removed points are those whose |log residual - median| exceeds sigma x 1.4826 x MAD of a
    first fit on all points (an independent recomputation), a low outlier included."""
    pts = law_points(noise=0.02, seed=5)
    pts.loc[3, "loss"] *= 0.75  # far below the law
    kept, removed = remove_outliers(pts, sigma=2.0)
    fit = pipeline.fit_parametric(pts["N"], pts["D"], pts["loss"], pipeline.ParametricConfig(delta=1e-3))
    r = np.log(pts["loss"].to_numpy()) - np.log(fit.predict(pts["N"], pts["D"]))
    dev = np.abs(r - np.median(r))
    mad = np.median(dev)
    want = set(pts.loc[dev > 2.0 * 1.4826 * mad, "run_id"])
    assert pts.loc[3, "run_id"] in want and set(removed["run_id"]) == want
    # the rule is sharp: some kept point lies between 2 MAD and 2 x 1.4826 MAD
    assert ((dev > 2.0 * mad) & (dev <= 2.0 * 1.4826 * mad)).any()
    assert len(kept) == len(pts) - len(want)


def test_mutd_pl_drop_highest_loss_drops_exactly_the_k_largest():
    pts = law_points()
    kept, removed = remove_outliers(pts, drop_highest_loss=3)
    assert sorted(removed["loss"]) == sorted(pts["loss"].nlargest(3))
    assert kept["loss"].max() == pts["loss"].nlargest(4).iloc[-1]


def test_mutd_pl_five_points_are_too_few_for_the_fits():
    pts = law_points(budgets=(1e18,), n_sizes=5)
    with pytest.raises(ValueError, match="5 points after point selection"):
        analyze(pts, AnalysisConfig(n_bootstrap=0))


def test_mutd_pl_seed_weights_and_several_lrs_by_hand():
    np.testing.assert_array_equal(seed_weights(pd.DataFrame({"n_seeds": [3.0, np.nan]})), [3.0, 1.0])
    raw = pd.DataFrame(
        {"lr_group": ["g1", "g1", "g2"], "lr": [1e-3, 1e-3, 2e-3], "model": "m", "N": 1.0, "budget": 1.0}
    )
    assert several_lrs(raw) is False
    assert several_lrs(raw.assign(lr=[1e-3, 2e-3, 2e-3])) is True


def test_mutd_pl_no_pure_law_through_two_frontier_points():
    from analysis.laws import fit_frontier

    c, loss = [1e18, 1e19, 1e20], [3.0, 2.5, 2.2]
    pts = pd.DataFrame({"C": c, "loss": loss, "N": 1e6, "D": [c_ / 6e6 for c_ in c], "model": "m"})
    pts["run_id"] = ["a", "b", "c"]
    assert fit_frontier(pts.iloc[:2]).pure is None
    three = fit_frontier(pts)
    assert three.pure is not None and three.pure.kind == "pure" and three.pure.n_points == 3


def test_mutd_pl_budget_labels_round_to_two_digits():
    pts = pd.DataFrame({"C": [1.49e18, 1.51e18, 1.5e18, 2.6e19, 2.6e19], "budget": np.nan})
    assert list(budget_labels(pts)) == [1.5e18] * 3 + [2.6e19] * 2


def test_mutd_pl_residuals_are_log_observed_over_fitted(an):
    res = residuals(an)
    want = np.log(an.points["loss"] / an.parametric.predict(an.points["N"], an.points["D"]))
    np.testing.assert_allclose(res["resid"], want)


def test_mutd_pl_residual_summary_by_hand():
    res = pd.DataFrame({"budget": [1.0, 1.0, 2.0], "model": ["a", "b", "a"], "resid": [0.3, -0.4, 0.1]})
    s = residual_summary(res)
    assert s["rmse"] == pytest.approx(math.sqrt((0.09 + 0.16 + 0.01) / 3))
    assert s["by_budget"][0] == {"budget": 1.0, "mean": pytest.approx(-0.05), "max_abs": 0.4, "n": 2}
    assert s["by_model"][0]["max_abs"] == 0.3 and s["by_model"][0]["n"] == 2


def _ranking(rows):
    pts = pd.DataFrame(rows, columns=["model", "N", "loss"]).assign(C=1e18, D=1.0, budget=1e18)
    fake = SimpleNamespace(
        points=pts, config=AnalysisConfig(), parametric=SimpleNamespace(predict=lambda n, d: n)
    )
    return ranking_check(fake)


def test_mutd_pl_ranking_uses_each_models_best_point_and_ties_agree():
    """The law orders by N (a < b < c); a model's best point counts (a seed's worse one does not), and
    tied losses agree in either order."""
    (r,) = _ranking([("a", 1.0, 1.0), ("a", 1.0, 3.0), ("b", 2.0, 2.0), ("c", 4.0, 2.5)])
    assert r["observed"] == ["a", "b", "c"] and r["agrees"] is True
    (tie,) = _ranking([("a", 1.0, 1.0), ("b", 2.0, 2.0), ("c", 4.0, 2.0)])
    assert tie["agrees"] is True
    (bad,) = _ranking([("a", 1.0, 1.0), ("b", 2.0, 2.5), ("c", 4.0, 2.0)])
    assert bad["agrees"] is False


def test_mutd_pl_disagreement_needs_both_the_factor_and_apart_intervals():
    d = pipeline._disagreement
    # 2x apart with disjoint intervals: under the factor 3
    assert d([Estimate(1e6, 0.9e6, 1.1e6), Estimate(2e6, 1.9e6, 2.1e6)], 3.0) == 1.0
    # 4x apart, but the intervals overlap (the first's upper end above the second's lower end)
    assert d([Estimate(1e6, 0.5e6, 5e6), Estimate(4e6, 3e6, 8e6)], 3.0) == 1.0
    # points without intervals: the largest ratio of those more than 3x apart
    assert d([Estimate(1.0), Estimate(4.0), Estimate(20.0)], 3.0) == pytest.approx(20.0)


def test_mutd_pl_extrapolation_flags_beyond_the_factor_either_side(an):
    c_max, c_min = float(an.points["C"].max()), float(an.points["C"].min())
    assert not predict(an, 2 * c_max).extrapolating and predict(an, 20 * c_max).extrapolating
    below = "below the smallest compute measured"
    assert not any(below in r for r in predict(an, c_min / 2).status.reasons)
    assert any(below in r for r in predict(an, c_min / 20).status.reasons)


def test_mutd_pl_one_model_size_withholds_the_recommendation(an):
    one = dataclasses.replace(an, points=an.points.assign(N=1e6))
    pr = predict(one, 1e21)
    assert pr.n_opt is None and any("every point has one model size" in r for r in pr.status.reasons)


def _far_law(value):
    return SimpleNamespace(predict=lambda c: value, predict_interval=lambda c, lvl=0.95: (math.nan, math.nan))


def test_mutd_pl_unresolved_approaches_do_not_vote(an):
    """An IsoFLOP law whose status is not ok is neither shown nor voted; an unresolved frontier N_opt is
    shown, not voted: 100x away from the parametric law, neither makes the approaches disagree."""
    n3 = predict(an, 1e21).n_opt.value
    bad = Status().add(NOT_IDENTIFIED, "made up")
    iso = dataclasses.replace(an.isoflop, n_opt=_far_law(100 * n3), status=bad)
    fr = dataclasses.replace(an.frontier, n_opt=_far_law(100 * n3), status=bad)
    pr = predict(dataclasses.replace(an, isoflop=iso, frontier=fr), 1e21)
    assert "N_opt from IsoFLOP (approach 2)" not in pr.alternatives
    assert pr.alternatives[UNRESOLVED_APPROACH1] == 100 * n3
    assert not any("disagree" in r for r in pr.status.reasons)


def test_mutd_pl_a_censored_isoflop_withholds_n_opt(an):
    iso = dataclasses.replace(an.isoflop, status=Status().add(CENSORED, "made up"))
    pr = predict(dataclasses.replace(an, isoflop=iso), 1e21)
    assert pr.n_opt is None and pr.loss is None and pr.status.status == CENSORED


def test_mutd_pl_n_opt_spread_is_max_over_min():
    pr = Prediction(1e21, None, None, None, None, None, None, "x")
    pr.alternatives = {"N_opt a": 1e6, "N_opt b": 3e6, "frontier loss law L(C)": 2.0}
    assert pr.n_opt_spread() == pytest.approx(3.0)


def test_mutd_pl_fid_interval_pairs_each_bootstrap_loss_with_its_fid_law(an):
    pr = predict(an, 1e21)
    draws = pipeline.allocation_draws(an.parametric, 1e21, an.flops_per_param_datum)[:, 2]
    s = an.fid_vs_loss.bootstrap.samples
    m = min(len(draws), an.fid_vs_loss.bootstrap.n_ok)
    f = s["A"][:m] * draws[:m] ** (-s["alpha"][:m])
    assert (pr.fid.lo, pr.fid.hi) == pytest.approx(percentile_interval(f, 0.5))


def test_mutd_pl_n_runs_counts_the_runs_behind_averaged_points(an):
    ids = an.points["run_id"].astype(str).to_numpy().copy()
    ids[0] = ids[0] + " + extra-seed"
    d = dataclasses.replace(an, points=an.points.assign(run_id=ids), influence=None).to_dict()
    assert d["n_runs"] == len(an.points) + 1


def test_mutd_pl_largest_compute_runs_by_budget_cluster_and_fraction():
    pts = pd.DataFrame({"run_id": ["a", "b", "c"], "C": [1.0, 2.0, 3.0], "budget": [1e18, 1e19, 1e19]})
    assert set(largest_compute_runs(pts)) == {"b", "c"}
    # no budgets: 14 runs near 1e18 and one at 1e20: a top cluster of one run gives way to the top
    # round(0.1 x 15) = 2 runs by C
    c = [1e18 * (1 + 0.01 * i) for i in range(14)] + [1e20]
    pts = pd.DataFrame({"run_id": [f"r{i}" for i in range(15)], "C": c, "budget": np.nan})
    assert set(largest_compute_runs(pts)) == {"r14", "r13"}


def test_mutd_pl_holdout_numbers_by_hand():
    """The held-out best loss is the lowest over the cells within 1.5x of the largest C; the mean and max
    errors are those of |pred - loss| / loss; frontier_error is relative to the observed loss."""
    pts = law_points(n_sizes=5)
    top = pts["C"] == pts["C"].max()
    best = pts.loc[top, "loss"].idxmin()
    pts.loc[best, "C"] *= 0.8  # the best cell a little below the largest C
    cfg = AnalysisConfig(n_bootstrap=0)
    h = holdout_prepared(prepare(pts, cfg), cfg)
    assert h.best_loss_obs == pytest.approx(pts.loc[best, "loss"])
    ape = np.abs(h.held_out["pred_loss"] - h.held_out["loss"]) / h.held_out["loss"]
    assert h.mape_loss == pytest.approx(ape.mean()) and h.max_ape_loss == pytest.approx(ape.max())
    assert h.mape_loss < h.max_ape_loss
    r = HoldoutResult(h.held_out, h.analysis, 0.0, 0.0, 2.2, 2.0)
    assert r.frontier_error == pytest.approx(0.1)


def test_mutd_pl_holdout_refuses_five_training_points():
    pts = law_points(budgets=(1e18, 1e19), n_sizes=5)
    pts = pts[(pts["C"] == 1e19) | (pts.index < 5)]
    cfg = AnalysisConfig(n_bootstrap=0)
    with pytest.raises(ValueError, match="holdout: without the 5 run"):
        holdout_prepared(prepare(pts, cfg), cfg)


def test_mutd_pl_effective_data_given_r_star_and_no_repetition():
    pts = law_points(n_sizes=5)
    once = prepare(pts.assign(unique=pts["D"]), AnalysisConfig(effective_data=True, r_star=15.4))
    assert once.r_star is None and any("no run saw an image twice" in n for n in once.notes)
    four = prepare(pts.assign(unique=pts["D"] / 4), AnalysisConfig(effective_data=True, r_star=15.4))
    assert four.r_star == 15.4 and four.r_star_fitted is False


def test_mutd_pl_fit_r_star_takes_the_grid_minimum(monkeypatch):
    """With an objective that rises with D' (so with R*), the grid's smallest R* wins."""
    pts = law_points(n_sizes=5).assign(unique=lambda p: p["D"] / 10)
    monkeypatch.setattr(
        pipeline, "fit_parametric", lambda n, d, loss, cfg: SimpleNamespace(objective=d.sum())
    )
    assert pipeline.fit_r_star(pts, AnalysisConfig()) == pytest.approx(10**-0.5)


def test_mutd_pl_min_steps_zero_is_allowed():
    assert AnalysisConfig(min_steps=0).min_steps == 0


# ----------------------------------------------------------------------------------------------
# analysis.report


def test_mutd_rp_results_json_has_no_nan_and_the_worst_status(an):
    pr = predict(an, 1000 * float(an.points["C"].max()))
    plain = Prediction(1e21, Estimate(1e6), None, None, None, None, None, "x")  # no interval: nan ends
    out = report.results_dict(an, [pr, plain])
    json.dumps(out, allow_nan=False)
    assert out["predictions"][1]["n_opt"] == {"value": 1e6, "lo": None, "hi": None}
    assert out["status"] == pr.status.status != an.status.status


def test_mutd_rp_report_gives_exponent_intervals_with_their_sign(an):
    law = an.loss_vs_compute_pure
    lo, hi = law.conf_int()["alpha"]
    md = report.markdown(an, {})
    assert f"exponent 95% [{-hi:.3g}, {-lo:.3g}]" in md
    rising = SimpleNamespace(
        conf_int=lambda: {"alpha": (-0.5, -0.2)}, formula=lambda: "y = C^0.3", bootstrap=None, n_points=3
    )
    md = report.markdown(dataclasses.replace(an, loss_vs_compute_pure=rising), {})
    assert "exponent 95% [0.2, 0.5] (t, 3 points; excludes 0)" in md


def test_mutd_rp_report_counts_the_budgets_whose_ranking_agrees(an):
    rows = [{"C": 1e18 * i, "agrees": i != 2, "observed": ["a"], "predicted": ["a"]} for i in (1, 2, 3)]
    md = report.markdown(dataclasses.replace(an, ranking=rows), {})
    assert "as observed at 2 of 3 budget(s)" in md


def _fid_points(rows):
    return SimpleNamespace(points=pd.DataFrame(rows, columns=["model", "N", "C", "budget", "fid", "fid_se"]))


def test_mutd_rp_fid_resolution_note_by_hand():
    """Largest budget: a (se 3) at 10, b (se 4) at 17.5 -> gap 7.5 / hypot(3, 4) = 1.5 standard errors;
    b's earlier point (smaller C) is not its last."""
    fake = _fid_points(
        [("a", 1.0, 1e19, 1e19, 10.0, 3.0), ("b", 2.0, 0.5e19, 1e19, 30.0, 1.0),
         ("b", 2.0, 1e19, 1e19, 17.5, 4.0), ("a", 1.0, 1e18, 1e18, 50.0, 1.0)]
    )  # fmt: skip
    note = report.fid_resolution_note(fake)
    assert "best a 10 +- 3, worst b 17.5 +- 4" in note
    assert "the gap is 1.5 standard errors, so sampling noise alone could reorder them" in note


def test_mutd_rp_fid_frontier_note_names_each_budgets_best():
    pts = pd.DataFrame(
        [("a", 1.0, 1e18, 1e18, 20.0), ("b", 2.0, 1e18, 1e18, 30.0), ("a", 1.0, 1e19, 1e19, 25.0),
         ("b", 2.0, 1e19, 1e19, 22.0)],
        columns=["model", "N", "C", "budget", "fid"],
    )  # fmt: skip
    fake = SimpleNamespace(points=pts, fid_frontier=SimpleNamespace(frontier=pts.iloc[:1]))
    note = report.fid_frontier_note(fake)
    assert note.startswith("best FID per budget (1e+18: a 20, 1e+19: b 22); 1 of 2 budgets")


def test_mutd_rp_mlflow_summary_skips_non_finite_numbers(monkeypatch, tmp_path):
    import mlflow.tracking

    logged = {}

    class Fake:
        def __init__(self, tracking_uri=None):
            pass

        def get_experiment_by_name(self, name):
            return SimpleNamespace(experiment_id="1")

        def create_run(self, exp, run_name, tags):
            return SimpleNamespace(info=SimpleNamespace(run_id="r"))

        def log_metric(self, rid, key, value):
            logged[key] = value

        def set_tag(self, *a):
            pass

        def log_artifact(self, *a, **k):
            pass

        def set_terminated(self, *a):
            pass

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Fake)
    report.log_to_mlflow({}, "e", None, {"status": "ok", "E": math.nan, "A": 2.0, "alpha": math.inf})
    assert logged == {"fit/A": 2.0}


# ----------------------------------------------------------------------------------------------
# analysis.plots


def test_mutd_plt_plot_colours_span_the_colormap_and_laws_get_bands(an, tmp_path, monkeypatch):
    kept = {}
    monkeypatch.setattr(
        plots, "_save", lambda fig, path: kept.setdefault(Path(path).stem, fig) and Path(path)
    )
    try:
        plots.plot_isoflop(an, tmp_path / "iso.png")
        ax = kept["iso"].axes[0]
        dotted = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
        cols = [tuple(ln.get_color()) for ln in dotted]
        assert cols[0] == pytest.approx(plt.cm.viridis(0.0)) and cols[-1] == pytest.approx(
            plt.cm.viridis(1.0)
        )
        fig, ax = plt.subplots()
        law = an.frontier.y_law
        cc = np.logspace(18, 21, 5)
        plots._law(ax, cc, law, "b-", "law")
        assert len(ax.collections) == 1  # its bootstrap band
        np.testing.assert_allclose(plots._c_range(an, 2.0)[-1], an.points["C"].max() * 100)
    finally:
        plt.close("all")


# ----------------------------------------------------------------------------------------------
# analysis.runs


def _metric(step, value, ts=0):
    return SimpleNamespace(step=step, value=value, timestamp=ts)


class _HistoryClient:
    def __init__(self, hist):
        self.hist = hist

    def get_metric_history(self, rid, key):
        return self.hist.get(key, [])


def test_mutd_rn_history_keeps_the_last_value_of_a_step_and_unique_images_rules():
    c = _HistoryClient({"val/loss": [_metric(5, 2.0, ts=2), _metric(5, 1.0, ts=1), _metric(3, 9.0, ts=0)]})
    s = arun._history(c, "r", "val/loss")
    assert list(s.index) == [3, 5] and list(s) == [9.0, 2.0]
    seen = pd.Series([500.0, 1000.0])
    assert math.isnan(arun._unique_images(_HistoryClient({}), "r", {"data.unique_images": "0"}, seen))
    ep = _HistoryClient({"data/epochs": [_metric(1, 2.0)]})
    assert arun._unique_images(ep, "r", {}, seen) == 500.0


def test_mutd_rn_replicate_key_cell_and_run_counts():
    assert arun.replicate_key({"a": 1, "git.commit": "x", "seed": 1}) == arun.replicate_key(
        {"a": 1, "seed": 2}
    )
    assert arun.count_runs(pd.Series(["a + b", "c", "b + d"])) == 4
    pts = pd.DataFrame({"model": "m", "N": 1.0, "budget": 1e18, "patch_size": [2.0, 4.0], "final": True})
    cells = arun.csv_cell(pts)
    assert cells[0] != cells[1]


def test_mutd_rn_select_points_by_hand():
    """min_steps 50: a run ending at step 50 stays, one at 49 goes; a cosine run keeps its final point
    only, a constant one every point."""
    rows = [("cos", 25, "cosine"), ("cos", 50, "cosine"), ("short", 49, "cosine"), ("const", 25, "constant"),
            ("const", 50, "constant")]  # fmt: skip
    pts = pd.DataFrame(rows, columns=["run_id", "step", "schedule"]).assign(N=1.0, D=1.0, loss=1.0)
    pts = arun.tidy(pts)
    kept, dropped, _ = arun.select_points(pts, min_steps=50)
    assert sorted(zip(kept["run_id"], kept["step"])) == [("const", 25), ("const", 50), ("cos", 50)]
    assert list(dropped["run_id"]) == ["short"]


def test_mutd_rn_effective_data_closed_form():
    # unique above D: no repetition, D' = D
    assert arun.effective_data([100.0], [200.0], 1.0)[0] == pytest.approx(100.0)
    # 4 epochs of U = 100 at R* = 2: U + U R* (1 - exp(-3 / 2))
    assert arun.effective_data([400.0], [100.0], 2.0)[0] == pytest.approx(100 + 200 * (1 - math.exp(-1.5)))


def test_mutd_rn_bad_history_and_the_mean_fid_standard_error():
    flops = pd.Series({0: 0.0, 10: 5.0})
    assert arun._bad_history("compute/train_flops", flops) is None
    assert arun._bad_history("compute/train_flops", pd.Series({0: 0.0, 10: 0.0})) is not None
    pts = arun.tidy(
        pd.DataFrame({"run_id": ["a", "b"], "replicate": "x", "step": 10.0, "N": 1.0, "D": 1.0,
                      "loss": [1.0, 2.0], "fid": [10.0, 12.0], "fid_se": [3.0, 4.0]})
    )  # fmt: skip
    out, _ = arun.average_seeds(pts)
    assert out["fid_se"].iloc[0] == pytest.approx(2.5)  # sqrt(9 + 16) / 2


def test_mutd_rn_token_axis_scales_unique_images_too():
    pts = arun.tidy(
        pd.DataFrame({"N": [1.0], "D": [10.0], "loss": [1.0], "unique": [5.0], "tokens_per_image": [4.0]})
    )
    out = arun.set_axes(pts, "tokens")
    assert (out["D"].iloc[0], out["unique"].iloc[0]) == (40.0, 20.0)


# ----------------------------------------------------------------------------------------------
# sweeps.runner


def test_mutd_ru_longest_first_and_jobs_gone_table():
    cells = [
        SimpleNamespace(budget=b, steps=s, cell_id=f"{b:g}/{s}")
        for b, s in ((1e18, 100), (1e19, 50), (1e19, 80))
    ]
    assert [c.cell_id for c in runner.longest_first(cells)] == ["1e+19/80", "1e+19/50", "1e+18/100"]
    states = {
        "a": SimpleNamespace(state="unknown", run_status="SCHEDULED"),
        "b": SimpleNamespace(state="unknown", run_status="RUNNING"),
        "c": SimpleNamespace(state="finished", run_status="FINISHED"),
    }
    with pytest.raises(ValueError, match="SLURM does not answer"):
        runner.check_known(states)
    assert runner.take_jobs_gone(states) == ["a", "b"]
    assert [states[c].state for c in "abc"] == ["failed", "interrupted", "finished"]


def test_mutd_ru_executor_checks_and_threads(monkeypatch):
    with pytest.raises(ValueError, match="nodes=2 needs SLURM"):
        runner.check_executor(SimpleNamespace(executor=ExecutorSpec(nodes=2)), "local")
    runner.check_wait("local", False)
    with pytest.raises(ValueError, match="--no-wait with --executor debug"):
        runner.check_wait("debug", False)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 16)
    assert runner.threads_per_process(ExecutorSpec(local_parallelism=2, tasks_per_node=2), "local") == 4
    assert runner.threads_per_process(ExecutorSpec(cpus_per_task=7), "slurm") == 7


def test_mutd_ru_busy_slots_and_error_line():
    res = runner.LaunchResult(prepared=None, plan=None, timings={"a": (0.0, 10.0), "b": (5.0, 10.0)})
    assert res.busy_slots() == pytest.approx(1.5)
    err = Exception("Traceback\nValueError: first\n  at x\nRuntimeError: last\n")
    assert runner._error_line(err) == "RuntimeError: last"


def test_mutd_ru_a_submission_counts_its_attempt(monkeypatch):
    subs = []
    monkeypatch.setattr(runner, "record_submissions", lambda uri, s: subs.extend(s))
    monkeypatch.setattr(runner, "forget_cancelled", lambda d: None)
    job = SimpleNamespace(job_id="7", paths=SimpleNamespace(folder="/j"))
    ex = SimpleNamespace(submit=lambda fn, t: job)
    prep = SimpleNamespace(
        kind="debug", spec=SimpleNamespace(executor=ExecutorSpec()), tracking_uri="sqlite:///x"
    )
    states = {"new": SimpleNamespace(run_id="r1", attempts=0, interrupts=0),
              "again": SimpleNamespace(run_id="r2", attempts=2, interrupts=1)}  # fmt: skip
    run = runner._Runner(prep, ex, runner.LaunchResult(None, None), states, None, 1.0, {})
    tasks = [SimpleNamespace(cell_id=c, run_dir=f"/r/{c}", overrides={"x": 1}) for c in states]
    run._submit_and_record(tasks)
    assert [(s.run_id, s.attempts, s.resubmitted, s.interrupts) for s in subs] == [
        ("r1", 1, False, 0),
        ("r2", 3, True, 1),
    ]


def test_mutd_ru_end_unstarted_ends_scheduled_failed_and_running_killed(monkeypatch):
    calls = []

    def end(uri, errors, status, tag, left):
        calls.append((sorted(errors), status, left))
        return list(errors)

    monkeypatch.setattr(runner, "end_orphaned_runs", end)
    states = {
        "a": SimpleNamespace(cell_id="a", run_id="ra", state="failed", run_status="SCHEDULED"),
        "b": SimpleNamespace(cell_id="b", run_id="rb", state="interrupted", run_status="RUNNING"),
        "c": SimpleNamespace(cell_id="c", run_id="rc", state="failed", run_status="RUNNING"),
    }
    runner._end_unstarted("sqlite:///x", states)
    assert calls == [(["ra"], "FAILED", ("SCHEDULED",)), (["rb"], "KILLED", ("RUNNING",))]
    assert [states[c].run_status for c in "abc"] == ["FAILED", "KILLED", "RUNNING"]


# ----------------------------------------------------------------------------------------------
# sweeps.executor


def test_mutd_ex_sbatch_settings_by_hand():
    assert sx.slurm_mem(1.5) == "1536MB" and sx.slurm_mem(4.0) == "4GB"
    assert sx.parse_sbatch_lines(["--qos=high", "#SBATCH --exclusive", "mail-type=END"]) == {
        "qos": "high",
        "exclusive": True,
        "mail_type": "END",
    }
    p = sx.slurm_parameters(ExecutorSpec(timeout_min=30, sbatch=["--qos=high"]), "j")
    assert p["time"] == 30 and p["additional_parameters"] == {"requeue": True, "qos": "high"}


def test_mutd_ex_warning_signal_bound():
    """earliest = 60 x time - delay - 60 s early must be >= 10 s: 2 min with a 50 s delay is exactly 10."""
    sx.check_slurm_signal(ExecutorSpec(timeout_min=2, signal_delay_s=50))
    with pytest.raises(ValueError, match="before it can checkpoint"):
        sx.check_slurm_signal(ExecutorSpec(timeout_min=2, signal_delay_s=60))


def test_mutd_ex_local_job_setup_warm_and_result_dict(monkeypatch):
    spec = ExecutorSpec(setup=["echo hi"])
    lines = sx.local_job_setup(spec, "/r/c", 3)
    lock = sx.cell_job_lock_lines("/r/c")
    env = "export OMP_NUM_THREADS=3 MKL_NUM_THREADS=3"
    assert lines == [sx.KEEP_JOB_SHELL, *lock, env, "echo hi", sx.IGNORE_CTRL_C]
    assert sx.warm_unsupported(ExecutorSpec(tasks_per_node=2)) == "tasks_per_node=2"

    @dataclasses.dataclass
    class R:
        loss: float
        step: int

    assert sx._as_dict(R(1.5, 3)) == {"loss": 1.5, "step": 3}
    monkeypatch.setattr(sx, "slurm_status", lambda: "")
    assert sx.resolve_executor_kind("auto") == "slurm"
    monkeypatch.setattr(sx, "slurm_status", lambda: "no sbatch")
    assert sx.resolve_executor_kind("auto") == "local"


# ----------------------------------------------------------------------------------------------
# dit_core.tracking


def test_mutd_tr_param_and_tag_formats():
    assert tracking.format_param(None) == "" and tracking.format_param((1, 2)) == "[1, 2]"
    assert tracking.unique_images_tag(5.0) == "5" and tracking.unique_images_tag(None) == "unbounded"
    assert tracking.feature_space_tag({"photos": "x", "digits": "y"}) == "digits: y, photos: x"
    env = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "4", "SLURM_ARRAY_TASK_ID": "1"}
    assert tracking.executor_tags(env) == {"executor": "slurm", "job_id": "4_1"}
    assert tracking.executor_tags({"SUBMITIT_LOCAL_JOB_ID": "3"}) == {"executor": "local", "job_id": "3"}
    assert (
        tracking.executor_tags({"SUBMITIT_LOCAL_JOB_ID": "3", "DITSCALE_EXECUTOR_JOB_ID": "w1"})["job_id"]
        == "w1"
    )


def test_mutd_tr_sqlite_store_paths_and_driver_schemes():
    assert tracking.sqlite_store_path("sqlite:///:memory:") is None
    assert tracking.sqlite_store_path("sqlite:////tmp/a%20b.db?mode=ro") == Path("/tmp/a b.db")
    tracking.check_tracking_server("postgresql+psycopg2://u@h/db", "hint")  # a driver: not refused


class _Sent:
    """A fake client whose log_batch records each batch; ``fail`` first calls raise; ``hold`` blocks the
    first call until released (a handshake: ``entered`` says it is in flight)."""

    tracking_uri = "fake://"

    def __init__(self, fail=0, hold=False):
        self.batches, self.fail, self.hold = [], fail, hold
        self.entered, self.release = threading.Event(), threading.Event()

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.hold:
            self.hold = False
            self.entered.set()
            self.release.wait(10)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("down")
        self.batches.append(list(metrics) or list(params) or list(tags))


def test_mutd_tr_sender_drops_the_oldest_and_counts_each():
    c = _Sent(hold=True)
    s = tracking.MetricSender(c, "run", max_buffered=3)
    try:
        s.put(["p0"])
        assert c.entered.wait(10)  # p0 in flight
        s.put(["p1", "p2", "p3", "p4", "p5"])
        assert s.pending() == ["p0", "p3", "p4", "p5"] and s.stats["dropped"] == 2
    finally:
        c.release.set()
        s.close(10)


def test_mutd_tr_sender_batches_of_1000_and_retries_in_order():
    c = _Sent()
    s = tracking.MetricSender(c, "run")
    s.put(list(range(2500)))
    assert s.close(10) == 0
    assert [len(b) for b in c.batches] == [1000, 1000, 500]
    c = _Sent(fail=1)
    s = tracking.MetricSender(c, "run", retry_s=(0.01, 0.01))
    s.put(["a", "b", "c"])
    assert s.close(10) == 0 and c.batches == [["a", "b", "c"]]


class _RunClient(_Sent):
    """A fake MLflow client for one run (params, tags, metrics held)."""

    def __init__(self, params=None, tags=None, status="RUNNING", metrics=None):
        super().__init__()
        self.params, self.tags, self.status, self.metrics = (
            dict(params or {}),
            dict(tags or {}),
            status,
            metrics or {},
        )
        self.deleted, self.terminated = [], []

    def get_run(self, run_id):
        data = SimpleNamespace(params=self.params, tags=self.tags, metrics=dict.fromkeys(self.metrics, 0.0))
        return SimpleNamespace(data=data, info=SimpleNamespace(status=self.status, run_id=run_id))

    def get_metric_history(self, run_id, key):
        return [_metric(s, 0.0) for s in self.metrics[key]]

    def delete_tag(self, run_id, key):
        self.deleted.append(key)

    def set_terminated(self, run_id, status):
        self.terminated.append((run_id, status))


def test_mutd_tr_tracker_dedupes_steps_and_logs_params_in_hundreds():
    c = _RunClient(params={"kept": "1"}, metrics={"a": [1, 2], "b": [5]})
    assert tracking.logged_steps(c, "r", keys={"a"}) == {"a": {1, 2}}
    t = tracking.RunTracker(c, "r", resumed=True)
    try:
        t.log_metrics({"a": 1.0, "b": 1.0}, step=2)  # a at 2 is on the server already
        t.log_metrics({"b": 2.0}, step=2)  # b at 2 logged just now
        assert t.flush(10) == 0 and t.skipped == 2
        assert [(m.key, m.step) for b in c.batches for m in b] == [("b", 2)]
        c.batches.clear()
        t.log_params({"kept": 2, "long": "x" * 7000, **{f"p{i}": i for i in range(249)}})
        assert [len(b) for b in c.batches] == [100, 100, 50]
        sent = {p.key: p.value for b in c.batches for p in b}
        assert "kept" not in sent and len(sent["long"]) == 6000
    finally:
        t.sender.close(10)


def test_mutd_tr_finish_keeps_an_earlier_error_and_preempted_is_killed():
    c = _RunClient(tags={"error": "boom"})
    t = tracking.RunTracker(c, "r", resumed=False)
    t.finish(tracking.STATUS_FINISHED)
    assert c.deleted == ["error"] and c.terminated == [("r", "FINISHED")]
    assert any(tg.key == "error.previous" and tg.value == "boom" for b in c.batches for tg in b)
    c = _RunClient()
    tracking.RunTracker(c, "r", resumed=False).finish(tracking.STATUS_PREEMPTED)
    assert c.terminated == [("r", "KILLED")]


def test_mutd_tr_end_run_if_only_left_runs_with_the_whole_error():
    c = _RunClient(status="RUNNING")
    assert tracking.end_run_if(c, "r", left=("RUNNING",), status="KILLED", tag="x", error="e" * 6000)
    (tags,) = c.batches
    assert {t.key: len(t.value) for t in tags} == {"status": 1, "error": 5000}
    c = _RunClient(status="FINISHED")
    assert not tracking.end_run_if(c, "r", left=("RUNNING",), status="KILLED", tag="x")
    assert c.terminated == []


class _StoreClient(_RunClient):
    """A fake MlflowClient for `RunTracker.start`: one experiment, runs by id, the key search."""

    def __init__(self, tracking_uri=None):
        super().__init__()
        self.created, self.runs = [], {"old": "RUNNING"}

    def get_experiment_by_name(self, name):
        return SimpleNamespace(experiment_id="1")

    def create_run(self, exp, run_name=None, tags=None):
        self.created.append(dict(tags))
        return SimpleNamespace(info=SimpleNamespace(run_id="new", run_name=run_name))

    def get_run(self, run_id):
        self.status = self.runs.get(run_id, "RUNNING")
        return super().get_run(run_id)

    def search_runs(self, exps, filter_string, max_results):
        return [SimpleNamespace(info=SimpleNamespace(run_id="keyed"))] if "abc123" in filter_string else []


def test_mutd_tr_start_spares_the_parent_run_and_tags_running(monkeypatch, tmp_path):
    import mlflow

    made = []
    monkeypatch.setattr(
        mlflow, "MlflowClient", lambda tracking_uri=None: made.append(_StoreClient()) or made[-1]
    )
    (tmp_path / tracking.RUN_ID_FILE).write_text("old\n")
    t = tracking.RunTracker.start(
        uri="x", experiment="e", out_dir=tmp_path, reuse_saved_id=False, spare_run_id="old", tags={"a": "1"}
    )
    t.sender.close(10)
    c = made[-1]
    assert c.terminated == [] and t.run_id == "new"
    assert {tg.key: tg.value for b in c.batches for tg in b} == {"a": "1", "status": "running"}
    key_dir = tmp_path / "k"
    key_dir.mkdir()
    (key_dir / tracking.RUN_KEY_FILE).write_text("abc123\n")
    assert tracking._run_with_saved_key(_StoreClient(), "1", key_dir) == "keyed"
