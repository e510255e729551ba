"""Session 46 (killroot): a local sweep's launcher, or its warm worker, SIGKILLed (the OOM killer,
``kill -9``) while warm cells train. Real processes (the stand-in trainer), handshakes only: each cell
waits before its last step until the test releases it (``hold_file``).

A. The launcher killed while it waits: its cells train on, holding their locks, into their recorded
   runs; a relaunch at once (and ``status``) sees them running and starts none; once they end, finished.
B. The launcher killed between submitting a cell and recording the job in its run: the cell trained
   unrecorded, and `status` called it missing; a relaunch started a second job of it, which waited 10 s
   for the lock, failed as a try, and, seen over by a waiting launcher, ended the run KILLED while the
   first job still trained it. The held lock now makes the cell running (`sweeps.state._unrecorded_alive`).
C. The warm worker killed under a waiting launcher: a cell it had forked finished but was reported
   failed ("its warm worker exited before the job ended"), and the next cell's submit raised "the warm
   worker is gone" out of the launch. Now the cell's "success" stands, and (session 47) the launcher
   runs the cells left in a fresh warm worker, into one run each (before: failed as not started, for a
   relaunch; still so where the fresh worker dies too: tests/test_warmpid_s47.py).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from _sweep_specs import (
    fake_trainer_spec,
    pid_alive,
    runs_by_cell,
    states_of,
    step_of,
    wait_for,
    write_sweep_config,
)

from sweeps.grid import ExecutorSpec, SweepSpec, expand, load_spec
from sweeps.lock import cell_lock_held
from sweeps.runner import launch, sweep_dir
from sweeps.warm import WarmJob

_LAUNCHER = """
import sys, time
from pathlib import Path
import sweeps.runner as runner
from sweeps.launch import main
busy = Path(sys.argv[1])
if sys.argv[2] == "recording":  # the record never returns: the launcher is killed inside it
    def held(*args, **kwargs):
        busy.touch()
        while True:
            time.sleep(0.05)
    runner.record_submissions = held
sys.argv = ["launch.py", *sys.argv[3:]]
sys.exit(main())
"""


def _spec(tmp_path: Path, uri: str, families: list[str]) -> tuple[SweepSpec, Path, Path, Path]:
    """A warm local sweep of ``families`` at 2.6e9 (S: 8 steps, B: 2), one cell at a time, each waiting
    before its last step for the hold file; written to a config file. (spec, config, progress, hold)."""
    progress, hold = tmp_path / "progress", tmp_path / "hold"
    train = {"step_s": 0.05, "progress_file": str(progress), "hold_file": str(hold)}
    executor = ExecutorSpec(name="local", local_parallelism=1, max_retries=1)
    spec = fake_trainer_spec(
        tmp_path, uri, name="kr", experiment="killroot", budgets=[2.6e9], train=train, executor=executor
    )
    cfg = write_sweep_config(spec, tmp_path / "sweep.yaml", families=families, local_warm=True, max_retries=1)
    return load_spec(cfg), cfg, progress, hold


def _zygote(spec: SweepSpec) -> int | None:
    """The pid of the sweep's warm worker, from its first job's folder (``<pid>_1``)."""
    jobs = sweep_dir(spec) / "jobs"
    found = sorted(jobs.glob("*_1")) if jobs.is_dir() else []
    return int(found[0].name.split("_")[0]) if found else None


def _runs(uri: str, spec: SweepSpec) -> dict[str, list[tuple[str, str | None]]]:
    """Each cell's runs as (MLflow status, attempts tag)."""
    return {
        c: [(r.info.status, r.data.tags.get("attempts")) for r in rs]
        for c, rs in runs_by_cell(uri, spec.experiment).items()
    }


