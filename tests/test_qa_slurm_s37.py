"""Session 37's QA pass over sweeps on a real SLURM cluster. Each test failed on the code before its fix.

On the single-node CI cluster (`bash slurm/slurm-ci.sh up`, accounting on); skipped with a reason where
it is down (tests/conftest.py), like tests/test_slurm_sweeps.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import submitit
from _sweep_specs import fake_sweep_yaml, fake_trainer_spec, runs_by_cell, states_of, wait_for

from sweeps import launch as launch_cli
from sweeps import runner
from sweeps.grid import ExecutorSpec, SweepSpec, expand, load_spec
from sweeps.runner import launch, sweep_dir

pytestmark = pytest.mark.slurm


def one_cell_spec(tmp_path: Path, uri: str, name: str, **train) -> SweepSpec:
    """One S cell (4 steps of the fake trainer) as a SLURM job."""
    spec = fake_trainer_spec(
        tmp_path, uri, name=name, experiment=name, budgets=[1.3e9], train=train,
        executor=ExecutorSpec(name="slurm", timeout_min=10, mem_gb=1, signal_delay_s=30),
    )  # fmt: skip
    return spec.replace(families=["S"])


def controller_down(folder: Path) -> str:
    """A folder of ``sacct``, ``squeue`` and ``sinfo`` that fail as they do while slurmctld and slurmdbd
    are unreachable; put it first on PATH."""
    folder.mkdir()
    for cmd in ("sacct", "squeue", "sinfo"):
        exe = folder / cmd
        said = f"{cmd}: error: Unable to contact slurm controller (connect failure)"
        exe.write_text(f"#!/bin/sh\necho '{said}' >&2\nexit 1\n")
        exe.chmod(0o755)
    return str(folder)


def test_a_running_cell_is_not_resubmitted_while_slurm_does_not_answer(
    job_env, tmp_path, monkeypatch, capsys
):
    """`sacct` and `squeue` both failing (controller unreachable) said nothing of the job, but the cell
    was shown `interrupted`, and a relaunch with `--executor auto` (no `sinfo`: local) started a second
    job of it beside the SLURM one, in the same folder and run. Now the cell is `unknown` in `status`,
    with a line saying why, and a launch refuses, submitting nothing. Failed before the fix: the cell
    was `interrupted` and the relaunch submitted it."""
    spec = one_cell_spec(tmp_path, job_env, "unreach", step_s=2.0)
    (cell,) = expand(spec)
    first = launch(spec, wait=False)
    job = first.job_ids[cell.cell_id]
    try:
        wait_for(lambda: states_of(spec, job_env)[cell.cell_id].state == "running", "the job to run", 60)
        monkeypatch.setenv("PATH", controller_down(tmp_path / "down"), prepend=os.pathsep)
        submitit.SlurmJob.watcher.clear()  # as in a fresh `status` process: no sacct answer cached
        assert states_of(spec, job_env)[cell.cell_id].state == "unknown"
        with pytest.raises(ValueError, match="SLURM does not answer .* nothing submitted"):
            launch(spec.replace(executor={"name": "auto"}), wait=False)
        assert launch_cli.show_status(spec)[cell.cell_id].state == "unknown"
        assert "look again once `squeue` answers" in capsys.readouterr().out
        (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
        assert run.data.tags["attempts"] == "1" and run.data.tags["job_id"] == job
    finally:
        subprocess.run(["scancel", job.split("_")[0]], check=False)


def test_a_cancelled_array_is_seen_over_at_once_and_named_cancelled(job_env, tmp_path, monkeypatch):
    """`scancel` of a whole array under a waiting launcher: submitit waits 15 s for each job's result
    file, one job after another, so the launcher took 15 s per cell to return (4 h for 1,000 cells),
    and said only "Job N (task: 0) with path .../N_0_result.pkl". Now the jobs' waits run side by side
    (`RESULT_GRACE_S`, 2 s here) and each error names the state and the relaunch. Failed before the fix:
    30 s for two cells, and no CANCELLED in the errors."""
    monkeypatch.setattr(runner, "RESULT_GRACE_S", 2.0, raising=False)
    release = tmp_path / "release"  # never made: the cells run until the scancel (B has 2 steps only)
    spec = one_cell_spec(tmp_path, job_env, "cancel", step_s=0.2, hold_file=str(release)).replace(
        families=["S", "B"], budgets=[2.6e9]
    )
    cells = [c.cell_id for c in expand(spec)]
    assert len(cells) == 2
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", launch(spec, poll_s=0.5)))
    t.start()
    try:
        wait_for(
            lambda: {s.state for s in states_of(spec, job_env).values()} == {"running"}, "both running", 60
        )
        array = states_of(spec, job_env)[cells[0]].job_id.split("_")[0]
        subprocess.run(["scancel", array], check=True)
        t0 = time.monotonic()
        t.join(60)
        took = time.monotonic() - t0
        print(f"the launcher returned {took:.1f} s after the scancel")
    finally:
        release.touch()
    assert not t.is_alive() and took < 20, f"the launcher took {took:.0f} s to see the cancelled array"
    res = box["r"]
    assert sorted(res.errors) == sorted(cells)
    for err in res.errors.values():
        assert "CANCELLED" in err and "relaunch the sweep to resume" in err, err
    assert {s.state for s in states_of(spec, job_env).values()} == {"interrupted"}


def kill_trainer(spec: SweepSpec, uri: str, cell_id: str) -> None:
    """SIGKILL the cell's trainer (as the OOM killer would) once it has logged a step; wait for its job
    to be over."""
    run_dir = sweep_dir(spec) / "cells" / cell_id
    wait_for(lambda: states_of(spec, uri)[cell_id].loss is not None, "a logged step", 60)
    os.kill(int((run_dir / "pid").read_text()), signal.SIGKILL)
    wait_for(lambda: states_of(spec, uri)[cell_id].state != "running", "the job to end", 60)


def test_a_run_killed_under_its_trainer_is_ended_by_the_relaunch_that_sees_it(job_env, tmp_path):
    """A trainer SIGKILLed on SLURM leaves its run RUNNING (tag status=running); a relaunch out of retries
    left it so for ever, in the MLflow UI and for the analysis. Now the relaunch that sees its job over
    ends it KILLED, tag status=killed, and a retry continues the same run. Failed before the fix: the run
    stayed RUNNING."""
    release = tmp_path / "release"  # made only on failure: the trainer waits before its last step
    spec = one_cell_spec(tmp_path, job_env, "killed", step_s=1.0, hold_file=str(release))
    (cell,) = expand(spec)
    launch(spec, wait=False)
    try:
        kill_trainer(spec, job_env, cell.cell_id)
    finally:
        release.touch()
    again = launch(spec.replace(executor={"max_retries": 0}), wait=False)
    assert again.submitted == [] and again.plan.exhausted == [cell.cell_id]
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "killed")
    assert states_of(spec, job_env)[cell.cell_id].state == "interrupted"


def test_a_run_killed_under_its_trainer_is_ended_by_the_launcher_waiting_on_it(job_env, tmp_path):
    """The same SIGKILL under a waiting launcher: it reported the cell failed but left its run RUNNING.
    Now it ends it KILLED, tag status=killed, with the job's error. Failed before the fix: RUNNING."""
    release = tmp_path / "release"  # made only on failure: the trainer waits before its last step
    spec = one_cell_spec(tmp_path, job_env, "killedw", step_s=1.0, hold_file=str(release))
    (cell,) = expand(spec)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", launch(spec, poll_s=0.5)))
    t.start()
    try:
        kill_trainer(spec, job_env, cell.cell_id)
    finally:
        release.touch()
    t.join(60)
    assert not t.is_alive() and list(box["r"].errors) == [cell.cell_id]
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "killed")
    assert run.data.tags["error"]


