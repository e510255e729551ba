"""Session 46 (trackwin): the last windows where a signal left an MLflow run RUNNING.

1. The run was started (`Trainer.start_tracking`: the run created, then its params and config logged) before
   the trainer's `PreemptionGuard` was entered: a SIGTERM, SIGUSR1 or SIGHUP there ended the process by
   its default action (the CLI exited -15, -10, -1) with the run RUNNING; a SIGINT raised KeyboardInterrupt
   (run FAILED, no checkpoint). Now the guard is entered first: the signal is taken as in training (a
   checkpoint at once, the run KILLED ``preempted``, or ``interrupted`` for a local job's Ctrl-C; the CLI
   exits 143, 129, 130 as for a signal in training).
2. Between the guard's exit (the default handlers back) and the deferral that ends the run, on the
   stopped and on the failed path. Now that deferral is entered inside the guard and takes its signals
   over (`signals_deferred`): the handlers are never at their defaults in between.
3. A second Ctrl-C while the run was ended raised KeyboardInterrupt, then the deferral raised the first,
   held one again as it ended: a second KeyboardInterrupt and a "received SIGINT ...; acting on it now"
   line. Now the second's KeyboardInterrupt acts for both.

The CLI tests hold `RunTracker.log_params` (a file handshake) while the signal is sent; the in-process ones
send it from a wrapped trainer method, with a recording handler standing in for the default action (a
signal the guard failed to take must fail an assertion, not end the test process)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from _train_helpers import one_thread, signal_handlers, tiny_config
from mlflow import MlflowClient

from dit_core import tracking
from dit_core.checkpoint import list_checkpoints
from dit_core.train import Trainer, train
from dit_core.trainer import loop
from dit_core.trainer.signals import INTERRUPT_SIGNALS, PreemptionGuard, signals_deferred

TINY = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2", "--data",
        "digits", "--image-size", "16", "--global-batch-size", "8", "--log-every", "3", "--experiment",
        "test-trackwin", "--max-steps", "3", "--ckpt-every", "0", "--set", "compile=false"]  # fmt: skip

#: The CLI with `RunTracker.log_params` held: argv is (hold folder, CLI args...). It writes <hold>/held as
#: it is entered (the MLflow run exists), then waits for <hold>/go.
HELD_CLI = """
import sys, time
from pathlib import Path
from dit_core import tracking
from dit_core.trainer.cli import main

hold = Path(sys.argv[1])
real = tracking.RunTracker.log_params

def held(self, params):
    (hold / "held").touch()
    while not (hold / "go").exists():
        time.sleep(0.01)
    real(self, params)

tracking.RunTracker.log_params = held
sys.exit(main(sys.argv[2:]))
"""


def _terminal_defaults() -> None:
    """In the trainer: SIGINT and SIGHUP as by default, not as the test runner inherited them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["term", "hup"]
)
def test_cli_signal_while_the_run_is_started_checkpoints_and_ends_it(tmp_path, signum, code):
    """SIGTERM (SIGHUP) while the CLI logs its new run's params: a checkpoint at step 0, the run KILLED
    ``preempted``, exit 143 (129). Before: exit -15 (-1), the run RUNNING, no checkpoint."""
    hold, out = tmp_path / "hold", tmp_path / "run"
    hold.mkdir()
    cmd = [sys.executable, "-c", HELD_CLI, str(hold), *TINY, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    err = tmp_path / "stderr"
    with open(err, "w") as errf:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=errf, preexec_fn=_terminal_defaults
        )
    try:
        deadline = time.monotonic() + 90
        while not (hold / "held").exists():
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the trainer never started its run"
            time.sleep(0.02)
        proc.send_signal(signum)
        (hold / "go").touch()
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = err.read_text()
    run = MlflowClient().get_run((out / "mlflow_run_id").read_text().strip())
    assert rc == code, said[-3000:]
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "preempted"), said[-3000:]
    assert [p.name for p in list_checkpoints(out)] == ["step_0000000.pt"]
    assert f"stopped at step 0/3 ({signal.Signals(signum).name})" in said


# ------------------------------------------------------------------------------------ in-process


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _cfg(tmp_path):
    return tiny_config(tmp_path / "run", steps=3, batch=4, **{"checkpoint.every": 0})


