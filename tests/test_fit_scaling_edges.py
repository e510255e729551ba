"""`python analysis/fit_scaling.py` on flags that were accepted and then gave a misleading error, a
wasted fit or an overwritten report: `--r-star inf`, `--bootstrap 1`, `--json` on the report's own
folder or files, `--tracking-uri` beside `--csv`, and a holdout with too few points left. Each test
failed on the code before its fix."""

from __future__ import annotations

import json
import math

import pytest
from _fit_helpers import BUDGETS, sweep, sweep_cli

from analysis.pipeline import AnalysisConfig
from analysis.status import EXIT_BAD_INPUT, EXIT_NOT_IDENTIFIED


def test_an_infinite_r_star_is_refused_naming_the_flag(tmp_path, capsys):
    """--r-star inf passed the check (inf > 0); D' = U + U inf (1 - exp(0)) is NaN, and the fit ended in
    "power law D_opt(C): x and y must be positive and finite", which names neither the flag nor R*."""
    with pytest.raises(ValueError, match=r"r_star \(--r-star\) must be a finite number > 0"):
        AnalysisConfig(r_star=math.inf)
    assert sweep_cli(tmp_path, "--r-star", "inf", "--bootstrap", "0") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: r_star (--r-star) must be a finite number > 0") and "got inf" in err
    assert not (tmp_path / "rep").exists()  # refused before the fit
    assert sweep_cli(tmp_path, "--min-steps", "-1") == EXIT_BAD_INPUT
    assert "min_steps (--min-steps) must be >= 0, got -1" in capsys.readouterr().err


def test_one_bootstrap_resample_is_refused_not_blamed_on_the_data(tmp_path, capsys):
    """--bootstrap 1 ran the fit and then said "only 1 of the 1 bootstrap refits succeeded (the others
    failed to converge ...)", asking for more runs: more runs never give a percentile interval from one
    resample."""
    with pytest.raises(ValueError, match=r"--bootstrap\) is 1, but a percentile interval needs at least 2"):
        AnalysisConfig(n_bootstrap=1)
    assert sweep_cli(tmp_path, "--bootstrap", "1") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: n_bootstrap (--bootstrap) is 1") and "give 0 (no intervals) or 2" in err
    assert not (tmp_path / "rep").exists()
    AnalysisConfig(n_bootstrap=2)  # the smallest bootstrap with an interval stays allowed


@pytest.mark.parametrize("name", ["rep", "rep/report.md", "rep/isoflop.png", "rep/./residuals.png"])
def test_json_onto_the_report_folder_or_its_files_is_refused_before_fitting(tmp_path, capsys, name):
    """--json rep --out rep (rep not yet there) fitted, wrote the report, then failed on the folder with
    "the fit was not saved"; --json rep/report.md replaced the report with the JSON while the CLI
    printed "report: rep/report.md"."""
    rc = sweep_cli(tmp_path, "--json", str(tmp_path / name), "--bootstrap", "0")
    assert rc == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: --json {tmp_path / name} is the --out folder or one of the report's")
    assert "--json fit.json" in err
    assert not (tmp_path / "rep").exists()  # checked before the fit, so nothing was written


def test_json_as_the_reports_own_results_json_is_allowed(tmp_path):
    """The same JSON in the same place: not a conflict."""
    out = tmp_path / "rep" / "results.json"
    assert sweep_cli(tmp_path, "--json", str(out), "--bootstrap", "0") == EXIT_NOT_IDENTIFIED
    assert json.loads(out.read_text())["status"] == "not_identified"
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# DiT scaling-law analysis")


def test_a_tracking_uri_beside_a_csv_is_refused(tmp_path, capsys):
    """--csv with --tracking-uri fitted the CSV and ignored the store without a word: a user who meant to
    fit the store got the CSV's answer."""
    rc = sweep_cli(tmp_path, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--bootstrap", "0")
    assert rc == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: --tracking-uri names an MLflow store, but --csv reads the points")
    assert not (tmp_path / "rep").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_holdout_that_leaves_too_few_points_says_what_to_do(tmp_path, capsys):
    """Two budgets of 5 sizes: holding out the largest leaves 5 points. The error said only "holdout
    leaves 5 training points; need more than 5", not which runs it held out nor what to change."""
    csv = tmp_path / "two.csv"
    sweep().query(f"budget >= {BUDGETS[-2]}").to_csv(csv, index=False)
    assert (
        sweep_cli(tmp_path, "--csv", str(csv), "--holdout", "largest", "--bootstrap", "0") == EXIT_BAD_INPUT
    )
    err = capsys.readouterr().err
    assert err.startswith("error: holdout: without the 5 run(s) of the largest budget, 5 point(s) are left")
    assert "add runs at the smaller budgets, or fit without --holdout" in err
