"""Leave-one-run-out influence (`analysis.influence`): exact data, one corrupted run, the holdout, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _fit_helpers import run_fit_cli
from test_analysis import TRUE, synthetic_isoflop

from analysis.bootstrap import fit_workers
from analysis.influence import run_influence
from analysis.parametric import optimal_allocation
from analysis.pipeline import AnalysisConfig, holdout_largest

BUDGETS = (1e18, 1e19, 1e20)
C_PRED = 1e21
CFG = AnalysisConfig(n_bootstrap=0)


def _points():
    return synthetic_isoflop(budgets=BUDGETS, n_sizes=5)


def test_exact_law_every_refit_recovers_the_closed_form_optimum():
    inf = run_influence(_points(), C_PRED, CFG)
    n_true, _, loss_true = optimal_allocation(TRUE, C_PRED, 6.0)
    assert len(inf.table) == 15
    assert inf.full["n_opt"] == pytest.approx(n_true, rel=2e-3)
    np.testing.assert_allclose(inf.table["n_opt"], n_true, rtol=5e-3)
    np.testing.assert_allclose(inf.table["pred_loss"], loss_true, rtol=1e-4)
    np.testing.assert_allclose(inf.table["alpha"], TRUE["alpha"], atol=2e-3)


def test_a_corrupted_run_is_named_and_leaving_it_out_recovers_the_law():
    pts = _points()
    bad = "c1e+20-4"  # the largest model at the largest budget, 20 % too high
    pts.loc[pts["run_id"] == bad, "loss"] *= 1.2
    inf = run_influence(pts, C_PRED, CFG)
    n_true = optimal_allocation(TRUE, C_PRED, 6.0)[0]
    assert inf.most_influential() == bad
    assert inf.table["run_id"].iloc[0] == bad  # sorted by how far N_opt moved
    without = inf.table.set_index("run_id").loc[bad]
    assert without["n_opt"] == pytest.approx(n_true, rel=5e-3)
    assert abs(np.log(inf.full["n_opt"] / n_true)) > 10 * abs(np.log(without["n_opt"] / n_true))
    assert inf.ratio("n_opt")[0] == pytest.approx(without["n_opt"] / inf.full["n_opt"])
    lo, hi = inf.spread("n_opt")
    assert lo <= without["n_opt"] <= hi and lo < hi


def test_the_table_does_not_depend_on_the_number_of_workers():
    pts = synthetic_isoflop(budgets=BUDGETS, n_sizes=5, noise=0.02, seed=5)
    with fit_workers(1):
        one = run_influence(pts, C_PRED, CFG).table
    with fit_workers(2):
        two = run_influence(pts, C_PRED, CFG).table
    pd.testing.assert_frame_equal(one, two)
    assert one["n_opt"].nunique() == len(one)


def test_holdout_errors_are_refits_of_the_holdout_without_each_training_run():
    pts = synthetic_isoflop(budgets=BUDGETS, n_sizes=5, noise=0.02, seed=3)
    inf = run_influence(pts, C_PRED, CFG, holdout=True)
    assert inf.full["holdout"] == pytest.approx(holdout_largest(pts, CFG).frontier_error, rel=1e-9)
    table = inf.table.set_index("run_id")
    held = table.index.str.startswith("c1e+20")
    assert table.loc[held, "holdout"].isna().all()
    rid = table.index[~held][0]
    expected = holdout_largest(pts[pts["run_id"] != rid], CFG).frontier_error
    assert table.loc[rid, "holdout"] == pytest.approx(expected, rel=1e-9)
    assert table.loc[~held, "holdout"].nunique() == (~held).sum()  # each refit is its own
    assert "holdout best-loss error" in inf.text()


def test_the_text_prints_the_table_s_ranges_and_a_run_s_budget():
    pts = synthetic_isoflop(budgets=BUDGETS, n_sizes=5, noise=0.02, seed=3)
    pts["budget"] = pts["C"]
    pts["C"] *= 0.99  # a run ends a little below its budget, as the trainer's runs do
    inf = run_influence(pts, C_PRED, CFG, holdout=True)
    np.testing.assert_array_equal(np.sort(inf.table["budget"].unique()), BUDGETS)
    text, t, f = inf.text(), inf.table, inf.full
    lo, hi = t["pred_loss"].min(), t["pred_loss"].max()
    rel = f"({100 * (lo / f['pred_loss'] - 1):+.1f}% .. {100 * (hi / f['pred_loss'] - 1):+.1f}%)"
    assert f"expected loss: {f['pred_loss']:.4g}; {lo:.4g} .. {hi:.4g} {rel}" in text
    lo, hi = t["holdout"].min(), t["holdout"].max()
    assert f"{100 * f['holdout']:+.2f}%; {100 * lo:+.2f}% .. {100 * hi:+.2f}% with one of the 10 runs" in text
    assert "\n    run          model            budget its loss     N_opt  x all  E[loss]  holdout\n" in text
    first = t.iloc[0]
    assert f"{first['budget']:>8.2g} {first['loss']:>8.4f} {first['n_opt']:>9.3g}" in text


def test_cli_influence_prints_and_writes_it(tmp_path, capsys):
    csv = tmp_path / "points.csv"
    pts = _points()
    pts.loc[pts["run_id"] == "c1e+20-4", "loss"] *= 1.2
    pts.to_csv(csv, index=False)
    rc, out_json = run_fit_cli(tmp_path, "--csv", str(csv), "--bootstrap", "0", "--influence")
    assert rc in (0, 3)
    out = capsys.readouterr().out
    assert "Influence: the fits redone with each of 15 runs left out" in out
    inf = json.loads(out_json.read_text())["diagnostics"]["influence"]
    assert inf["most_influential"] == "c1e+20-4" and len(inf["runs"]) == 15
    assert "influence of each run" in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "influence.png").stat().st_size > 10_000
