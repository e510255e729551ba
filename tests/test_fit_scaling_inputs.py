"""`python analysis/fit_scaling.py` on inputs a user gets wrong: flags out of range, no bootstrap, a
parametric fit that fails, runs not finished, seeds without a shared step, store URIs and output paths
that cannot work, duplicated rows, and what a censored bound claims. Small synthetic data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from analysis import pipeline
from analysis.fit_scaling import main
from analysis.parametric import ConvergenceError, optimal_allocation, parametric_loss
from analysis.pipeline import AnalysisConfig, analyze, predict, prepare
from analysis.runs import average_seeds, load_runs, tidy, validate_points
from analysis.status import EXIT_BAD_INPUT, EXIT_NOT_IDENTIFIED

LAW = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.30}
BUDGETS = (1e18, 1e19, 1e20, 1e21)


def sweep(span=(-1.0, 1.0), n_sizes=5) -> pd.DataFrame:
    """One final point per run on IsoFLOP slices of LAW, sizes log-spaced over `span` decades around
    each budget's optimum (C = 6 N D); exactly on the law."""
    rows = []
    for c in BUDGETS:
        n0 = optimal_allocation(LAW, c, 6.0)[0]
        for i, n in enumerate(n0 * np.logspace(*span, n_sizes)):
            d = c / (6.0 * n)
            loss = float(parametric_loss(LAW, n, d))
            rows.append({"N": n, "D": d, "C": c, "loss": loss, "run_id": f"c{c:.0e}-{i}", "budget": c})
    return pd.DataFrame(rows)


def _cli(tmp_path, *args: str) -> int:
    """main() on a CSV of `sweep()` (unless ``args`` give --csv), the report in tmp_path/rep."""
    csv = tmp_path / "points.csv"
    if not csv.exists():
        sweep().to_csv(csv, index=False)
    src = [] if "--csv" in args else ["--csv", str(csv)]
    return main([*src, "--out", str(tmp_path / "rep"), *args])


# ------------------------------------------------------------------ 1. --bootstrap 0 or negative


def test_no_bootstrap_is_not_identified_and_keeps_the_point_estimates(tmp_path, capsys):
    """Without resamples no interval is checked: the status says so (not ok) and how to check it; the
    point estimates are still printed."""
    out_json = tmp_path / "fit.json"
    assert _cli(tmp_path, "--bootstrap", "0", "--json", str(out_json)) == EXIT_NOT_IDENTIFIED
    res = json.loads(out_json.read_text())
    assert res["status"] == "not_identified"
    (reason,) = res["reasons"]  # the data are exactly on a law: no other reason
    assert "no bootstrap (--bootstrap 0)" in reason and "not checked" in reason
    assert "rerun with --bootstrap 200" in reason
    assert res["predictions"][0]["n_opt"]["value"] > 0  # the estimate is kept
    out = capsys.readouterr().out
    assert "model size N_opt : " in out and "(no bootstrap interval)" in out
    assert "status: not_identified" in out


def test_negative_bootstrap_is_bad_input(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--bootstrap\) must be >= 0"):
        AnalysisConfig(n_bootstrap=-1)
    assert _cli(tmp_path, "--bootstrap", "-5") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--bootstrap" in err and "got -5" in err


# ------------------------------------------------------------------ 3. other flags, a failed parametric fit


@pytest.mark.parametrize(
    ("flag", "value", "phrase"),
    [
        ("--delta", "0", "delta (--delta) must be > 0"),
        ("--delta", "-1e-3", "delta (--delta) must be > 0"),
        ("--drop-highest-loss", "-1", "drop_highest_loss (--drop-highest-loss) must be >= 0"),
        ("--outlier-sigma", "0", "outlier_sigma (--outlier-sigma) must be > 0"),
        ("--flops-per-param-datum", "0", "(--flops-per-param-datum) must be a positive number"),
        ("--flops-per-param-datum", "-6", "(--flops-per-param-datum) must be a positive number"),
    ],
)
def test_flags_out_of_range_are_bad_input(tmp_path, capsys, flag, value, phrase):
    assert _cli(tmp_path, flag, value, "--bootstrap", "0") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and phrase in err
    assert not (tmp_path / "rep").exists()  # refused before anything was fitted or written


