"""Session 47 (plainkill): a plain local job (``--no-warm``: submitit's local executor) stopped by a
terminal's Ctrl-C, and the tries of a run no launcher recorded.

A. A terminal's Ctrl-C (SIGINT to the launcher's process group) reached submitit's local controller too,
   which then SIGINTs its tasks and SIGKILLs them 1 s later: a trainer whose checkpoint and end of run
   took longer was killed half-way (no checkpoint of the step, its run ended by the launcher, not by
   itself). The controller now ignores SIGINT (the job's last set-up line, `IGNORE_CTRL_C`), the job
   takes SIGINT back (`CellJob`), and the Ctrl-C the launcher passes on waits until the job's process
   takes it (`_ctrl_c`): the trainer gets the same grace as a warm job's.

This module is also the stand-in trainer of test A (``trainer: test_plainkill_s47``): it notes what
happens, and after its Ctrl-C holds its "checkpoint" until the test releases it. Handshakes, and one
lower bound: the test waits 2 s (past the controller's 1 s) before the release."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from _sweep_specs import fake_trainer_spec, pid_alive, runs_by_cell, states_of, wait_for, write_sweep_config
from test_ctrlc_s45 import append_note, noting_guard
from test_sweeps_fake_trainer import WARM_IMPORTS  # noqa: F401 - what a warm worker imports for it
from test_sweeps_fake_trainer import TrainConfig as _FakeConfig

import sweeps.runner as runner
from sweeps.grid import ExecutorSpec, expand, load_spec
from sweeps.runner import sweep_dir

REPO = Path(__file__).resolve().parents[1]
SIGKILL_AFTER_S = 1.0  # submitit's controller: SIGINT to its tasks, SIGKILL ~1 s later (local.py)


# ------------------------------------------------------------------------ A: the stand-in trainer
@dataclass
class TrainConfig(_FakeConfig):
    record: str = ""  # what happens, a line each: training, SIGINT, holding, checkpoint, ended
    release: str = ""  # the checkpoint after the Ctrl-C is written once this file exists


def train(cfg: TrainConfig) -> dict:
    """Take the cell's run over, train until a Ctrl-C, then hold (a slow checkpoint) until ``cfg.release``
    exists, write the checkpoint and end the run KILLED ``status=interrupted``, as `dit_core.train` in a
    local job. Its echo window is long: the test is not about a second Ctrl-C."""
    from mlflow.tracking import MlflowClient

    rec, out = Path(cfg.record), Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(f"{rec}.pid").write_text(str(os.getpid()))
    client, run_id = MlflowClient(cfg.tracking.uri), cfg.tracking.run_id
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "status", "running")

    note = functools.partial(append_note, rec)
    with noting_guard(rec, 60.0) as guard:
        note("training")
        while guard.received is None:
            time.sleep(0.02)
        note("holding")
        while not os.path.exists(cfg.release):
            time.sleep(0.02)
        tmp = out / "checkpoint.json.tmp"
        tmp.write_text(json.dumps({"step": 1}))
        os.replace(tmp, out / "checkpoint.json")
        note("checkpoint")
        client.set_tag(run_id, "status", "interrupted")
        client.set_terminated(run_id, "KILLED")
        note("ended")
    return {"status": "preempted", "step": 1}


def _signals_default() -> None:
    """As a terminal's command: SIGINT and SIGHUP by default (not the test runner's)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _lines(rec: Path) -> list[str]:
    return rec.read_text().split("\n")[:-1] if rec.exists() else []


