"""Session 46 (forkrace): a warm cell forked just before the launcher's Ctrl-C kills the warm worker.

The zygote wrote a job's ``_pid`` file after its ``os.fork()`` returned; killed in between (the launcher's
Ctrl-C ends it, `WarmExecutor.stop`, and so does a second Ctrl-C's `_kill_jobs` for a job it has not
forked yet), it left a child no one could find: the child got no Ctrl-C, trained on to its end holding
its cell's lock, and a second Ctrl-C could not kill it ("not seen to end"). The child now writes its
``_pid`` itself, before the cell starts, and the launcher, which polls its jobs, finds it.

This module is also the jobs' trainer (``trainer: test_forkrace_s46``: the stand-in trainer's
``train``): imported by the warm worker under `HOLD_ENV`, it holds the worker right after each fork,
in the parent, until the hold file exists (the child's pid is written to ``<hold>.forked``), and the
child until ``<hold>.child`` exists; with `PASS_ENV` = n, the first n forks go through unheld (session
47: a requeued cell's fork again). Handshakes only, no fixed sleeps."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _sweep_specs import fake_trainer_spec, pid_alive, step_of, wait_for
from test_sweeps_fake_trainer import (  # noqa: F401 - the jobs' trainer
    WARM_IMPORTS,  # noqa: F401 - what a warm worker imports for it
    TrainConfig,
    train,
)

import sweeps.runner as runner
from sweeps.grid import ExecutorSpec, expand
from sweeps.lock import cell_lock_held
from sweeps.runner import sweep_dir
from sweeps.task import make_task
from sweeps.warm import WarmExecutor

HOLD_ENV = "DITSCALE_TEST_HOLD_FORK"  # a file: the warm worker waits for it after each fork
PASS_ENV = "DITSCALE_TEST_HOLD_FORK_PASS"  # how many forks go through before the first held one

_HOLD = os.environ.get(HOLD_ENV, "")
if _HOLD and sys.argv[0].endswith(os.path.join("sweeps", "warm.py")):  # imported by the warm worker
    _fork, _zygote = os.fork, os.getpid()
    _passed = [int(os.environ.get(PASS_ENV) or 0)]  # forks still to let through

    def _held_fork() -> int:
        held = os.getpid() == _zygote and _passed[0] <= 0
        _passed[0] -= 1
        pid = _fork()
        if held and pid:  # the parent, between the fork and what follows it
            Path(f"{_HOLD}.tmp").write_text(str(pid))
            os.replace(f"{_HOLD}.tmp", f"{_HOLD}.forked")  # whole: the test reads it once it exists
            _wait(_HOLD)
        elif held:  # the child, before anything else: released once the test has killed the worker
            _wait(f"{_HOLD}.child")
        return pid

    os.fork = _held_fork


def _wait(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.02)


def _release_once_dead(pid: int, release: Path) -> None:
    """Create ``release`` once ``pid`` has ended (or after 60 s: the test has failed then)."""
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    release.touch()


def _err(job: Any) -> str:
    """The end of the job's stderr, for a failure's message (session 57: CI's failure said only that the
    child was alive; a Ctrl-C had cut an MLflow write in half, and the run's end waited on SQLite's lock)."""
    with contextlib.suppress(OSError):
        return "; the child's stderr ends:\n" + job.paths.stderr.read_text()[-3000:]
    return ""


def held_warm_cell(tmp_path: Path, job_env: str, name: str) -> tuple[Any, Any, WarmExecutor, Path, Path]:
    """One S cell of the stand-in trainer (0.05 s steps, held before its last step until
    ``tmp_path/end``) for a fresh warm worker, whose forks this module holds (`HOLD_ENV` must be set);
    (the cell, its task, the worker, the cell's progress file, the ``<hold>.forked`` file)."""
    progress = tmp_path / "progress"
    knobs = {"step_s": 0.05, "progress_file": str(progress), "hold_file": str(tmp_path / "end")}
    spec = fake_trainer_spec(tmp_path, job_env, name=name, experiment=name, budgets=[1e10], train=knobs,
                             executor=ExecutorSpec(name="local")).replace(families=["S"])  # fmt: skip
    spec = spec.replace(trainer="test_forkrace_s46")
    (cell,) = expand(spec)
    task = make_task(spec, cell, sweep_dir(spec), job_env, threads=1)
    ex = WarmExecutor(sweep_dir(spec) / "jobs", threads=1, trainer=spec.trainer, tracking_uri=job_env)
    return cell, task, ex, progress, Path(f"{os.environ[HOLD_ENV]}.forked")


def release_and_stop(tmp_path: Path, hold: Path, ex: WarmExecutor, child: int | None) -> None:
    """A test's clean-up: every hold released, the worker ``ex`` ended, its ``child`` killed if alive."""
    hold.touch()
    Path(f"{hold}.child").touch()
    (tmp_path / "end").touch()
    ex.stop()
    ex.proc.wait()
    if child is not None and pid_alive(child):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def interrupt_launch(job_env: str, cell: Any, job: Any, ex: WarmExecutor, wait_s: float) -> list[list[str]]:
    """`_Runner._interrupted` (a launcher's Ctrl-C) on a launch of ``cell``'s one ``job``: stops ``ex``
    and passes the Ctrl-C on; the cells whose runs it would end (none recorded: the caller stubs
    `runner.record_interrupts`)."""
    ended: list[list[str]] = []
    me = SimpleNamespace(
        prep=SimpleNamespace(kind="local", tracking_uri=job_env), live={cell.cell_id},
        states={cell.cell_id: SimpleNamespace(run_id="r", interrupts=0)},
        jobs={cell.cell_id: job}, executor=ex, _end_interrupted=ended.append,
    )  # fmt: skip
    runner._Runner._interrupted(me, signal.SIGINT, wait_s=wait_s)
    return ended


@pytest.mark.parametrize("ctrl_c", ["first", "second"])
def test_a_cell_forked_just_before_the_worker_is_killed_gets_the_ctrl_c(
    job_env, tmp_path, monkeypatch, ctrl_c
):
    """The warm worker is held right after it forked the cell's child (held too, until the worker has
    ended: the launcher looks for it first while it has not started); then the launcher's Ctrl-C
    (``first``: `_Runner._interrupted`, which stops the worker and passes the Ctrl-C on) or a second
    Ctrl-C's kill (``second``: `_kill_jobs`, which kills a worker whose job has no process yet). The
    child, which trains on to a hold before its last step, must be stopped and its job seen over (the
    cell's lock free). Before: the child had no ``_pid`` file: it trained on, the job never ended
    (``first``: still alive after the wait; ``second``: "not seen to end")."""
    hold = tmp_path / "fork-hold"
    monkeypatch.setenv(HOLD_ENV, str(hold))
    cell, task, ex, progress, forked = held_warm_cell(tmp_path, job_env, "forkrace")
    child = None
    try:
        job = ex.submit(None, task)
        wait_for(lambda: forked.exists() or not ex.alive(), "the warm worker's fork", 60)
        assert ex.alive(), ex.log_path.read_text()
        child = int(forked.read_text())
        # the child starts once the worker is dead: it never wrote the job's `_pid` before, and its
        # own write now comes after the launcher has looked for it
        threading.Thread(target=_release_once_dead, args=(ex.proc.pid, Path(f"{hold}.child"))).start()
        if ctrl_c == "first":
            monkeypatch.setattr(runner, "record_interrupts", lambda uri, counts: None)  # no MLflow record
            ended = interrupt_launch(job_env, cell, job, ex, wait_s=20.0)
            assert ended == [[cell.cell_id]], f"the job was still alive after the Ctrl-C's wait{_err(job)}"
            kind, value = pickle.loads((job.paths.folder / f"{job.job_id}_0_result.pkl").read_bytes())
            assert kind == "error" and "KeyboardInterrupt" in value  # the Ctrl-C stopped the cell
        else:
            assert runner._kill_jobs([job], wait_s=20.0) == [], f"not seen to end{_err(job)}"
        assert job.done() and not cell_lock_held(task.run_dir) and not pid_alive(child)
        assert not ex.alive() and job.pid() == child
        assert step_of(progress) < cell.steps
    finally:
        release_and_stop(tmp_path, hold, ex, child)
