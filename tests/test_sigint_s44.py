"""Session 44 (sigint): SIGINT, SIGTERM or SIGHUP sent to the launcher alone (`kill -INT`, a scheduler, a
supervisor, `timeout`, a parent script, a dropped ssh session), while its local cells train. A terminal's
Ctrl-C reaches the launcher and its jobs (one process group); a signal to the launcher alone reached
only the launcher, which left its local jobs training: their runs stayed RUNNING and the launcher
exited 130 (SIGINT), or died of SIGTERM (-15) or SIGHUP (-1). Now the launcher takes each as its Ctrl-C
and passes a Ctrl-C on to its jobs' trainers, which checkpoint and end their runs themselves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _sweep_specs import (
    assert_relaunch_resumes,
    fake_trainer_spec,
    pid_alive,
    states_of,
    step_of,
    wait_for,
    write_sweep_config,
)

from sweeps.grid import ExecutorSpec, expand, load_spec
from sweeps.runner import sweep_dir

REPO = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path, uri: str, warm: bool, sigint: str, budget: float):
    """One S cell through the stand-in trainer, 0.05 s a step, its Ctrl-C taken as ``sigint`` says
    (`test_sweeps_fake_trainer`), written as a sweep YAML: (the spec the YAML loads to, the cell, the
    YAML, the trainer's progress and events files)."""
    progress, events = tmp_path / "progress", tmp_path / "events"
    train = {"step_s": 0.05, "progress_file": str(progress), "events_file": str(events), "sigint": sigint}
    spec = fake_trainer_spec(tmp_path, uri, name="si", experiment="sigint", budgets=[budget], train=train,
                             executor=ExecutorSpec(name="local")).replace(families=["S"])  # fmt: skip
    cfg = write_sweep_config(spec, tmp_path / "sweep.yaml", families=["S"], local_warm=warm)
    spec = load_spec(cfg)
    (cell,) = expand(spec)
    return spec, cell, cfg, progress, events


def _signals_default() -> None:
    """SIGINT and SIGHUP as by default in the launcher: not inherited as ignored from the test runner
    (pytest-xdist's workers, or a CI run under ``nohup``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _nohup() -> None:
    """As ``nohup``: SIGHUP ignored, which the launcher and its jobs inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _launch_then_signal(cfg: Path, progress: Path, run_dir: Path, signum: int, tmp_path: Path,
                        preexec=_signals_default):  # fmt: skip
    """``sweeps/launch.py -c cfg`` in its own session (no terminal: a signal reaches what it is sent to
    alone), ``signum`` sent to the launcher alone once the cell has trained 3 steps. Returns (the
    launcher, the trainer's pid, the launcher's stderr file). The caller waits for the launcher."""
    cmd = [sys.executable, str(REPO / "sweeps" / "launch.py"), "-c", str(cfg), "--poll", "0.2"]
    err = tmp_path / "launcher.err"
    # output to files, not pipes: a plain job's processes inherit them and outlive a launcher that
    # leaves them training (before the fix), so a pipe would not close when the launcher exits
    with open(tmp_path / "launcher.out", "w") as out, open(err, "w") as errf:
        proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=preexec, stdout=out,
                                stderr=errf)  # fmt: skip
    wait_for(lambda: step_of(progress) >= 3 or proc.poll() is not None, "the cell's third step", 60)
    assert proc.poll() is None, err.read_text()
    trainer = int((run_dir / "pid").read_text())
    os.kill(proc.pid, signum)
    return proc, trainer, err


