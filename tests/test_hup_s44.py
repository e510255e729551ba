"""Session 44 (hup): a closed terminal or a dropped ssh session (SIGHUP) stops `python -m dit_core.train`
as its Ctrl-C does: a checkpoint at the next step boundary, the MLflow run ended KILLED, exit 129
(128 + SIGHUP), also when its writes to the hung-up terminal fail (EIO).
Before: the trainer died of the signal at once (exit -1), no checkpoint since the last periodic one, its
run left RUNNING. A SIGHUP ignored at start (``nohup``) stays ignored; a sweep's local job ends its run
``interrupted``, as on a Ctrl-C.

Handshakes, no fixed sleeps: the trainer's own progress (its log line or its bar on the terminal)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios

import pytest
from _train_helpers import one_thread, read_until, signal_handlers, tiny_config
from mlflow import MlflowClient

from dit_core.checkpoint import load_checkpoint
from dit_core.train import Trainer, train
from dit_core.trainer.signals import PreemptionGuard

TINY = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2", "--data",
        "digits", "--image-size", "16", "--global-batch-size", "8", "--log-every", "3", "--experiment",
        "test-hup", "--max-steps", "100000", "--ckpt-every", "0", "--set", "compile=false"]  # fmt: skip


def _cmd(out) -> list[str]:
    return [sys.executable, "-m", "dit_core.train", *TINY, "--out", str(out)]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _stopped_at(out, seen: int) -> int:
    """The step of ``out``'s newest checkpoint, a step boundary at or after ``seen``; its run KILLED."""
    ck = load_checkpoint(out)
    assert ck["step"] >= seen and ck["ledger"]["images_seen"] == 8 * ck["step"]
    run = MlflowClient().get_run((out / "mlflow_run_id").read_text().strip())
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "preempted")
    return ck["step"]


def _as_terminal() -> None:  # in the child, after setsid: the pty on fd 0 becomes its controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # a terminal's command does not inherit the test runner's `nohup` (CI's, say): SIGHUP as by default
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _bar_step(master: int, at_least: int) -> int:
    """Read the trainer's tqdm bar off the pty ``master`` until it shows step ``at_least`` or later."""
    tail = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        chunk = os.read(master, 4096) if ready else b""
        assert chunk, f"the trainer left the terminal or went quiet: {tail[-1500:]!r}"
        tail = (tail + chunk)[-4000:]
        steps = [int(n) for n in re.findall(rb"(\d+)/100000", tail)]
        if steps and max(steps) >= at_least:
            return max(steps)


@pytest.mark.timeout(120)
def test_closed_terminal_checkpoints_and_exits_129(tmp_path):
    """The trainer's controlling terminal (a pty) closes while it trains: the kernel sends it SIGHUP,
    its writes to the terminal fail (EIO), and a second SIGHUP comes (a shell's to its jobs): one
    checkpoint at the next step boundary, not a stop at once, exit 129. Before: exit -1, no
    checkpoint, run RUNNING."""
    out = tmp_path / "run"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(_cmd(out), env=_env(), stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=_as_terminal)  # fmt: skip
    os.close(slave)
    try:
        seen = _bar_step(master, 6)
        os.close(master)  # the terminal window closes
        proc.send_signal(signal.SIGHUP)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 129
    step = _stopped_at(out, seen)
    assert [p.name for p in (out / "checkpoints").glob("step_*.pt")] == [f"step_{step:07d}.pt"]


def _ignore_sighup() -> None:  # in the child: what `nohup` does before it runs the command
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


@pytest.mark.timeout(120)
def test_sighup_ignored_at_start_stays_ignored(tmp_path):
    """`nohup python -m dit_core.train ...`: SIGHUP was ignored when the trainer started, so a hangup
    leaves it training (it steps on, says nothing of it); SIGTERM still checkpoints (143). Not a
    before/after test: it holds the fix to the ``nohup`` convention (a guard that took SIGHUP whatever
    its inherited disposition fails it)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, preexec_fn=_ignore_sighup)  # fmt: skip
    try:
        read_until(proc, "step 6/100000 | loss")
        proc.send_signal(signal.SIGHUP)
        lines = read_until(proc, "step 15/100000 | loss")  # at least one log interval after the SIGHUP
        proc.send_signal(signal.SIGTERM)
        lines += proc.stderr.readlines()
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    assert rc == 143 and "received SIGHUP" not in text and "received SIGTERM" in text, text[-3000:]
    assert _stopped_at(out, 15) >= 15


def test_guard_takes_sighup_as_a_ctrl_c_nobody_can_repeat():
    """SIGHUP again is the same hangup; a SIGINT within the local job's echo window after it is the
    launcher passing the hangup on as a Ctrl-C; a later SIGINT (CLI: no window) stops at once."""
    cli = PreemptionGuard()
    for signum in (signal.SIGHUP, signal.SIGHUP):
        cli._handle(signum, None)
    assert cli.received == signal.SIGHUP
    with pytest.raises(KeyboardInterrupt):
        cli._handle(signal.SIGINT, None)
    local = PreemptionGuard(sigint_echo_s=60.0)
    local._handle(signal.SIGHUP, None)
    local._handle(signal.SIGINT, None)
    assert local.received == signal.SIGHUP


def test_local_job_sighup_ends_the_run_interrupted(tmp_path, monkeypatch):
    """A sweep's local job whose terminal closes (SIGHUP after step 3, then the launcher's SIGINT): the
    checkpoint at step 3, the run KILLED with status=interrupted, as on a Ctrl-C. Before: SIGHUP was not
    the trainer's (here a recording handler took it; in a real job it killed the job) and the job
    trained to the end."""
    hups = []
    real_step = Trainer.train_step

    def step_then_hangup(self):
        real_step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGINT)  # the launcher's, within SIGINT_ECHO_S

    monkeypatch.setattr(Trainer, "train_step", step_then_hangup)
    with one_thread(), signal_handlers({signal.SIGHUP: lambda s, f: hups.append(s)}):
        res = train(tiny_config(tmp_path, steps=30, **{"checkpoint.every": 0}), local_job=True)
    assert (res.status, res.signal, res.step) == ("preempted", "SIGHUP", 3)
    run = MlflowClient().get_run(res.run_id)
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "interrupted")
