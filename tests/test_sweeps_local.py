"""The sweep machinery on submitit's local executor: completion, idempotent relaunch, retries, requeue,
and the cell record under concurrency (relaunch while jobs run, SIGKILL, two launchers, the cap).

Jobs run `tests/test_sweeps_fake_trainer.py` (the trainer contract with a deterministic recurrence
instead of a DiT) so that these checks take seconds; `test_sweeps_real.py` runs the real trainer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
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
    wait_for,
)
from mlflow.tracking import MlflowClient

from sweeps import launch as cli
from sweeps.grid import ExecutorSpec, SweepSpec, expand
from sweeps.lock import cell_lock_held
from sweeps.runner import launch, longest_first, sweep_dir

REPO = Path(__file__).resolve().parents[1]


def small_spec(tmp_path: Path, uri: str, **train) -> SweepSpec:
    """S and B (demo scale), patch 2, one budget: S trains 8 steps, B 2 steps (batch 8)."""
    return fake_trainer_spec(
        tmp_path, uri, name="t", experiment="sweep-test", budgets=[2.6e9], train=train,
        executor=ExecutorSpec(name="local", local_parallelism=2, max_retries=1),
    )  # fmt: skip


def test_local_sweep_completes_then_relaunch_submits_nothing(job_env, tmp_path, capsys, monkeypatch):
    # the sweep's tracking URI reaches every job: MLflow's own default (what a job would use if the
    # launcher passed none) points at another store, which nothing may create
    elsewhere = tmp_path / "not-the-sweeps-store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    spec = small_spec(tmp_path, job_env)
    cells = expand(spec)
    assert [c.steps for c in cells] == [8, 2]

    res = launch(spec, poll_s=0.3)
    assert res.errors == {}
    assert sorted(res.submitted) == sorted(c.cell_id for c in cells)
    runs = runs_by_cell(job_env, spec.experiment)
    assert sorted(runs) == sorted(c.cell_id for c in cells)
    client = MlflowClient(job_env)
    for c in cells:
        (run,) = runs[c.cell_id]  # exactly one run per cell
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["sweep"] == "t"
        # the launcher's record of the cell: executor, job, folder, attempts, config hash
        assert tags["executor"] == "local" and tags["job_id"] == res.job_ids[c.cell_id]
        assert Path(tags["job_folder"]).is_dir() and tags["attempts"] == "1"
        assert len(tags["config_hash"]) == 16
        assert tags["run_dir"] == str(sweep_dir(spec) / "cells" / c.cell_id)  # where its lock is held
        hist = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in hist) == list(range(1, c.steps + 1))
        # the job's result is the trainer's closed form
        assert res.results[c.cell_id]["weight"] == pytest.approx(fake_final_weight(c), rel=1e-12)
        assert res.results[c.cell_id]["threads"] == max(1, (os.cpu_count() or 1) // 2)

    # `status` given only the sweep's folder shows the cells launched there (its sweep.json), not the
    # bundled demo's that the command line's defaults describe
    capsys.readouterr()
    assert cli.main(["status", "--name", spec.name, "--output-dir", spec.output_dir]) == 0
    out = capsys.readouterr().out
    assert f"experiment {spec.experiment!r} at {job_env}" in out and "2 finished" in out.splitlines()[-1]
    assert "S-2-2.6e9 " in out and "DiT-d3-w48/2" in out and "missing" not in out and "?" not in out
    # a sweep name that nothing holds is an error, not a table of missing cells
    where = ["--output-dir", spec.output_dir, "--experiment", spec.experiment, "--tracking-uri", job_env]
    assert cli.main(["status", "--name", "typo", *where]) == 2
    assert "no sweep 'typo': no folder" in capsys.readouterr().err
    # a command line that names other cells shows those, on the sweep's own settings (its Scale(8, 4),
    # not the bundled demo's); the sweep's other cells keep their model
    argv = ["status", "--name", spec.name, "--output-dir", spec.output_dir, "--experiment", spec.experiment]
    assert cli.main([*argv, "--grid", "S", "--budgets", "1e11", "--min-steps", "1"]) == 0
    rows = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()[3:-1]}
    assert rows["S-2-1e11"] == ["DiT-d3-w48/2", "missing"] and rows["B-2-2.6e9"] == [
        "DiT-d3-w96/2",
        "finished",
    ]

    again = launch(spec, poll_s=0.3)
    assert again.submitted == [] and sorted(again.plan.finished) == sorted(c.cell_id for c in cells)
    runs = runs_by_cell(job_env, spec.experiment)
    assert {k: len(v) for k, v in runs.items()} == {c.cell_id: 1 for c in cells}
    assert all(v[0].data.tags["attempts"] == "1" for v in runs.values())
    # the same cell ids with other settings would resume checkpoints under a different config
    msg = r"launched with other settings \(budget.global_batch_size: '8' -> '4'"
    with pytest.raises(ValueError, match=msg):
        launch(spec.replace(batch_size=4))
    # an override dropped since is a change too: its field is back at the trainer's default
    with pytest.raises(ValueError, match=r"other settings \(step_s: '0.01' -> '0.02'\)"):
        launch(spec.replace(train={}))
    # the cells' folders hold runs of this experiment: another one would start second runs of them
    other = spec.replace(experiment=f"{spec.experiment}-other")
    with pytest.raises(ValueError, match=r"belongs to MLflow run \w+, which experiment .*-other' at "):
        launch(other)
    assert MlflowClient(job_env).get_experiment_by_name(other.experiment) is None  # refused: not made
    assert not elsewhere.exists()


def test_seeds_add_runs_beside_the_cells_already_run(job_env, tmp_path):
    """A finished sweep relaunched with ``seeds: [0, 1]`` trains only the seed-1 cell, in a run of its
    own whose params differ from seed 0's only in the seed (the analysis averages the two)."""
    from analysis.runs import replicate_key

    spec = small_spec(tmp_path, job_env).replace(families=["B"])
    assert launch(spec, poll_s=0.3).submitted == ["B-2-2.6e9"]
    two = spec.replace(seeds=[0, 1])
    second = launch(two, poll_s=0.3)
    assert second.errors == {} and second.submitted == ["B-2-2.6e9-s1"]
    runs = runs_by_cell(job_env, spec.experiment)
    assert {c: len(r) for c, r in runs.items()} == {"B-2-2.6e9": 1, "B-2-2.6e9-s1": 1}
    p0, p1 = (runs[c][0].data.params for c in ("B-2-2.6e9", "B-2-2.6e9-s1"))
    assert (p0["seed"], p1["seed"]) == ("0", "1") and replicate_key(p0) == replicate_key(p1)
    assert launch(two, poll_s=0.3).submitted == []


