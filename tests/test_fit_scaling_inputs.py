"""`python analysis/fit_scaling.py` on inputs a user gets wrong: flags out of range, no bootstrap, a
parametric fit that fails, runs not finished, seeds without a shared step, store URIs and output paths
that cannot work, duplicated rows, and what a censored bound claims. Small synthetic data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from _fit_helpers import BUDGETS, LAW, sweep
from _fit_helpers import sweep_cli as _cli

from analysis import pipeline
from analysis.fit_scaling import main
from analysis.parametric import ConvergenceError, parametric_loss
from analysis.pipeline import AnalysisConfig, analyze, predict, prepare
from analysis.runs import average_seeds, load_csv, load_runs, tidy, validate_points
from analysis.status import EXIT_BAD_INPUT, EXIT_NOT_IDENTIFIED

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


# ------------------------------------------------------------------ 7. damaged runs in a store (session 29)


def _log_damaged(client, exp_id, name, *, params=None, metrics=()):
    """A finished run of LAW at N = 2e6 with 4 evaluations up to step 800, its ``params`` (default
    model.params 2e6, a cosine schedule) and extra ``metrics`` [(key, value, step)] logged after the good
    ones (a later value at a step wins, as MLflow's history does for the reader)."""
    from mlflow.entities import Metric, Param, RunTag

    rid = client.create_run(exp_id, run_name=name).info.run_id
    good = []
    for s in (200, 400, 600, 800):
        d = 20.0 * s
        good += [
            Metric("val/loss", float(parametric_loss(LAW, 2e6, d)), 0, s),
            Metric("compute/train_flops", 6.0 * 2e6 * d, 0, s),
            Metric("data/images_seen", d, 0, s),
        ]
    params = {"model.params": "2e6", "optim.schedule": "cosine", "seed": name, **(params or {})}
    client.log_batch(
        rid,
        metrics=good,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag("status", "finished")],
    )
    client.log_batch(rid, metrics=[Metric(k, v, 1, s) for k, v, s in metrics])
    client.set_terminated(rid, "FINISHED")
    return rid


