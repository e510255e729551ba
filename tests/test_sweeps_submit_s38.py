"""Session 38: a launch's submission and its progress line on the real cluster (`bash slurm/slurm-ci.sh
up`, accounting on; skipped with a reason where it is down, tests/conftest.py). Each test failed on the
code before its fix."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _sweep_specs import fake_sweep_yaml, states_of, wait_for

from sweeps import launch as launch_cli
from sweeps import runner
from sweeps.grid import expand, load_spec
from sweeps.runner import launch

pytestmark = pytest.mark.slurm


def slurm_yaml(tmp_path: Path, name: str, sbatch: str) -> Path:
    """One S cell of the fake trainer (no time per step) on SLURM, with the extra sbatch line ``sbatch``."""
    cfg = tmp_path / f"{name}.yaml"
    executor = f"executor: {{name: slurm, timeout_min: 10, mem_gb: 1, sbatch: ['{sbatch}']}}\n"
    cfg.write_text(fake_sweep_yaml(name, f"{name}-{tmp_path.name}") + executor)
    return cfg


class Stopped(Exception):
    """What the test's SIGTERM handler raises (the CLI's own kills the process)."""


def _raise_stopped(signum, frame):
    raise Stopped


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_between_submitting_and_recording_leaves_no_job_unrecorded(
    job_env, tmp_path, monkeypatch, sig
):
    """A Ctrl-C (or SIGTERM) that landed after the job array went out but before the jobs were written into
    the cells' runs left the runs SCHEDULED with no job ("missing"), and a relaunch submitted a second job
    of the same cell into the same run. Now both signals wait until the record is written, then act: the
    cell is its job's (held here, so that it stays put), and a relaunch submits nothing. Failed before the
    fix: the cell was missing and the relaunch submitted it again."""
    assert threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    old = signal.signal(signal.SIGTERM, _raise_stopped)  # restored at the end
    # as from a terminal: an xdist worker inherits SIGINT ignored, which Python then leaves ignored
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = load_spec(slurm_yaml(tmp_path, "window", "--hold")).replace(tracking_uri=job_env)
    (cell,) = expand(spec)
    sent: list[str] = []
    make = runner.make_executor

    def signalled_after_submit(*args, **kwargs):
        ex = make(*args, **kwargs)
        submit = ex.map_array

        def map_array(fn, tasks):
            jobs = submit(fn, tasks)
            sent.extend(str(j.job_id) for j in jobs)
            os.kill(os.getpid(), sig)  # the user's signal, in the window
            time.sleep(0.05)  # Python runs the handler here, between bytecodes
            return jobs

        ex.map_array = map_array
        return ex

    monkeypatch.setattr(runner, "make_executor", signalled_after_submit)
    again: list[str] = []
    try:
        with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else Stopped):
            launch(spec, wait=False)
        assert len(sent) == 1
        st = states_of(spec, job_env)[cell.cell_id]
        assert (st.state, st.job_id, st.attempts) == ("held", sent[0], 1), st
        monkeypatch.setattr(runner, "make_executor", make)
        again = launch(spec, wait=False).submitted
        assert again == []
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
        jobs = set(sent) | set(again)
        subprocess.run(["scancel", *{j.split("_")[0] for j in jobs}], check=False)


def _until_line(capsys, pattern: str, timeout_s: float = 60.0) -> str:
    """The launcher's stderr (read from a thread's launch) until a line matches ``pattern``."""
    seen = [""]

    def found() -> bool:
        seen[0] += capsys.readouterr().err
        return re.search(pattern, seen[0], re.M) is not None

    try:
        wait_for(found, f"a progress line matching {pattern!r}", timeout_s)
    except AssertionError as e:
        raise AssertionError(f"{e}; the launcher wrote:\n{seen[0]}") from None
    return seen[0]


def _waiting_launch(argv: list[str]) -> tuple[threading.Thread, dict]:
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("rc", launch_cli.main(argv)))
    t.start()
    return t, box


def test_a_waiting_launchers_progress_line_says_held(job_env, tmp_path, capsys):
    """A waiting launcher's progress line counted a held job (`scontrol hold`, here `sbatch --hold`) as
    `queued`, where `status` says `held`. Now the line says held too (squeue, which alone gives the hold,
    is asked about pending jobs once per sacct call, not each poll). Failed before the fix: `1 queued`."""
    cfg = slurm_yaml(tmp_path, "heldline", "--hold")
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    (cell,) = expand(spec)
    t, box = _waiting_launch(["-c", str(cfg), "--tracking-uri", job_env, "--poll", "0.2"])
    job = ""
    try:
        wait_for(lambda: states_of(spec, job_env)[cell.cell_id].state == "held", "the job to be held", 60)
        job = states_of(spec, job_env)[cell.cell_id].job_id
        err = _until_line(capsys, r"^\[\d\d:\d\d\] 0/1 done, 0 running, 1 held, 0 failed$")
        assert "queued" not in err and " 1 running" not in err, err
        subprocess.run(["scontrol", "release", job], check=True)
        t.join(120)
        assert not t.is_alive() and box["rc"] == 0
        assert states_of(spec, job_env)[cell.cell_id].state == "finished"
    finally:
        if t.is_alive() and job:
            subprocess.run(["scancel", job.split("_")[0]], check=False)


def test_the_progress_line_says_queued_until_sacct_shows_the_job(job_env, tmp_path, capsys, monkeypatch):
    """The first progress line counted every cell `running` until sacct listed its job (its state
    UNKNOWN), whatever the job did. Here sacct never answers (accounting down) and the job waits for its
    begin time: the line says `1 queued` (squeue's word), never running, until the job starts. Failed
    before the fix: `1 running` on every line."""
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "sacct").write_text("#!/bin/sh\necho 'sacct: error: slurmdbd is down' >&2\nexit 1\n")
    (shims / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", str(shims), prepend=os.pathsep)
    cfg = slurm_yaml(tmp_path, "firstline", "--begin=now+1hour")
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    t, box = _waiting_launch(["-c", str(cfg), "--tracking-uri", job_env, "--poll", "0.2"])
    job = ""
    try:
        wait_for(lambda: states_of(spec, job_env)["S-2-3e9"].job_id is not None, "the submission", 60)
        job = states_of(spec, job_env)["S-2-3e9"].job_id
        err = _until_line(capsys, r"^\[\d\d:\d\d\] 0/1 done, 0 running, 1 queued, 0 failed$")
        assert " 1 running" not in err, err
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        t.join(120)
        assert not t.is_alive() and box["rc"] == 0
    finally:
        if t.is_alive() and job:
            subprocess.run(["scancel", job.split("_")[0]], check=False)
