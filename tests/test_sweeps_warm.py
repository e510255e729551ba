"""The local executor's warm workers (`sweeps.warm`): cells forked from one process that imported the
trainer once, with the plain path's guarantees (one run per cell, liveness by the cell lock, a
SIGKILLed cell seen as interrupted and resumed, requeue on USR2, logs and exit codes in the job
folder), and the same training results as a fresh process per cell.

Most jobs run the stand-in trainer (`test_sweeps_fake_trainer`); one tiny cell runs the real one.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
from pathlib import Path

import pytest
from _sweep_specs import (
    assert_relaunch_resumes,
    assert_requeued_to_the_same_result,
    fake_final_weight,
    fake_trainer_spec,
    one_s_cell,
    relaunch_while_running,
    runs_by_cell,
    signal_cell_mid_run,
    states_of,
    step_of,
    tiny_real_spec,
    wait_for,
)
from mlflow.tracking import MlflowClient

from sweeps.executor import warm_unsupported
from sweeps.grid import ExecutorSpec, SweepSpec, expand
from sweeps.lock import cell_lock_held
from sweeps.runner import launch, sweep_dir


def warm_spec(tmp_path: Path, uri: str, **train) -> SweepSpec:
    """S and B (demo scale), patch 2, one budget: S trains 8 steps, B 2 steps (batch 8)."""
    return fake_trainer_spec(
        tmp_path, uri, name="w", experiment="sweep-warm", budgets=[2.6e9], train=train,
        executor=ExecutorSpec(name="local", local_parallelism=2, max_retries=1),
    )  # fmt: skip


def warm_jobs(spec: SweepSpec) -> list[Path]:
    """Job folders of warm workers: ``<zygote pid>_<n>`` holding the zygote's exit-status file."""
    jobs = sweep_dir(spec) / "jobs"
    return sorted(p for p in jobs.iterdir() if p.is_dir() and (p / f"{p.name}_exit").exists())


def test_warm_is_the_default_local_path_and_falls_back_when_it_cannot_fork():
    assert warm_unsupported(ExecutorSpec(name="local")) == ""
    assert "local_warm" in warm_unsupported(ExecutorSpec(name="local", local_warm=False))
    assert "tasks_per_node=2" in warm_unsupported(ExecutorSpec(name="local", tasks_per_node=2))
    assert "gpus_per_node=1" in warm_unsupported(ExecutorSpec(name="local", gpus_per_node=1))
    assert "setup" in warm_unsupported(ExecutorSpec(name="local", setup=["echo hi"]))


def test_no_warm_flag_and_yaml_key_turn_the_warm_worker_off(tmp_path):
    from sweeps import launch as cli

    parse = cli.build_parser().parse_args
    assert cli.spec_from_args(parse([])).executor.local_warm is True
    assert cli.spec_from_args(parse(["--no-warm"])).executor.local_warm is False
    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: x\nexecutor: {name: local, local_warm: false}\n")
    assert cli.spec_from_args(parse(["-c", str(cfg)])).executor.local_warm is False


