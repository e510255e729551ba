"""``--resume OTHER --out NEW``: a fork. The training state of another run folder's checkpoint continues
exactly, in a new MLflow run tagged with where it came from; the other folder's run is left alone.
A checkpoint of ``--out`` itself (auto, or its path) still continues that folder's run."""

from __future__ import annotations

import uuid

import pytest
from _train_helpers import one_thread, tiny_config
from mlflow import MlflowClient
from test_resume_final_checks import TINY, _points, _same_state

from dit_core.checkpoint import load_checkpoint
from dit_core.configio import ConfigError
from dit_core.tracking import RESUMED_FROM_RUN_TAG, RESUMED_FROM_STEP_TAG, RESUMED_FROM_TAG
from dit_core.train import train
from dit_core.trainer.cli import main as train_main


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _cfg(out, experiment: str, **extra):
    opts = {"tracking.enabled": True, "tracking.experiment": experiment, "checkpoint.every": 2,
            "eval.val_every": 3, **extra}  # fmt: skip
    return tiny_config(out, steps=6, batch=4, **{**TINY, **opts})


def _snapshot(client, run_id: str) -> tuple:
    run = client.get_run(run_id)
    return (
        run.info.status,
        run.info.end_time,
        dict(run.data.tags),
        dict(run.data.params),
        _points(client, run_id),
    )


def test_resume_from_another_folder_forks_a_new_run_and_leaves_the_other_alone(tmp_path):
    """A stops at step 4 (its run KILLED). B resumes A's step-4 checkpoint: a new run, tagged with
    A's checkpoint, run and step, whose metrics start at step 5; A's run keeps its status, tags and
    metrics. B, stopped at 5 and relaunched (auto), then resumed from its own checkpoint's path, stays
    in its own run, and ends in bitwise the training state of an uninterrupted run C."""
    client = MlflowClient()
    experiment = f"fork-{uuid.uuid4().hex[:8]}"
    a = train(_cfg(tmp_path / "a", experiment), stop_at_step=4)
    assert a.status == "preempted" and a.run_id
    before = _snapshot(client, a.run_id)
    assert before[0] == "KILLED" and before[2]["status"] == "preempted"

    cfg_b = _cfg(tmp_path / "b", experiment)
    a4 = tmp_path / "a" / "checkpoints" / "step_0000004.pt"
    b1 = train(cfg_b, resume=str(a4), stop_at_step=5)
    assert b1.status == "preempted" and b1.run_id and b1.run_id != a.run_id
    assert load_checkpoint(b1.checkpoint)["mlflow_run_id"] == b1.run_id
    assert (tmp_path / "b" / "mlflow_run_id").read_text().strip() == b1.run_id
    assert _snapshot(client, a.run_id) == before  # A: the same status, tags, params and metrics

    # forking A again into B, which has checkpoints of its own now: refused, nothing written
    b_files = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    exp_id = client.get_run(a.run_id).info.experiment_id
    n_runs = len(client.search_runs([exp_id]))
    with pytest.raises(ConfigError, match=r"--resume: .*another run folder's checkpoint.*--resume auto"):
        train(cfg_b, resume=str(a4))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == b_files
    assert len(client.search_runs([exp_id])) == n_runs

    b2 = train(cfg_b)  # auto: B's own checkpoint, B's own run
    assert (b2.status, b2.step, b2.run_id) == ("finished", 6, b1.run_id)
    again = train(cfg_b, resume=str(tmp_path / "b" / "checkpoints" / "step_0000006.pt"))  # a path in B
    assert (again.status, again.step, again.run_id) == ("finished", 6, b1.run_id)
    assert _snapshot(client, a.run_id) == before

    run = client.get_run(b1.run_id)
    assert (
        run.info.status == "FINISHED"
        and run.info.experiment_id == client.get_run(a.run_id).info.experiment_id
    )
    tags = run.data.tags
    assert tags[RESUMED_FROM_TAG] == str(a4.resolve()) and tags[RESUMED_FROM_RUN_TAG] == a.run_id
    assert tags[RESUMED_FROM_STEP_TAG] == "4" and "mlflow.parentRunId" not in tags
    points = _points(client, b1.run_id)
    assert [s for s, _ in points["train/loss"]] == [6] and [s for s, _ in points["val/loss"]] == [6]
    assert min(s for p in points.values() for s, _ in p) == 6  # nothing of A's steps 0-4

    c = train(_cfg(tmp_path / "c", experiment))  # uninterrupted
    _same_state(load_checkpoint(b2.checkpoint), load_checkpoint(c.checkpoint), "step 6")
    c_points = _points(client, c.run_id)
    for key in ("train/loss", "val/loss"):  # step 6 as the uninterrupted run logged it
        (step, value), (c_step, c_value) = points[key][0], c_points[key][-1]
        assert step == c_step == 6 and value == pytest.approx(c_value, rel=1e-6)