def test_failed_cell_is_retried_in_the_same_run_up_to_the_limit(job_env, tmp_path, capsys):
    spec = small_spec(tmp_path, job_env, fail_cell="B-2-2.6e9", fail_times=2).replace(families=["B"])
    first = launch(spec, poll_s=0.3)
    assert list(first.errors) == ["B-2-2.6e9"] and "injected failure" in first.errors["B-2-2.6e9"]
    st = states_of(spec, job_env)["B-2-2.6e9"]
    assert st.state == "failed" and st.attempts == 1

    second = launch(spec, poll_s=0.3)  # retry 1 of max_retries=1: fails again (fail_times=2)
    assert second.submitted == ["B-2-2.6e9"] and list(second.errors) == ["B-2-2.6e9"]
    third = launch(spec, poll_s=0.3)  # out of retries: nothing submitted
    assert third.submitted == [] and third.plan.exhausted == ["B-2-2.6e9"]
    # the CLI says what would run it again (a plain relaunch would not)
    argv = ["-c", str(_write_yaml(spec, tmp_path / "sweep.yaml")), "--max-retries", "1", "--poll", "0.3"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "1 cell(s) out of retries (B-2-2.6e9: tried 2 times); relaunch with --max-retries 2 or more" in err
    assert "relaunch the same command" not in err

    fourth = launch(spec.replace(executor={"max_retries": 2}), poll_s=0.3)  # allowed again: succeeds
    assert fourth.submitted == ["B-2-2.6e9"] and fourth.errors == {}
    runs = runs_by_cell(job_env, spec.experiment)
    assert len(runs["B-2-2.6e9"]) == 1  # every retry continued the cell's one MLflow run
    assert runs["B-2-2.6e9"][0].info.status == "FINISHED"
    assert fourth.results["B-2-2.6e9"]["starts"] == 3
    assert runs["B-2-2.6e9"][0].data.tags["attempts"] == "3"


def test_preempted_local_job_requeues_and_resumes_to_the_same_result(job_env, tmp_path):
    """USR2 mid-run: checkpoint, requeue by submitit's local controller, resume, same final state."""
    # SIGUSR2 to the trainer at step 5, as SLURM sends it before a time limit
    spec, cell, res, _, _ = signal_cell_mid_run(small_spec, tmp_path, job_env, signal.SIGUSR2, join_s=90)
    assert cell.steps == 31
    assert_requeued_to_the_same_result(spec, job_env, cell, res)


def test_relaunch_while_jobs_run_submits_nothing_and_creates_no_run(job_env, tmp_path):
    """A --no-wait launch leaves its jobs running; a relaunch (another launcher with no submitit job
    objects of its own) sees them alive through the cell locks and submits nothing."""
    progress, release = tmp_path / "progress", tmp_path / "release"
    # the cells wait before their last step until the test has looked: B's 8 steps take 0.8 s
    spec = small_spec(
        tmp_path, job_env, step_s=0.1, progress_file=str(progress), hold_file=str(release)
    ).replace(budgets=[1e10], families=["S", "B"])
    try:
        first = relaunch_while_running(spec, progress)
        states = states_of(spec, job_env)
    finally:
        release.touch()
    assert {s.state for s in states.values()} <= {"queued", "running"}  # queued: trainer not started yet
    runs = runs_by_cell(job_env, spec.experiment)
    assert {k: len(v) for k, v in runs.items()} == {c: 1 for c in first.submitted}
    assert all(v[0].data.tags["attempts"] == "1" for v in runs.values())
    wait_for(lambda: all(s.state == "finished" for s in states_of(spec, job_env).values()), "the cells")
    assert launch(spec, wait=False).submitted == []


def test_sigkilled_job_is_interrupted_and_resumes_into_its_own_run(job_env, tmp_path):
    # SIGKILL: no handler, no checkpoint-on-exit
    spec, cell, res, _, _ = signal_cell_mid_run(small_spec, tmp_path, job_env, signal.SIGKILL, join_s=60)
    assert cell.cell_id in res.errors  # the job died without a result
    st = states_of(spec, job_env)[cell.cell_id]
    # the launcher that saw the job over ended the run its trainer could not (session 37: was left RUNNING)
    assert st.state == "interrupted" and st.run_status == "KILLED" and st.attempts == 1

    assert_relaunch_resumes(spec, job_env, cell, st.run_id)


def _write_yaml(spec: SweepSpec, path: Path, **train) -> Path:
    data = {
        "name": spec.name,
        "experiment": spec.experiment,
        "tracking_uri": spec.tracking_uri,
        "output_dir": spec.output_dir,
        "families": spec.families,
        "scale": {"width_div": 8, "depth_div": 4},
        "budgets": spec.budgets,
        "batch_size": spec.batch_size,
        "trainer": spec.trainer,
        "final_eval": False,
        "train": {**spec.train, **train},
        "executor": {"name": "local", "local_parallelism": 2},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_two_launchers_started_at_once_submit_each_cell_once(job_env, tmp_path):
    spec = small_spec(tmp_path, job_env, step_s=0.05)
    cfg = _write_yaml(spec, tmp_path / "sweep.yaml")
    cmd = [sys.executable, str(REPO / "sweeps" / "launch.py"), "-c", str(cfg), "--poll", "0.2"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(cmd, **pipes) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0, outs
    # the other one either found the lock taken (exit 2) or ran after the first and found all done
    loser = outs[[p.returncode for p in procs].index(codes[1])] if codes[1] else None
    if codes[1]:
        assert codes[1] == 2 and "another launch of this sweep is running" in loser[1]
    runs = runs_by_cell(job_env, spec.experiment)
    assert {k: len(v) for k, v in runs.items()} == {c.cell_id: 1 for c in expand(spec)}
    assert all(v[0].data.tags["attempts"] == "1" and v[0].info.status == "FINISHED" for v in runs.values())


def test_local_slots_refill_at_once_longest_first_and_never_exceed_the_cap(job_env, tmp_path):
    """Four cells, --parallel 2: never more than 2 alive; the longest (S at 3e10, 94 steps) starts
    first, and the three short ones run one after another beside it (no wave waits for the slowest)."""
    events = tmp_path / "events"
    spec = small_spec(tmp_path, job_env, step_s=0.15, events_file=str(events)).replace(
        families=["S", "B"], budgets=[2.6e9, 3e10]
    )
    cells = {c.cell_id: c for c in expand(spec)}
    reports = []
    res = launch(spec, poll_s=0.3, on_progress=reports.append)
    assert res.errors == {}
    # the time left: unknown until a cell ends, then estimated; all of the work done at the end
    assert all(p.eta_s is None for p in reports if p.done == 0)
    assert any(p.eta_s is not None for p in reports if 0 < p.done < p.total)
    assert reports[-1].done == 4 and reports[-1].work_done == 1.0 and reports[-1].eta_s == 0.0
    spans: dict[str, list[float]] = {}
    for line in events.read_text().splitlines():
        cid, what, t = line.split()
        spans.setdefault(cid, []).append(float(t))
    assert sorted(spans) == sorted(cells) and all(len(v) == 2 for v in spans.values())
    edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
    alive = peak = 0
    for _, d in edges:
        alive += d
        peak = max(peak, alive)
    assert peak == 2  # the cap holds, and is reached
    longest = longest_first(list(cells.values()))[0].cell_id
    first_two = sorted(spans, key=lambda c: spans[c][0])[:2]  # two processes started ms apart may swap
    assert longest == "S-2-3e10" and longest in first_two
    others = sorted((c for c in spans if c != longest), key=lambda c: spans[c][0])
    # the third cell starts while the long one still runs: a freed slot is refilled at once (in
    # waves of two it would wait for the long cell)
    t0 = spans[longest][0]
    seen = {c: [round(t - t0, 2) for t in v] for c, v in spans.items()}
    assert spans[others[1]][0] < spans[longest][1], seen
    # the launcher's own timings agree: the slots were busy most of the time
    assert set(res.timings) == set(cells) and 1.0 < res.busy_slots() <= 2.0


def test_job_killed_before_its_trainer_starts_ends_its_run_and_a_retry_continues_it(job_env, tmp_path):
    """A job SIGKILLed in its set-up, before the trainer takes the cell's run over: the launcher that
    waited on it ends the run (FAILED, tag status=died_before_training, the job's error), instead of
    leaving it SCHEDULED; the retry continues that same run to FINISHED."""
    gate = tmp_path / "setup-may-go-on"
    spec = small_spec(tmp_path, job_env).replace(
        families=["B"], executor={"setup": [f"test -e {gate} || kill -9 $$"]}
    )
    (cell,) = expand(spec)
    first = launch(spec, poll_s=0.3)
    assert (
        list(first.errors) == [cell.cell_id]
        and not (sweep_dir(spec) / "cells" / cell.cell_id / "pid").exists()
    )
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.tags["status"] == "died_before_training" and run.data.tags["attempts"] == "1"
    assert f"job {first.job_ids[cell.cell_id]} ended before training" in run.data.tags["error"]
    st = states_of(spec, job_env)[cell.cell_id]
    assert st.state == "failed" and st.tries == 1

    gate.touch()  # the set-up goes through now: the retry trains the cell in its one run
    second = launch(spec, poll_s=0.3)
    assert second.submitted == [cell.cell_id] and second.errors == {}
    assert second.results[cell.cell_id]["run_id"] == run.info.run_id
    assert second.results[cell.cell_id]["starts"] == 1  # the first job never reached the trainer
    (again,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["status"] == "finished" and again.data.tags["attempts"] == "2"


def test_run_of_a_job_that_failed_its_setup_unwatched_is_ended_by_the_relaunch_out_of_retries(
    job_env, tmp_path
):
    """A --no-wait launch whose job fails in its set-up: no launcher saw it end, so its run is still
    SCHEDULED; the relaunch that finds the cell failed and out of retries (max_retries 0) ends it."""
    spec = small_spec(tmp_path, job_env).replace(
        families=["B"], executor={"setup": [f"test -e {tmp_path / 'never'}"], "max_retries": 0}
    )
    (cell,) = expand(spec)
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    assert launch(spec, wait=False).submitted == [cell.cell_id]
    wait_for(lambda: not cell_lock_held(run_dir), "the job's end")
    st = states_of(spec, job_env)[cell.cell_id]
    assert (st.state, st.run_status, st.attempts) == ("failed", "SCHEDULED", 1)

    again = launch(spec, poll_s=0.3)
    assert again.submitted == [] and again.plan.exhausted == [cell.cell_id]
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert run.info.status == "FAILED" and run.data.tags["status"] == "died_before_training"
    assert run.data.tags["attempts"] == "1"


def test_run_of_a_job_whose_trainer_fails_in_its_set_up_is_ended_by_the_job(job_env, tmp_path):
    """A --no-wait launch whose trainer raises before it takes the run over (here a ValueError before
    MLflow is touched; a data or config error in a real one): the job ends the run itself (FAILED,
    status=died_before_training, the error), with no launcher watching, instead of leaving it
    SCHEDULED until the next launch."""
    spec = small_spec(tmp_path, job_env, setup_error="no such data folder: /nope").replace(families=["B"])
    (cell,) = expand(spec)
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    assert launch(spec, wait=False).submitted == [cell.cell_id]
    wait_for(lambda: not cell_lock_held(run_dir), "the job's end")
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.tags["status"] == "died_before_training"
    assert run.data.tags["error"] == "ValueError: no such data folder: /nope"
    assert states_of(spec, job_env)[cell.cell_id].state == "failed"


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "plain"])
def test_ctrl_c_of_the_launcher_is_not_a_try_against_max_retries(job_env, tmp_path, warm):
    """``python sweeps/launch.py --max-retries 0`` stopped twice by a terminal's Ctrl-C (SIGINT to its
    process group: the launcher and its local jobs): it exits 130, each stopped submission is counted
    in the run's ``interrupts`` tag and not as a try, so a third launch still runs the cell (with
    interrupts counted as tries it would be out of retries after the first) into its one run."""
    spec, cell, progress = one_s_cell(small_spec, tmp_path, job_env)
    cfg = _write_yaml(spec, tmp_path / "sweep.yaml")
    cmd = [sys.executable, str(REPO / "sweeps" / "launch.py"), "-c", str(cfg), "--max-retries", "0"]
    cmd += ["--poll", "0.2"] + ([] if warm else ["--no-warm"])
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    for n in (1, 2):
        reached = step_of(progress)
        # as from a terminal: SIGINT not ignored (an xdist worker's children inherit SIG_IGN, and a
        # Python started with SIGINT ignored never raises KeyboardInterrupt)
        proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_sigint_default, **pipes)
        try:  # until the cell has trained 3 more steps (or the launcher gave up: its output says why)
            wait_for(lambda r=reached, p=proc: step_of(progress) >= r + 3 or p.poll() is not None, "progress")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 130 and "interrupted" in err, (out, err)
        assert step_of(progress) < cell.steps
        st = states_of(spec, job_env)[cell.cell_id]
        assert (st.attempts, st.interrupts, st.tries) == (n, n, 0), st
        assert st.state in ("failed", "interrupted") and st.run_status != "SCHEDULED"

    proc = subprocess.run(cmd, timeout=120, **pipes)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "1 submitted" in proc.stdout and "0 out of retries" in proc.stdout
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert run.info.status == "FINISHED"
    assert (run.data.tags["attempts"], run.data.tags["interrupts"]) == ("3", "2")
    assert int((sweep_dir(spec) / "cells" / cell.cell_id / "starts").read_text()) == 3
