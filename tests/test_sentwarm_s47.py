"""Session 47 (sentwarm): a cell sent to a warm worker that dies before forking it.

Two cells go to the worker in one batch; it forks the first and is SIGKILLed (the OOM killer) before it
forks the second, whose line it had read (or not) but never served. That job has no log, result or exit
status, and its cell's lock is free: nothing of it ran. It ended failed ("its warm worker exited before
the job ended"; run FAILED, counted as a try); the launcher now sends the cell again, to the fresh warm
worker it starts for the dead one (once a launch, `WARM_RESTARTS`), into the same run: one more
submission, recorded as an interrupt (no try). The worker is held right after the first fork
(`test_forkrace_s46`'s hook, the child not held) until the test has killed it; handshakes only."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

from _sweep_specs import pid_alive, runs_by_cell, step_of, wait_for
from test_forkrace_s46 import HOLD_ENV
from test_killroot_s46 import _spec

import sweeps.runner as runner
from sweeps.grid import ExecutorSpec, expand
from sweeps.lock import CELL_LOCK, take_cell_lock
from sweeps.runner import launch, sweep_dir
from sweeps.state import CellState
from sweeps.warm import WarmExecutor, WarmJob


def test_a_cell_sent_to_a_warm_worker_killed_before_forking_it_goes_to_the_fresh_one(
    job_env, tmp_path, monkeypatch
):
    """Two cells at once: the worker, held after forking S (its child trains), is SIGKILLed once both
    jobs are recorded; B, sent and never forked, trains in the fresh worker into its one run, which
    counts one more submission and one interrupt (no try), and both cells end FINISHED."""
    fork_hold = tmp_path / "fork-hold"
    Path(f"{fork_hold}.child").touch()  # children are not held, the worker is after its first fork
    monkeypatch.setenv(HOLD_ENV, str(fork_hold))
    spec, _, progress, hold = _spec(tmp_path, job_env, ["S", "B"])
    spec = spec.replace(trainer="test_forkrace_s46", executor={"local_parallelism": 2})
    s, b = (c.cell_id for c in sorted(expand(spec), key=lambda c: -c.steps))  # S first: longest
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", launch(spec, poll_s=0.2)), daemon=True)
    t.start()
    try:
        forked = Path(f"{fork_hold}.forked")
        wait_for(lambda: forked.exists() or not t.is_alive(), "the first cell's fork", 90)
        zygote = int(next((sweep_dir(spec) / "jobs").glob("*_1")).name.split("_")[0])
        attempts = lambda: {c: [r.data.tags.get("attempts") for r in rs] for c, rs in  # noqa: E731
                            runs_by_cell(job_env, spec.experiment).items()}  # fmt: skip
        wait_for(lambda: step_of(progress) >= 1 and attempts() == {s: ["1"], b: ["1"]}, "both records", 60)
        assert t.is_alive() and pid_alive(zygote), box
        sent = sweep_dir(spec) / "jobs" / f"{zygote}_2"
        assert (sent / f"{zygote}_2_submitted.pkl").exists() and not (sent / f"{zygote}_2_0_log.out").exists()
        os.kill(zygote, signal.SIGKILL)  # held after forking S: B was sent, never forked
        wait_for(lambda: not pid_alive(zygote), "the warm worker to die", 30)
    finally:
        fork_hold.touch()  # the fresh worker's forks
        hold.touch()  # the cells' last steps
    t.join(120)
    assert not t.is_alive() and "r" in box, box
    res = box["r"]
    # before: errors {b: "job <zygote>_2 failed (its warm worker exited before the job ended) ..."}
    assert res.errors == {} and sorted(res.results) == sorted([s, b])
    assert res.job_ids[s] == f"{zygote}_1" and not res.job_ids[b].startswith(f"{zygote}_")
    runs = runs_by_cell(job_env, spec.experiment)
    got = {c: [(r.info.status, r.data.tags.get("attempts"), r.data.tags.get("interrupts")) for r in rs]
           for c, rs in runs.items()}  # fmt: skip
    # before: b [("FAILED", "1", None)] (a try)
    assert got == {s: [("FINISHED", "1", None)], b: [("FINISHED", "2", "1")]}
    again = launch(spec, poll_s=0.2)
    assert again.submitted == [] and sorted(again.plan.finished) == sorted([s, b])


def test_a_cell_sent_to_a_dead_warm_worker_that_may_not_be_restarted_fails_as_not_started(
    tmp_path, monkeypatch
):
    """The dead worker had forked nothing (or the restart bound is used up): the cell it never forked
    is failed as not started (before: "its warm worker exited before the job ended", a try), its job
    recorded as an interrupt, so that a relaunch runs it without counting that job."""
    ex = WarmExecutor.__new__(WarmExecutor)  # no process: dead, never forked a cell
    ex.proc, ex.log_path, ex.forked = (
        SimpleNamespace(pid=7, poll=lambda: -9),
        tmp_path / "w.log",
        lambda: False,
    )
    job = WarmJob(ex, "7_2", tmp_path, str(tmp_path / "cell"))
    recorded: list[dict] = []
    monkeypatch.setattr(runner, "record_interrupts", lambda uri, counts: recorded.append(counts))
    prep = SimpleNamespace(
        spec=SimpleNamespace(executor=ExecutorSpec(name="local")), kind="local", tracking_uri="sqlite://"
    )
    states = {"b": CellState("b", "failed", run_id="r", attempts=1)}
    run = runner._Runner(prep, ex, runner.LaunchResult(None, None), states, None, 1.0, {})
    run.live, run.jobs, run.result.job_ids = {"b"}, {"b": job}, {"b": "7_2"}
    run._run([SimpleNamespace(cell_id="b")], wait=True)
    assert list(run.result.errors) == ["b"] and run.result.errors["b"].startswith(
        "not started: the warm worker (pid 7)"
    )
    assert recorded == [{"r": 1}] and (states["b"].attempts, states["b"].interrupts) == (2, 1)
    assert run.result.job_ids == {} and run.live == set()


def test_a_warm_job_is_unforked_only_with_its_worker_dead_its_lock_free_and_no_file_of_its_child(tmp_path):
    """`WarmJob.unforked`: a log, a result or an exit status says it ran (a child SIGKILLed in training
    left a log alone: interrupted, not resent); a held lock says a child lives (forked, not started yet)."""
    alive = [False]
    job = WarmJob(SimpleNamespace(alive=lambda: alive[0]), "7_2", tmp_path, str(tmp_path / "cell"))
    assert job.unforked()
    alive[0] = True
    assert not job.unforked()
    alive[0] = False
    for name in ("7_2_0_log.out", "7_2_0_result.pkl", "7_2_exit"):
        (tmp_path / name).write_text("0")
        assert not job.unforked(), name
        (tmp_path / name).unlink()
    (tmp_path / "cell").mkdir()
    fd = os.open(tmp_path / "cell" / CELL_LOCK, os.O_WRONLY | os.O_CREAT)
    try:
        take_cell_lock(fd, "cell", 1.0)
        assert not job.unforked()
    finally:
        os.close(fd)
    assert job.unforked()