def test_analysis_config_refuses_invalid_fields():
    for bad, phrase in (
        ({"delta": 0.0}, "delta"),
        ({"delta": float("nan")}, "delta"),
        ({"drop_highest_loss": -2}, "drop_highest_loss"),
        ({"outlier_sigma": -1.0}, "outlier_sigma"),
    ):
        with pytest.raises(ValueError, match=phrase):
            AnalysisConfig(**bad)


def test_a_parametric_fit_that_fails_makes_the_status_not_identified(monkeypatch):
    """The parametric law failing (here: it does not converge) is not `ok`: the reason names the failure;
    the recommendation comes from the other approaches."""

    def fails(*args, **kwargs):
        raise ConvergenceError("stopped next to its start")

    monkeypatch.setattr(pipeline, "fit_parametric", fails)
    an = analyze(sweep(), AnalysisConfig(n_bootstrap=4))
    assert an.parametric is None and an.status.status == "not_identified"
    (reason,) = [r for r in an.status.reasons if "parametric law not fitted" in r]
    assert "ConvergenceError: stopped next to its start" in reason
    assert an.to_dict()["status"] == "not_identified"
    pr = predict(an, 1e21)
    assert pr.n_opt is not None and pr.source == "IsoFLOP laws (approach 2)"


# ------------------------------------------------------------------ 2. runs not finished; seeds


def _log_run(client, exp_id, name, n, final_step, *, status, mlflow_status):
    """A run of LAW with 4 evaluations up to ``final_step``, tagged ``status``; ended with
    ``mlflow_status`` unless that is RUNNING."""
    from mlflow.entities import Metric, Param, RunTag

    rid = client.create_run(exp_id, run_name=name).info.run_id
    metrics = []
    for s in np.linspace(final_step / 4, final_step, 4):
        d = 20.0 * s
        metrics += [
            Metric("val/loss", float(parametric_loss(LAW, n, d)), 0, int(s)),
            Metric("compute/train_flops", 6.0 * n * d, 0, int(s)),
            Metric("data/images_seen", d, 0, int(s)),
        ]
    params = [Param("model.params", str(n)), Param("optim.schedule", "cosine"), Param("seed", name)]
    client.log_batch(rid, metrics=metrics, params=params, tags=[RunTag("status", status)])
    if mlflow_status != "RUNNING":
        client.set_terminated(rid, mlflow_status)
    return rid


def test_only_finished_runs_are_fitted_and_the_others_are_counted(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    done = {
        _log_run(client, exp_id, f"f{i}", n, 400, status="finished", mlflow_status="FINISHED")
        for i, n in enumerate((1e6, 3e6, 1e7))
    }
    _log_run(client, exp_id, "r0", 1e6, 100, status="running", mlflow_status="RUNNING")
    _log_run(client, exp_id, "r1", 3e6, 200, status="running", mlflow_status="RUNNING")
    _log_run(client, exp_id, "p", 1e7, 300, status="preempted", mlflow_status="KILLED")
    _log_run(client, exp_id, "x", 1e7, 300, status="failed", mlflow_status="FAILED")
    unusable = []  # finished, but without model.params, or without val/loss
    for name, params in (("bare", {}), ("noval", {"model.params": "1e6"})):
        rid = client.create_run(exp_id, run_name=name).info.run_id
        for k, v in params.items():
            client.log_param(rid, k, v)
        client.set_tag(rid, "status", "finished")
        client.set_terminated(rid, "FINISHED")
        unusable.append(rid)
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        df = load_runs("sweep", tracking_uri=uri)
    assert set(df["run_id"]) == done and len(df) == 12
    note = "3 run(s) not finished left out (1 preempted, 2 running)"
    lacking = "2 finished run(s) left out for lack of val/loss, model.params, compute/train_flops or "
    lacking += f"data/images_seen: {', '.join(sorted(unusable))}"
    for text in (note, lacking):
        assert any(text in r.getMessage() for r in caplog.records)
        # the point-selection notes (printed in the report) say so too
        assert any(text in n for n in prepare(df, AnalysisConfig(n_bootstrap=0)).notes)


def test_seeds_that_share_no_step_are_kept_apart_and_partial_steps_left_out():
    """Seeds of one cell evaluated at different steps: the mean uses the steps every seed logged; a
    cell whose seeds share none keeps them as separate points (it crashed on an empty argmax)."""
    rows = []
    for rid, steps, cell in (("a", [10, 20], "c1"), ("b", [20], "c1"), ("x", [5], "c2"), ("y", [6], "c2")):
        for s in steps:
            rows.append(
                {"N": 1e6, "D": 1e3 * s, "loss": 1.0 / s, "run_id": rid, "step": s, "replicate": cell}
            )
    out, note = average_seeds(tidy(pd.DataFrame(rows)))
    assert sorted(out["run_id"]) == ["a + b", "x", "y"]
    assert out.set_index("run_id").loc["a + b", "step"] == 20  # step 10: seed b never reached it
    assert "1 point(s) at steps that not every seed of their cell logged left out" in note
    assert "share no evaluation step" in note and "x, y" in note
    # every cell without a shared step: nothing averaged, no crash
    apart, note = average_seeds(tidy(pd.DataFrame(rows[3:])))
    assert sorted(apart["run_id"]) == ["x", "y"] and (apart["n_seeds"] == 1).all()
    assert "share no evaluation step" in note


# ------------------------------------------------------------------ 5. store URIs and output paths


@pytest.mark.parametrize("uri", ["mlflow.db", "foo://bar"])
def test_a_tracking_uri_mlflow_cannot_read_is_bad_input(tmp_path, monkeypatch, capsys, uri):
    monkeypatch.chdir(tmp_path)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "rep"), "--no-mlflow-log"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: tracking URI {uri!r}: give a database or a server") and "Traceback" not in err
    )
    assert "e.g. sqlite:///path/to/mlflow.db or http://host:5000" in err