def _status_recorder(seen: list[str], out):
    """A handler standing in for a signal's default action: appends the status of ``out``'s MLflow run
    then to ``seen``."""

    def record(signum, _frame):
        run_id = (out / "mlflow_run_id").read_text().strip()
        seen.append(MlflowClient().get_run(run_id).info.status)

    return record


def _send_first(monkeypatch, owner, name: str, signum: int, times: int = 1) -> None:
    """Patch ``owner.name`` to send this process ``signum`` (``times`` times) before doing its work."""
    real = getattr(owner, name)

    def send_then(*args, **kwargs):
        for _ in range(times):
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, send_then)


@pytest.mark.parametrize("where", ["log_params", "after_start"])
def test_sigterm_once_the_run_exists_stops_it_like_one_in_training(tmp_path, monkeypatch, where):
    """SIGTERM while the new run's params are logged, or after `start_tracking` (as the progress report is
    made): checkpoint at step 0, run KILLED ``preempted``, and the SIGTERM handed on to the handler from
    before (here a recorder; by default it ends the process) once the run is ended. Before: that handler
    got it at once, with the run RUNNING, and (here, where it returns) the run trained on to its end."""
    owner, name = (tracking.RunTracker, "log_params") if where == "log_params" else (loop, "Progress")
    _send_first(monkeypatch, owner, name, signal.SIGTERM)
    seen: list[str] = []
    with signal_handlers({signal.SIGTERM: _status_recorder(seen, tmp_path / "run")}):
        res = train(_cfg(tmp_path), local_job=False, progress_bar=False)
    assert (res.status, res.step, res.signal) == ("preempted", 0, "SIGTERM")
    assert res.checkpoint and res.checkpoint.endswith("step_0000000.pt")
    run = MlflowClient().get_run(res.run_id)
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "preempted")
    assert seen == ["KILLED"]


def test_local_job_ctrl_c_while_the_run_is_started_ends_it_interrupted(tmp_path, monkeypatch):
    """A sweep's local job, Ctrl-C while its run's params are logged: checkpoint at step 0, the run KILLED
    ``interrupted``, as for a Ctrl-C in training. Before: KeyboardInterrupt out of `start_tracking` (the
    run KILLED ``interrupted`` without a checkpoint)."""
    _send_first(monkeypatch, tracking.RunTracker, "log_params", signal.SIGINT)
    try:
        res = train(_cfg(tmp_path), local_job=True, progress_bar=False)
    except KeyboardInterrupt:  # not out of the test session
        pytest.fail("the Ctrl-C stopped the local job at once")
    assert (res.status, res.step, res.signal) == ("preempted", 0, "SIGINT")
    assert res.checkpoint and res.checkpoint.endswith("step_0000000.pt")
    run = MlflowClient().get_run(res.run_id)
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "interrupted")