def _store_with_damaged_runs(tmp_path, n_good=6):
    """``n_good`` finished runs of LAW (sizes x final steps) and one damaged finished run of each kind;
    returns (uri, the good runs, {damaged run id: what the note says about it})."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    cells = [(n, s) for s in (400, 1600) for n in (1e6, 3e6, 1e7)][:n_good]
    good = {
        _log_run(client, exp_id, f"g{i}", n, s, status="finished", mlflow_status="FINISHED")
        for i, (n, s) in enumerate(cells)
    }
    damaged = {
        _log_damaged(
            client, exp_id, "nan", metrics=[("val/loss", float("nan"), 800)]
        ): "val/loss nan at step 800",
        _log_damaged(
            client, exp_id, "inf", metrics=[("val/loss", float("inf"), 600)]
        ): "val/loss inf at step 600",
        _log_damaged(
            client, exp_id, "cinf", metrics=[("compute/train_flops", float("inf"), 800)]
        ): "compute/train_flops inf at step 800",
        _log_damaged(
            client, exp_id, "cneg", metrics=[("compute/train_flops", -5.0, 800)]
        ): "compute/train_flops -5 at step 800",
        _log_damaged(
            client, exp_id, "nstr", params={"model.params": "2M"}
        ): "model.params '2M' is not a positive",
        _log_damaged(client, exp_id, "nneg", params={"model.params": "-2e6"}): "model.params '-2e6' is not a",
    }
    return uri, good, damaged


def test_diverged_and_damaged_runs_are_left_out_with_a_note_naming_them(tmp_path, caplog):
    """A finished run whose val/loss is NaN or inf (MLflow stores inf as the largest float), whose
    compute is inf or negative, or whose model.params is not a positive number, is left out of the fit
    and named in the notes; it blocked the whole fit (NaN, negative) or entered it (inf)."""
    uri, good, damaged = _store_with_damaged_runs(tmp_path)
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        df = load_runs("sweep", tracking_uri=uri)
    assert set(df["run_id"]) == good
    (note,) = [n for n in df.attrs["notes"] if "not a finite positive number" in n]
    assert note.startswith("6 finished run(s) left out for a value that is not a finite positive number")
    assert "a NaN or inf loss is a diverged training" in note
    for rid, what in damaged.items():
        assert f"{rid} ({what}" in note
    assert any(note in n for n in prepare(df, AnalysisConfig(n_bootstrap=0)).notes)  # in the report


def test_a_fit_with_a_diverged_run_names_it_in_the_report(tmp_path, capsys):
    uri, _, damaged = _store_with_damaged_runs(tmp_path)
    args = ["--experiment", "sweep", "--tracking-uri", uri, "--no-mlflow-log", "--bootstrap", "0"]
    assert main([*args, "--out", str(tmp_path / "rep")]) != EXIT_BAD_INPUT, capsys.readouterr().err
    report = (tmp_path / "rep" / "report.md").read_text()
    for rid, what in damaged.items():
        assert f"{rid} ({what}" in report


def test_diverged_runs_that_leave_too_few_points_give_the_too_few_points_error(tmp_path, capsys):
    uri, _, _ = _store_with_damaged_runs(tmp_path, n_good=5)
    args = ["--experiment", "sweep", "--tracking-uri", uri, "--no-mlflow-log", "--bootstrap", "0"]
    assert main([*args, "--out", str(tmp_path / "rep")]) == EXIT_BAD_INPUT
    last = capsys.readouterr().err.splitlines()[-1]  # after MLflow's own log lines
    assert last.startswith("error: 5 points after point selection; the parametric law needs more than 5")


def test_unusable_fids_count_as_not_scored_and_a_zero_patch_size_as_unknown(tmp_path):
    """An FID that is inf or NaN (a sampler that diverged) is blanked, not fitted; model.patch_size 0
    (damaged params) leaves tokens per image unknown instead of a ZeroDivisionError."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    fids = [("eval/fid", 50.0, 400), ("eval/fid", float("inf"), 600), ("eval/fid", float("nan"), 800)]
    rid = _log_damaged(client, exp_id, "fid", metrics=fids)
    zero = _log_damaged(client, exp_id, "p0", params={"model.patch_size": "0", "model.input_size": "32"})
    df = load_runs("sweep", tracking_uri=uri).set_index(["run_id", "step"])
    assert df.loc[(rid, 400.0), "fid"] == 50.0
    assert df.loc[[(rid, 600.0), (rid, 800.0)], "fid"].isna().all()
    assert df.loc[zero, "tokens_per_image"].isna().all() and len(df.loc[zero]) == 4
    (note,) = [n for n in df.attrs["notes"] if "FID" in n]
    assert note == (
        f"2 FID value(s) that are NaN, inf or <= 0 treated as not scored (their loss points are kept): {rid}"
    )


def test_a_csv_with_a_nan_or_inf_loss_is_refused_naming_the_rows(tmp_path, capsys):
    """The CSV's rule (unlike a store's runs, which are left out with a note): every row must be valid,
    since the CSV is the user's own selection; the error names the rows and their values."""
    pts = sweep()
    pts.loc[3, "loss"], pts.loc[7, "loss"] = np.nan, np.inf
    csv = tmp_path / "diverged.csv"
    pts.to_csv(csv, index=False)
    assert _cli(tmp_path, "--csv", str(csv), "--bootstrap", "0") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "column loss must be a positive number in every row; 2 row(s) are not (first at lines " in err
    assert (
        "5, 9: nan, inf); fix or delete those rows (a NaN or inf loss is a diverged run" in err
    )  # CSV lines


# ------------------------------------------------------------------ 8. a --tracking-uri file that is no store


