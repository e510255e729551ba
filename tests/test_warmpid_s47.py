"""Session 47 (warmpid): a warm job's ``_pid`` across a requeue, and a dead warm worker restarted once.

1. A child that exits to be forked again (USR2, `REQUEUE_EXIT`) left its ``<job>_pid`` naming it until
   the next child named itself: `WarmJob.pid` reported a dead process, and the launcher's Ctrl-C (or a
   second Ctrl-C's SIGKILL) went to it, or to whatever process had been given its pid since. The child
   now removes the file before it exits: in between, the job has no process, as before its first fork,
   and the launcher, which polls, passes the Ctrl-C on once the next child has named itself.
2. A warm worker SIGKILLed (the OOM killer) under a waiting launcher failed the cells it had not forked
   as "not started"; the launcher now starts one fresh worker and runs them there. A second death
   fails the rest as before.

The jobs' trainer holds the warm worker's forks (`test_forkrace_s46`'s hook); handshakes only."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

from _sweep_specs import pid_alive, step_of, wait_for
from test_forkrace_s46 import (
    HOLD_ENV,
    PASS_ENV,
    _release_once_dead,
    held_warm_cell,
    interrupt_launch,
    release_and_stop,
)
from test_killroot_s46 import _runs, _spec, _zygote

import sweeps.runner as runner
from sweeps.grid import ExecutorSpec, expand
from sweeps.lock import cell_lock_held
from sweeps.runner import launch, sweep_dir
from sweeps.warm import WarmExecutor


def test_a_requeued_cell_has_no_pid_until_its_next_child_names_itself_which_gets_the_ctrl_c(
    job_env, tmp_path, monkeypatch
):
    """USR2 to a warm cell's child: it checkpoints and exits to be forked again; the worker is held
    right after that second fork, its child held before it names itself. Then the job has no process
    (before: ``pid()`` was the dead first child's, and a Ctrl-C went to that pid), and the launcher's
    Ctrl-C (`_Runner._interrupted`, which ends the worker), arriving in that window, goes to the second
    child alone, once it has named itself (released once the worker is dead), and the job ends. (Where
    the USR2 reached the first child in its hold before the last step, it took that step, and the second
    child may finish the cell before the launcher sees it named: then no Ctrl-C is sent at all.)"""
    hold = tmp_path / "fork-hold"
    monkeypatch.setenv(HOLD_ENV, str(hold))
    monkeypatch.setenv(PASS_ENV, "1")  # the cell's first fork goes through
    monkeypatch.setattr(runner, "record_interrupts", lambda uri, counts: None)  # no MLflow record
    cell, task, ex, progress, forked = held_warm_cell(tmp_path, job_env, "warmpid")
    second = None
    try:
        job = ex.submit(None, task)
        wait_for(lambda: step_of(progress) >= 1 or not ex.alive(), "the cell to train", 60)
        first = job.pid()
        assert first is not None and ex.alive(), ex.log_path.read_text()
        os.kill(first, signal.SIGUSR2)  # checkpoint, then fork the cell again
        wait_for(lambda: forked.exists() or not ex.alive(), "the requeued cell's fork", 60)
        assert ex.alive(), ex.log_path.read_text()
        second = int(forked.read_text())
        assert not pid_alive(first) and pid_alive(second)
        # the window: the first child is gone, the second has not named itself
        assert job.pid() is None, "the job names its dead first child"
        assert runner._ctrl_c_targets(job) == set()
        assert not job.done() and cell_lock_held(task.run_dir)
        threading.Thread(target=_release_once_dead, args=(ex.proc.pid, Path(f"{hold}.child"))).start()
        kill, sent = os.kill, []
        monkeypatch.setattr(os, "kill", lambda pid, sig: (sent.append((pid, sig)), kill(pid, sig))[1])
        ended = interrupt_launch(job_env, cell, job, ex, wait_s=30.0)
        assert ended == [[cell.cell_id]], "the requeued cell was still alive after the Ctrl-C's wait"
        kind, _ = pickle.loads((job.paths.folder / f"{job.job_id}_0_result.pkl").read_bytes())
        sigints = [pid for pid, sig in sent if sig == signal.SIGINT]  # never the dead first child
        assert sigints == [second] or (kind == "success" and sigints == []), (kind, sigints, first, second)
        # the job is done once its result is written; the child exits just after (session 49: CI saw it
        # still running at that instant)
        wait_for(lambda: not pid_alive(second), "the second child to end", 10)
        assert job.pid() == second and not cell_lock_held(task.run_dir)
    finally:
        release_and_stop(tmp_path, hold, ex, second)


def test_a_warm_worker_is_restarted_once_and_a_second_death_fails_the_rest_as_not_started(
    job_env, tmp_path, monkeypatch, caplog
):
    """The warm worker SIGKILLed while its first cell trains: the launcher starts a fresh one (saying
    so, with the dead one's log) for the cell left, and that one dies too, before forking it: the cell
    is failed as not started, naming the second worker, and no third one is started. The first cell
    finishes in its one run. (One death alone: tests/test_killroot_s46.py, the fresh worker runs it.)"""
    spec, _, progress, hold = _spec(tmp_path, job_env, ["S", "B"])
    s, b = (c.cell_id for c in sorted(expand(spec), key=lambda c: -c.steps))  # S first: longest
    started: list[WarmExecutor] = []
    start = runner._start_warm

    def second_dies(*args):
        ex = start(*args)
        started.append(ex)
        if len(started) == 2:  # the restart: dead before it forks a cell
            ex.proc.kill()
            ex.proc.wait()
        return ex

    monkeypatch.setattr(runner, "_start_warm", second_dies)
    caplog.set_level(logging.WARNING, logger="sweeps.runner")
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", launch(spec, poll_s=0.2)), daemon=True)
    t.start()
    try:
        wait_for(lambda: step_of(progress) >= 1 or not t.is_alive(), "the first cell to train", 90)
        zygote = _zygote(spec)
        assert zygote == started[0].proc.pid and t.is_alive(), box
        os.kill(zygote, signal.SIGKILL)
        wait_for(lambda: len(started) == 2 or not t.is_alive(), "the fresh warm worker", 30)
    finally:
        hold.touch()
    t.join(120)
    assert not t.is_alive() and "r" in box
    res, fresh = box["r"], started[1].proc.pid
    assert len(started) == 2 and list(res.results) == [s]
    assert list(res.errors) == [b] and res.errors[b].startswith(f"not started: the warm worker (pid {fresh})")
    assert "relaunch the same command" in res.errors[b]
    assert _runs(job_env, spec) == {s: [("FINISHED", "1")]}  # the cell not started has no run
    said = [r.getMessage() for r in caplog.records if "fresh one" in r.getMessage()]
    assert len(said) == 1 and str(started[0].log_path) in said[0] and f"(pid {fresh};" in said[0]


def test_a_no_wait_launch_whose_warm_worker_dies_between_two_cells_sends_the_rest_to_a_fresh_one(
    job_env, tmp_path, monkeypatch
):
    """``--no-wait`` sends every cell at once: the worker killed once it has forked the first (before its
    second is sent), the second's submit finds it gone and goes to a fresh worker; the launch returns
    with both cells submitted and no error, and each trains into its one run."""
    spec, _, _, hold = _spec(tmp_path, job_env, ["S", "B"])
    hold.touch()
    submit, killed = WarmExecutor.submit, []

    def first_then_killed(ex, fn, task):
        job = submit(ex, fn, task)
        if not killed:  # forked (its child opened its log), then SIGKILLed: the OOM killer
            wait_for(lambda: job.paths.stdout.exists() or not ex.alive(), "the first cell's fork", 60)
            ex.proc.kill()
            ex.proc.wait()
            killed.append(ex.proc.pid)
        return job

    monkeypatch.setattr(WarmExecutor, "submit", first_then_killed)
    started: list[WarmExecutor] = []
    start = runner._start_warm
    monkeypatch.setattr(runner, "_start_warm", lambda *args: started.append(start(*args)) or started[-1])
    res = launch(spec, wait=False)
    fresh = started[-1]
    assert len(started) == 2 and started[0].proc.pid == killed[0]
    cells = sorted(c.cell_id for c in expand(spec))
    assert res.errors == {} and sorted(res.submitted) == cells
    assert {j.split("_")[0] for j in res.job_ids.values()} == {str(killed[0]), str(fresh.proc.pid)}
    # each job held its cell's lock when the launch returned (`_until_locked`): over once it is free
    run_dirs = [sweep_dir(spec) / "cells" / c for c in cells]
    wait_for(lambda: not any(cell_lock_held(d) for d in run_dirs), "the cells to end", 90)
    assert _runs(job_env, spec) == {c: [("FINISHED", "1")] for c in cells}


def test_a_warm_worker_that_dies_before_forking_a_cell_is_not_restarted(job_env, tmp_path, monkeypatch):
    """A worker that never forked a cell (dead starting up: a broken set-up, the imports out of memory)
    would die again: the launch starts no second one and fails its cells as not started, naming it."""
    spec, _, _, _ = _spec(tmp_path, job_env, ["S", "B"])
    started: list[WarmExecutor] = []
    start = runner._start_warm

    def dead(*args):
        started.append(start(*args))
        started[-1].proc.kill()
        started[-1].proc.wait()
        return started[-1]

    monkeypatch.setattr(runner, "_start_warm", dead)
    res = launch(spec, poll_s=0.2)
    assert len(started) == 1 and res.submitted == [] and res.results == {}
    assert sorted(res.errors) == sorted(c.cell_id for c in expand(spec))
    assert all(
        e.startswith(f"not started: the warm worker (pid {started[0].proc.pid})") for e in res.errors.values()
    )


def test_a_launch_restarts_a_warm_worker_once_even_where_the_fresh_one_forked_a_cell(monkeypatch):
    """`_Runner._restart_worker`'s bound (`WARM_RESTARTS`): the fresh worker dead after it forked a
    cell is not replaced (the tests above kill the fresh one before it forks, which the forked-a-cell
    rule alone refuses)."""

    def worker(pid: int) -> WarmExecutor:
        ex = WarmExecutor.__new__(WarmExecutor)  # no process: a dead worker that had forked a cell
        ex.proc, ex.log_path, ex.forked = SimpleNamespace(pid=pid), Path(f"warm_{pid}.log"), lambda: True
        return ex

    dead, fresh = worker(1), worker(2)
    started: list[tuple] = []
    monkeypatch.setattr(runner, "_start_warm", lambda *args: started.append(args) or fresh)
    prep = SimpleNamespace(spec=SimpleNamespace(executor=ExecutorSpec(name="local")), kind="local")
    run = runner._Runner(prep, dead, runner.LaunchResult(None, None), {}, None, 1.0, {})
    assert run._restart_worker() and run.executor is fresh and run.restarted == [fresh]
    assert not run._restart_worker() and run.executor is fresh and len(started) == 1
