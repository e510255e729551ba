"""Session 45 (hupwin): a closed terminal (SIGHUP) or a Ctrl-C (SIGINT) while `python -m dit_core.train`
ends its MLflow run, its checkpoint written. The trainer held only the preemption signals (SIGTERM, USR1,
USR2) there, and only while it ended a failed run: a SIGHUP killed it with the default action (exit -1)
and a SIGINT raised KeyboardInterrupt mid-way, leaving the run RUNNING. Now both wait until the run is
ended: a finished run ends FINISHED and the CLI exits 129 / 130; a failed run ends FAILED with its error,
then the signal acts. A SIGHUP ignored at start (``nohup``) stays ignored there too.

Handshake, no fixed sleeps: the trainer's `RunTracker.finish` is held (a wrapper writes a file as it is
entered and waits for the test's file) while the test sends the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from _train_helpers import signal_handlers
from mlflow import MlflowClient

from dit_core.checkpoint import load_checkpoint
from dit_core.trainer.signals import signals_deferred

TINY = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2", "--data",
        "digits", "--image-size", "16", "--global-batch-size", "8", "--log-every", "3", "--experiment",
        "test-hupwin", "--max-steps", "3", "--ckpt-every", "0", "--set", "compile=false"]  # fmt: skip

#: The CLI with `RunTracker.finish` held: argv is (hold folder, "finish" | "fail", CLI args...); "fail"
#: makes step 3 raise. finish writes <hold>/ending (the status) as it is entered, then waits for <hold>/go.
HELD_CLI = """
import sys, time
from pathlib import Path
from dit_core import tracking
from dit_core.train import Trainer
from dit_core.trainer.cli import main

hold, mode = Path(sys.argv[1]), sys.argv[2]
real_finish, real_step = tracking.RunTracker.finish, Trainer.train_step

def held_finish(self, status):
    (hold / "ending.tmp").write_text(status)
    (hold / "ending.tmp").replace(hold / "ending")  # whole: the test reads it once it exists
    while not (hold / "go").exists():
        time.sleep(0.01)
    real_finish(self, status)

def failing_step(self):
    if self.step == 2:
        raise RuntimeError("a training error at step 3")
    real_step(self)

tracking.RunTracker.finish = held_finish
if mode == "fail":
    Trainer.train_step = failing_step
sys.exit(main(sys.argv[3:]))
"""


def _terminal_defaults() -> None:
    """In the trainer: SIGINT and SIGHUP as by default, not as the test runner inherited them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _nohup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _signal_while_ending(tmp_path, mode: str, signum: int, preexec=_terminal_defaults):
    """Run the held CLI, send ``signum`` once it is ending its MLflow run, then let the ending go on.
    Returns (exit code, the finish status it was ending with, its stderr, the run, seconds the signal
    to the exit)."""
    hold, out = tmp_path / "hold", tmp_path / "run"
    hold.mkdir()
    cmd = [sys.executable, "-c", HELD_CLI, str(hold), mode, *TINY, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    err = tmp_path / "stderr"
    with open(err, "w") as errf:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errf, preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 90
        while not (hold / "ending").exists():
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the trainer never began to end its run"
            time.sleep(0.02)
        ending = (hold / "ending").read_text()
        t0 = time.monotonic()
        proc.send_signal(signum)
        (hold / "go").touch()
        rc = proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    run = MlflowClient().get_run((out / "mlflow_run_id").read_text().strip())
    return rc, ending, err.read_text(), run, took


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT], ids=["hup", "int"])
def test_ctrl_c_while_a_finished_run_is_ended_waits_for_it_then_exits_128_plus_it(tmp_path, signum):
    """The last step is checkpointed and the run being ended FINISHED when the terminal closes (or
    Ctrl-C): the run ends FINISHED, the CLI exits 129 (130). Before: SIGHUP killed the trainer (exit -1),
    SIGINT raised KeyboardInterrupt out of the ending (exit 130), the run left RUNNING both times."""
    rc, ending, said, run, took = _signal_while_ending(tmp_path, "finish", signum)
    assert ending == "finished"
    assert rc == 128 + signum, said[-3000:]
    assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "finished"), said[-3000:]
    assert f"received {signal.Signals(signum).name} while ending the run, stopped already" in said
    assert load_checkpoint(tmp_path / "run")["step"] == 3
    assert took < 30, took