@pytest.mark.parametrize("moment", ["waiting", "recording"])
def test_a_sigkilled_launchers_warm_cell_trains_on_and_a_relaunch_starts_no_second_job(
    job_env, tmp_path, moment, capsys
):
    from sweeps.launch import show_status

    spec, cfg, progress, hold = _spec(tmp_path, job_env, ["S"])
    (cell,) = expand(spec)
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    busy, script = tmp_path / "busy", tmp_path / "launcher.py"
    script.write_text(_LAUNCHER)
    cmd = [sys.executable, str(script), str(busy), moment, "-c", str(cfg), "--poll", "0.2"]
    err = tmp_path / "launcher.err"
    with open(err, "w") as errf:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=errf)
    recorded = "1" if moment == "waiting" else "0"
    try:
        wait_for(lambda: step_of(progress) >= 1 or proc.poll() is not None, "the cell to train", 90)
        held = lambda: moment == "waiting" or busy.exists()  # noqa: E731
        attempts = lambda: _runs(job_env, spec).get(cell.cell_id, [("", "")])[0][1]  # noqa: E731
        wait_for(lambda: attempts() == recorded and held(), "the launcher's record, or its hold", 30)
        assert proc.poll() is None, err.read_text()
        proc.kill()  # SIGKILL: the OOM killer
        proc.wait()
        trainer = int((run_dir / "pid").read_text())
        assert pid_alive(trainer) and cell_lock_held(run_dir)  # the warm child trains on, holding the lock
        assert _runs(job_env, spec) == {cell.cell_id: [("RUNNING", recorded)]}
        assert states_of(spec, job_env)[cell.cell_id].state == "running"  # B: was "missing"
        again = launch(spec, wait=False)  # B: started a second job, failed 10 s later (lock)
        assert again.submitted == [] and again.plan.running == [cell.cell_id]
        capsys.readouterr()
        show_status(spec)
        said = capsys.readouterr().out
        assert ("running unrecorded: " + cell.cell_id in said) == (moment == "recording"), said
        assert step_of(progress) < cell.steps and pid_alive(trainer)
    finally:
        hold.touch()
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not cell_lock_held(run_dir), "the orphaned cell to end", 60)
    assert _runs(job_env, spec) == {cell.cell_id: [("FINISHED", recorded)]}
    final = launch(spec, poll_s=0.2)
    assert final.submitted == [] and final.plan.finished == [cell.cell_id]
    assert _runs(job_env, spec) == {cell.cell_id: [("FINISHED", recorded)]}
    # the warm worker outlived its launcher and reaped the cell itself
    job = f"{_zygote(spec)}_1"
    wait_for(lambda: (sweep_dir(spec) / "jobs" / job / f"{job}_exit").exists(), "the cell's exit status", 30)
    assert (sweep_dir(spec) / "jobs" / job / f"{job}_exit").read_text() == "0"