def test_a_relaunch_does_not_call_running_a_cell_that_finished_while_it_waited(
    job_env, tmp_path, capsys, monkeypatch
):
    """A waiting relaunch that found an earlier launch's cell running (here: a budget added to a sweep
    whose first cell still trains) ended with its status table showing that cell `finished` and, below,
    "1 cell(s) still running (S-2-3e9); watch with ...", then the fit. Now it names only cells still not
    finished, and says `next:` the fit when none is. Failed before the fix: the stale line."""
    cfg, release = tmp_path / "grow.yaml", tmp_path / "release"
    cfg.write_text(fake_sweep_yaml("grow", tmp_path.name))
    # the cells wait before their last step until the relaunch has planned (it then records the new job)
    argv = ["-c", str(cfg), "--executor", "slurm", "--tracking-uri", job_env, "--set", "step_s=0.3"]
    argv += ["--set", f"hold_file={release}"]
    assert launch_cli.main([*argv, "--no-wait"]) == 0
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    real = runner.record_submissions

    def release_then_record(uri, subs):
        release.touch()
        real(uri, subs)

    monkeypatch.setattr(runner, "record_submissions", release_then_record)
    try:
        wait_for(lambda: states_of(spec, job_env)["S-2-3e9"].state == "running", "the first cell to run", 60)
        capsys.readouterr()
        assert launch_cli.main([*argv, "--budgets", "3e9,6e9"]) == 0  # waits for S-2-6e9, twice as long
    finally:
        release.touch()
    out = capsys.readouterr().out
    assert "1 submitted, 0 already finished, 1 still running" in out
    assert "2 finished" in out and "still running (S-2-3e9)" not in out, out
    assert "\nnext: python analysis/fit_scaling.py" in out


def test_a_waiting_launcher_sees_a_cancelled_job_while_sacct_is_down(job_env, tmp_path, monkeypatch):
    """Accounting down (`sacct` fails, `squeue` answers): submitit calls every job UNKNOWN, never done,
    so a launcher waiting on a job cancelled before it wrote a result waited for ever, though `squeue`
    no longer listed it. Now a job that sacct does not show and squeue does not list is over: the cell
    fails with the relaunch hint. Failed before the fix: the launcher still waited after 40 s."""
    monkeypatch.setattr(runner, "RESULT_GRACE_S", 2.0, raising=False)
    down = controller_down(tmp_path / "down")
    for cmd in ("squeue", "sinfo"):  # only accounting is down
        (tmp_path / "down" / cmd).unlink()
    monkeypatch.setenv("PATH", down, prepend=os.pathsep)
    release = tmp_path / "release"  # never made: the cell runs until the scancel
    spec = one_cell_spec(tmp_path, job_env, "nosacct", step_s=2.0, hold_file=str(release))
    (cell,) = expand(spec)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", launch(spec, poll_s=0.5)), daemon=True)
    t.start()
    try:
        wait_for(lambda: states_of(spec, job_env)[cell.cell_id].state == "running", "the job to run", 60)
        job = states_of(spec, job_env)[cell.cell_id].job_id
        subprocess.run(["scancel", job], check=True)
        t.join(40)
    finally:
        release.touch()
    assert not t.is_alive(), "the launcher still waits on a job squeue no longer lists"
    err = box["r"].errors[cell.cell_id]
    assert f"job {job} ended" in err and "relaunch the sweep to resume" in err, err
