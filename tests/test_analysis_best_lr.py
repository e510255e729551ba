"""A cell trained at several learning rates enters the fits at its best one (`analysis.runs.best_lr`):
the fit on a sweep with an lr axis equals the fit on the tuned runs alone, the others are listed as
dropped with the lr that beat them, and a best lr at the edge of the range is flagged."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _fit_helpers import sweep, sweep_cli

from analysis.pipeline import AnalysisConfig, analyze, prepare
from analysis.runs import replicate_key

LRS = (1e-3, 3e-3, 1e-2)


def _with_lrs(best_at_edge: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every cell of `sweep()` at the three LRS, the tuned runs alone): the loss grows as
    1 + 0.05 log10(lr / best)^2 around each cell's best lr, 3e-3 for most cells and 1e-2 (the largest
    tried) for the first ``best_at_edge``; the tuned runs are exactly on the law."""
    rows, tuned = [], []
    for i, r in sweep().iterrows():
        best = LRS[2] if i < best_at_edge else LRS[1]
        for lr in LRS:
            row = dict(r, model=f"m{i}", lr=lr, run_id=f"{r['run_id']}-lr{lr:g}")
            row["loss"] = r["loss"] * (1 + 0.05 * np.log10(lr / best) ** 2)
            rows.append(row)
            if lr == best:
                tuned.append(row)
    return pd.DataFrame(rows), pd.DataFrame(tuned)


def test_each_cell_keeps_its_best_lr_and_the_fit_equals_the_tuned_runs_fit():
    pts, tuned = _with_lrs()
    cfg = AnalysisConfig(n_bootstrap=0)
    prep = prepare(pts, cfg)
    assert sorted(prep.points["run_id"]) == sorted(tuned["run_id"])
    lost = prep.dropped[prep.dropped["reason"].str.contains("lost to lr")]
    assert len(lost) == 2 * len(tuned)  # two of three lrs per cell
    assert "lr 0.001 lost to lr 0.01 in its cell" in set(lost["reason"])  # a cell whose best is 1e-2
    note = next(n for n in prep.notes if "learning rates" in n)
    assert note.startswith(f"{len(tuned)} cell(s) trained at several learning rates keep the lr with")
    assert "in 3 of them the best lr is the smallest or largest tried" in note

    fit, ref = analyze(pts, cfg).parametric, analyze(tuned, cfg).parametric
    for k in ("E", "A", "B", "alpha", "beta"):
        assert fit.params[k] == pytest.approx(ref.params[k], rel=1e-9), k

    every = prepare(pts, AnalysisConfig(n_bootstrap=0, best_lr=False))
    assert len(every.points) == len(pts) and not any("learning rates" in n for n in every.notes)


def test_no_edge_warning_when_every_best_lr_is_inside_the_range():
    prep = prepare(_with_lrs(best_at_edge=0)[0], AnalysisConfig(n_bootstrap=0))
    note = next(n for n in prep.notes if "learning rates" in n)
    assert "smallest or largest" not in note


def test_the_lr_group_is_the_replicate_without_the_lr():
    """MLflow runs: one cell at two lrs shares `lr_group` and not `replicate`; two seeds share both."""
    base = {"model.depth": "3", "budget.train_flops": "1e12", "optim.lr": "0.03", "seed": "0", "out": "a"}
    other_lr, other_seed = base | {"optim.lr": "0.01"}, base | {"seed": "1", "out": "b"}
    assert replicate_key(base) != replicate_key(other_lr) and replicate_key(base) == replicate_key(other_seed)
    assert replicate_key(base, without=("optim.lr",)) == replicate_key(other_lr, without=("optim.lr",))
    assert replicate_key(base | {"budget.train_flops": "3e12"}, without=("optim.lr",)) != replicate_key(
        base, without=("optim.lr",)
    )


def test_the_cli_names_the_lrs_kept_and_all_lrs_keeps_every_one(tmp_path):
    pts, tuned = _with_lrs()
    csv = tmp_path / "lrs.csv"
    pts.to_csv(csv, index=False)
    fit = tmp_path / "fit.json"
    sweep_cli(tmp_path, "--csv", str(csv), "--bootstrap", "0", "--json", str(fit))
    notes = json.loads(fit.read_text())["point_selection"]["notes"]
    assert any(n.startswith(f"{len(tuned)} cell(s) trained at several learning rates") for n in notes)
    sweep_cli(tmp_path, "--csv", str(csv), "--bootstrap", "0", "--json", str(fit), "--all-lrs")
    notes = json.loads(fit.read_text())["point_selection"]["notes"]
    assert not any("learning rates" in n for n in notes)