@pytest.mark.timeout(120)
def test_sighup_while_a_failed_run_is_ended_waits_for_it_then_acts(tmp_path):
    """A training error, then SIGHUP while its run is ended FAILED: the run ends FAILED with the error,
    which is logged, and the hangup then acts (its default: the process ends by it, which a shell
    reports as 129). Before: killed mid-way, the run left RUNNING without its error."""
    rc, ending, said, run, _ = _signal_while_ending(tmp_path, "fail", signal.SIGHUP)
    assert ending == "failed"
    assert rc == -signal.SIGHUP, said[-3000:]
    assert run.info.status == "FAILED", said[-3000:]
    assert run.data.tags["error"] == "RuntimeError: a training error at step 3"
    assert "received SIGHUP while ending the run; acting on it now" in said
    assert "ERROR dit_core.train: a training error at step 3" in said


@pytest.mark.timeout(120)
def test_nohup_sighup_while_the_run_is_ended_stays_ignored(tmp_path):
    """Under ``nohup`` a hangup while the run is ended leaves it alone: exit 0, FINISHED, nothing said.
    Not a before/after test: it holds the end windows to the ``nohup`` convention (a deferral that took
    an ignored SIGHUP would exit 129 here)."""
    rc, _, said, run, _ = _signal_while_ending(tmp_path, "finish", signal.SIGHUP, preexec=_nohup)
    assert rc == 0, said[-3000:]
    assert run.info.status == "FINISHED" and "received SIGHUP" not in said


def test_signals_deferred_leaves_an_ignored_signal_ignored():
    """A signal ignored (SIG_IGN) when the block starts is neither taken, held nor sent again; one with a
    handler is held. Before: an ignored one was taken and held, and a block acting on the held signals
    acted on it."""
    seen: list[int] = []
    with signal_handlers({signal.SIGUSR1: signal.SIG_IGN, signal.SIGUSR2: lambda s, f: seen.append(s)}):
        with signals_deferred(signal.SIGUSR1, signal.SIGUSR2) as held:
            assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
            assert held == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN and seen == [signal.SIGUSR2]


@pytest.mark.parametrize("again_after_s", [None, 0.0, 60.0])
def test_a_second_ctrl_c_after_the_echo_window_stops_a_deferral_at_once(again_after_s):
    """In an ending held for a Ctrl-C (`again_after_s` set: the trainer's `SIGINT_ECHO_S`), a second SIGINT
    more than that long after the first is a second Ctrl-C: KeyboardInterrupt at once, as the guard's
    "Ctrl-C again stops at once" says, so a hung MLflow flush (up to 300 s) can be cut short; one within
    the window is the same Ctrl-C (held once). Without `again_after_s` every SIGINT waits for the block."""
    with signal_handlers({signal.SIGINT: signal.default_int_handler}):
        stopped = False
        try:
            with signals_deferred(signal.SIGINT, again_after_s=again_after_s) as held:
                os.kill(os.getpid(), signal.SIGINT)
                assert held == [signal.SIGINT]
                os.kill(os.getpid(), signal.SIGINT)
                inside = list(held)
        except KeyboardInterrupt:
            stopped = True
        if again_after_s == 0.0:
            assert stopped and held == [signal.SIGINT]  # the second raised in the block
        else:
            assert stopped and inside == [signal.SIGINT, signal.SIGINT]  # raised as the block ended


def test_a_held_sigint_does_not_stop_the_other_held_signals_from_acting():
    """SIGINT and SIGUSR1 held, SIGINT first: as the block ends SIGUSR1's handler runs, then SIGINT raises
    KeyboardInterrupt. Before: SIGINT was re-raised first and its KeyboardInterrupt ended the loop, so a
    SIGTERM held with a Ctrl-C (torchrun's, a scheduler's) never acted."""
    seen: list[int] = []
    handlers = {signal.SIGINT: signal.default_int_handler, signal.SIGUSR1: lambda s, f: seen.append(s)}
    deferred = signals_deferred(signal.SIGINT, signal.SIGUSR1)
    with signal_handlers(handlers), pytest.raises(KeyboardInterrupt), deferred as held:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert held == [signal.SIGINT, signal.SIGUSR1] and not seen
    assert seen == [signal.SIGUSR1]