@pytest.mark.parametrize(
    ("signum", "warm"),
    [(signal.SIGINT, False), (signal.SIGTERM, True), (signal.SIGHUP, False)],
    ids=["int-plain", "term-warm", "hup-plain"],
)
def test_cli_signal_to_the_launcher_alone_stops_its_local_cells_as_its_ctrl_c(
    job_env, tmp_path, signum, warm
):
    """Before: SIGINT left the cell training and its run RUNNING (the launcher waited 10 s for a job that
    never got the Ctrl-C, then exited 130); SIGTERM and SIGHUP killed the launcher at once (-15, -1), the
    cell training on. Now the trainer gets a Ctrl-C (once) within a step or two, writes its checkpoint and
    ends its run KILLED, status=interrupted, itself (the launcher ends no run twice); the launcher counts
    the submission as an interrupt, not a try, says so and exits 128 + the signal; no process of the job
    is left; and the relaunch resumes the cell from its checkpoint into the same run (checked for one)."""
    from mlflow.tracking import MlflowClient

    spec, cell, cfg, progress, events = _sweep(tmp_path, job_env, warm, "checkpoint", budget=3e10)
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    states_of(spec, job_env)  # the session's store made here first: two processes creating it collide
    proc, trainer, err = _launch_then_signal(cfg, progress, run_dir, signum, tmp_path)
    try:
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    said = err.read_text()
    assert proc.returncode == 128 + signum, said
    wait_for(lambda: not pid_alive(trainer), "the cell's trainer to be gone", 10)
    reached = json.loads((run_dir / "checkpoint.json").read_text())["step"]
    assert 3 <= reached < cell.steps, said  # stopped at a step boundary, checkpointed (before: trained on)
    name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
    assert f"\ninterrupted{name}: SLURM jobs keep running; local jobs get the Ctrl-C" in said, said
    assert [ln.split()[1] for ln in events.read_text().splitlines()] == ["start", "end"]  # by the trainer
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = MlflowClient(job_env).get_run(run_id)
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "interrupted"), run.data.tags
    assert (run.data.tags["interrupts"], run.data.tags["attempts"]) == ("1", "1")
    st = states_of(spec, job_env)[cell.cell_id]
    assert (st.state, st.tries) == ("interrupted", 0)
    if warm:  # its warm worker ends once its child has: nothing of the launch is left
        wait_for(lambda: not pid_alive(int(st.job_id.split("_")[0])), "the warm worker to be gone", 10)
    else:  # the job's shell and submitit's controller end once the trainer has
        wait_for(lambda: not pid_alive(int(st.job_id)), "the job's shell to be gone", 10)
    if signum == signal.SIGINT:  # a relaunch resubmits what `plan` says (interrupted, no try): run once
        assert_relaunch_resumes(spec, job_env, cell, run_id)


def test_cli_sigterm_twice_kills_a_cell_slow_to_stop_and_exits_143(job_env, tmp_path):
    """The second signal is any of the three: a SIGTERM while the launcher waits for a trainer slow to
    take the first (here it ignores SIGINT) kills the job's processes at once and ends its run KILLED,
    status=interrupted, exit 143. Before: the first SIGTERM killed the launcher, the cell trained on."""
    from mlflow.tracking import MlflowClient

    spec, cell, cfg, progress, _ = _sweep(tmp_path, job_env, False, "ignore", budget=3e11)
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    states_of(spec, job_env)
    proc, trainer, err = _launch_then_signal(cfg, progress, run_dir, signal.SIGTERM, tmp_path)
    client = MlflowClient(job_env)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    try:
        wait_for(lambda: client.get_run(run_id).data.tags.get("interrupts") == "1" or proc.poll() is not None,
                 "the interrupt's record", 30)  # fmt: skip
        assert pid_alive(trainer) and proc.poll() is None, err.read_text()
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    said = err.read_text()
    assert proc.returncode == 143, said
    assert (
        "killed (SIGKILL) on a second SIGTERM, the MLflow runs their trainers left open ended KILLED" in said
    )
    assert took < 20, (took, said)  # the launcher's wait for the job is 10 s
    wait_for(lambda: not pid_alive(trainer), "the cell's trainer to be gone", 5)
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "interrupted"), run.data.tags
    assert states_of(spec, job_env)[cell.cell_id].tries == 0


def test_cli_a_launcher_started_under_nohup_keeps_ignoring_sighup(job_env, tmp_path):
    """``nohup python sweeps/launch.py ...``: the user asked that a closed terminal not stop the launch.
    The launcher's SIGHUP-as-Ctrl-C (session 44) replaced the inherited SIG_IGN, so the hangup stopped
    the launch (exit 129, the cell interrupted); it now leaves an ignored SIGHUP ignored, and the cell
    trains to its end (exit 0)."""
    spec, cell, cfg, progress, _ = _sweep(tmp_path, job_env, False, "checkpoint", budget=3e10)
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    states_of(spec, job_env)
    proc, _, err = _launch_then_signal(cfg, progress, run_dir, signal.SIGHUP, tmp_path, preexec=_nohup)
    try:
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err.read_text()
    assert states_of(spec, job_env)[cell.cell_id].state == "finished"
