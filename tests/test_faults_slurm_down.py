"""A cell on a SLURM node set DOWN is requeued and finishes (the real single-node cluster).

The node of a running cell is set DOWN after the cell's first checkpoint: slurmctld requeues the job
(``--requeue``) and slurmd stops it with SIGTERM; the trainer checkpoints and returns "preempted",
and the sweep's job wrapper sees that SLURM has requeued the job, so it leaves the result to the
next attempt (`sweeps.executor.slurm_requeued`). slurmd still answers, so the node is back in service
at once (``ReturnToService=2``). On one node a copy started while the stopped job's ``slurmstepd``
still ends is refused ("already running"), which drains the node (docs/testing-faults.md), so a
maintenance reservation on the node, made before the DOWN, keeps the requeued job pending until that
``slurmstepd`` is gone; the test then deletes it. On a real cluster another node would take the job.
The launcher, waiting all along, must report the cell finished from one MLflow run that logged each
step once.
"""

from __future__ import annotations

import getpass
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _sweep_specs import tiny_real_spec
from mlflow.tracking import MlflowClient

from sweeps.grid import ExecutorSpec, expand
from sweeps.runner import launch, sweep_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NODE = "localhost"
RESERVATION = "ditscale-fault-test"


def _scontrol(*args: str) -> str:
    out = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _job_fields(job: str) -> dict[str, str]:
    return dict(f.split("=", 1) for f in _scontrol("-o", "show", "job", job).split() if "=" in f)


def _node_state() -> str:
    """The node's state as scontrol shows it, e.g. IDLE, MIXED, DOWN+NOT_RESPONDING, IDLE+DRAIN."""
    return _scontrol("-o", "show", "node", NODE).split("State=", 1)[1].split()[0]


def _slurmstepds() -> list[int]:
    """Pids of slurmstepd processes on this machine (by executable name, which its title does not
    change); this test is the only SLURM user while it runs."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "slurmstepd":
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    return pids


def _reserve_node() -> None:
    """A maintenance reservation on the node from now, for this user only: the running job goes on
    (IGNORE_JOBS), and no job that does not ask for the reservation starts on the node until it is
    deleted. It ends by itself after 10 min, should the test be killed before its cleanup."""
    _scontrol(
        "create", "reservation", f"ReservationName={RESERVATION}", f"Nodes={NODE}", "StartTime=now",
        "Duration=10", f"Users={getpass.getuser()}", "Flags=MAINT,IGNORE_JOBS",
    )  # fmt: skip


def _restore_node(job: str, reserved: bool) -> None:
    """Cleanup that runs even when the test failed. A reservation still there means the test failed
    before the old step was gone: cancel its job (so it cannot start beside that step), delete the
    reservation, and RESUME a node left DOWN or drained. Neither call failing hides the test's error."""
    if reserved:
        if job:
            subprocess.run(["scancel", job], capture_output=True, timeout=30)
        subprocess.run(
            ["scontrol", "delete", f"ReservationName={RESERVATION}"], capture_output=True, timeout=30
        )
    state = _node_state()
    if "DOWN" in state or "DRAIN" in state:
        _scontrol("update", f"NodeName={NODE}", "State=RESUME")


def _wait(what: str, cond, timeout_s: float, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_cell_on_a_node_set_down_is_requeued_and_finishes(job_env, tmp_path):
    spec = tiny_real_spec(
        tmp_path, job_env, "down", experiment="faults-down", budget=3e10,
        train={"log_every": 20, "checkpoint.every": 40},
        executor=ExecutorSpec(name="slurm", timeout_min=20, mem_gb=2, signal_delay_s=30),
    )  # fmt: skip
    (cell,) = expand(spec)
    assert cell.steps > 2000  # long enough to be stopped midway
    latest = sweep_dir(spec) / "cells" / cell.cell_id / "checkpoints" / "latest.json"
    box: dict = {}
    launcher = threading.Thread(target=lambda: box.update(res=launch(spec, poll_s=1.0)), daemon=True)
    launcher.start()
    job, reserved = "", False
    try:
        job = _wait(
            "the job's id",
            lambda: subprocess.run(
                ["squeue", "-h", "-n", f"ditscale-{spec.name}", "-o", "%A"], capture_output=True, text=True
            ).stdout.split(),
            240,
        )[0]
        _wait("the cell's first checkpoint", latest.exists, 240, poll_s=0.2)
        assert _job_fields(job)["JobState"] == "RUNNING"
        # slurmd still answers, so the node returns to service at once (ReturnToService=2), and the
        # requeued job could start after cred_expire=5 s; the reservation keeps it pending until the
        # old step is gone, however late this test looks
        reserved = True
        _reserve_node()
        _scontrol("update", f"NodeName={NODE}", "State=DOWN", "Reason=ditscale-fault-test")
        _wait("the requeue", lambda: int(_job_fields(job).get("Restarts", "0")) >= 1, 60)
        _wait("the stopped job's slurmstepd to exit", lambda: not _slurmstepds(), 120)
        assert _job_fields(job)["JobState"] in ("PENDING", "REQUEUED")
        _scontrol("delete", f"ReservationName={RESERVATION}")
        reserved = False
    finally:
        _restore_node(job, reserved)
    launcher.join(timeout=600)
    assert not launcher.is_alive(), "the launcher still waits 10 min after the node came back"
    res = box["res"]
    assert res.errors == {}, res.errors
    assert res.results[cell.cell_id]["step"] == cell.steps
    # the result pickle is written a moment before SLURM marks the job COMPLETED
    _wait("the job to complete", lambda: _job_fields(job)["JobState"] == "COMPLETED", 60)
    assert _job_fields(job)["Restarts"] == "1"
    client = MlflowClient(job_env)
    exp = client.get_experiment_by_name(spec.experiment)
    (run,) = client.search_runs([exp.experiment_id], f"tags.sweep = '{spec.name}'")
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(20, cell.steps + 1, 20)) + ([cell.steps] if cell.steps % 20 else [])
    # back in service; waited for, not read once: the node may still finish the job's cleanup (COMPLETING)
    # a moment after the job reads COMPLETED. A node drained by a refused start ("already running")
    # stays DRAIN, so this still fails then.
    _wait("the node IDLE or MIXED", lambda: _node_state() in ("IDLE", "MIXED"), 60)
