"""Session 41 (helper lna): the fit CLI's terminal says when points were left out of the fit.

The runs below --min-steps, the lrs that lost in their cell and the outliers (`Analysis.removed`) were
named only in report.md's "Removed points" table; the terminal printed the fit as if every point
counted."""

from __future__ import annotations

import pytest
from _fit_helpers import sweep, sweep_cli

from analysis.pipeline import AnalysisConfig, prepare


def test_the_terminal_names_how_many_points_the_fit_left_out(tmp_path, capsys):
    pts = sweep().assign(step=100)
    pts.loc[0, "step"] = 10  # a run that ended below --min-steps 50
    pts.to_csv(tmp_path / "points.csv", index=False)
    sweep_cli(tmp_path, "--bootstrap", "0", "--drop-highest-loss", "2")
    out = capsys.readouterr().out.splitlines()
    line = 'removed: 3 point(s) left out of the fit (see "Removed points" in the report)'
    assert out[-2:] == [line, f"report: {tmp_path / 'rep' / 'report.md'}"]
    assert "| cell ended at step 10 < --min-steps 50 |" in (tmp_path / "rep" / "report.md").read_text()


def test_no_removed_line_when_every_point_is_fitted(tmp_path, capsys):
    sweep_cli(tmp_path, "--bootstrap", "0")
    out = capsys.readouterr().out
    assert "removed:" not in out and out.splitlines()[-1].startswith("report: ")


@pytest.mark.parametrize("per_seed", [False, True])
def test_every_run_below_min_steps_is_refused_naming_the_flag(per_seed):
    """`prepare` checks for no points right after the selection (seed averaging and the best lr keep a
    point per cell); the message is the same with and without them."""
    pts = sweep().assign(step=10, seed=0, lr=1e-3)
    cfg = AnalysisConfig(n_bootstrap=0, average_seeds=not per_seed, best_lr=not per_seed)
    with pytest.raises(ValueError, match="no points left after dropping runs below --min-steps 50; lower"):
        prepare(pts, cfg)