def test_a_plain_local_jobs_trainer_outlasting_1_s_after_a_terminals_ctrl_c_keeps_its_checkpoint(
    job_env, tmp_path
):
    """``sweeps/launch.py --no-warm`` of one cell, in its own process group as a terminal's foreground
    job; a terminal's Ctrl-C while the trainer trains; the trainer's checkpoint and end of run take
    longer than 1 s (held until the test releases them, 2 s later). The trainer is not killed: it writes
    its checkpoint and ends its run itself (KILLED, status=interrupted); the launcher exits 130, no try.
    Before: submitit's controller, reached by the same Ctrl-C, SIGKILLed the trainer 1 s later: no
    checkpoint, the run ended KILLED by the launcher."""
    rec, release = tmp_path / "record", tmp_path / "release"
    train_cfg = {"step_s": 0.05, "record": str(rec), "release": str(release)}
    spec = fake_trainer_spec(tmp_path, job_env, name="pk", experiment="plainkill", budgets=[2.6e9],
                             train=train_cfg, executor=ExecutorSpec(name="local"))  # fmt: skip
    cfg = write_sweep_config(spec, tmp_path / "sweep.yaml", families=["S"], trainer="test_plainkill_s47",
                             local_warm=False)  # fmt: skip
    spec = load_spec(cfg)
    (cell,) = expand(spec)
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    cmd = [sys.executable, str(REPO / "sweeps" / "launch.py"), "-c", str(cfg), "--poll", "0.2"]
    err = tmp_path / "launcher.err"
    with open(err, "w") as errf:
        proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_signals_default,
                                stdout=subprocess.DEVNULL, stderr=errf)  # fmt: skip
    trainer = None
    try:
        wait_for(lambda: "training" in _lines(rec) or proc.poll() is not None, "the plain job to train", 90)
        assert proc.poll() is None, err.read_text()
        trainer = int(Path(f"{rec}.pid").read_text())
        controller = int(Path(f"/proc/{trainer}/stat").read_text().split(") ")[1].split()[1])
        ignored = (runner._sigint_ignored(controller), runner._sigint_ignored(trainer))
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
        wait_for(lambda: "holding" in _lines(rec) or not pid_alive(trainer), "the trainer's Ctrl-C", 30)
        time.sleep(2 * SIGKILL_AFTER_S)  # a lower bound: the controller's SIGKILL would have come
        alive = pid_alive(trainer)
        release.touch()
        proc.wait(timeout=60)
    finally:
        release.touch()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    said = err.read_text()
    assert alive, (_lines(rec), said)
    assert ignored == (True, False)  # the controller ignores the Ctrl-C, the trainer takes it
    lines = _lines(rec)  # the terminal's SIGINT and the launcher's: one Ctrl-C (the echo window)
    assert [w for w in lines if w != "SIGINT"] == ["training", "holding", "checkpoint", "ended"], (
        lines,
        said,
    )
    assert lines[1] == "SIGINT" and lines.count("SIGINT") in (1, 2), (lines, said)
    assert proc.returncode == 130, said
    assert json.loads((run_dir / "checkpoint.json").read_text()) == {"step": 1}
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "interrupted"), run.data.tags
    st = states_of(spec, job_env)[cell.cell_id]
    assert (st.state, st.tries) == ("interrupted", 0)


_STARTING = """
import signal, sys, time
from pathlib import Path
folder = Path(sys.argv[1])
(folder / "ready").touch()
while not (folder / "take").exists():  # a plain job's task before `CellJob`: SIGINT ignored (inherited)
    time.sleep(0.02)
signal.signal(signal.SIGINT, lambda *_: open(folder / "got", "a").write("SIGINT\\n"))
(folder / "taken").touch()
while not (folder / "stop").exists():
    time.sleep(0.02)
"""


def _ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_the_launchers_ctrl_c_waits_until_a_starting_job_takes_sigint(tmp_path):
    """`_ctrl_c` to a job whose process still ignores SIGINT (a plain job's task starts so, its shell's
    `IGNORE_CTRL_C`, until `CellJob` takes it back): not sent, nor counted as sent, so a later call sends
    it once the process takes it. Before: sent into the ignored disposition and never again (the cell
    trained on after its launcher stopped)."""
    from types import SimpleNamespace

    from sweeps.runner import _ctrl_c

    script = tmp_path / "starting.py"
    script.write_text(_STARTING)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], preexec_fn=_ignoring_sigint)
    try:
        wait_for(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, "the process to start", 30)
        job, signalled = SimpleNamespace(job_id=str(proc.pid)), set()  # its own shell: the job's root
        _ctrl_c([job], signalled)
        assert signalled == set() and runner._sigint_ignored(proc.pid)
        (tmp_path / "take").touch()
        wait_for(lambda: (tmp_path / "taken").exists(), "the process to take SIGINT", 30)
        _ctrl_c([job], signalled)
        _ctrl_c([job], signalled)  # once
        wait_for(lambda: (tmp_path / "got").exists(), "the SIGINT", 30)
        assert signalled == {proc.pid}
    finally:
        (tmp_path / "stop").touch()
        proc.wait(timeout=30)
    assert (tmp_path / "got").read_text() == "SIGINT\n"