def test_warm_sweep_one_run_per_cell_logs_and_exit_codes_then_relaunch_submits_nothing(
    job_env, tmp_path, monkeypatch
):
    monkeypatch.setenv("DITSCALE_EXECUTOR_JOB_ID", "stale")  # e.g. a launch from inside a job: not inherited
    spec = warm_spec(tmp_path, job_env)
    cells = expand(spec)
    res = launch(spec, poll_s=0.3)
    assert res.errors == {}
    jobs = warm_jobs(spec)
    assert sorted(p.name for p in jobs) == sorted(res.job_ids.values())  # every cell ran warm
    zygotes = {name.split("_")[0] for name in res.job_ids.values()}
    assert len(zygotes) == 1  # one warm worker forked both cells
    runs = runs_by_cell(job_env, spec.experiment)
    client = MlflowClient(job_env)
    for c in cells:
        (run,) = runs[c.cell_id]
        job = res.job_ids[c.cell_id]
        folder = sweep_dir(spec) / "jobs" / job
        assert run.info.status == "FINISHED"
        assert run.data.tags["executor"] == "local" and run.data.tags["job_id"] == job
        assert res.results[c.cell_id]["job_id"] == job  # what the real trainer tags its run with
        assert Path(run.data.tags["job_folder"]) == folder
        assert (folder / f"{job}_exit").read_text() == "0"
        kind, result = pickle.loads((folder / f"{job}_0_result.pkl").read_bytes())
        assert kind == "success" and result == res.results[c.cell_id]
        assert f"cell {c.cell_id}" in (folder / f"{job}_0_log.err").read_text()
        hist = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in hist) == list(range(1, c.steps + 1))
        assert res.results[c.cell_id]["weight"] == pytest.approx(fake_final_weight(c), rel=1e-12)
        assert res.results[c.cell_id]["threads"] == max(1, (os.cpu_count() or 1) // 2)
        assert not cell_lock_held(sweep_dir(spec) / "cells" / c.cell_id)  # released at the end
    # each child reseeds `random` (and numpy's) as a fresh process would: the cells' draws differ
    assert len({res.results[c.cell_id]["draw"] for c in cells}) == len(cells)

    again = launch(spec, poll_s=0.3)
    assert again.submitted == [] and sorted(again.plan.finished) == sorted(c.cell_id for c in cells)
    assert {k: len(v) for k, v in runs_by_cell(job_env, spec.experiment).items()} == {
        c.cell_id: 1 for c in cells
    }
    # the relaunch's warm worker had nothing to run: stopped, and its log removed; the first one's stays
    assert len(list((sweep_dir(spec) / "jobs").glob("warm_*.log"))) == 1


def test_failing_cell_reports_the_remote_error_and_exit_status(job_env, tmp_path):
    spec = warm_spec(tmp_path, job_env, fail_cell="B-2-2.6e9", fail_times=1).replace(families=["B"])
    res = launch(spec, poll_s=0.3)
    assert list(res.errors) == ["B-2-2.6e9"]
    assert res.errors["B-2-2.6e9"].startswith("RuntimeError: injected failure of B-2-2.6e9")
    job = res.job_ids["B-2-2.6e9"]
    assert (sweep_dir(spec) / "jobs" / job / f"{job}_exit").read_text() == "1"
    assert states_of(spec, job_env)["B-2-2.6e9"].state == "failed"
    retry = launch(spec, poll_s=0.3)  # the retry continues the same run and succeeds
    assert retry.errors == {} and retry.results["B-2-2.6e9"]["starts"] == 2
    (run,) = runs_by_cell(job_env, spec.experiment)["B-2-2.6e9"]
    assert run.info.status == "FINISHED" and run.data.tags["attempts"] == "2"


def test_relaunch_while_warm_cells_run_submits_nothing(job_env, tmp_path):
    """A --no-wait launch returns once the warm worker holds every cell's lock; its cells go on
    after the launcher has returned, and a relaunch sees them alive and submits nothing."""
    progress, release = tmp_path / "progress", tmp_path / "release"
    # the cells wait before their last step until the test has looked: B's 8 steps take 0.8 s
    spec = warm_spec(tmp_path, job_env, step_s=0.1, progress_file=str(progress), hold_file=str(release))
    spec = spec.replace(budgets=[1e10])
    try:
        first = relaunch_while_running(spec, progress)
        assert {s.state for s in states_of(spec, job_env).values()} <= {"queued", "running"}
    finally:
        release.touch()
    wait_for(lambda: all(s.state == "finished" for s in states_of(spec, job_env).values()), "the cells")
    runs = runs_by_cell(job_env, spec.experiment)
    assert {k: len(v) for k, v in runs.items()} == {c: 1 for c in first.submitted}
    # the zygote outlived the launcher that closed its input, and reaped each cell itself
    exits = [sweep_dir(spec) / "jobs" / job / f"{job}_exit" for job in first.job_ids.values()]
    wait_for(lambda: all(p.exists() for p in exits), "the exit statuses")
    assert [p.read_text() for p in exits] == ["0"] * len(exits)
    assert launch(spec, wait=False).submitted == []


def test_sigkilled_warm_child_is_interrupted_and_resumes_into_its_own_run(job_env, tmp_path):
    spec, cell, res, _, pid = signal_cell_mid_run(warm_spec, tmp_path, job_env, signal.SIGKILL, join_s=60)
    assert "SIGKILL" in res.errors[cell.cell_id]
    folder = sweep_dir(spec) / "jobs" / res.job_ids[cell.cell_id]
    assert (folder / f"{res.job_ids[cell.cell_id]}_exit").read_text() == str(-signal.SIGKILL)
    assert (folder / f"{res.job_ids[cell.cell_id]}_pid").read_text() == str(pid)  # the child was the trainer
    st = states_of(spec, job_env)[cell.cell_id]
    # the launcher that saw the job over ended the run its trainer could not (session 37: was left RUNNING)
    assert st.state == "interrupted" and st.run_status == "KILLED" and st.attempts == 1

    assert_relaunch_resumes(spec, job_env, cell, st.run_id)


def test_usr2_requeues_the_warm_child_which_resumes_to_the_same_result(job_env, tmp_path):
    # SIGUSR2 to the trainer at step 5, as SLURM (or the warm worker's time limit) sends it
    spec, cell, res, run_dir, first_pid = signal_cell_mid_run(
        warm_spec, tmp_path, job_env, signal.SIGUSR2, join_s=90
    )
    run = assert_requeued_to_the_same_result(spec, job_env, cell, res)
    assert int((run_dir / "pid").read_text()) != first_pid  # forked again
    assert run.data.tags["attempts"] == "1"  # a requeue is not a resubmission


@pytest.mark.slow
def test_real_trainer_warm_and_plain_give_the_same_run(job_env, tmp_path):
    """A tiny real cell (validation on) through the warm worker and through a fresh process: the
    same losses bit for bit, each in one MLflow run with the fixed-cost metrics."""
    train = {"log_every": 1, "eval.val_every": 3, "eval.val_examples": 16}
    losses = {}
    for warm in (True, False):
        name = "warm" if warm else "plain"
        spec = tiny_real_spec(
            tmp_path, job_env, name, experiment=f"warm-real-{name}", budget=3e8, train=train,
            executor=ExecutorSpec(name="local", local_parallelism=2, local_warm=warm),
        )  # fmt: skip
        res = launch(spec, poll_s=0.3)
        assert res.errors == {}, res.errors
        (cid,) = res.job_ids
        assert (sweep_dir(spec) / "jobs" / res.job_ids[cid] / f"{res.job_ids[cid]}_exit").exists() == warm
        (run,) = runs_by_cell(job_env, spec.experiment)[cid]
        assert run.info.status == "FINISHED"
        assert {"perf/startup_s", "perf/mlflow_s", "perf/val_s", "perf/train_s"} <= set(run.data.metrics)
        client = MlflowClient(job_env)
        losses[name] = {
            k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
            for k in ("train/loss", "val/loss")
        }
    assert losses["warm"] == losses["plain"] and len(losses["warm"]["train/loss"]) > 1


def test_cancelled_warm_job_stops_with_its_error_and_frees_the_cell(job_env, tmp_path):
    """`WarmJob.cancel` (SIGINT, as submitit's local jobs get): the child stops, the job ends with
    exit status 1 and the KeyboardInterrupt in its result, and the cell's lock is released."""
    from sweeps.task import make_task
    from sweeps.warm import WarmExecutor

    spec, cell, progress = one_s_cell(warm_spec, tmp_path, job_env)
    task = make_task(spec, cell, sweep_dir(spec), job_env, threads=1)
    # a launcher started in the background by a script has SIGINT ignored, and so has its warm worker:
    # the child must take SIGINT back, or the cancel would be lost
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ex = WarmExecutor(sweep_dir(spec) / "jobs", threads=1, trainer=spec.trainer, tracking_uri=job_env)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        job = ex.submit(None, task)
        wait_for(lambda: step_of(progress) >= 2, "progress")
        assert not job.done() and cell_lock_held(task.run_dir)
        job.cancel()
        wait_for(job.done, "the cancelled job")
        assert job.exit_code() == 1
        with pytest.raises(RuntimeError, match=r"(?s)exit status 1.*KeyboardInterrupt"):
            job.results()
        assert not cell_lock_held(task.run_dir)
        assert step_of(progress) < cell.steps
    finally:
        ex.close(wait_s=30)
    assert not ex.alive()


def test_a_killed_warm_worker_leaves_its_cell_running_and_its_success_standing_once_it_ends(
    job_env, tmp_path
):
    """The zygote SIGKILLed (as a second Ctrl-C can leave it) while a cell trains: the orphaned child
    still holds the cell's lock, so the job is not done; once the child ends, the job is done
    without an exit status (only the zygote writes it), and the "success" the child wrote stands
    (session 46: it was an error naming the lost worker, for a cell that had finished). The zygote had
    the executor's thread count in its environment, for the OpenMP / BLAS pools that start when torch
    and numpy load."""
    from sweeps.task import make_task
    from sweeps.warm import WarmExecutor

    spec, cell, progress = one_s_cell(warm_spec, tmp_path, job_env)
    task = make_task(spec, cell, sweep_dir(spec), job_env, threads=1)
    ex = WarmExecutor(sweep_dir(spec) / "jobs", threads=1, trainer=spec.trainer, tracking_uri=job_env)
    job = ex.submit(None, task)
    wait_for(lambda: step_of(progress) >= 2, "progress")
    environ = Path(f"/proc/{ex.proc.pid}/environ").read_bytes().split(b"\0")  # read after its exec
    assert {b"OMP_NUM_THREADS=1", b"MKL_NUM_THREADS=1", b"OPENBLAS_NUM_THREADS=1"} <= set(environ)
    ex.proc.kill()
    ex.proc.wait()
    assert not ex.alive() and cell_lock_held(task.run_dir) and not job.done()
    wait_for(job.done, "the orphaned cell", timeout_s=120)
    assert step_of(progress) == cell.steps and job.exit_code() is None
    with open(job.paths.folder / f"{job.job_id}_0_result.pkl", "rb") as f:
        assert pickle.load(f)[0] == "success"
    assert job.results()[0]["step"] == cell.steps


def test_the_zygote_waits_out_a_liveness_check_on_the_cell_lock_and_refuses_a_live_holder(
    tmp_path, monkeypatch
):
    """`sweeps.warm._lock`, taken before a cell is forked: a shared lock held for a moment (what
    `cell_lock_held`, called by `status` and by every launch, takes) is waited for; a lock held
    throughout is refused with a message naming the cell, and the refused attempt keeps no fd."""
    import fcntl
    import threading

    from sweeps import warm
    from sweeps.lock import CELL_LOCK

    run_dir = tmp_path / "cell"
    run_dir.mkdir()
    holder = os.open(run_dir / CELL_LOCK, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_SH)
    threading.Timer(0.3, fcntl.flock, (holder, fcntl.LOCK_UN)).start()
    fd = warm._lock(str(run_dir))
    assert cell_lock_held(run_dir)
    os.close(fd)
    assert not cell_lock_held(run_dir)
    fcntl.flock(holder, fcntl.LOCK_SH)
    monkeypatch.setattr(warm, "_LOCK_WAIT_S", 0.5)
    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match=f"^{re.escape(str(run_dir))}: another job of this cell is alive$"):
        warm._lock(str(run_dir))
    assert len(os.listdir("/proc/self/fd")) == open_fds
    os.close(holder)