def test_ctrl_c_twice_while_the_run_is_started_stops_at_once_and_fails_it(tmp_path, monkeypatch):
    """The CLI's signals, Ctrl-C twice while the run's params are logged: KeyboardInterrupt at once, no
    checkpoint, the run FAILED with the error tag (`end_run_on_error`), as a second Ctrl-C in training.
    Not a before/after test (before, the first Ctrl-C did the same): the guard keeps that path."""
    _send_first(monkeypatch, tracking.RunTracker, "log_params", signal.SIGINT, times=2)
    trainer = Trainer(_cfg(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        trainer.run(signals=INTERRUPT_SIGNALS, progress_bar=False)
    run = MlflowClient().get_run(trainer.run_id)
    assert (run.info.status, run.data.tags["error"]) == ("FAILED", "KeyboardInterrupt: ")
    assert list_checkpoints(tmp_path / "run") == []


def test_sigterm_as_a_finished_run_is_ended_never_finds_the_default_handler(tmp_path, monkeypatch):
    """SIGTERM as `end_stopped_run` is entered (after the guard's last step, before its deferral): it
    never reaches the handler from before the guard (by default: the process ends) while the run is
    RUNNING, and the run ends FINISHED. Before: it did (the guard had restored the handlers)."""
    _send_first(monkeypatch, Trainer, "end_stopped_run", signal.SIGTERM)
    seen: list[str] = []
    with signal_handlers({signal.SIGTERM: _status_recorder(seen, tmp_path / "run")}):
        res = train(_cfg(tmp_path), local_job=False, progress_bar=False)
    assert "RUNNING" not in seen
    assert MlflowClient().get_run(res.run_id).info.status == "FINISHED"


def test_sigterm_held_while_a_finished_run_is_ended_acts_through_the_handler_from_before_the_guard(
    tmp_path, monkeypatch
):
    """SIGTERM inside the ending's deferral (as `RunTracker.finish` is called): held until the run is
    FINISHED, then handed to the handler from before the guard (by default: the process ends), not to the
    guard, which would drop it. Fails if the deferral does not take the guard's signals over."""
    _send_first(monkeypatch, tracking.RunTracker, "finish", signal.SIGTERM)
    seen: list[str] = []
    with signal_handlers({signal.SIGTERM: _status_recorder(seen, tmp_path / "run")}):
        res = train(_cfg(tmp_path), local_job=False, progress_bar=False)
    assert res.status == "finished" and seen == ["FINISHED"]


def test_sigterm_as_a_failed_run_is_ended_never_finds_the_default_handler(tmp_path, monkeypatch):
    """A training error, then SIGTERM as `end_run_on_error` is entered: the run ends FAILED with the error
    before the SIGTERM reaches the handler from before the guard, if ever. Before: it reached it first."""
    real_step = Trainer.train_step

    def failing_step(self):
        if self.step == 1:
            raise RuntimeError("a training error at step 2")
        real_step(self)

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    _send_first(monkeypatch, Trainer, "end_run_on_error", signal.SIGTERM)
    seen: list[str] = []
    trainer = Trainer(_cfg(tmp_path))
    with (
        signal_handlers({signal.SIGTERM: _status_recorder(seen, tmp_path / "run")}),
        pytest.raises(RuntimeError),
    ):
        trainer.run(progress_bar=False)
    assert "RUNNING" not in seen
    run = MlflowClient().get_run(trainer.run_id)
    assert (run.info.status, run.data.tags["error"]) == ("FAILED", "RuntimeError: a training error at step 2")


# ---------------------------------------------------------------------------------- the primitives


def test_a_deferral_inside_a_guard_takes_its_signals_over():
    """A deferral entered inside a guard holds the guard's signal, and as it ends restores the handler from
    before the guard, which the held signal reaches; the guard's exit leaves it. Before: the deferral
    restored the guard's handler, which took the held signal (and the guard's exit then restored)."""
    seen: list[int] = []
    with signal_handlers({signal.SIGUSR1: lambda s, f: seen.append(s)}):
        before = signal.getsignal(signal.SIGUSR1)
        with PreemptionGuard((signal.SIGUSR1,)) as guard:
            with signals_deferred(signal.SIGUSR1) as held:
                os.kill(os.getpid(), signal.SIGUSR1)
                assert held == [signal.SIGUSR1]
            assert signal.getsignal(signal.SIGUSR1) is before
        assert signal.getsignal(signal.SIGUSR1) is before
        assert (seen, guard.received) == ([signal.SIGUSR1], None)


def test_a_second_ctrl_c_while_deferred_says_one_thing_and_acts_once(caplog):
    """Ctrl-C, a held SIGUSR1, then Ctrl-C again past ``again_after_s``: one KeyboardInterrupt (no other in
    its handling), one warning for it, none that the first is "acted on now"; SIGUSR1 still acts. Before:
    the held first SIGINT was raised again as the block ended, with that misleading line."""
    caplog.set_level(logging.WARNING, logger="dit_core.trainer.signals")
    seen: list[int] = []
    handlers = {signal.SIGINT: signal.default_int_handler, signal.SIGUSR1: lambda s, f: seen.append(s)}
    deferred = signals_deferred(signal.SIGINT, signal.SIGUSR1, during="ending the run", again_after_s=0.0)
    with signal_handlers(handlers), pytest.raises(KeyboardInterrupt) as stop, deferred:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.__context__ is None
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "Ctrl-C again while ending the run: stopping at once, before that is done",
        "received SIGUSR1 while ending the run; acting on it now",
    ]
    assert seen == [signal.SIGUSR1]