def _sqlite_with(path, sql: str) -> None:
    import sqlite3

    con = sqlite3.connect(path)
    con.executescript(sql)
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("name", "make", "phrase"),
    [
        (
            "points.csv",
            lambda p: sweep().to_csv(p, index=False),
            "is not an SQLite database, so not an MLflow",
        ),
        ("notes.txt", lambda p: p.write_text("hello\n"), "is not an SQLite database, so not an MLflow store"),
        ("zero.db", lambda p: p.write_bytes(b""), "is an empty file, so not an MLflow store"),
        (
            "empty.db",
            lambda p: _sqlite_with(p, "CREATE TABLE x (a);"),
            "is an SQLite database but not an MLflow",
        ),
        (
            "app.db",
            lambda p: _sqlite_with(p, "CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ann');"),
            "is an SQLite database but not an MLflow store (no experiments, runs, metrics, params table; its "
            "tables: users)",
        ),
        ("folder", lambda p: p.mkdir(), "is a folder, not an MLflow store"),
    ],
)
def test_a_sqlite_uri_to_a_file_that_is_not_an_mlflow_store_is_refused_untouched(
    tmp_path, capsys, name, make, phrase
):
    """A CSV or text file ended in an SQLAlchemy traceback; an empty SQLite file or another program's
    database had MLflow's ~30 tables added to it and then said 'experiment not found'."""
    path = tmp_path / name
    make(path)
    before = path.read_bytes() if path.is_file() else None
    uri = f"sqlite:///{path}"
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "rep"), "--no-mlflow-log"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} ") and phrase in err and "Traceback" not in err
    assert "give the MLflow store's database, e.g. --tracking-uri sqlite:///path/to/mlflow.db" in err
    if name == "points.csv":
        assert err.rstrip().endswith(f"a CSV of points is read with --csv {path}")
    assert (path.read_bytes() if path.is_file() else None) == before  # left as it was
    assert not (tmp_path / "rep").exists()


