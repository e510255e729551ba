"""MLflow schema helpers against a real local sqlite store, and one run against a real `mlflow server`."""

from __future__ import annotations

import json
import re

import pytest
from _train_helpers import one_thread, tiny_config
from mlflow import MlflowClient

from dit_core.config import TrainConfig
from dit_core.tracking import RUN_ID_FILE, RUN_KEY_FILE, RunTracker, executor_tags, format_param


def test_format_param():
    assert [format_param(v) for v in (None, 3, 1e-4, True, "x", [1, 2], {"a": "b"}, (0.5,))] == [
        "", "3", "0.0001", "True", "x", "[1, 2]", '{"a": "b"}', "[0.5]"
    ]  # fmt: skip


def test_executor_tags_from_environment():
    assert executor_tags({}) == {}
    assert executor_tags({"SLURM_JOB_ID": "41"}) == {"executor": "slurm", "job_id": "41"}
    slurm_array = {"SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "1"}
    assert executor_tags(slurm_array)["job_id"] == "40_1"
    local = {"SUBMITIT_LOCAL_JOB_ID": "123", "SUBMITIT_EXECUTOR": "local"}
    assert executor_tags(local) == {"executor": "local", "job_id": "123"}


def test_tracker_creates_then_continues_the_same_run(tmp_path):
    exp = f"trk-{tmp_path.name}"  # the session's sqlite store (its tables are made once)
    t1 = RunTracker.start(uri=None, experiment=exp, run_name="r", tags={"sweep": "s1"}, out_dir=tmp_path)
    client = MlflowClient()
    assert client.get_run(t1.run_id).data.tags["status"] == "running"
    t1.log_params({"a": 1, "b": None})
    t1.log_metrics({"train/loss": 0.5}, step=3)
    t1.finish("preempted")
    run = client.get_run(t1.run_id)
    assert run.info.status == "KILLED" and run.data.tags["status"] == "preempted"
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == t1.run_id

    (tmp_path / RUN_KEY_FILE).unlink()  # the id file alone finds the run
    t2 = RunTracker.start(uri=None, experiment=exp, out_dir=tmp_path)  # id from <out>/mlflow_run_id
    assert t2.run_id == t1.run_id and t2.resumed
    run = client.get_run(t2.run_id)
    assert run.info.status == "RUNNING" and run.data.tags["status"] == "running"
    t2.log_params({"a": 1, "c": 2.5})  # "a" again with the same value is fine
    t2.log_params({"a": 7})  # a changed value is kept as first logged (and warned about)
    t2.finish("finished")
    run = client.get_run(t2.run_id)
    assert run.data.params == {"a": "1", "b": "", "c": "2.5"}
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.tags["sweep"] == "s1"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    with pytest.raises(ValueError, match="not in the tracking store"):
        RunTracker.start(uri=None, experiment=exp, run_id="0" * 32)


def test_train_logs_the_schema_and_params_rebuild_the_config(tmp_path, monkeypatch):
    """params -> `TrainConfig.from_flat_dict` gives the run's resolved config back; tags and
    executor job id; config.json artifact; a run id handed in by a sweep is used."""
    from dit_core.train import train

    monkeypatch.setenv("SLURM_JOB_ID", "777")
    client = MlflowClient()
    exp = client.get_experiment_by_name("test-train") or client.get_experiment(
        client.create_experiment("test-train")
    )
    pre = client.create_run(exp.experiment_id, run_name="pre-created by the sweep")
    extra = {"tracking.sweep": "sw1", "tracking.grid_cell": "S2-1e12", "tracking.run_id": pre.info.run_id}
    cfg = tiny_config(tmp_path, steps=5, **extra, **{"eval.val_every": 5})
    with one_thread():
        res = train(cfg)
    assert res.run_id == pre.info.run_id
    run = client.get_run(res.run_id)
    tags = run.data.tags
    assert (tags["sweep"], tags["grid_cell"], tags["status"]) == ("sw1", "S2-1e12", "finished")
    assert (tags["executor"], tags["job_id"]) == ("slurm", "777")
    params = run.data.params
    rebuilt = TrainConfig.from_flat_dict(params)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert rebuilt.to_flat_dict() == TrainConfig.from_flat_dict(_flatten(saved)).to_flat_dict()
    assert rebuilt.model.depth == 2 and rebuilt.budget.max_steps == 5 and rebuilt.tracking.sweep == "sw1"
    assert params["data.name"] == "digits" and int(params["model.params"]) > 0
    assert float(params["model.forward_gflops"]) > 0 and "world_size" in params
    keys = set(run.data.metrics)
    assert {
        "train/loss",
        "val/loss",
        "lr",
        "compute/train_flops",
        "data/images_seen",
        "perf/images_per_s",
    } <= keys
    val_steps = [m.step for m in client.get_metric_history(res.run_id, "val/loss")]
    assert val_steps == [0, 5]
    art = client.download_artifacts(res.run_id, "config.json", str(tmp_path / "dl"))
    with open(art) as f:
        assert json.load(f)["model"]["depth"] == 2


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "tags":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.server
def test_train_against_a_real_mlflow_server(tmp_path, mlflow_server, monkeypatch):
    """--tracking-uri http://127.0.0.1:PORT: metrics, params, artifacts go through the server;
    a preempted and resumed run stays one run on the server."""
    from dit_core.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(tmp_path, steps=10, **{"tracking.uri": mlflow_server, "tracking.experiment": "srv"})
    with one_thread():
        first = train(cfg, stop_at_step=5)
        second = train(cfg)
    assert first.run_id == second.run_id
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("srv").experiment_id])
    assert [r.info.run_id for r in runs] == [second.run_id]
    assert runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(second.run_id, "train/loss")) == [5, 10]
    assert [a.path for a in client.list_artifacts(second.run_id)] == ["config.json"]


