"""Session 37's QA pass over analysis/ and `analysis/fit_scaling.py` with synthetic data from known laws
and odd but legal inputs. Each test failed on the code before its fix."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from _fit_helpers import LAW, sweep

from analysis import fit_scaling, pipeline
from analysis.isoflop import censoring, slice_sides
from analysis.parametric import fit_parametric, optimal_allocation, parametric_loss
from analysis.pipeline import AnalysisConfig, analyze, predict
from analysis.runs import load_csv
from analysis.status import NOT_IDENTIFIED, Status


def _no_parametric(*args, **kwargs):
    raise RuntimeError("did not converge")


def _noisy_sweep(sigma: float = 0.3, seed: int = 0):
    """`sweep()` with log-normal noise of ``sigma`` on every loss: too noisy to resolve N_opt(C)."""
    d = sweep()
    d["loss"] *= np.exp(np.random.default_rng(seed).normal(0.0, sigma, len(d)))
    return d


def test_without_the_parametric_law_an_unresolved_isoflop_law_recommends_nothing(monkeypatch):
    """With the parametric law not fitted, the recommendation fell back to the IsoFLOP laws even when
    their N_opt exponent was not resolved (a = -0.84, 95% [-8.7, 7.0]): `N_opt : 2.649e+06` was printed
    as the answer under `not_identified`. Now it is withheld, as the status says."""
    monkeypatch.setattr(pipeline, "fit_parametric", _no_parametric)
    an = analyze(_noisy_sweep(), AnalysisConfig(n_bootstrap=4))
    assert an.parametric is None and an.isoflop.n_opt is not None
    assert an.isoflop.status.status == "not_identified"
    pr = predict(an, 1e22)
    assert pr.source == "IsoFLOP laws (approach 2)" and pr.status.status == "not_identified"
    assert pr.n_opt is None and pr.d_opt is None and pr.loss is None
    assert "N_opt : withheld" in pr.text()


def test_without_parametric_and_isoflop_laws_an_unresolved_frontier_recommends_nothing(monkeypatch):
    """The same for the last fallback, the frontier: its N_opt(C) law gave the recommendation even when
    its status was `not_identified` (an exponent interval that includes 0). Now withheld; a resolved
    frontier still recommends the closed-form optimum."""
    monkeypatch.setattr(pipeline, "fit_parametric", _no_parametric)
    an = analyze(sweep(), AnalysisConfig(n_bootstrap=40))  # 40: the fewest for a resolved 95% interval
    an.isoflop.n_opt = None  # no IsoFLOP law (e.g. fewer than 3 budgets)
    assert an.frontier.status.ok
    pr = predict(an, 1e22)
    assert pr.source == "compute-efficient frontier (approach 1)"
    assert pr.n_opt.value == pytest.approx(optimal_allocation(LAW, 1e22)[0], rel=1e-3)
    an.frontier.status = Status().add(NOT_IDENTIFIED, "the frontier's N_opt exponent has an interval with 0")
    pr = predict(an, 1e22)
    assert pr.status.status == NOT_IDENTIFIED
    assert pr.n_opt is None and pr.d_opt is None and pr.loss is None


def test_an_edge_model_tied_with_another_does_not_censor_the_optimum():
    """Losses rounded in a CSV (here the smallest two sizes of every budget tie at the minimum) made the
    first of the tied sizes, the smallest, the winner: `censored`, "N_opt below X at every budget: add
    smaller models", though the optimum may lie between the tied sizes. A tie now counts as interior;
    the smallest model winning alone is still censored."""
    rows = []
    for c in (1e18, 1e19, 1e20):
        for i, n in enumerate(np.logspace(6, 8, 5) * (c / 1e18) ** 0.5):
            loss = [2.0, 2.0, 2.1, 2.3, 2.6][i] * (c / 1e18) ** -0.05
            rows.append({"N": n, "D": c / (6 * n), "C": c, "loss": loss, "run_id": f"{c:g}-{i}"})
    d = pd.DataFrame(rows)
    slices = slice_sides(d)
    assert [s.side for s in slices] == ["interior"] * 3 and censoring(slices).ok
    d.loc[d.index % 5 == 0, "loss"] *= 0.99  # the smallest wins alone
    assert [s.side for s in slice_sides(d)] == ["below"] * 3
    assert censoring(slice_sides(d)).status == "censored"


def test_a_sweep_with_one_loss_everywhere_says_so_without_nan_inf_or_advice_to_add_smaller_models(
    tmp_path, capsys
):
    """Every run at the same loss (a loss that does not depend on N, D or C). The output said: approach
    2 "N_opt below ... the smallest model trained wins" (a tie), its exponent "has a 95% interval
    [-inf, inf]", approach 1 "the smallest model trained ... add smaller models", and the report had
    "a = nan" and a correlation table of "+nan". Now: not_identified, nothing censored, no nan or inf
    in the words, and the frontier's reason says that the loss does not fall with compute."""
    csv = tmp_path / "flat.csv"
    sweep().assign(loss=3.0).to_csv(csv, index=False)
    code = fit_scaling.main(["--csv", str(csv), "--out", str(tmp_path / "rep"), "--bootstrap", "4"])
    out = capsys.readouterr().out
    report = (tmp_path / "rep" / "report.md").read_text()
    assert code == 3
    for text in (out, report):
        assert not re.search(r"\b(nan|inf)\b", text, re.IGNORECASE), text
        assert "N_opt below" not in text and "add smaller models" not in text
        assert "has no finite 95% interval" in text
        assert "with a loss that no run at more compute improves on" in text
    assert "| ln_E | n/a |" in report