def test_a_cell_job_takes_back_the_sigint_its_shell_ignores(monkeypatch):
    """`take_ctrl_c` (called by `CellJob`): SIGINT ignored on entry raises KeyboardInterrupt after, where the
    job's shell says the ignore is its own (`TAKE_CTRL_C_ENV`); a handler in place is kept; without the
    mark SIGINT stays ignored."""
    from sweeps.executor import TAKE_CTRL_C_ENV, take_ctrl_c

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        take_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        monkeypatch.setenv(TAKE_CTRL_C_ENV, "1")
        take_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert TAKE_CTRL_C_ENV not in os.environ  # not passed on to what the trainer starts
        mine = lambda *_: None  # noqa: E731
        signal.signal(signal.SIGINT, mine)
        monkeypatch.setenv(TAKE_CTRL_C_ENV, "1")
        take_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_a_local_jobs_shell_ignores_sigint_and_marks_it_unless_its_setup_lines_did(tmp_path, shell):
    """`local_job_setup`'s last line (`IGNORE_CTRL_C`): the job's next command (submitit's controller)
    starts with SIGINT ignored, and the job's tasks are told to take it back, unless the sweep's own set-up
    lines ignore SIGINT (``trap '' INT``): that stays (tests/test_left_s39.py holds its jobs so)."""
    from sweeps.executor import TAKE_CTRL_C_ENV, local_job_setup

    if not Path(shell).exists():
        pytest.skip(f"no {shell}")
    probe = f'{sys.executable} -c \'import os, signal; print(os.environ.get("{TAKE_CTRL_C_ENV}"), '
    probe += "signal.getsignal(signal.SIGINT) is signal.SIG_IGN)'"
    got = []
    for setup in ([], ["trap '' INT"]):
        lines = local_job_setup(ExecutorSpec(setup=setup), str(tmp_path), 1)
        out = subprocess.run(" && ".join([*lines, probe]), shell=True, executable=shell, capture_output=True,
                             text=True, timeout=60, preexec_fn=_signals_default)  # fmt: skip
        assert out.returncode == 0, out.stderr
        got.append(out.stdout.strip())
    assert got == ["1 True", "None True"]