def test_check_tracking_server_lets_creators_start_a_new_sqlite_store(tmp_path):
    """A trainer or launcher creates its store: a missing file, an empty file or an SQLite database
    without tables is a new store, and an MLflow store passes; a reader (``missing`` given) refuses
    the first three, since there are no runs to read."""
    import sqlite3

    from dit_core.tracking import check_sqlite_store, check_tracking_server

    (tmp_path / "empty.db").write_bytes(b"")
    with sqlite3.connect(tmp_path / "blank.db") as con:  # an SQLite database with no tables
        con.execute("PRAGMA user_version = 1")
    con.close()
    assert (tmp_path / "blank.db").read_bytes()[:6] == b"SQLite"
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # creates MLflow's tables
    for name in ("missing.db", "empty.db", "blank.db", "mlflow.db"):
        check_tracking_server(f"sqlite:///{tmp_path / name}", "hint")
    check_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}", missing="no store")
    for name, phrase in [
        ("missing.db", "no store"),
        ("empty.db", "is an empty file"),
        ("blank.db", "no tables"),
    ]:
        with pytest.raises(ValueError, match=re.escape(phrase)):
            check_sqlite_store(f"sqlite:///{tmp_path / name}", missing="no store")
    assert not (tmp_path / "missing.db").exists()


def test_a_new_experiments_artifacts_go_beside_the_sqlite_store_not_into_the_working_folder(
    tmp_path, monkeypatch
):
    """MLflow puts a new experiment's artifacts in ``./mlruns`` of the folder the command runs in, so
    ``--tracking-uri sqlite:////abs/store.db`` run from elsewhere scattered them there."""
    from dit_core.tracking import get_or_create_experiment

    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp_id = get_or_create_experiment(client, "exp")
    assert client.get_experiment(exp_id).artifact_location == (store / "mlruns").as_uri()
    run = client.create_run(exp_id)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert (store / "mlruns").is_dir() and not (work / "mlruns").exists()