def test_out_that_is_a_file_and_json_that_is_a_folder_are_refused_before_fitting(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert _cli(tmp_path, "--out", str(afile)) == EXIT_BAD_INPUT
    assert "--out" in (err := capsys.readouterr().err) and "is a file" in err
    assert afile.read_text() == "keep me"
    for json_arg in (str(tmp_path), ""):
        assert _cli(tmp_path, "--json", json_arg) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.startswith("error: --json") and "is a folder" in err and "--json fit.json" in err
        assert not (tmp_path / "rep" / "report.md").exists()  # checked before the fit and the report


# ------------------------------------------------------------------ 6. duplicated rows


def test_duplicate_rows_are_refused(tmp_path, capsys):
    pts = sweep()
    twice = pd.concat([pts, pts], ignore_index=True)
    with pytest.raises(
        ValueError, match=r"20 row\(s\) repeat an earlier row exactly \(first at row index 20"
    ):
        validate_points(twice)
    csv = tmp_path / "twice.csv"
    twice.drop(columns="run_id").to_csv(csv, index=False)  # without run ids too
    assert _cli(tmp_path, "--csv", str(csv), "--bootstrap", "0") == EXIT_BAD_INPUT
    assert "20 row(s) repeat an earlier row exactly" in capsys.readouterr().err
    # one run's step twice with another loss: which one is the run's?
    steps = pts.assign(step=100)
    steps.loc[3, "run_id"] = steps.loc[2, "run_id"]
    with pytest.raises(ValueError, match=r"1 row\(s\) repeat an earlier row's \(run_id, step\).*index 3"):
        validate_points(steps)
    validate_points(pts.assign(step=100))  # distinct runs at one step are fine


# ------------------------------------------------------------------ 4. a censored bound


def test_a_censored_bound_says_it_holds_at_the_budgets_measured():
    """Every size above the optimum: N_opt is below the smallest size at every budget measured, which
    says nothing about a budget far beyond them."""
    an = analyze(sweep(span=(0.4, 1.4)), AnalysisConfig(n_bootstrap=0))
    pr = predict(an, 1e24)
    assert pr.n_opt is None and pr.n_opt_bound["side"] == "below"
    assert pr.n_opt_bound["measured_up_to_C"] == pytest.approx(max(BUDGETS))
    x = pr.n_opt_bound["N"]
    want = f"withheld (N_opt below {x:.3g} parameters at every budget measured, up to 1e+21 FLOPs)"
    assert want in pr.text()
    assert pr.to_dict()["n_opt_bound"]["measured_up_to_C"] == pytest.approx(1e21)