def test_a_fork_through_the_cli_and_a_fork_of_a_run_without_tracking(tmp_path, capsys):
    """``--resume OTHER_FOLDER`` on the command line forks too; a checkpoint without an MLflow run
    (tracking off) gives a run tagged with the checkpoint only; an explicit --run-id is honoured."""
    client = MlflowClient()
    experiment = f"fork-cli-{uuid.uuid4().hex[:8]}"
    a = train(_cfg(tmp_path / "a", experiment, **{"tracking.enabled": False}), stop_at_step=2)
    assert a.run_id is None
    flags = ["--model", "none", "--depth", "1", "--width", "16", "--heads", "2", "--patch-size", "2",
             "--data", "digits", "--image-size", "8", "--batch-size", "4", "--max-steps", "6",
             "--ckpt-every", "2", "--val-every", "3", "--val-examples", "8", "--log-every", "2",
             "--experiment", experiment]  # fmt: skip
    code = train_main([*flags, "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "a")])
    assert code == 0, capsys.readouterr().err
    run_id = (tmp_path / "b" / "mlflow_run_id").read_text().strip()
    tags = client.get_run(run_id).data.tags
    a2 = (tmp_path / "a" / "checkpoints" / "step_0000002.pt").resolve()
    assert tags[RESUMED_FROM_TAG] == str(a2) and RESUMED_FROM_RUN_TAG not in tags
    assert tags[RESUMED_FROM_STEP_TAG] == "2"

    # continuing a checkpoint in its own run under another --run-id is refused; a fork may take one
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    given = client.create_run(exp_id).info.run_id
    b6 = tmp_path / "b" / "checkpoints" / "step_0000006.pt"
    track = {"tracking.run_id": given}
    with pytest.raises(ConfigError, match=f"belongs to MLflow run {run_id}"):
        train(_cfg(tmp_path / "b", experiment, **track), resume=str(b6))
    # a fork logging into the very run it forks from would mix the two lineages' points: refused
    with pytest.raises(
        ConfigError, match=f"--run-id {run_id} is the MLflow run of .* which this resume forks"
    ):
        train(_cfg(tmp_path / "d", experiment, **{"tracking.run_id": run_id}), resume=str(b6))
    assert not (tmp_path / "d" / "checkpoints").exists()
    forked = train(_cfg(tmp_path / "c", experiment, **track), resume=str(b6))
    assert forked.run_id == given and client.get_run(given).data.tags[RESUMED_FROM_RUN_TAG] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_fork_never_ends_the_run_it_came_from(tmp_path):
    """A fork into a folder whose mlflow_run_id names the other run (written there by a trainer before
    forks existed) starts its own run and leaves that RUNNING one alone: its trainer may be at work."""
    client = MlflowClient()
    experiment = f"fork-spare-{uuid.uuid4().hex[:8]}"
    a = train(_cfg(tmp_path / "a", experiment), stop_at_step=2)
    client.update_run(a.run_id, status="RUNNING")  # as while A's trainer runs
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mlflow_run_id").write_text(a.run_id + "\n")
    b = train(_cfg(tmp_path / "b", experiment), resume=str(tmp_path / "a"), stop_at_step=3)
    assert b.run_id != a.run_id and (tmp_path / "b" / "mlflow_run_id").read_text().strip() == b.run_id
    run = client.get_run(a.run_id)
    assert run.info.status == "RUNNING" and run.data.tags["status"] == "preempted"


@pytest.mark.parametrize("given", ["folder", "file"])
def test_a_fork_into_a_folder_with_checkpoints_is_refused_given_a_folder_or_a_file(tmp_path, given):
    """``--resume OTHER_FOLDER`` resolves to that folder's newest checkpoint and, like that file, is
    refused into an --out with checkpoints of its own: one folder never mixes two lineages."""
    off = {"tracking.enabled": False}
    train(_cfg(tmp_path / "a", "unused", **off), stop_at_step=4)
    train(_cfg(tmp_path / "b", "unused", **off), stop_at_step=2)
    other = tmp_path / "a" if given == "folder" else tmp_path / "a" / "checkpoints" / "step_0000004.pt"
    before = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="already holds checkpoints of its own"):
        train(_cfg(tmp_path / "b", "unused", **off), resume=str(other))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == before
    # its own folder, given as a path, still continues its own run
    assert train(_cfg(tmp_path / "b", "unused", **off), resume=str(tmp_path / "b")).step == 6
