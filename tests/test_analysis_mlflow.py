"""The MLflow path: synthetic sweep runs (schema: docs/training.md) -> load_runs -> CLI -> analysis run."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from _fit_helpers import run_fit_cli

from analysis.parametric import optimal_allocation
from analysis.runs import average_seeds, load_runs
from analysis.status import EXIT_NOT_IDENTIFIED
from dit_core.tracking import FEATURE_SPACE_TAG

LAW = {"E": 0.05, "A": 4.0, "B": 30.0, "alpha": 0.3, "beta": 0.32}
K = 6.0 * 64  # true FLOPs per parameter per image (64 tokens per image)
BUDGETS = (1e14, 1e15, 1e16)
EXP = "analysis-test-sweep"
OTHER_CELL, OTHER_STEPS = (BUDGETS[-1], 2), 250  # one run scored its FID with DDIM-250, not DDIM-50
# and one with the same sampler in another classifier's features (another training of its recipe)
OTHER_FEATURES_CELL = (BUDGETS[0], 1)
SPACE, OTHER_SPACE = (
    "digits: digitscnn-digits8-0123456789ab-wfeedc0ffee00",
    "digits: digitscnn-digits8-0123456789ab-w000000000001",
)
PROTOCOL = f"fid_digits, 1000 samples, ddim-50, cfg 1.5, features {SPACE}"


def law(n, d):
    return LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d ** LAW["beta"]


def log_sweep(client, exp_id: str) -> dict:
    """9 finished runs (3 budgets x 3 sizes around the optimum) + 1 failed run; returns counts."""
    from mlflow.entities import Metric, Param, RunTag

    n_points = 0
    for b in BUDGETS:
        n_opt = optimal_allocation(LAW, b, K)[0]
        for j, f in enumerate((0.25, 1.0, 4.0)):
            n = float(round(n_opt * f))
            space = OTHER_SPACE if (b, j) == OTHER_FEATURES_CELL else SPACE
            run = client.create_run(
                exp_id,
                run_name=f"b{b:.0e}-{j}",
                tags={"sweep": "t", "grid_cell": f"{b}-{j}", FEATURE_SPACE_TAG: space},
            )
            rid = run.info.run_id
            params = {
                "model.params": n,
                "model.forward_gflops": n * 64 / 1e9,
                "model.depth": 2 + j,
                "model.hidden_size": 32 * (j + 1),
                "model.patch_size": 2,
                "model.input_size": 16,
                "model.params_non_embedding": 0.9 * n,
                "optim.schedule": "constant",
                "budget.train_flops": b,
                "eval.num_samples": 1000,
                "eval.sampler": "ddim",
                "eval.steps": OTHER_STEPS if (b, j) == OTHER_CELL else 50,
                "eval.cfg_scale": 1.5,
            }
            d_final = b / (K * n)
            metrics = []
            for s in range(0, 6):  # eval every 20 steps; step 0 has no compute yet
                step = 20 * s
                d = d_final * s / 5
                metrics += [
                    Metric("compute/train_flops", K * n * d, 0, step),
                    Metric("data/images_seen", d, 0, step),
                ]
                if j == 0:  # one run per budget logs its unique images, one its epochs (-> 2 x 1617)
                    metrics.append(Metric("data/unique_images", 1617.0, 0, step))
                elif j == 1 and s > 0:
                    metrics.append(Metric("data/epochs", d / 3234.0, 0, step))
                if s > 0:
                    metrics.append(Metric("val/loss", law(n, d), 0, step))
                    n_points += 1
                    if s % 2 == 1:
                        metrics.append(Metric("eval/fid_digits", 200.0 * law(n, d) ** 2, 0, step))
                metrics.append(Metric("train/loss", 1.0, 0, step))
            client.log_batch(
                rid,
                metrics=metrics,
                params=[Param(k, str(v)) for k, v in params.items()],
                tags=[RunTag("status", "finished")],
            )
            client.set_terminated(rid, "FINISHED")
    bad = client.create_run(exp_id, run_name="crashed", tags={"status": "failed"})
    client.log_batch(
        bad.info.run_id,
        metrics=[
            Metric("val/loss", 9.0, 0, 10),
            Metric("compute/train_flops", 1e9, 0, 10),
            Metric("data/images_seen", 10, 0, 10),
        ],
        params=[Param("model.params", "1000")],
    )
    client.set_terminated(bad.info.run_id, "FAILED")
    return {"runs": 9, "points": n_points}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    store = tmp_path_factory.mktemp("mlflow-analysis")
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    # explicit artifact location: the default is ./mlruns in the current directory (the repo)
    exp_id = client.create_experiment(EXP, artifact_location=(store / "artifacts").as_uri())
    counts = log_sweep(client, exp_id)
    empty_id = client.create_experiment("only-failed")
    r = client.create_run(empty_id, tags={"status": "failed"})
    client.set_terminated(r.info.run_id, "FAILED")
    return uri, counts


def test_load_runs_tidy_points(sweep):
    uri, counts = sweep
    df = load_runs(EXP, tracking_uri=uri)
    assert len(df) == counts["points"] and df["run_id"].nunique() == counts["runs"]  # failed run skipped
    assert (df["C"] > 0).all() and np.allclose(df["C"], K * df["N"] * df["D"])
    assert np.allclose(df["loss"], law(df["N"], df["D"]))
    assert df["fid"].notna().sum() == 3 * counts["runs"]  # steps 20, 60, 100 of each run
    assert df.groupby("run_id")["final"].sum().eq(1).all()
    # the logged steps (a NaN step would let --min-steps keep every point)
    assert all(sorted(g) == [20, 40, 60, 80, 100] for _, g in df.groupby("run_id")["step"])
    assert set(df["budget"]) == set(BUDGETS)
    assert df["model"].str.startswith("DiT-d").all()
    assert (df["tokens_per_image"] == 64.0).all() and np.allclose(df["N_non_embedding"], 0.9 * df["N"])
    assert (df["schedule"] == "constant").all()
    protocols = df.groupby("run_id")["fid_protocol"].first().value_counts().to_dict()
    assert protocols == {
        PROTOCOL: 7,
        PROTOCOL.replace("ddim-50", "ddim-250"): 1,
        PROTOCOL.replace(SPACE, OTHER_SPACE): 1,
    }
    uniq = df.groupby("run_id")["unique"].first().round(6).value_counts(dropna=False).to_dict()
    assert {k: v for k, v in uniq.items() if k == k} == {1617.0: 3, 3234.0: 3}  # NaN (not logged) for 3


def test_load_runs_errors(sweep):
    uri, _ = sweep
    with pytest.raises(ValueError, match="sweeps/launch.py"):
        load_runs("no-such-experiment", tracking_uri=uri)
    with pytest.raises(ValueError, match="no finished runs"):
        load_runs("only-failed", tracking_uri=uri)


def test_cli_on_mlflow_logs_analysis_run(sweep, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri, counts = sweep
    # 50 resamples: a resample of runs that draws one model size cannot be refitted, and with exactly 40
    # one such draw (which run ids, random per store, make more or less likely) left 39 refits, too few
    # for a 95% interval (not_identified) in about one store of ten
    rc, out_json = run_fit_cli(
        tmp_path, "--experiment", EXP, "--tracking-uri", uri, "--bootstrap", "50", "--predict", "1e17"
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out_json.read_text())
    assert res["status"] == "ok" and res["point_selection"]["min_steps"] == 50
    assert any("constant lr" in n for n in res["point_selection"]["notes"])
    # the DDIM-250 run's 3 FIDs and the other feature space's 3 are left out of the FID fits, and
    # said so; the report names the protocol
    assert res["fid_protocol"] == PROTOCOL
    (note,) = [n for n in res["point_selection"]["notes"] if "another protocol" in n]
    assert note.startswith("FID: 6 point(s)") and "kept 21" in note
    assert f"ddim-250, cfg 1.5, features {SPACE}: 3" in note and f"features {OTHER_SPACE}: 3" in note
    assert f"scored as: {PROTOCOL}" in (tmp_path / "rep" / "report.md").read_text()
    for k in ("alpha", "beta"):  # noiseless data from LAW: the parametric law comes back
        assert res[k] == pytest.approx(LAW[k], abs=0.01)
    assert res["flops_per_param_datum"] == pytest.approx(K)
    assert res["approach2_isoflop"]["a"] == pytest.approx(
        LAW["beta"] / (LAW["alpha"] + LAW["beta"]), abs=0.03
    )
    pred = res["predictions"][0]
    assert pred["n_opt"]["value"] == pytest.approx(optimal_allocation(LAW, 1e17, K)[0], rel=0.1)
    assert pred["fid"]["value"] == pytest.approx(200 * optimal_allocation(LAW, 1e17, K)[2] ** 2, rel=0.05)
    assert pred["nearest_run_shape"]["name"].startswith("DiT-d")
    assert res["holdout"]["held_out_min_C"] >= 0.99e16 * 0.2 and res["holdout"]["mape_loss"] < 0.02
    assert (tmp_path / "rep" / "fid.png").exists()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXP)
    ana = client.search_runs([exp.experiment_id], filter_string="tags.analysis = 'true'")
    assert len(ana) == 1
    names = {a.path.split("/")[-1] for a in client.list_artifacts(ana[0].info.run_id, "analysis")}
    assert {
        "report.md",
        "results.json",
        "loss_vs_compute.png",
        "isoflop.png",
        "optimal_allocation.png",
    } <= names
    assert ana[0].data.metrics["fit/alpha"] == pytest.approx(res["alpha"])
    assert ana[0].info.status == "FINISHED" and ana[0].data.tags["analysis_status"] == res["status"]
    assert len(load_runs(EXP, tracking_uri=uri)) == counts["points"]  # the analysis run is not data


def test_cli_without_arguments_names_the_fix(sweep, tmp_path, monkeypatch, capsys):
    from analysis.fit_scaling import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep[0])  # a store without the default experiment
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "ditscale-demo" in err and "sweeps/launch.py" in err


def test_cli_on_mlflow_in_tokens_and_non_embedding_params(sweep, tmp_path):
    from analysis.fit_scaling import main

    uri, _ = sweep
    out_json = tmp_path / "fit.json"
    args = ["--experiment", EXP, "--tracking-uri", uri, "--bootstrap", "0", "--no-mlflow-log"]
    args += [
        "--data-axis",
        "tokens",
        "--params",
        "non_embedding",
        "--json",
        str(out_json),
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 3  # not_identified: only because --bootstrap 0 checked no interval
    res = json.loads(out_json.read_text())
    assert len(res["reasons"]) == 1 and res["reasons"][0].startswith("no bootstrap (--bootstrap 0)")
    # C = K N images = (K / (64 x 0.9)) x N_non_embedding x tokens
    assert res["flops_per_param_datum"] == pytest.approx(K / (64 * 0.9))
    assert res["units"]["D"] == "tokens" and res["units"]["N"] == "non-embedding parameters"
    assert main([*args[:-4], "--min-steps", "1000", "--json", str(out_json), "--out", str(tmp_path)]) == 2


def test_one_fid_protocol_keeps_the_most_used_and_breaks_ties_at_the_largest_compute():
    import pandas as pd

    from analysis.runs import one_fid_protocol

    pts = pd.DataFrame(
        {
            "C": [1.0, 2.0, 3.0, 4.0, 5.0],
            "fid": [10.0, 9.0, 8.0, np.nan, 7.0],
            "fid_se": [1.0] * 5,
            "fid_protocol": ["a", "b", "a", "b", None],
        }
    )
    kept, proto, note = one_fid_protocol(pts)  # a: 2 FIDs, b: 1 (its step-4 row has no FID)
    assert proto == "a" and kept["fid"].notna().tolist() == [True, False, True, False, True]
    assert note.startswith("FID: 1 point(s)") and "b: 1" in note
    more_b = pts.assign(fid=[10.0, 9.0, np.nan, 8.0, 7.0])  # a: 1 FID, b: 2
    assert one_fid_protocol(more_b)[1] == "b"
    tie = pts.assign(fid=[np.nan, 9.0, np.nan, 8.0, 7.0], fid_protocol=["a", "b", "b", "a", None])
    assert one_fid_protocol(tie)[1] == "a"  # one each: a's is at the larger compute (C = 4)
    assert one_fid_protocol(pts.assign(fid_protocol="a"))[2] is None
    assert one_fid_protocol(pts.assign(fid_protocol=None))[1] is None  # CSV input: unknown, kept


def test_two_seeds_logged_by_the_trainer_load_as_one_cell(sweep):
    """Runs of one cell that differ in `seed`, `out` and `tracking.*` (as two launches with --set seed=N
    log them) share a replicate key; a run at another lr does not. The analysis averages the first two."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri, _ = sweep
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("seeds")
    losses = {}
    for name, seed, lr, loss in (
        ("s0", 0, "0.03", 0.050),
        ("s1", 1, "0.03", 0.054),
        ("lr", 0, "0.02", 0.049),
    ):
        rid = client.create_run(exp_id, run_name=name).info.run_id
        params = {"model.params": 1000, "model.depth": 2, "model.hidden_size": 8, "model.patch_size": 2}
        params |= {"model.input_size": 16, "optim.schedule": "cosine", "optim.lr": lr, "seed": seed}
        params |= {"out": f"/runs/{name}", "tracking.run_id": rid, "tracking.sweep": f"demo-{name}"}
        client.log_batch(
            rid,
            metrics=[
                Metric("val/loss", loss, 0, 100),
                Metric("compute/train_flops", 6e9, 0, 100),
                Metric("data/images_seen", 1e6, 0, 100),
            ],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(rid, "FINISHED")
        losses[rid] = name
    df = load_runs("seeds", tracking_uri=uri)
    key = dict(zip(df["run_id"].map(losses), df["replicate"]))
    assert key["s0"] == key["s1"] != key["lr"]
    pts, note = average_seeds(df)
    assert sorted(pts["loss"].round(6)) == [0.049, 0.052] and pts["n_seeds"].max() == 2
    assert "5.4 % (median)" in note  # sd / mean of (0.050, 0.054): 0.00283 / 0.052


def test_unique_images_read_as_the_trainer_records_them(sweep):
    """The tag data.unique_images (a count, or "unbounded" -> inf) comes first; without it the metrics:
    data/unique_images, else images seen / data/epochs, where 0.0 epochs is an unbounded stream."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from dit_core.tracking import UNIQUE_IMAGES_TAG, unique_images_tag

    uri, _ = sweep
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("unique-images")
    cases = {  # name: (tags, extra metrics, expected unique)
        "stream": ({UNIQUE_IMAGES_TAG: unique_images_tag(None)}, [], float("inf")),
        "tagged": (
            {UNIQUE_IMAGES_TAG: unique_images_tag(500)},
            [Metric("data/unique_images", 700, 0, 10)],
            500,
        ),
        "metric": ({}, [Metric("data/unique_images", 700, 0, 10)], 700),
        "epochs": ({}, [Metric("data/epochs", 4.0, 0, 10)], 250),  # 1000 images seen / 4 epochs
        "no-repeat": ({}, [Metric("data/epochs", 0.0, 0, 10)], float("inf")),
        "unknown": ({}, [], None),
    }
    names = {}
    for name, (tags, extra, _) in cases.items():
        rid = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        client.log_batch(
            rid,
            metrics=[
                Metric("val/loss", 0.05, 0, 10),
                Metric("compute/train_flops", 6e9, 0, 10),
                Metric("data/images_seen", 1000, 0, 10),
                *extra,
            ],
            params=[Param("model.params", "1000"), Param("seed", name)],
        )
        client.set_terminated(rid, "FINISHED")
        names[rid] = name
    got = load_runs("unique-images", tracking_uri=uri).set_index("run_id")["unique"].rename(names)
    for name, (_, _, want) in cases.items():
        assert np.isnan(got[name]) if want is None else got[name] == want, (name, got[name])


def test_an_analysis_run_whose_upload_fails_ends_failed_not_orphaned(sweep, tmp_path):
    """log_to_mlflow: the finite fit numbers become metrics (a missing one is skipped); an artifact
    that cannot be uploaded leaves the run FAILED (not RUNNING forever) and the error goes up; an
    unknown experiment is an error before any run is created."""
    from mlflow.tracking import MlflowClient

    from analysis.report import log_to_mlflow

    uri, _ = sweep
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("analysis-log", artifact_location=(tmp_path / "art").as_uri())
    report = tmp_path / "report.md"
    report.write_text("# report")
    summary = {"status": "censored", "alpha": 0.3, "beta": None, "E": float("nan")}
    rid = log_to_mlflow({"report": report}, "analysis-log", uri, summary)
    run = client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["analysis_status"] == "censored"
    assert run.data.tags["analysis"] == "true" and run.info.run_name == "scaling-analysis"
    assert run.data.metrics == {"fit/alpha": 0.3}
    assert [a.path for a in client.list_artifacts(rid, "analysis")] == ["analysis/report.md"]
    with pytest.raises(FileNotFoundError, match="missing.md"):
        log_to_mlflow({"report": tmp_path / "missing.md"}, "analysis-log", uri, summary)
    runs = client.search_runs([exp_id], order_by=["attribute.start_time DESC"])
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    with pytest.raises(ValueError, match="'no-such-experiment' not found"):
        log_to_mlflow({}, "no-such-experiment", uri, summary)
    assert len(client.search_runs([exp_id])) == 2


def test_an_analysis_run_that_cannot_be_logged_keeps_the_fit_and_its_exit_code(
    sweep, tmp_path, capsys, caplog
):
    """An analysis run MLflow refuses (here an artifact root behind a file, as in a store copied from
    another folder; likewise a store locked by a sweep's writes: "database is locked") ended the CLI in
    MLflow's traceback, exit 1 ("a bug"), after the report was written and before any result was
    printed. Now: a warning that names the cause and where the report is, the results, the status's
    exit code, and the analysis run marked FAILED."""
    from mlflow.tracking import MlflowClient

    from analysis.fit_scaling import main

    uri, _ = sweep
    blocker = tmp_path / "afile"
    blocker.write_text("")
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("analysis-unloggable", artifact_location=(blocker / "art").as_uri())
    log_sweep(client, exp_id)
    out_dir = tmp_path / "rep"
    args = [
        "--experiment",
        "analysis-unloggable",
        "--tracking-uri",
        uri,
        "--bootstrap",
        "0",
        "--out",
        str(out_dir),
    ]
    assert main(args) == EXIT_NOT_IDENTIFIED  # --bootstrap 0: not_identified, as without the failure
    out = capsys.readouterr().out
    assert (
        "analysis run:" not in out and "Parametric law" in out and f"report: {out_dir / 'report.md'}" in out
    )
    (warning,) = [r.getMessage() for r in caplog.records if "not logged to MLflow" in r.getMessage()]
    assert "Error" in warning and f"the report in {out_dir} are complete" in warning
    assert "--no-mlflow-log" in warning
    assert f"(NotADirectoryError: [Errno 20] Not a directory: '{blocker / 'art'}')" in warning  # the cause
    runs = client.search_runs([exp_id], filter_string="tags.analysis = 'true'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_the_reports_points_csv_refits_to_the_same_fit_without_the_store(sweep, tmp_path):
    """points.csv (--out) holds every point `load_runs` read, none of the failed run's; `--csv` on it gives
    the MLflow fit's numbers, and a refit into its own folder leaves it as it was."""
    import os

    import pandas as pd

    from analysis.fit_scaling import main

    uri, counts = sweep
    common = ["--bootstrap", "0", "--predict", "1e17", "--holdout", "largest"]
    a, b = tmp_path / "a", tmp_path / "b"
    rc = main(["--experiment", EXP, "--tracking-uri", uri, "--no-mlflow-log", *common, "--out", str(a)])
    pts = pd.read_csv(a / "points.csv")
    assert len(pts) == counts["points"] and pts["loss"].max() < 9.0  # the crashed run's 9.0 is not there
    loaded = load_runs(EXP, tracking_uri=uri)  # the points as loaded, not as selected and averaged
    pd.testing.assert_frame_equal(
        pts, loaded.astype(object).where(loaded.notna()).infer_objects(), check_dtype=False
    )
    assert "`points.csv`" in (a / "report.md").read_text()
    assert main(["--csv", str(a / "points.csv"), *common, "--out", str(b)]) == rc
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    for k in ("E", "A", "B", "alpha", "beta", "a"):
        assert rb[k] == pytest.approx(ra[k], rel=1e-9), k
    assert rb["fid_protocol"] == ra["fid_protocol"] == PROTOCOL
    assert rb["approach2_isoflop"]["a"] == pytest.approx(ra["approach2_isoflop"]["a"], rel=1e-9)
    assert rb["predictions"][0]["n_opt"]["value"] == pytest.approx(ra["predictions"][0]["n_opt"]["value"])
    assert rb["holdout"]["mape_loss"] == pytest.approx(ra["holdout"]["mape_loss"], rel=1e-9)
    os.utime(a / "points.csv", ns=(1, 1))
    assert main(["--csv", str(a / "points.csv"), *common, "--out", str(a)]) == rc
    assert os.stat(a / "points.csv").st_mtime_ns == 1


def test_a_csv_without_c_refits_from_its_points_csv_without_the_flops_flag(sweep, tmp_path):
    """A CSV without C fitted with --flops-per-param-datum k: its points.csv holds C = k N D, so the
    refit takes no flag (the flag is refused, as for any CSV with C) and gives the same fit."""
    import pandas as pd

    from analysis.fit_scaling import main

    uri, _ = sweep
    common = ["--bootstrap", "0", "--predict", "1e17"]
    a = tmp_path / "a"
    assert (
        main(["--experiment", EXP, "--tracking-uri", uri, "--no-mlflow-log", *common, "--out", str(a)]) == 3
    )
    bare = tmp_path / "bare.csv"
    pd.read_csv(a / "points.csv")[["N", "D", "loss", "run_id", "model", "step"]].to_csv(bare, index=False)
    k = ["--flops-per-param-datum", str(K)]
    b, c = tmp_path / "b", tmp_path / "c"
    rc = main(["--csv", str(bare), *k, *common, "--out", str(b)])
    assert pd.read_csv(b / "points.csv")["C"].to_numpy() == pytest.approx(pd.read_csv(a / "points.csv")["C"])
    assert "all but --flops-per-param-datum" in (b / "report.md").read_text()
    assert main(["--csv", str(b / "points.csv"), *k, *common, "--out", str(c)]) == 2
    with warnings.catch_warnings():  # its empty text columns (schedule, ...) are not float NaN to fill
        warnings.filterwarnings("error", message=".*fill value.*")
        assert main(["--csv", str(b / "points.csv"), *common, "--out", str(c)]) == rc
    rb, rc_ = (json.loads((d / "results.json").read_text()) for d in (b, c))
    for key in ("E", "A", "B", "alpha", "beta", "a", "flops_per_param_datum"):
        assert rc_[key] == pytest.approx(rb[key], rel=1e-9), key
