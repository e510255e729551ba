"""What the analysis says when the data do not identify the answer (statuses, honest intervals,
N and D for DiT, point selection, diagnostics). Synthetic data from known laws; few resamples."""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import re
import sys
import time

import numpy as np
import pandas as pd
import pytest

from analysis.bootstrap import (
    BootstrapResult,
    bootstrap_points,
    fit_workers,
    parallel_map,
    resample_indices,
    workers_available,
)
from analysis.fit_scaling import build_parser, main
from analysis.isoflop import fit_isoflop
from analysis.laws import PowerLawFit, fit_power_law
from analysis.parametric import (
    ParametricConfig,
    ParametricFit,
    bootstrap_parametric,
    fit_parametric,
    objective,
    optimal_allocation,
    parametric_loss,
)
from analysis.pipeline import AnalysisConfig, analyze, predict
from analysis.report import write_report
from analysis.runs import effective_data, select_points, set_axes, tidy
from analysis.status import EXIT_CENSORED, EXIT_NOT_IDENTIFIED, Status, flag_unresolved_exponent, worst

TRUE = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.30}
BUDGETS = (1e18, 1e19, 1e20, 1e21, 1e22)
K_DEMO = 264.5  # measured true FLOPs per parameter per image of the demo DiTs (issue 11)


