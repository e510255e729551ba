"""Session 40, helper "slurm2": the sweep launcher on the real SLURM cluster and a real `mlflow server`
(docs/testing.md, session 40): a second Ctrl-C during the cancel of unrecorded SLURM jobs, a relaunch
after a launcher SIGKILLed before its record, a store failing behind a healthy server, the dry run's
sbatch flags. Each fix's test failed on the code before it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from _sweep_specs import ctrl_c_twice_once_cancelled, runs_by_cell, states_of, wait_for
from conftest import free_port, start_mlflow_server, stop_mlflow_server
from test_left_s39 import two_cell_yaml
from test_slurm_s40 import alive, held, held_until

from sweeps import launch as launch_cli
from sweeps import runner
from sweeps.grid import load_spec
from sweeps.runner import sweep_dir


def jobs_named(sweep: str, sacct: bool = False) -> list[str]:
    """The ids of sweep ``sweep``'s jobs (job name ``ditscale-<sweep>``) that squeue lists, or, ``sacct``,
    that sacct has (over or not)."""
    name = f"ditscale-{sweep}"
    cmd = (
        ["sacct", "-X", "-n", "-P", "-o", "JobID", "--name", name]
        if sacct
        else ["squeue", "-h", "-r", "-n", name, "-o", "%i"]
    )
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.slurm
def test_slurm_a_second_ctrl_c_during_the_cancel_wait_exits_130_at_once_naming_the_jobs_and_the_kill(
    job_env, tmp_path, monkeypatch, capsys
):
    """The tracking server dies while the launcher records two running SLURM jobs; it scancels them and
    waits for them to end (their shells ignore SIGTERM and sleep on: squeue lists them COMPLETING). The
    user presses Ctrl-C, then again. The launcher stops waiting, sends `scancel --full --signal=KILL` to
    the jobs squeue still lists, and exits 130 within seconds, naming them, what slurmctld answered (it
    signals no job that is already ending: SLURM kills those after its KillWait) and the `squeue -j`
    check. Before the fix: exit 130 with the plain Ctrl-C line ("SLURM jobs keep running"), which named
    no job and said the cancelled jobs ran on."""
    assert threading.current_thread() is threading.main_thread()
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
    store, port = tmp_path / "server", free_port()
    server = {"proc": start_mlflow_server(store, port=port)[0]}
    url = f"http://127.0.0.1:{port}"
    release = tmp_path / "release"  # the jobs end once the test has looked at them (or at KillWait)
    executor = "{name: slurm, timeout_min: 10, mem_gb: 1, " + held_until(release) + "}"
    cfg = two_cell_yaml(tmp_path, "hurry", executor, tmp_path / "events")
    spec = load_spec(cfg).replace(tracking_uri=url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the launcher gives up at once
    real = runner.record_submissions
    ids: list[str] = []

    def server_dies_once_the_jobs_run(uri, subs):
        ids.extend(s.job.job_id for s in subs)
        wait_for(lambda: set(alive(ids).values()) == {"RUNNING"} and len(alive(ids)) == 2, "the jobs", 60)
        wait_for(lambda: held(release) == 2, "the jobs' shells to hold", 60)
        stop_mlflow_server(server["proc"])
        real(uri, subs)

    monkeypatch.setattr(runner, "record_submissions", server_dies_once_the_jobs_run)
    folders = [sweep_dir(spec) / "cells" / c for c in ("S-2-3e9", "B-2-3e9")]
    try:
        t, second = ctrl_c_twice_once_cancelled(folders, 120, 1.0)
        code = launch_cli.main(["-c", str(cfg), "--tracking-uri", url, "--poll", "0.5"])
        took = time.monotonic() - second[0]
        listed = alive(ids)
        release.touch()
        err = capsys.readouterr().err
        # "at once": 1-2 s idle; bounded well below KillWait's 30 s, which the launcher waited for before
        assert code == 130 and took < 15, (code, f"{took:.1f} s", err)
        assert set(listed.values()) == {"COMPLETING"}, listed  # ending: the check below means something
        joined = ",".join(sorted(ids))
        assert f"scancel --full --signal=KILL {joined} was refused" in err, err
        assert "30 s (KillWait)" in err and f"`squeue -j {joined}` lists none" in err, err
        assert "SLURM jobs keep running" not in err, err
        wait_for(lambda: not alive(ids), "SLURM to end the cancelled jobs", 60)
    finally:
        release.touch()
        signal.signal(signal.SIGINT, old_int)
        subprocess.run(["scancel", *{j.split("_")[0] for j in ids}], check=False)
        stop_mlflow_server(server["proc"])


#: A launcher (run as a script) that is slow to write its jobs into their runs: it says the job ids in
#: the file argv[1] and sleeps, so that a SIGKILL lands between submitting and recording.
SLOW_RECORD = """
import sys, time
from pathlib import Path
from sweeps import launch, runner
def slow(uri, subs):
    Path(sys.argv[1]).write_text(" ".join(s.job.job_id for s in subs))
    time.sleep(120)