def test_a_sqlite_uri_to_a_missing_file_says_no_store_and_creates_none(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for uri in (f"sqlite:///{tmp_path}/nope.db", "sqlite:///mlflow.db"):
        assert main(["--tracking-uri", uri, "--out", "rep", "--no-mlflow-log"]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.startswith(f"error: MLflow experiment 'ditscale-demo' not found at {uri} (no store file")
        assert "so no runs; none was created" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_unknown_experiment_names_the_experiments_there(tmp_path, capsys):
    uri, _, _ = _store_with_damaged_runs(tmp_path, n_good=1)
    assert main(["--experiment", "swep", "--tracking-uri", uri, "--out", str(tmp_path / "rep")]) == 2
    assert "MLflow experiment 'swep' not found at" in (err := capsys.readouterr().err)
    assert "(experiments there: Default, sweep)" in err


@pytest.mark.parametrize("flag", ["--experiment", "--tracking-uri"])
def test_an_empty_experiment_or_uri_is_refused_not_replaced_by_the_default(tmp_path, capsys, flag):
    """``--experiment "$NAME"`` with NAME unset fitted the demo's experiment instead."""
    assert main([flag, "", "--out", str(tmp_path / "rep"), "--no-mlflow-log"]) == EXIT_BAD_INPUT
    assert (
        capsys.readouterr().err
        == f"error: {flag} is empty; give a value, or leave the flag out for the default\n"
    )


def test_csv_that_is_a_database_or_a_folder_is_refused_with_what_to_pass(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    _sqlite_with(db, "CREATE TABLE x (a);")
    assert _cli(tmp_path, "--csv", str(db)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == (
        f"error: {db} is an SQLite database, not a CSV; an MLflow store is read with --tracking-uri "
        f"sqlite:///{db} (and --experiment NAME)\n"
    )
    assert _cli(tmp_path, "--csv", str(tmp_path)) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == f"error: CSV {tmp_path} is a folder; give the CSV file of points\n"


# ------------------------------------------------------------------ 9. outputs that cannot be written, flags


def test_out_and_json_that_cannot_be_written_are_refused_before_fitting(tmp_path, capsys):
    """A file on the way to --out or --json, or a read-only place (/sys: refused even to root), ended in
    a NotADirectoryError or PermissionError traceback after the whole fit."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    cases = [
        (["--out", str(afile / "rep")], f"error: --out: {afile} is a file, so {afile / 'rep'} cannot be"),
        (["--json", str(afile / "fit.json")], f"error: --json: {afile} is a file, so {afile / 'fit.json'}"),
        (["--out", "/sys/ditscale-rep/x"], "error: --out: cannot write in /sys ("),
        (["--json", "/sys/ditscale/fit.json"], "error: --json: cannot write in /sys ("),
    ]
    for args, phrase in cases:
        csv = ["--csv", str(tmp_path / "points.csv")]
        sweep().to_csv(csv[1], index=False)
        assert main([*csv, "--out", str(tmp_path / "rep"), "--bootstrap", "0", *args]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.startswith(phrase) and "Traceback" not in err, err
    assert afile.read_text() == "keep me" and not (tmp_path / "rep").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fit_scaling")] == []


def test_negative_seed_names_the_flag(tmp_path, capsys):
    assert _cli(tmp_path, "--seed", "-1") == EXIT_BAD_INPUT
    assert "seed (--seed) must be >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------ 10. one model size, one D, budgets below


def test_one_model_size_or_one_data_size_identifies_no_n_opt():
    """All runs of one model (a family trained at several budgets): N_opt was printed from a law whose
    N term is a constant (alpha 1.25 from nothing), with status ok on the prediction's own reasons."""
    with pytest.raises(ValueError, match=r"every point has N = 1e\+07: the N term A/N\^alpha is a constant"):
        pipeline.fit_parametric([1e7] * 8, np.logspace(8, 11, 8), np.linspace(3, 2, 8))
    d = np.logspace(8, 11, 8)
    one_n = tidy(pd.DataFrame({"N": 1e7, "D": d, "loss": parametric_loss(LAW, 1e7, d)}))
    n = np.logspace(6, 9, 8)
    one_d = tidy(pd.DataFrame({"N": n, "D": 1e9, "loss": parametric_loss(LAW, n, 1e9)}))
    for pts, phrase in ((one_n, "every point has one model size (N = 1e+07)"), (one_d, "one amount of data")):
        pr = predict(analyze(pts, AnalysisConfig(n_bootstrap=0)), 1e20)
        assert pr.n_opt is None and pr.status.status == "not_identified"
        assert any(phrase in r for r in pr.status.reasons), pr.status.reasons


def test_a_budget_far_below_the_data_is_extrapolating():
    """--predict 1 gave N_opt = 0.07 parameters with status ok: only budgets above the data counted."""
    an = analyze(sweep(), AnalysisConfig(n_bootstrap=0))
    pr = predict(an, 1e15)
    reason = "1e+15 FLOPs is 1e+03x below the smallest compute measured (1e+18 FLOPs), more than 10x"
    assert any(r.startswith(reason) for r in pr.status.reasons)
    assert not any("below the smallest" in r for r in predict(an, 1e17).status.reasons)  # 10x: inside


def test_a_csv_with_an_inf_fid_or_a_negative_unique_count_is_refused(tmp_path, capsys):
    """An inf FID reached matplotlib ("Data cannot be log-scaled"); unique = -5 with --effective-data
    was silently read as "no repetition" and fitted with status ok."""
    for col, value, args, phrase in (
        (
            "fid",
            np.inf,
            (),
            "column fid must be a finite number > 0 where given (leave the cell empty where not scored, "
            "e.g. for an inf FID); 20 row",
        ),
        ("unique", -5.0, ("--effective-data",), "column unique must be a number > 0 where given (inf: an"),
    ):
        csv = tmp_path / f"{col}.csv"
        sweep().assign(**{col: value}).to_csv(csv, index=False)
        assert _cli(tmp_path, "--csv", str(csv), "--bootstrap", "0", *args) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert phrase in err and f"(first at lines 2, 3, 4, 5, 6: {value}, " in err, err
    ok = tmp_path / "unbounded.csv"
    sweep().assign(unique=np.inf, fid=np.nan).to_csv(ok, index=False)  # unbounded; FID not scored
    validate_points(pd.read_csv(ok))


def test_too_few_points_says_when_the_outlier_flags_removed_them(tmp_path, capsys):
    assert _cli(tmp_path, "--drop-highest-loss", "16", "--bootstrap", "0") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: 4 points after point selection; the parametric law needs more than 5")
    assert (
        "(--all-points, a lower --min-steps; --drop-highest-loss / --outlier-sigma removed 16 of 20)" in err
    )


# ------------------------------------------------------------------ 11. CSV cells that are not numbers


def _csv_with(tmp_path, cells: dict[tuple[int, str], str], blank_before: int | None = None):
    """`sweep()` as a CSV (with a `step` and `fid` column) whose cells at (data row, column) are replaced
    by the given text, as typed; `blank_before`: a blank line before that data row. Data row i is on
    line i + 2 (the header is line 1), one more from the blank line on."""
    pts = sweep().assign(step=1000, fid=20.0).astype(object)  # any cell may hold text
    for (i, col), text in cells.items():
        pts.loc[i, col] = text
    lines = pts.to_csv(index=False).splitlines()
    if blank_before is not None:
        lines.insert(blank_before + 1, "")
    path = tmp_path / "typed.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("col", "text"),
    [("fid", "12.3x"), ("fid", "n/a"), ("fid", "NA"), ("step", "abc"), ("loss", "2.1o")],
)
def test_a_csv_cell_that_is_not_a_number_is_refused_naming_file_column_line_and_value(tmp_path, col, text):
    """A typo in a numeric column was read as "not measured" (fid, step: NaN, the point kept without
    it; pandas also reads "n/a" and "NA" as missing), and a required column's error gave a 0-based row
    index instead of the line. Now one rule for every numeric column: the file, column, CSV line and
    value, and what to do."""
    path = _csv_with(tmp_path, {(6, col): text})
    with pytest.raises(ValueError) as err:
        load_csv(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: 1 cell(s) in numeric column(s) ['{col}'] are not numbers (")
    assert f"(column {col}, line 8: {text!r})" in msg, msg
    if col == "loss":
        assert msg.endswith("; loss needs a number in every row: fix the value or delete the row")
    else:
        assert "leave the cell empty where the value was not measured" in msg
        assert ("(an empty fid: not scored)" in msg) == (col == "fid")


def test_not_numbers_in_several_columns_are_listed_with_their_lines_past_a_blank_line(tmp_path, capsys):
    """Every bad cell counts (the first five shown); a blank line (skipped as a row) still counts as a
    line; the CLI turns the error into `error: ...` and exit 2 before fitting."""
    cells = {(1, "fid"): "12.3x", (3, "step"): "abc", (12, "N"): "1e7 params"}
    path = _csv_with(tmp_path, cells, blank_before=2)
    assert _cli(tmp_path, "--csv", str(path), "--bootstrap", "0") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: 3 cell(s) in numeric column(s) ['N', 'fid', 'step'] are not ")
    assert "(column fid, line 3: '12.3x'; column step, line 6: 'abc'; column N, line 15: '1e7 params')" in err
    assert "leave the cell empty where the value was not measured (an empty fid: not scored)" in err
    assert "N needs a number in every row: fix the value or delete the row" in err
    assert not (tmp_path / "rep").exists()


def test_empty_nan_and_inf_fid_cells_follow_the_stores_rule(tmp_path):
    """An empty cell is missing, as before (fid: not scored; step: unknown). A literal `nan` FID is not
    scored, as a NaN FID in an MLflow store; an `inf` FID is refused (the CSV is the user's own
    selection: leave it empty) where the store blanks it with a note; a `nan` loss stays refused."""
    df = load_csv(_csv_with(tmp_path, {(2, "fid"): "", (4, "fid"): "nan", (5, "fid"): " ", (7, "step"): ""}))
    assert df["fid"].isna().tolist() == [i in (2, 4, 5) for i in range(20)]
    assert df.loc[0, "fid"] == 20.0 and np.isnan(df.loc[7, "step"]) and df.loc[8, "step"] == 1000.0
    with pytest.raises(
        ValueError, match=r"column fid must be a finite number > 0 .* \(first at line 6: inf\)"
    ):
        load_csv(_csv_with(tmp_path, {(4, "fid"): "inf"}))
    with pytest.raises(
        ValueError, match=r"column loss must be a positive number .* \(first at line 6: nan\)"
    ):
        load_csv(_csv_with(tmp_path, {(4, "loss"): "nan"}))
    # a frame given directly (not a file) follows the same rule, rows by their index
    with pytest.raises(ValueError, match=r"\(column fid, row index \[3\]: 'n/a'\)"):
        validate_points(sweep().assign(fid=[20.0] * 3 + ["n/a"] + [20.0] * 16))
