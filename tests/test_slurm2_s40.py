"""Session 40, helper "slurm2": the sweep launcher on the real SLURM cluster and a real `mlflow server`
(docs/testing.md, session 40): a second Ctrl-C during the cancel of unrecorded SLURM jobs, ... Each fix's
test failed on the code before it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from _sweep_specs import wait_for
from conftest import free_port, start_mlflow_server, stop_mlflow_server
from test_left_s39 import two_cell_yaml
from test_slurm_s40 import alive

from sweeps import launch as launch_cli
from sweeps import runner
from sweeps.grid import load_spec
from sweeps.runner import sweep_dir
from sweeps.state import CANCELLED_FILE

pytestmark = pytest.mark.slurm


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
    executor = "{name: slurm, timeout_min: 10, mem_gb: 1, setup: [\"trap '' TERM\", 'sleep 20']}"
    cfg = two_cell_yaml(tmp_path, "hurry", executor, tmp_path / "events")
    spec = load_spec(cfg).replace(tracking_uri=url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the launcher gives up at once
    real = runner.record_submissions
    ids: list[str] = []

    def server_dies_once_the_jobs_run(uri, subs):
        ids.extend(s.job.job_id for s in subs)
        wait_for(lambda: set(alive(ids).values()) == {"RUNNING"} and len(alive(ids)) == 2, "the jobs", 60)
        stop_mlflow_server(server["proc"])
        real(uri, subs)

    monkeypatch.setattr(runner, "record_submissions", server_dies_once_the_jobs_run)
    folders = [sweep_dir(spec) / "cells" / c for c in ("S-2-3e9", "B-2-3e9")]
    second: list[float] = []

    def user():  # Ctrl-C once the cancel has begun, and again a second later
        wait_for(lambda: all((f / CANCELLED_FILE).exists() for f in folders), "the cancel", 120)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)
        second.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=user, daemon=True)
    try:
        t.start()
        code = launch_cli.main(["-c", str(cfg), "--tracking-uri", url, "--poll", "0.5"])
        took = time.monotonic() - second[0]
        listed = alive(ids)
        err = capsys.readouterr().err
        assert code == 130 and took < 5, (code, f"{took:.1f} s", err)
        assert set(listed.values()) == {"COMPLETING"}, listed  # ending: the check below means something
        joined = ",".join(sorted(ids))
        assert f"scancel --full --signal=KILL {joined} was refused" in err, err
        assert "30 s (KillWait)" in err and f"`squeue -j {joined}` lists none" in err, err
        assert "SLURM jobs keep running" not in err, err
        wait_for(lambda: not alive(ids), "SLURM to end the cancelled jobs", 60)
    finally:
        signal.signal(signal.SIGINT, old_int)
        subprocess.run(["scancel", *{j.split("_")[0] for j in ids}], check=False)
        stop_mlflow_server(server["proc"])