runner.record_submissions = slow
sys.exit(launch.main(sys.argv[2:]))
"""


@pytest.mark.slurm
def test_slurm_a_relaunch_after_a_launcher_killed_before_its_record_submits_no_second_job(
    job_env, tmp_path, capsys
):
    """A launcher is SIGKILLed after sbatch accepted the job array, before the jobs were written into their
    cells' runs. The jobs run on (submitit had moved their task pickles in place) and train their cells
    into the runs, unrecorded; the runs name no job, so a relaunch took the cells for missing and submitted
    a second job of each beside them: before the fix, measured, the relaunch submitted both cells and one
    run logged its last step twice. A SLURM launch now asks squeue for live jobs of the sweep (its job name,
    their logs in its folder) that no run records and refuses, naming them (exit 2, nothing submitted);
    once they have ended, a relaunch finds the cells finished, each in its one run, no step twice."""
    events, release = tmp_path / "events", tmp_path / "release"
    # The jobs wait for the test before they train: alive at the relaunch however loaded the machine is.
    hold = f"setup: ['while [ ! -e {release} ]; do sleep 0.2; done']"
    executor = "{name: slurm, timeout_min: 10, mem_gb: 1, " + hold + "}"
    cfg = two_cell_yaml(tmp_path, f"killed-{uuid.uuid4().hex[:8]}", executor, events)  # its own job name
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    script, said = tmp_path / "slow_record.py", tmp_path / "said"
    script.write_text(SLOW_RECORD)
    argv = ["-c", str(cfg), "--tracking-uri", job_env, "--poll", "0.5"]
    proc = subprocess.Popen([sys.executable, str(script), str(said), *argv])
    ids: list[str] = []
    try:
        wait_for(lambda: said.exists() or proc.poll() is not None, "the launcher to submit", 120)
        proc.kill()  # SIGKILL: nothing of the launcher runs after it
        proc.wait()
        ids = said.read_text().split()
        assert len(ids) == 2 and set(alive(ids).values()) <= {"PENDING", "RUNNING"}, alive(ids)
        assert {st.state for st in states_of(spec, job_env).values()} == {"missing"}

        code = launch_cli.main(argv)
        err = capsys.readouterr().err
        listed = sorted(alive(ids))
        assert code == 2 and listed == sorted(ids), (code, listed, err)
        assert f"squeue lists job(s) {','.join(ids)} of sweep '{spec.name}'" in err, err
        assert "nothing submitted" in err and f"scancel {','.join(ids)}" in err, err
        array = ids[0].split("_")[0]
        assert sorted(jobs_named(spec.name)) == sorted(ids)  # no other job of the sweep went out

        release.touch()
        wait_for(lambda: not alive(ids), "the unrecorded jobs to end", 90)
        assert launch_cli.main(argv) == 0
        states = states_of(spec, job_env)
        assert {c: st.state for c, st in states.items()} == {"S-2-3e9": "finished", "B-2-3e9": "finished"}
        assert sorted(
            ln.split()[0] for ln in events.read_text().splitlines() if ln.split()[1] == "start"
        ) == [
            "B-2-3e9",
            "S-2-3e9",
        ]
        from mlflow.tracking import MlflowClient

        for cell, runs in runs_by_cell(job_env, spec.experiment).items():
            (run,) = runs
            steps = [m.step for m in MlflowClient(job_env).get_metric_history(run.info.run_id, "train/loss")]
            assert steps == sorted(set(steps)), (cell, steps)
        # slurmctld hands its job records to slurmdbd in the background: sacct may lag (CI, session 44)
        wait_for(lambda: jobs_named(spec.name, sacct=True), "sacct to list the sweep's jobs", 60)
        assert {j.split("_")[0] for j in jobs_named(spec.name, sacct=True)} == {array}
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["scancel", *{j.split("_")[0] for j in ids}], check=False)


def test_status_and_launch_against_a_server_whose_store_fails_say_so_without_a_traceback(
    tmp_path, capsys, monkeypatch
):
    """A real `mlflow server` that answers its /health probe while its store fails (here its sqlite file
        overwritten in place: every query is "file is not a database"). `status` and a launch passed the
        server check, then died in `read_runs` with MLflow's exception (a RestException for the server's 400,
    or a MlflowException once its retries of a 500 ran out): a 40-line traceback, exit 1.
        Both now say which store failed and why in one line and exit 2; the launch submits nothing."""
    store, port = tmp_path / "server", free_port()
    proc = start_mlflow_server(store, port=port)[0]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's retries of a 5xx: 4 min by default
    cfg = two_cell_yaml(tmp_path, "broken", "{name: local}", tmp_path / "events")
    try:
        with open(store / "mlflow.db", "r+b") as f:  # the server's open connections read it from now on
            f.write(b"not a database" * 512)
        for command in (["status"], ["run", "--executor", "local"]):
            code = launch_cli.main([*command, "-c", str(cfg), "--tracking-uri", url])
            out = capsys.readouterr()
            assert code == 2, (command, code, out)
            said = (  # a 5xx or 400: refused at the server check since session 41 (tests/test_http500_s41.py)
                f"error: the MLflow tracking store at {url} failed (",
                f"error: MLflow tracking server {url} answers HTTP ",
            )
            assert out.err.startswith(said), out.err
            assert "Traceback" not in out.err and len(out.err.splitlines()) == 1, out.err
        assert not (tmp_path / "events").exists()  # nothing trained
    finally:
        stop_mlflow_server(proc)


@pytest.mark.slurm
def test_slurm_the_dry_run_shows_the_sbatch_flags_a_launch_then_submits(job_env, tmp_path, capsys):
    """The dry run listed the cells and the bill, but not what sbatch would get: nothing to check a job
    array's resources, time, signal and extra flags against before submitting. It now prints the flags of
    the script submitit writes for the cells a launch would submit (`sweeps.executor.sbatch_flags`, made
    by submitit's own function, nothing written); a launch right after submits a job array whose
    `#SBATCH` lines are exactly those. Before the fix: no such line."""
    executor = "{name: slurm, timeout_min: 5, mem_gb: 1.5, signal_delay_s: 30, sbatch: ['--qos=normal']}"
    cfg = two_cell_yaml(tmp_path, "flags", executor, tmp_path / "events")
    argv = ["-c", str(cfg), "--tracking-uri", job_env, "--output-dir", str(tmp_path / "out")]
    assert launch_cli.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    said = next((ln for ln in out.splitlines() if ln.startswith("sbatch for those 2 cells: ")), "")
    assert said, out
    assert not (tmp_path / "out").exists()  # a dry run makes nothing
    flags = said.split(": ", 1)[1].split()
    assert {
        "--array=0-1%2",
        "--mem=1536MB",
        "--time=5",
        "--signal=USR2@30",
        "--qos=normal",
        "--requeue",
    } <= set(flags), flags
    ids: list[str] = []
    try:
        assert launch_cli.main([*argv, "--no-wait"]) == 0
        jobs = capsys.readouterr().out.split("jobs: ", 1)[1].splitlines()[0]
        ids = [j.split("=")[1] for j in jobs.split(", ")]
        array = ids[0].split("_")[0]
        script = tmp_path / "out" / "flags" / "jobs" / array / f"{array}_submission.sh"
        sent = [
            ln.removeprefix("#SBATCH").strip()
            for ln in script.read_text().splitlines()
            if ln.startswith("#SBATCH")
        ]
        assert sent == flags
        wait_for(lambda: not alive(ids), "the jobs to end", 90)
        assert launch_cli.main([*argv, "--dry-run"]) == 0  # nothing left to submit: no sbatch line
        out = capsys.readouterr().out
        assert "a launch would submit 0 of 2 cells" in out and "sbatch for" not in out, out
    finally:
        subprocess.run(["scancel", *{j.split("_")[0] for j in ids}], check=False)