def test_a_cell_that_ends_frees_its_lock_while_a_cell_forked_after_it_still_runs(job_env, tmp_path):
    """The zygote holds every running cell's lock; a child closes the locks of the other cells it
    inherits, so a short cell's lock is free as soon as it ends, even while a cell forked after it
    (which inherited that lock's fd) still trains: a relaunch or `status` sees it finished, not alive."""
    from sweeps.task import make_task
    from sweeps.warm import WarmExecutor

    spec = warm_spec(tmp_path, job_env, step_s=0.2).replace(budgets=[1e10])
    cells = {c.model.name: c for c in expand(spec)}
    short, long = cells["B"], cells["S"]
    assert short.steps * 3 <= long.steps
    ex = WarmExecutor(sweep_dir(spec) / "jobs", threads=1, trainer=spec.trainer, tracking_uri=job_env)
    try:
        jobs = {
            c: ex.submit(None, make_task(spec, c, sweep_dir(spec), job_env, threads=1)) for c in (short, long)
        }
        wait_for(jobs[short].done, "the short cell")
        assert jobs[short].exit_code() == 0 and not jobs[long].done()
        assert not cell_lock_held(jobs[short].run_dir) and cell_lock_held(jobs[long].run_dir)
        wait_for(jobs[long].done, "the long cell")
        assert jobs[long].exit_code() == 0 and not cell_lock_held(jobs[long].run_dir)
    finally:
        ex.close(wait_s=30)