def test_flops_per_param_datum_that_would_be_ignored_is_refused(tmp_path, capsys):
    """`--flops-per-param-datum 4` with a CSV that has a C column (or with MLflow runs, which log their
    compute) was accepted and ignored: the fit ran with the data's own C / (N D) = 6 and exit 0. Now exit 2
    before any fit, naming the flag; without the C column it sets C = k N D, and N_opt at k C / 6 is the
    closed-form optimum of the law at C."""
    csv = tmp_path / "points.csv"
    sweep().to_csv(csv, index=False)
    rep = str(tmp_path / "rep")
    code = fit_scaling.main(["--csv", str(csv), "--out", rep, "--flops-per-param-datum", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "has a C column, so --flops-per-param-datum 4" in err and "Traceback" not in err
    assert not (tmp_path / "rep").exists()
    code = fit_scaling.main(["--experiment", "x", "--out", rep, "--flops-per-param-datum", "4"])
    assert code == 2 and "MLflow runs log their compute" in capsys.readouterr().err
    sweep().drop(columns=["C", "budget"]).to_csv(csv, index=False)
    argv = ["--csv", str(csv), "--out", rep, "--json", str(tmp_path / "f.json"), "--bootstrap", "0"]
    fit_scaling.main([*argv, "--flops-per-param-datum", "4", "--predict", str(4 / 6 * 1e22)])
    res = json.loads((tmp_path / "f.json").read_text())
    assert res["flops_per_param_datum"] == pytest.approx(4.0)
    assert res["predictions"][0]["n_opt"]["value"] == pytest.approx(
        optimal_allocation(LAW, 1e22)[0], rel=1e-4
    )


def test_an_e_at_its_floor_lies_inside_its_own_interval():
    """Points exactly on L = A/N^alpha + B/D^beta (E = 0): the fit reports E = 0 (at its floor) but
    printed E's 95% interval as [9.6e-07, 2.2e-05], the bootstrap refits' floor bound, which excludes the
    estimate. The interval now starts at 0; the other parameters are the law's."""
    law = dict(LAW, E=0.0)
    d = sweep()
    d["loss"] = parametric_loss(law, d["N"], d["D"])
    fit = fit_parametric(d["N"], d["D"], d["loss"], n_bootstrap=6, seed=0)
    assert fit.e_at_floor and fit.params["E"] == 0.0
    lo, hi = fit.conf_int()["E"]
    assert lo == 0.0 < hi
    assert fit.to_dict()["ci95"]["E"] == [0.0, hi]
    for k in ("alpha", "beta"):
        assert fit.params[k] == pytest.approx(law[k], abs=1e-4)
        assert fit.conf_int()[k][0] <= law[k] + 1e-4 and law[k] - 1e-4 <= fit.conf_int()[k][1]


def _grid_csv(path, run_id) -> None:
    """The same six sizes at every budget of LAW, exactly on the law; ``run_id(i, c)`` names the runs."""
    rows = []
    for c in (1e18, 1e19, 1e20, 1e21):
        for i, n in enumerate(np.logspace(7, 9.5, 6)):
            d = c / (6 * n)
            loss = float(parametric_loss(LAW, n, d))
            rows.append({"N": n, "D": d, "C": c, "loss": loss, "budget": c, "run_id": run_id(i, c)})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_a_run_id_reused_across_budgets_is_refused_not_read_as_one_training_curve(tmp_path, capsys):
    """A grid CSV whose run_id names the model at every budget (m0 .. m5) was read as 6 runs of 4
    evaluations each: `--holdout largest` held out run m0 with all its budgets and reported a "-24.51%"
    best-loss error, "outside the interval", on points exactly on the law. Now exit 2 naming the run_id,
    its lines and its budgets; with one run_id per cell the holdout's loss error is 0."""
    csv = tmp_path / "grid.csv"
    _grid_csv(csv, lambda i, c: f"m{i}")
    argv = ["--csv", str(csv), "--out", str(tmp_path / "rep"), "--bootstrap", "4", "--holdout", "largest"]
    assert fit_scaling.main(argv) == 2
    err = capsys.readouterr().err
    assert "6 run_id(s) have rows with different budgets (first: run_id 'm0' at lines 2, 8, 14, 20:" in err
    assert "budget = 1e+18, 1e+19, 1e+20, 1e+21" in err and "Traceback" not in err
    _grid_csv(csv, lambda i, c: f"m{i}-{c:.0e}")
    # exit 3 only because 4 resamples are too few for a 95% interval (tests/test_bootstrap_minimum_s37.py)
    assert fit_scaling.main([*argv, "--json", str(tmp_path / "f.json")]) == 3
    reasons = json.loads((tmp_path / "f.json").read_text())["reasons"]
    assert reasons and all("from only 4 bootstrap refits, fewer than the 40" in r for r in reasons)
    hold = json.loads((tmp_path / "f.json").read_text())["holdout"]
    assert hold["n_held_out"] == 6 and hold["mape_loss"] < 1e-6  # exact law
    assert -0.01 < hold["frontier_error"] <= 0  # the optimum lies between the sizes trained


def test_a_run_id_with_several_model_sizes_is_refused():
    """The same for rows of one run_id with different N (a run trains one model): they were fitted as one
    run's curve. Now a ValueError naming the run and its sizes."""
    d = sweep()
    d["run_id"] = [f"b{i % 5}" for i in range(len(d))]  # the i-th size of every budget shares a run_id
    d = d.drop(columns="budget")
    with pytest.raises(ValueError, match=r"5 run_id\(s\) have rows with different model sizes N .*'b0'"):
        analyze(d, AnalysisConfig(n_bootstrap=0))


def test_a_nearest_run_shape_far_from_n_opt_says_so():
    """At 1e31 FLOPs (1e10 x the data) N_opt is 2.26e13 and the nearest run shape 4.65e9 was printed as
    plainly as a near one; the DiT shape beside it already said "no paper shape is near it". Now the run
    shape says how far it is too; a near one (1.47e9 at N_opt 1.37e9) is printed as before."""
    an = analyze(sweep(), AnalysisConfig(n_bootstrap=0))
    far = predict(an, 1e31)
    assert far.n_opt.value == pytest.approx(optimal_allocation(LAW, 1e31)[0], rel=1e-4)
    assert "nearest run shape: N=4.65e+09 (4.645e+09 parameters; 0.000205x N_opt, no run's shape is near" in (
        far.text()
    )
    assert "nearest run shape: N=1.47e+09 (1.469e+09 parameters)\n" in predict(an, 1e22).text()


@pytest.mark.parametrize("no", ["no", "", "n"])
def test_a_final_column_that_is_not_true_or_false_is_refused(tmp_path, no):
    """A CSV `final` column written yes / no (or with empty cells) was read as text and every cell,
    "no" included, as True (`astype(bool)`): a run's mid-training points counted as final points (in the
    IsoFLOP slices, the best-lr choice). Now an error naming the lines and cells; True / False and 1 / 0
    are read as flags."""
    d = sweep().assign(final="yes")
    d.loc[3, "final"] = no
    csv = tmp_path / "points.csv"
    d.to_csv(csv, index=False)
    with pytest.raises(
        ValueError, match=r"column final must be True or False .* lines 2, 3, 4, 5, 6: 'yes'"
    ) as e:
        load_csv(csv)
    assert f"'yes', {repr(no) if no else '(empty)'}, 'yes'" in str(e.value)
    for yes, no_ in (("True", "False"), ("1", "0"), ("true", "FALSE")):
        d["final"] = [no_ if i == 3 else yes for i in range(len(d))]
        d.to_csv(csv, index=False)
        final = load_csv(csv)["final"]
        assert final.dtype == bool and not final[3] and final.drop(3).all()


def test_influence_on_a_sweep_without_an_n_opt_prints_no_nan(tmp_path, capsys):
    """`--influence` on a sweep whose N_opt is withheld (one loss everywhere: alpha = beta = 0) printed
    an N_opt column of `nan` and "the 5 runs that move N_opt most". Now it says N_opt is not identified,
    the column shows '-', and the expected loss (3.0, the law's) is still given."""
    csv = tmp_path / "flat.csv"
    sweep().assign(loss=3.0).to_csv(csv, index=False)
    argv = ["--csv", str(csv), "--out", str(tmp_path / "rep"), "--bootstrap", "0", "--influence"]
    assert fit_scaling.main(argv) == 3
    out = capsys.readouterr().out
    text = out[out.index("Influence:") :]
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), text
    assert "N_opt (approach 3): not identified with every run" in text and "move N_opt most" not in text
    assert re.search(r"c1e\+18-0 +N=1.82e\+06 +1e\+18 +3.0000 +- +- +3.0000", text)


def test_compute_in_pf_days_is_refused_not_fitted_as_flops(tmp_path, capsys):
    """A CSV whose C is in PF-days (1 PF-day = 8.64e19 FLOPs) was fitted as FLOPs: C / (N D) = 6.9e-20,
    the default budget "1.16e+02 FLOPs" and every compute label wrong by 8.64e19. No true FLOP
    count is below 2 per parameter per token, so C / (N D) < 1 is now an error (exit 2) naming the
    ratio and PF-days; the same points in FLOPs fit as before."""
    csv = tmp_path / "pfdays.csv"
    d = sweep()
    d.assign(C=d["C"] / 8.64e19, budget=d["budget"] / 8.64e19).to_csv(csv, index=False)
    argv = ["--csv", str(csv), "--out", str(tmp_path / "rep"), "--bootstrap", "0"]
    assert fit_scaling.main(argv) == 2
    err = capsys.readouterr().err
    assert "C / (N D) is 6.94e-20 (the median over the points), below 1" in err and "PF-days" in err
    an = analyze(d, AnalysisConfig(n_bootstrap=0))
    assert an.flops_per_param_datum == pytest.approx(6.0)