def isoflop_sweep(params=TRUE, budgets=BUDGETS, n_sizes=9, span=(-1.0, 1.0), noise=0.0, seed=0, k=6.0):
    """One final point per run on IsoFLOP slices; sizes log-spaced over `span` decades around the optimum."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n0 = optimal_allocation(params, c, k)[0] if params["alpha"] > 0 else (c / k) ** 0.5 / 10
        for i, n in enumerate(n0 * np.logspace(*span, n_sizes)):
            d = c / (k * n)
            loss = float(parametric_loss(params, n, d)) * math.exp(noise * rng.standard_normal())
            rows.append(
                {
                    "N": n,
                    "D": d,
                    "C": c,
                    "loss": loss,
                    "run_id": f"c{c:.0e}-{i}",
                    "model": f"m{i}",
                    "budget": c,
                }
            )
    return pd.DataFrame(rows)


def demo_like_sweep(noise=0.01, seed=0, schedule="constant"):
    """Shaped like today's demo: 4 families 0.15M-2.7M parameters at 1.5e11/4e11/1e12 FLOPs, a constant
    lr with every intermediate evaluation used, and a loss that is mostly a function of the images
    seen (it even rises slightly with N): the smallest model wins at every budget."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in (1.5e11, 4e11, 1e12):
        for m, n in {"S": 1.5e5, "B": 6e5, "L": 1.3e6, "XL": 2.7e6}.items():
            steps = round(b / (K_DEMO * n) / 16)
            for s in np.linspace(steps / 6, steps, 6).round():
                d = 16 * s
                loss = (0.05 + 0.002 * (n / 1e5) ** 0.05 + 2.0 / d**0.3) * math.exp(
                    noise * rng.standard_normal()
                )
                rows.append(
                    {
                        "N": n, "D": d, "C": K_DEMO * n * d, "loss": loss, "run_id": f"{m}@{b:.0e}",
                        "model": f"DiT-{m}", "step": s, "final": s == steps, "budget": b,
                        "schedule": schedule, "patch_size": 2,
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


def run_cli(tmp_path, pts, *extra):
    csv, out = tmp_path / "points.csv", tmp_path / "fit.json"
    pts.to_csv(csv, index=False)
    rc = main(["--csv", str(csv), "--json", str(out), "--out", str(tmp_path / "rep"), *extra])
    return rc, json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------
# ok


def test_bracketed_sweep_is_ok(tmp_path):
    pts = isoflop_sweep(noise=0.002, seed=3)
    rc, res = run_cli(tmp_path, pts, "--bootstrap", "40")  # 40: the fewest for a 95% interval
    assert rc == 0 and res["status"] == "ok" and res["reasons"] == []
    pred = res["predictions"][0]
    assert pred["status"] == "ok" and pred["compute"] == pytest.approx(1e23)
    n_true = optimal_allocation(TRUE, 1e23, 6.0)[0]
    assert pred["n_opt"]["lo"] < pred["n_opt"]["value"] < pred["n_opt"]["hi"]
    assert pred["n_opt"]["value"] == pytest.approx(n_true, rel=0.1)
    assert res["approach2_isoflop"]["status"] == "ok" and res["approach1_frontier"]["status"] == "ok"
    assert res["units"]["N"] == "parameters" and "FLOPs" in res["units"]["C"]
    assert res["bootstrap"]["n_requested"] == 40 and res["bootstrap"]["share_failed"] == 0.0


# ------------------------------------------------------------------------------------------------
# E at its floor


def test_e_at_floor_is_refitted_with_e_zero_and_bounded_by_its_profile():
    law = dict(TRUE, E=0.0)
    pts = isoflop_sweep(law, noise=0.003, seed=1)
    fit = fit_parametric(pts["N"], pts["D"], pts["loss"])
    assert fit.e_at_floor and fit.params["E"] == 0.0 and fit.converged
    assert fit.params["alpha"] == pytest.approx(law["alpha"], abs=0.01)
    assert fit.status.status == "not_identified"
    assert any("E ran to its floor" in r and f"E < {fit.e_upper:.3g}" in r for r in fit.status.reasons)
    # the bound is where the profile statistic n ln(f(E) / f(0)) crosses chi2_1(0.90) = 2.706
    assert 0 < fit.e_upper < 0.05 * pts["loss"].min()
    logs = [np.log(pts[c].to_numpy()) for c in ("N", "D", "loss")]
    es = np.array([e for e, _ in fit.e_profile])
    stat = np.array([len(pts) * math.log(f / fit.objective) for _, f in fit.e_profile])
    assert np.all(stat >= -1e-9) and stat[es > fit.e_upper].min() > 2.706 > stat[es < fit.e_upper].max()
    # with E held at the bound, the refit objective is not below the E = 0 optimum
    theta = fit.theta.copy()
    theta[0] = math.log(fit.e_upper)
    assert objective(theta, *logs, 1e-3)[0] > fit.objective
    # the allocation does not depend on E: it is still given
    assert fit.allocation_identified
    # a law with a real floor is not flagged
    ok = fit_parametric(*(isoflop_sweep(noise=0.003, seed=1)[c] for c in ("N", "D", "loss")))
    assert not ok.e_at_floor and ok.status.status == "ok"


# ------------------------------------------------------------------------------------------------
# an exponent not resolved


def test_alpha_interval_including_zero_withholds_n_opt_a_and_b():
    law = {"E": 1.0, "A": 0.5, "B": 1500.0, "alpha": 0.0, "beta": 0.30}  # no dependence on N at all
    pts = isoflop_sweep(law, noise=0.003, seed=2)
    an = analyze(pts, AnalysisConfig(n_bootstrap=10, seed=0))
    pf = an.parametric
    assert not pf.allocation_identified and pf.status.status == "not_identified"
    assert any(r.startswith("alpha's 95% interval") and "includes 0" in r for r in pf.status.reasons)
    # resamples on the bound (alpha = 0) are kept in the interval, not dropped; whether one or two of
    # ten land on it exactly (the lower end then 0.0) depends on the CPU's float kernels
    alphas, b = pf.bootstrap.samples["alpha"], pf.bootstrap
    assert alphas.min() == 0.0 and len(alphas) == b.n_requested - b.n_failed
    lo = pf.conf_int()["alpha"][0]
    assert lo == pytest.approx(np.quantile(alphas, 0.025)) and lo < 1e-3
    assert pf.bootstrap.share_at_bound()["alpha"] > 0
    d = pf.to_dict()
    assert d["a"] is None and d["b"] is None and d["ci95"]["a"] is None
    pr = predict(an, 1e23)
    assert pr.status.status == "not_identified" and pr.n_opt is None and pr.d_opt is None
    assert "withheld" in pr.text() and "N_opt from parametric" not in str(pr.alternatives)


# ------------------------------------------------------------------------------------------------
# censored


@pytest.mark.parametrize("side", ["below", "above"])
def test_every_isoflop_minimum_on_one_side_is_censored(tmp_path, side):
    span = (0.4, 1.4) if side == "below" else (-1.4, -0.4)  # every size above (below) the optimum
    pts = isoflop_sweep(span=span, n_sizes=5, noise=0.001, seed=4)
    rc, res = run_cli(tmp_path, pts, "--bootstrap", "4")
    iso = res["approach2_isoflop"]
    assert iso["status"] == "censored" and {s["side"] for s in iso["slices"]} == {side}
    # the second-smallest (second-largest) size: the smallest winning puts the optimum below the next one
    edge = [sorted(s["sizes"])[1] if side == "below" else sorted(s["sizes"])[-2] for s in iso["slices"]]
    x = max(edge) if side == "below" else min(edge)
    assert any(f"N_opt {side} {x:.3g} parameters at every budget" in r for r in iso["reasons"])
    pred = res["predictions"][0]
    c_max = max(BUDGETS)  # the bound holds at the budgets measured, not beyond them
    assert pred["n_opt"] is None
    assert pred["n_opt_bound"] == {
        "side": side,
        "N": pytest.approx(x),
        "measured_up_to_C": pytest.approx(c_max),
    }
    md = (tmp_path / "rep" / "report.md").read_text()  # the prediction's text says what is known
    known = f"N_opt {side} {x:.3g} parameters at every budget measured, up to {c_max:.3g} FLOPs"
    assert f"model size N_opt : withheld ({known})" in md
    assert res["status"] in ("censored", "not_identified")
    assert rc == {"censored": EXIT_CENSORED, "not_identified": EXIT_NOT_IDENTIFIED}[res["status"]]


def test_demo_shaped_sweep_is_not_identified_and_gives_no_n_opt(tmp_path):
    pts = demo_like_sweep()
    rc, res = run_cli(tmp_path, pts, "--bootstrap", "8", "--min-steps", "10")
    assert rc == EXIT_NOT_IDENTIFIED and res["status"] == "not_identified"
    reasons = " | ".join(res["reasons"])
    assert "N_opt below 6e+05 parameters at every budget" in reasons  # IsoFLOP: censored (below B, S wins)
    assert "holds the whole loss frontier" in reasons and "add smaller models" in reasons  # approach 1
    assert "dependence on model size N is not resolved" in reasons  # approach 3
    pred = res["predictions"][0]
    assert pred["n_opt"] is None and pred["d_opt"] is None and pred["loss"] is None
    assert res["a"] is None and res["approach1_frontier"]["N_opt"] is None
    assert any("constant lr" in n for n in res["point_selection"]["notes"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**Status: not_identified**" in md and "withheld" in md
    # the analysis's own JSON keeps its reasons, each named by its approach (not approach 3's alone)
    an = analyze(pts, AnalysisConfig(n_bootstrap=8, min_steps=10))
    assert an.to_dict()["reasons"] == an.status.reasons
    assert {r.split(":")[0] for r in an.status.reasons} == {"approach 1", "approach 2", "approach 3"}


# ------------------------------------------------------------------------------------------------
# approaches that disagree, extrapolation


def test_approaches_disagreeing_by_more_than_3x_withhold_n_opt():
    pts = isoflop_sweep(noise=0.002, seed=3)
    an = analyze(pts, AnalysisConfig(n_bootstrap=0))
    assert predict(an, 1e22).status.status == "ok"
    # IsoFLOP minima 5x above the parametric optimum at every budget (e.g. a mis-specified law)
    prof = an.isoflop.profiles
    an.isoflop.n_opt = fit_power_law(
        [p.compute for p in prof], [5 * p.n_opt for p in prof], saturating=False, x_name="C", y_name="N_opt"
    )
    pr = predict(an, 1e22)
    assert pr.status.status == "not_identified" and pr.n_opt is None
    assert any("disagree on N_opt by" in r and "more than 3x" in r for r in pr.status.reasons)
    assert isinstance(an.isoflop.n_opt, PowerLawFit) and pr.n_opt_spread() == pytest.approx(5.0, rel=0.2)


def test_recommendation_beyond_10x_is_extrapolating_with_the_holdout_error(tmp_path):
    pts = isoflop_sweep(noise=0.002, seed=3)
    rc, res = run_cli(tmp_path, pts, "--bootstrap", "40", "--predict", "1e24")  # fewer: not_identified
    assert rc == 0 and res["status"] == "extrapolating"
    pred = res["predictions"][0]
    assert pred["status"] == "extrapolating" and pred["extrapolation"] == pytest.approx(100.0)
    assert pred["n_opt"]["value"] > 0  # still given
    assert pred["holdout"]["mape_loss"] < 0.01 and res["holdout"] is not None  # run without --holdout
    assert "holdout (largest budget left out)" in (tmp_path / "rep" / "report.md").read_text()


def test_help_documents_the_exit_codes():
    text = build_parser().format_help()
    for code, word in ((3, "not_identified"), (4, "censored"), (2, "bad input"), (1, "crash")):
        assert f"{code}  {word}" in text


# ------------------------------------------------------------------------------------------------
# honest intervals


def test_bootstrap_restarts_from_the_grid_not_from_the_estimate():
    pts = isoflop_sweep(noise=0.003, seed=5)
    n, d, loss = (pts[c] for c in ("N", "D", "loss"))
    fit = fit_parametric(n, d, loss)
    wrong = ParametricFit(
        params={"E": 0.5, "A": 1e6, "B": 10.0, "alpha": 1.5, "beta": 0.1},
        objective=1.0, converged=True, n_points=len(pts), n_starts=1, n_converged_starts=1,
        stationarity=0.0, config=ParametricConfig(),
    )  # fmt: skip
    bs = bootstrap_parametric(wrong, n, d, loss, 5, seed=0)
    assert bs.n_ok == 5 and np.median(bs.samples["alpha"]) == pytest.approx(fit.params["alpha"], abs=0.02)
    assert np.median(bs.samples["ln_E"]) == pytest.approx(math.log(TRUE["E"]), abs=0.05)


def test_bootstrap_counts_failed_resamples_instead_of_dropping_them():
    def fit_one(idx):
        return None if idx[0] % 2 else {"x": float(idx.mean()), "_bound_x": float(idx[0] == 0)}

    bs = bootstrap_points(fit_one, 10, 40, seed=0)
    assert bs.n_ok + bs.n_failed == 40 and 0 < bs.n_failed < 40
    assert bs.share_failed == pytest.approx(bs.n_failed / 40)
    assert set(bs.share_at_bound()) == {"x"} and "_bound_x" not in bs.samples
    assert bs.to_dict()["n_failed"] == bs.n_failed


def test_bootstrap_gives_the_same_resamples_in_order_whatever_the_number_of_workers(monkeypatch):
    # Each forked worker's first refit waits for the other's, so both take part however fast one of
    # them is (without it, one worker could take all the chunks of these microsecond refits).
    both, first = multiprocessing.get_context("fork").Barrier(2), []
    parent = os.getpid()

    def fit_one(idx):  # a closure, as the real refits are: forked workers inherit it
        if os.getpid() != parent and not first:
            first.append(True)  # this worker's own copy of the list
            both.wait(timeout=60)
        if idx[0] == 3:
            raise ValueError("a failed refit")
        return {"x": float(idx.mean()), "first": float(idx[0]), "pid": float(os.getpid())}

    serial = bootstrap_points(fit_one, 12, 40, seed=3, workers=1)
    forked = bootstrap_points(fit_one, 12, 40, seed=3, workers=2)
    assert serial.n_failed == forked.n_failed > 0
    for k in ("x", "first"):
        np.testing.assert_array_equal(serial.samples[k], forked.samples[k])
    assert set(serial.samples["pid"]) == {os.getpid()}
    assert len(set(forked.samples["pid"])) == 2 and os.getpid() not in set(forked.samples["pid"])
    monkeypatch.setenv("DITSCALE_FIT_WORKERS", "1")
    assert workers_available() == 1
    assert parallel_map(lambda i: (i, os.getpid()), list(range(20))) == [(i, os.getpid()) for i in range(20)]

    def dies(i):  # a worker killed mid-refit (the OOM killer, a signal): an error, not a hang
        if i == 5 and os.getpid() != parent:
            os._exit(1)
        return i

    with pytest.raises(RuntimeError, match="a worker process refitting resamples died .* --workers 1"):
        parallel_map(dies, list(range(20)), workers=2)
    assert parallel_map(dies, list(range(20)), workers=1) == list(range(20))

    def nested(i):  # a parallel_map inside a worker runs there, with no forks of its own
        return parallel_map(lambda j: (j, os.getpid()), list(range(8)), workers=2)

    inner = parallel_map(nested, list(range(8)), workers=2)
    assert all(len({p for _, p in r}) == 1 and r[0][1] != parent for r in inner)
    with fit_workers(3):  # the CLI's --workers wins over the environment, inside its block only
        assert workers_available() == 3
    assert workers_available() == 1
    monkeypatch.setenv("DITSCALE_FIT_WORKERS", "two")
    with pytest.raises(ValueError, match="DITSCALE_FIT_WORKERS must be an integer >= 1, got 'two'"):
        workers_available()


def test_bootstrap_shows_a_progress_bar_on_a_terminal_only(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def slow(idx):  # ~0.4 s in all: past tqdm's 0.1 s refresh interval
        time.sleep(0.01)
        return {"x": float(idx.mean())}

    for workers in (1, 2):
        monkeypatch.setattr(sys, "stderr", Terminal())
        bs = bootstrap_points(slow, 10, 40, workers=workers, desc="bootstrap x")
        shown = sys.stderr.getvalue()
        assert bs.n_ok == 40 and re.search(r"bootstrap x: +\d+%\|.*\| [1-9]\d*/40", shown), shown
        assert shown.endswith("\r")  # cleared when done (leave=False): the report's lines follow clean
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe: no bar
    bootstrap_points(slow, 10, 40, workers=2, desc="bootstrap x")
    assert sys.stderr.getvalue() == ""


def test_frontier_bootstraps_runs_and_gives_no_law_for_a_one_model_frontier():
    rows = []
    for i, n in enumerate([1e6, 1e7, 1e8]):  # learning curves of three runs of a known law
        for dd in np.logspace(6, 10, 12):
            rows.append(
                {"N": n, "D": dd, "C": 6 * n * dd, "loss": 1 + 30 / n**0.3 + 40 / dd**0.3, "run_id": f"r{i}"}
            )
    an = analyze(pd.DataFrame(rows), AnalysisConfig(n_bootstrap=6, min_steps=0))
    assert an.frontier.n_opt is not None and an.frontier.n_opt.bootstrap.unit == "runs"
    assert an.frontier.n_opt.bootstrap.n_requested == 6
    demo = analyze(demo_like_sweep(), AnalysisConfig(n_bootstrap=0, min_steps=0))
    assert demo.frontier.n_opt is None and demo.frontier.d_opt is None
    assert demo.frontier.status.status == "not_identified"


# ------------------------------------------------------------------------------------------------
# which points, and what N and D mean


def test_points_valid_for_the_schedule_and_min_steps():
    pts = tidy(demo_like_sweep(schedule="cosine"))
    kept, dropped, notes = select_points(pts, min_steps=20)
    assert kept["final"].all()  # cosine: the final point of each run only
    short = pts.groupby("run_id")["step"].max() < 20
    assert set(dropped["run_id"]) == set(short[short].index) and len(dropped) > 0
    assert all("< --min-steps 20" in r for r in dropped["reason"])
    assert kept["run_id"].nunique() == pts["run_id"].nunique() - len(dropped)
    assert any("run(s) dropped" in n for n in notes) and any("only the final point" in n for n in notes)
    const, _, notes = select_points(tidy(demo_like_sweep()), min_steps=0)
    assert len(const) == 72 and any("constant lr" in n for n in notes)
    allp, _, _ = select_points(tidy(demo_like_sweep(schedule="cosine")), min_steps=0, all_points=True)
    assert len(allp) == 72
    derived = tidy(demo_like_sweep().drop(columns="final"))  # a CSV with steps: final = last step of a run
    assert derived["final"].sum() == 12 and (derived["final"] == pts["final"]).all()
    an = analyze(demo_like_sweep(schedule="constant_cooldown"), AnalysisConfig(n_bootstrap=0, min_steps=20))
    assert len(an.points) == 12 - len(dropped) and set(dropped["run_id"]) <= set(an.removed["run_id"])


def test_data_axis_tokens_and_non_embedding_params():
    pts = tidy(isoflop_sweep().assign(tokens_per_image=64.0, N_non_embedding=lambda df: 0.8 * df["N"]))
    tok = set_axes(pts, "tokens", "non_embedding")
    assert np.allclose(tok["D"], 64 * pts["D"]) and np.allclose(tok["N"], 0.8 * pts["N"])
    assert np.allclose(tok["N_total"], pts["N"]) and np.allclose(tok["images"], pts["D"])
    an = analyze(pts, AnalysisConfig(n_bootstrap=0, data_axis="tokens", params="non_embedding"))
    assert an.flops_per_param_datum == pytest.approx(6.0 / (64 * 0.8))
    assert an.units["D"] == "tokens" and an.units["N"] == "non-embedding parameters"
    bare = tidy(isoflop_sweep())
    with pytest.raises(ValueError, match=r"model.input_size and model.patch_size"):
        set_axes(bare, "tokens")
    with pytest.raises(ValueError, match=r"model.params_non_embedding.*--params total"):
        set_axes(bare, params="non_embedding")


def test_effective_data_closed_form_and_fitted_r_star():
    d = np.array([1e3, 5e3, 1e6])
    u = np.array([1e3, 1e3, 1e3])
    r_star = 15.4  # Muennighoff et al.'s fitted R*_D
    dp = effective_data(d, u, r_star)
    assert dp[0] == 1e3  # one epoch: no repetition
    assert dp[1] == pytest.approx(1e3 + 1e3 * r_star * (1 - math.exp(-4 / r_star)))
    assert dp[2] == pytest.approx(1e3 * (1 + r_star), rel=1e-6)  # many epochs: at most U (1 + R*)
    assert np.array_equal(effective_data(d, [np.nan, np.inf, 2e6], r_star), d)  # unknown / unbounded / D < U
    small = effective_data(1e3 * (1 + 1e-4), 1e3, r_star)  # dD'/dD = 1 at the first repeat
    assert small == pytest.approx(1e3 * (1 + 1e-4), rel=1e-8)
    # a law in D' with R* = 10^0.75 (a grid point of the profile): the fit finds that R*
    true_r = 10**0.75
    pts = isoflop_sweep(dict(TRUE, alpha=0.34), n_sizes=7, budgets=BUDGETS[:4])
    pts["unique"] = pts["D"].min() * 2
    pts["loss"] = parametric_loss(TRUE, pts["N"], effective_data(pts["D"], pts["unique"], true_r))
    an = analyze(pts, AnalysisConfig(n_bootstrap=0, effective_data=True))
    assert an.r_star == pytest.approx(true_r) and an.r_star_fitted
    assert an.parametric.params["beta"] == pytest.approx(TRUE["beta"], abs=0.01)
    with pytest.raises(ValueError, match="data/unique_images"):
        analyze(isoflop_sweep(), AnalysisConfig(n_bootstrap=0, effective_data=True))


def test_effective_data_on_a_stream_that_never_repeats_fits_no_r_star():
    """Unbounded (the demo's photo stream) or under one epoch: D' = D for every R*, so no R* is fitted
    (a profile over equal objectives would report its first grid point as "fitted")."""
    from analysis.pipeline import prepare

    pts = isoflop_sweep(n_sizes=5, budgets=BUDGETS[:3])
    pts["unique"] = np.where(np.arange(len(pts)) % 2, np.inf, pts["D"] * 1.5)
    prep = prepare(pts, AnalysisConfig(n_bootstrap=0, effective_data=True))
    assert prep.r_star is None and not prep.r_star_fitted
    assert np.array_equal(prep.points["D"], prep.points["D_raw"])
    assert any("no run saw an image twice" in n for n in prep.notes)
    pts["unique"] = pts["D"] / 2  # two epochs each: R* is fitted again
    assert prepare(pts, AnalysisConfig(n_bootstrap=0, effective_data=True)).r_star_fitted


def test_isoflop_slices_group_patch_variants():
    base = isoflop_sweep(n_sizes=5, budgets=BUDGETS[:3])
    twin = base.assign(
        N=base["N"] * 0.9999, loss=base["loss"] * 1.02, patch_size=4, run_id=base["run_id"] + "/4"
    )
    fit = fit_isoflop(pd.concat([base.assign(patch_size=2), twin], ignore_index=True))
    assert {p.patch for p in fit.profiles} == {2.0, 4.0} and all(p.n_points == 5 for p in fit.profiles)
    assert fit.patch == 2.0 and set(fit.by_patch) == {2.0, 4.0}


# ------------------------------------------------------------------------------------------------
# diagnostics


def test_diagnostics_ranking_residuals_correlation(tmp_path):
    noisy = analyze(isoflop_sweep(noise=0.002, seed=6, n_sizes=5), AnalysisConfig(n_bootstrap=6))
    corr = noisy.parametric.correlation()
    pts = isoflop_sweep(n_sizes=5)  # exactly on the law: the law orders the models as observed
    an = analyze(pts, AnalysisConfig(n_bootstrap=0))
    assert len(an.ranking) == len(BUDGETS) and all(r["agrees"] for r in an.ranking)
    assert corr.shape == (5, 5) and np.allclose(corr, corr.T) and np.allclose(np.diag(corr), 1.0)
    # swap the two best models' losses at 1e20: the law's order no longer matches the data's
    s = pts[pts["C"] == 1e20].sort_values("loss")
    i, j = s.index[:2]
    pts.loc[[i, j], "loss"] = pts.loc[[j, i], "loss"].to_numpy()
    bad = analyze(pts, AnalysisConfig(n_bootstrap=0))
    (r,) = [r for r in bad.ranking if not r["agrees"]]
    assert r["C"] == pytest.approx(1e20) and r["observed"][:2] == r["predicted"][:2][::-1]
    assert any(m.startswith("ranking: at 1e+20 FLOPs") for m in bad.messages)
    res = bad.to_dict()["diagnostics"]["residuals"]
    assert {row["budget"] for row in res["by_budget"]} == set(BUDGETS)
    paths = write_report(bad, tmp_path, [predict(bad, 1e22)])
    assert paths["residuals"].stat().st_size > 10_000


def _flat_optimum_sweep(noise: float, seed: int = 0) -> pd.DataFrame:
    """IsoFLOP slices whose optimum sits at N0 = 1e5 at every budget (true exponent a = 0): the loss
    is a parabola in log10 N around N0, lowered by compute, times log-normal noise; two seeds a cell."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in (1e11, 3e11, 1e12):
        for i, n in enumerate(1e5 * np.logspace(-0.8, 0.8, 5)):
            for s in range(2):
                loss = (0.05 + 0.02 * math.log10(n / 1e5) ** 2 + 0.5 * c**-0.1) * math.exp(
                    noise * rng.standard_normal()
                )
                rows.append(
                    {
                        "N": n,
                        "D": c / (6 * n),
                        "C": c,
                        "loss": loss,
                        "run_id": f"{c:.0e}-{i}-{s}",
                        "model": f"m{i}",
                    }
                )
    return pd.DataFrame(rows)


def test_isoflop_n_opt_exponent_interval_including_zero_is_not_identified():
    fit = fit_isoflop(_flat_optimum_sweep(noise=0.02))
    lo, hi = fit.joint.a_interval
    assert lo < 0 < hi  # the data: an optimum that does not move, measured with noise
    assert fit.status.status == "not_identified"
    (reason,) = [r for r in fit.status.reasons if "IsoFLOP N_opt exponent" in r]
    assert "includes 0" in reason and f"{lo:.3g}" in reason and "joint fit of 3 budgets" in reason


def test_isoflop_n_opt_exponent_resolved_is_not_flagged():
    fit = fit_isoflop(isoflop_sweep(budgets=BUDGETS[:3], noise=0.005))
    lo, hi = fit.joint.a_interval
    assert 0.3 < lo < 0.47 < hi  # true a = beta / (alpha + beta) = 0.47
    assert not any("N_opt exponent" in r for r in fit.status.reasons)


def test_group_resamples_draw_whole_groups_with_replacement():
    """A group resample is as many draws of whole groups as there are groups, with replacement:
    the distinct groups of 20 average 20 (1 - (19/20)^20) = 12.83, never all 20 as a permutation."""
    groups = np.repeat(np.arange(20), 3)
    rng = np.random.default_rng(0)
    distinct = []
    for _ in range(200):
        picked = groups[resample_indices(len(groups), rng, groups)]
        assert len(picked) == 60 and all(np.sum(picked == g) % 3 == 0 for g in np.unique(picked))
        distinct.append(len(np.unique(picked)))
    assert abs(np.mean(distinct) - 20 * (1 - (19 / 20) ** 20)) < 0.3  # its se over 200 draws: ~0.1
    res = bootstrap_points(lambda idx: {"m": float(np.mean(idx))}, 60, 8, groups=groups, workers=1)
    assert (res.unit, bootstrap_points(lambda idx: {"m": 0.0}, 5, 4, workers=1).unit) == ("groups", "points")
    two = BootstrapResult({"a": np.array([1.0, 2.0]), "b": np.array([3.0, 1.0])}, 2)
    assert np.isnan(two.correlation(["a", "b"])).all() and two.correlation(["a", "b"]).shape == (2, 2)
    # one worker: the items run in this process, in order
    assert parallel_map(lambda x: (os.getpid(), x), range(8), workers=1) == [
        (os.getpid(), x) for x in range(8)
    ]


def test_status_rules_merge_text_and_the_exponent_interval_that_touches_0():
    """`Status` by hand: the worse status wins (also one that comes without reasons), reasons are
    kept once each and in order, `text()` lists them one per line; an exponent's interval that
    includes 0, at either end exactly, is `not_identified` at the interval's own level."""
    st = Status().add("censored", "a").add("extrapolating", "b").add("censored", "a")
    assert st.status == "censored" and st.reasons == ["a", "b"] and not st.ok
    assert st.text() == "status: censored\n  - a\n  - b"
    assert Status().merge(Status("not_identified")).status == "not_identified"  # no reasons
    merged = Status("extrapolating", ["x"]).merge(Status("censored", ["y"]), "approach 2: ")
    assert merged.to_dict() == {"status": "censored", "reasons": ["x", "approach 2: y"]}
    assert worst(None, Status("ok"), merged, Status("extrapolating")).status == "censored"
    with pytest.raises(ValueError, match="unknown status 'fine'"):
        Status("fine")
    for interval, flagged in (((0.0, 1.0), True), ((-1.0, 0.0), True), ((-1.0, 1.0), True),
                              ((1e-9, 1.0), False), ((-1.0, -1e-9), False)):  # fmt: skip
        st = Status()
        flag_unresolved_exponent(st, "a", interval, approach=2)
        assert st.status == ("not_identified" if flagged else "ok"), interval
    flag_unresolved_exponent(st, "a", (0.0, 0.5), approach=1)
    assert st.reasons == [
        "a has a 95% interval [0, 0.5] that includes 0: approach 1 does not resolve how N_opt grows"
    ]
    flag_unresolved_exponent(st := Status(), "b", (-0.5, 0.5), approach=3, level=0.9)
    assert st.reasons[0].startswith("b has a 90% interval [-0.5, 0.5] that includes 0: approach 3")