def test_a_sigkilled_warm_worker_leaves_its_cell_finished_and_a_fresh_one_runs_the_rest(job_env, tmp_path):
    spec, _, progress, hold = _spec(tmp_path, job_env, ["S", "B"])
    s, b = (c.cell_id for c in sorted(expand(spec), key=lambda c: -c.steps))  # S first: longest
    box: dict = {}

    def run() -> None:
        try:
            box["r"] = launch(spec, poll_s=0.2)
        except BaseException as e:  # noqa: BLE001 - what the test asserts on
            box["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    zygote = None
    try:
        wait_for(lambda: step_of(progress) >= 1 or not t.is_alive(), "the first cell to train", 90)
        zygote = _zygote(spec)
        assert zygote is not None and t.is_alive(), box
        os.kill(zygote, signal.SIGKILL)
        run_dir = sweep_dir(spec) / "cells" / s
        wait_for(lambda: not pid_alive(zygote), "the warm worker to die", 30)
        assert cell_lock_held(run_dir) and pid_alive(int((run_dir / "pid").read_text()))  # trains on
    finally:
        hold.touch()
    t.join(120)
    assert not t.is_alive() and "e" not in box, box  # was: RuntimeError "the warm worker ... is gone"
    res = box["r"]
    # s was: failed ("its warm worker exited before the job ended"); b: "not started: the warm worker ..."
    assert res.errors == {} and sorted(res.results) == sorted([s, b])
    assert res.job_ids[s].startswith(f"{zygote}_") and not res.job_ids[b].startswith(f"{zygote}_")
    assert _runs(job_env, spec) == {s: [("FINISHED", "1")], b: [("FINISHED", "1")]}
    assert not pid_alive(int(res.job_ids[b].split("_")[0]))  # the launch closed the fresh worker, which ended
    again = launch(spec, poll_s=0.2)
    assert again.submitted == [] and sorted(again.plan.finished) == sorted([s, b])


def test_a_warm_jobs_success_stands_without_an_exit_status_but_not_with_a_failing_one(tmp_path):
    """`WarmJob.results`: the child writes "success" once its cell is trained, then exits 0; where its worker
    died before reaping it there is no exit status, and the result stands; an exit status that says the
    child failed or was killed after writing it does not."""
    job = WarmJob(SimpleNamespace(alive=lambda: False), "7_1", tmp_path, str(tmp_path / "cell"))
    (tmp_path / "7_1_0_result.pkl").write_bytes(pickle.dumps(("success", {"step": 3})))
    assert job.results() == [{"step": 3}]
    exit_file = tmp_path / "7_1_exit"
    exit_file.write_text("0")
    assert job.results() == [{"step": 3}]
    for code, why in ((str(-signal.SIGKILL), "killed by SIGKILL"), ("1", "exit status 1")):
        exit_file.write_text(code)
        with pytest.raises(RuntimeError, match=rf"job 7_1 failed \({why}\)"):
            job.results()


def test_a_jobs_root_is_the_warm_child_or_the_submitit_shell():
    """`sweeps.runner._job_root`, shared by the Ctrl-C and the kill of local jobs."""
    from sweeps import runner

    warm = WarmJob(SimpleNamespace(alive=lambda: True), "7_1", Path("/nonexistent"), "/nonexistent")
    assert runner._job_root(warm) is None  # not forked yet
    assert runner._ctrl_c_targets(warm) == set()
    shell = SimpleNamespace(job_id=str(os.getpid()))
    assert runner._job_root(shell) == os.getpid()
    assert os.getpid() in runner._ctrl_c_targets(shell)


def test_a_no_wait_launch_whose_warm_worker_is_dead_says_its_cells_were_not_started(
    job_env, tmp_path, monkeypatch, capsys
):
    """The warm worker dead before the launcher sends it a cell (killed between its start and the submit):
    the submit's error no longer escapes with the cells' runs created and nothing said about them; each
    cell fails as not started, the CLI names it and exits 1, and a relaunch runs it into that one run."""
    from sweeps import launch as cli
    from sweeps import runner

    spec, cfg, _, hold = _spec(tmp_path, job_env, ["S", "B"])
    hold.touch()
    start = runner._start_warm

    def dead(*args):
        ex = start(*args)
        ex.proc.kill()
        ex.proc.wait()
        return ex

    monkeypatch.setattr(runner, "_start_warm", dead)
    assert cli.main(["-c", str(cfg), "--no-wait"]) == 1
    said = capsys.readouterr().err
    cells = sorted(c.cell_id for c in expand(spec))
    assert all(f"FAILED {c}: not started: the warm worker (pid " in said for c in cells), said
    assert _runs(job_env, spec) == {c: [("SCHEDULED", "0")] for c in cells}  # created, no job recorded
    assert {s.state for s in states_of(spec, job_env).values()} == {"missing"}
    monkeypatch.setattr(runner, "_start_warm", start)
    again = launch(spec, poll_s=0.2)
    assert sorted(again.submitted) == cells and again.errors == {}
    assert _runs(job_env, spec) == {c: [("FINISHED", "1")] for c in cells}
