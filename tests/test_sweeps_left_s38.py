"""Session 38: what session 37 left in the launcher, and an impatient user's session on the real cluster.
Each test failed on the code before its fix.

The local tests need nothing more; the ones marked slurm run on the single-node CI cluster (`bash
slurm/slurm-ci.sh up`, accounting on) and are skipped with a reason where it is down (tests/conftest.py).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import submitit
from _sweep_specs import (
    fake_sweep_yaml,
    fake_trainer_spec,
    launch_until_step,
    runs_by_cell,
    states_of,
    wait_for,
)
from mlflow.tracking import MlflowClient

from sweeps import launch as launch_cli
from sweeps.executor import SLURM_ALIVE, squeue_states
from sweeps.grid import ExecutorSpec, SweepSpec, expand, load_spec
from sweeps.runner import launch, sweep_dir


def local_cell(tmp_path: Path, uri: str, name: str, **train) -> SweepSpec:
    """One S cell of the fake trainer (8 steps at 0.1 s) on the local executor."""
    spec = fake_trainer_spec(
        tmp_path, uri, name=name, experiment=name, budgets=[2.6e9], train={"step_s": 0.1, **train},
        executor=ExecutorSpec(name="local"),
    )  # fmt: skip
    return spec.replace(families=["S"])


def interrupted_cell(spec: SweepSpec, uri: str, tmp_path: Path):
    """Run ``spec``'s one cell until step 3, SIGKILL its trainer (as the OOM killer would): the cell is
    interrupted with trained steps in its run. The trainer waits before its last step until the file
    ``spec.train["hold_file"]`` exists, made here once it is killed (8 steps of 0.1 s left the test half
    a second to read the step and kill it). Returns (cell, its state)."""
    (cell,) = expand(spec)
    try:
        t, _, run_dir = launch_until_step(spec, Path(spec.train["progress_file"]), step=3)
        os.kill(int((run_dir / "pid").read_text()), signal.SIGKILL)
    finally:
        Path(spec.train["hold_file"]).touch()  # a relaunch's trainer trains on to the end
    t.join(60)
    st = states_of(spec, uri)[cell.cell_id]
    assert st.state == "interrupted" and st.loss is not None
    return cell, st


def test_a_relaunch_refuses_a_cell_whose_folder_was_deleted_and_its_advice_works(job_env, tmp_path):
    """An interrupted cell whose run folder was deleted (its checkpoints with it) was resubmitted into its
    run and trained again from step 0 there, silently: the run held two histories of steps 1..N. Now
    the relaunch (and its dry run) refuses, naming the folder, the run and both ways out; following the
    second (delete the run) starts the cell over in one new run. Failed before the fix: the relaunch
    submitted the cell into the old run."""
    hold = {"progress_file": str(tmp_path / "progress"), "hold_file": str(tmp_path / "release")}
    spec = local_cell(tmp_path, job_env, "gone", **hold)
    cell, st = interrupted_cell(spec, job_env, tmp_path)
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    shutil.rmtree(run_dir)
    with pytest.raises(ValueError) as e:
        launch(spec)
    msg = str(e.value)
    assert str(run_dir) in msg and st.run_id in msg and "step 0" in msg and "put the folder back" in msg
    assert not run_dir.exists()  # nothing submitted: the folder was not made again
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert (run.info.run_id, run.data.tags["attempts"]) == (st.run_id, "1")
    MlflowClient(job_env).delete_run(st.run_id)  # what `mlflow runs delete --run-id` does
    res = launch(spec, poll_s=0.2)
    assert res.submitted == [cell.cell_id] and res.errors == {}
    (new,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]  # the deleted run is in the trash
    assert new.info.run_id != st.run_id and new.info.status == "FINISHED"
    assert new.data.tags["attempts"] == "1" and res.results[cell.cell_id]["starts"] == 1


def test_status_says_how_to_resume_interrupted_cells_and_those_out_of_retries(job_env, tmp_path, capsys):
    """`status` showed an interrupted (or failed) cell without a word on what to do; a launch says
    "relaunch the same command to retry them". Now status says so, and, for cells out of retries, the
    --max-retries that tries them again. Failed before the fix: no such lines."""
    hold = {"progress_file": str(tmp_path / "progress"), "hold_file": str(tmp_path / "release")}
    spec = local_cell(tmp_path, job_env, "advice", **hold)
    cell, st = interrupted_cell(spec, job_env, tmp_path)
    capsys.readouterr()
    launch_cli.show_status(spec)
    out = capsys.readouterr().out
    assert f"1 failed or interrupted ({cell.cell_id}): relaunch the same command that launched" in out, out
    assert "out of retries" not in out
    launch_cli.show_status(spec.replace(executor={"max_retries": 0}))
    out = capsys.readouterr().out
    assert f"1 out of retries ({cell.cell_id}): relaunch with --max-retries 1 or more" in out, out
    assert "failed or interrupted" not in out  # a relaunch as it is would not resume it


def controller_gone(folder: Path) -> str:
    """A folder of ``sacct``, ``squeue`` and ``sinfo`` that fail as they do once the controller is gone
    for good; put it first on PATH."""
    folder.mkdir()
    for cmd in ("sacct", "squeue", "sinfo"):
        exe = folder / cmd
        exe.write_text(f"#!/bin/sh\necho '{cmd}: error: Unable to contact slurm controller' >&2\nexit 1\n")
        exe.chmod(0o755)
    return str(folder)


def slurm_yaml(tmp_path: Path, name: str, step_s: float, hold: Path | None = None) -> Path:
    """One S cell on SLURM, ``step_s`` a step; with ``hold``, each cell waits before its last step until
    the file ``hold`` exists or a signal comes (the test's handshake: a cell of 9 steps at 0.5 s could
    finish before the test acted on it on a loaded machine)."""
    cfg = tmp_path / f"{name}.yaml"
    held = f", hold_file: '{hold}'" if hold else ""
    text = fake_sweep_yaml(name, f"{name}-{tmp_path.name}").replace("step_s: 0.0", f"step_s: {step_s}{held}")
    cfg.write_text(text + "executor: {name: slurm, timeout_min: 10, mem_gb: 1}\n")
    return cfg


@pytest.mark.slurm
def test_a_held_job_is_shown_held_with_the_command_that_releases_it(job_env, tmp_path, capsys):
    """A cell whose job is held (`scontrol hold`, here `sbatch --hold`) was shown `queued`, as if it
    would start in its turn; it never does. Now it is `held`, and status names `scontrol release JOB`;
    a relaunch leaves it alone. Failed before the fix: `queued`, no release line."""
    cfg = slurm_yaml(tmp_path, "held", 0.0)
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    argv = ["-c", str(cfg), "--tracking-uri", job_env]
    assert launch_cli.main([*argv, "--sbatch=--hold", "--no-wait"]) == 0
    (cell,) = expand(spec)
    job = states_of(spec, job_env)[cell.cell_id].job_id
    try:
        assert states_of(spec, job_env)[cell.cell_id].state == "held"
        capsys.readouterr()
        assert launch_cli.main(["status", *argv]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"^{cell.cell_id} .* held .* {job} ", out, re.M), out
        assert f"{cell.cell_id} (job {job}): SLURM holds the job" in out
        assert f"`scontrol release {job}`" in out, out
        assert launch(spec, wait=False).submitted == []
    finally:
        subprocess.run(["scancel", job.split("_")[0]], check=False)


@pytest.mark.slurm
def test_a_relaunch_names_an_earlier_cell_that_ended_meanwhile_by_its_state(job_env, tmp_path, capsys):
    """A waiting relaunch that found an earlier launch's cell running, which was then cancelled, ended
    with "1 cell(s) still running (S-2-3e9)", the fit, and exit 0. Now it names that cell interrupted,
    says to relaunch, and exits 1 (a cell is not finished). Failed before the fix: "still running"."""
    release = tmp_path / "release"  # made once the first cell's job has ended: the new cell may finish
    cfg = slurm_yaml(tmp_path, "ended", 0.5, hold=release)
    argv = ["-c", str(cfg), "--tracking-uri", job_env]
    assert launch_cli.main([*argv, "--no-wait"]) == 0
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    first = states_of(spec, job_env)["S-2-3e9"].job_id
    grown = spec.replace(budgets=[3e9, 6e9])
    box: dict = {}
    t = threading.Thread(
        target=lambda: box.setdefault("rc", launch_cli.main([*argv, "--budgets", "3e9,6e9"]))
    )
    try:
        wait_for(lambda: states_of(spec, job_env)["S-2-3e9"].state == "running", "the first cell to run", 60)
        t.start()
        wait_for(
            lambda: states_of(grown, job_env)["S-2-6e9"].run_id is not None, "the relaunch's submission", 60
        )
        subprocess.run(["scancel", first], check=True)
        wait_for(
            lambda: squeue_states([first]).get(first) not in SLURM_ALIVE, "the first cell's job to end", 60
        )
    finally:
        release.touch()
    t.join(120)
    assert not t.is_alive() and box["rc"] == 1
    captured = capsys.readouterr()
    assert "still running (S-2-3e9" not in captured.out, captured.out
    assert "1 cell(s) of an earlier launch ended unfinished (S-2-3e9: interrupted)" in captured.err
    assert states_of(grown, job_env)["S-2-6e9"].state == "finished"


@pytest.mark.slurm
def test_a_sweep_whose_cluster_is_gone_finishes_locally_when_the_user_says_so(
    job_env, tmp_path, monkeypatch, capsys, caplog
):
    """A SLURM sweep whose controller is gone for good: its cells read `unknown`, and a launch refuses
    (rightly: the jobs might still run), with no way out but hand-editing MLflow. Now the refusal names
    --slurm-jobs-gone, which takes those cells for interrupted, says so loudly, and resumes them (here
    on the local executor) in their own runs. Failed before the fix: the flag did not exist (exit 2)."""
    release = tmp_path / "release"  # made once the SLURM job has ended: the local resume may finish
    cfg = slurm_yaml(tmp_path, "gone", 0.5, hold=release)
    argv = ["-c", str(cfg), "--tracking-uri", job_env]
    assert launch_cli.main([*argv, "--no-wait"]) == 0
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    (cell,) = expand(spec)
    try:
        wait_for(lambda: states_of(spec, job_env)[cell.cell_id].loss is not None, "a trained step", 60)
        st = states_of(spec, job_env)[cell.cell_id]
        subprocess.run(["scancel", st.job_id], check=True)  # the job goes with its cluster
        wait_for(lambda: states_of(spec, job_env)[cell.cell_id].state == "interrupted", "the job to end", 60)
    finally:
        release.touch()
    monkeypatch.setenv("PATH", controller_gone(tmp_path / "gone"), prepend=os.pathsep)
    submitit.SlurmJob.watcher.clear()  # a fresh launcher: no sacct answer cached
    assert states_of(spec, job_env)[cell.cell_id].state == "unknown"
    local = [*argv, "--executor", "local"]
    capsys.readouterr()
    assert launch_cli.main(local) == 2
    assert "add --slurm-jobs-gone" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="sweeps.runner"):
        assert launch_cli.main([*local, "--slurm-jobs-gone"]) == 0
    assert "--slurm-jobs-gone: the SLURM jobs of 1 cell(s) (S-2-3e9) are taken for over" in caplog.text
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert run.info.run_id == st.run_id and run.info.status == "FINISHED"
    assert (run.data.tags["executor"], run.data.tags["attempts"]) == ("local", "2")