# ------------------------------------------------------------------ B: a job no launcher recorded
def _holding_lock(run_dir: Path) -> subprocess.Popen:
    """A live local job of a cell: a shell that takes the cell's lock as a submitted job does, then waits."""
    from sweeps.lock import cell_job_lock_lines

    run_dir.mkdir(parents=True, exist_ok=True)
    job = subprocess.Popen(" && ".join([*cell_job_lock_lines(run_dir), "echo locked", "exec sleep 120"]),
                           shell=True, stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert job.stdout.readline().strip() == "locked"
    return job


def test_a_job_no_launcher_recorded_counts_as_a_try_in_status_and_the_plan(job_env, tmp_path):
    """`read_states` on a real sqlite store: runs a launcher created (``attempts=0``) and never recorded a job
    in (killed between the submit and the record), which a job ran in all the same (its trainer took the run
    over: RUNNING, FAILED, KILLED, FINISHED) or runs in (it holds the cell's lock), count that job: attempts
    1, a try, unless the launcher noted it cancelled (its record failed: an interrupt too, no try). Before:
    attempts 0 (status: 0 tries), and the ones over were ``missing``: resubmitted whatever --max-retries
    said, and their next record said attempts 1. A run still SCHEDULED with no live job, and a run a
    trainer started by hand (no attempts tag), count none."""
    from mlflow.tracking import MlflowClient

    from sweeps.state import create_cell_runs, note_cancelled, plan, read_states

    uri, exp = job_env, f"unrecorded-{tmp_path.name}"
    status = {"killed": "RUNNING", "failed": "FAILED", "live": "RUNNING", "cancelled": "KILLED",
              "created": "SCHEDULED", "done": "FINISHED", "queued": "SCHEDULED"}  # fmt: skip
    dirs = {c: tmp_path / c for c in status}
    ids = create_cell_runs(uri, exp, "s", {c: "h" for c in status})
    client = MlflowClient(uri)
    for c, s in status.items():
        if s in ("FAILED", "KILLED", "FINISHED"):
            client.set_terminated(ids[c], s)
        elif s == "RUNNING":
            client.update_run(ids[c], status=s)
    dirs["cancelled"].mkdir()
    note_cancelled(dirs["cancelled"], "5", 1)
    exp_id = client.get_experiment_by_name(exp).experiment_id
    by_hand = client.create_run(exp_id, tags={"sweep": "s", "grid_cell": "by_hand"})  # a trainer's own
    client.set_terminated(by_hand.info.run_id, "FAILED")
    dirs["by_hand"] = tmp_path / "by_hand"
    jobs = [_holding_lock(dirs["live"]), _holding_lock(dirs["queued"])]
    try:
        states = read_states(uri, exp, "s", {c: str(d) for c, d in dirs.items()})
    finally:
        for job in jobs:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
            job.stdout.close()
    got = {c: (st.state, st.attempts, st.interrupts, st.tries, st.unrecorded) for c, st in states.items()}
    assert got == {
        "killed": ("interrupted", 1, 0, 1, True), "failed": ("failed", 1, 0, 1, True),
        "live": ("running", 1, 0, 1, True), "cancelled": ("interrupted", 1, 1, 0, True),
        "created": ("missing", 0, 0, 0, False), "done": ("finished", 1, 0, 1, True),
        "queued": ("queued", 1, 0, 1, True), "by_hand": ("missing", 0, 0, 0, False),
    }  # fmt: skip
    p = plan(states, max_retries=0)
    assert (p.submit, p.exhausted) == (["cancelled", "created", "by_hand"], ["killed", "failed"])
    assert (p.running, p.finished) == (["live", "queued"], ["done"])


class _LauncherKilled(BaseException):
    """The launcher's SIGKILL, where it would write the jobs' record."""


def test_the_relaunch_after_an_unrecorded_failed_job_records_it_as_a_try(
    job_env, tmp_path, monkeypatch, capsys
):
    """A launcher killed between submitting its job and recording it (its run made, ``attempts=0``), the job
    failing meanwhile (its trainer ends the run FAILED): `status` shows the cell failed with 1 try, and
    the relaunch records attempts 2. Before: ``missing`` with 0 tries, and the relaunch recorded attempts 1
    (the failed job no try)."""
    from mlflow.tracking import MlflowClient

    from sweeps import runner
    from sweeps.launch import show_status
    from sweeps.runner import launch

    spec = fake_trainer_spec(tmp_path, job_env, name="ur", experiment="unrecorded", budgets=[2.6e9],
                             executor=ExecutorSpec(name="debug", max_retries=1))  # fmt: skip
    spec = spec.replace(families=["S"])
    (cell,) = expand(spec)

    def killed(*args, **kwargs):
        raise _LauncherKilled

    monkeypatch.setattr(runner, "record_submissions", killed)
    with contextlib.suppress(_LauncherKilled):
        launch(spec)
    monkeypatch.undo()
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert (run.info.status, run.data.tags["attempts"]) == ("SCHEDULED", "0")
    MlflowClient(job_env).set_terminated(run.info.run_id, "FAILED")  # the unrecorded job's trainer
    st = states_of(spec, job_env)[cell.cell_id]
    assert (st.state, st.attempts, st.tries) == ("failed", 1, 1), st
    capsys.readouterr()
    show_status(spec)
    said = capsys.readouterr().out
    row = next(ln for ln in said.splitlines() if ln.startswith(cell.cell_id))
    assert (row.split()[2], row.split()[7]) == ("failed", "1"), said  # state, tries
    res = launch(spec)
    assert res.submitted == [cell.cell_id] and res.errors == {}, res.errors
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert (run.info.status, run.data.tags["attempts"]) == ("FINISHED", "2")