def test_the_time_limit_requeues_a_cell_until_max_num_timeout_then_fails_it(job_env, tmp_path):
    """The zygote's own time limit (``timeout_min`` minus ``signal_delay_s``, here 1 s of a cell that
    needs ~9 s): SIGUSR2, a checkpoint, the cell forked again from it; once it has been requeued
    ``max_num_timeout`` times (1) the next time limit ends the job with an error saying so. The
    attempts never repeat a step: the second one starts where the first one's checkpoint ended."""
    from sweeps.task import make_task
    from sweeps.warm import REQUEUE_EXIT, WarmExecutor

    spec, cell, progress = one_s_cell(warm_spec, tmp_path, job_env, step_s=0.3)
    assert cell.steps * 0.3 > 9 * 1.0
    task = make_task(spec, cell, sweep_dir(spec), job_env, threads=1)
    ex = WarmExecutor(
        sweep_dir(spec) / "jobs", threads=1, trainer=spec.trainer, tracking_uri=job_env,
        timeout_min=1000 / 60, signal_delay_s=999, max_num_timeout=1,
    )  # fmt: skip
    try:
        job = ex.submit(None, task)
        wait_for(job.done, "the time-limited cell", timeout_s=60)
        assert job.exit_code() == REQUEUE_EXIT
        with pytest.raises(RuntimeError, match=r"requeued 1 times \(max_num_timeout\)"):
            job.results()
        assert (Path(task.run_dir) / "starts").read_text() == "2"
        assert 0 < step_of(progress) < cell.steps
        assert not cell_lock_held(task.run_dir)
        (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
        steps = sorted(
            m.step for m in MlflowClient(job_env).get_metric_history(run.info.run_id, "train/loss")
        )
        assert steps == list(range(1, step_of(progress) + 1))
    finally:
        ex.close(wait_s=30)


def test_a_cell_whose_lock_stays_held_is_not_forked_and_its_job_fails_saying_why(job_env, tmp_path):
    """Another process holds the cell's lock for longer than the zygote waits (10 s): the cell is not
    forked (the trainer never starts), and its job ends with exit status 1 and the reason."""
    import fcntl

    from sweeps.lock import CELL_LOCK
    from sweeps.task import make_task
    from sweeps.warm import WarmExecutor

    spec = warm_spec(tmp_path, job_env).replace(families=["S"])
    (cell,) = expand(spec)
    task = make_task(spec, cell, sweep_dir(spec), job_env, threads=1)
    Path(task.run_dir).mkdir(parents=True)
    holder = os.open(Path(task.run_dir) / CELL_LOCK, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    ex = WarmExecutor(sweep_dir(spec) / "jobs", threads=1, trainer=spec.trainer, tracking_uri=job_env)
    try:
        job = ex.submit(None, task)
        wait_for(job.done, "the refused job", timeout_s=60)
        assert job.exit_code() == 1 and not (Path(task.run_dir) / "starts").exists()
        with pytest.raises(RuntimeError, match=r"exit status 1\)(?s:.*)another job of this cell is alive"):
            job.results()
    finally:
        os.close(holder)
        ex.close(wait_s=30)
