"""A Ctrl-C (or the launcher's SIGTERM) that lands inside a tracking-store call: the call finishes, then
the signal acts.

Found in CI (session 57): a KeyboardInterrupt raised while MLflow's SQLAlchemy store committed left
the transaction open; SQLite's lock then held the run's end (``status=failed``, FAILED) for MLflow's
busy timeout (20 s), which then failed: the run stayed RUNNING. Here a real signal is sent to this
process from inside SQLAlchemy (its ``commit`` event, at the one commit a call makes), against a real
sqlite store, through the clients the trainer (`RunTracker`) and the launcher (`sweeps.state`) use."""

from __future__ import annotations

import copy
import os
import signal
import threading
import time

import pytest
from mlflow import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from dit_core.tracking import RunTracker
from dit_core.trainer.signals import STORE_HELD_SIGNALS, PreemptionGuard, interrupts_deferred
from sweeps import state
from sweeps.runner import CancelInterrupted, stop_on_signals


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A sqlite store of this module's own: a lock one test left would stall no other module's."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('ctrl_c_store')}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # its tables, made once
    return uri


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt here, and SIGTERM and SIGHUP are at their defaults, as in a
    terminal (an xdist worker may ignore SIGINT, CI's ``nohup`` ignores SIGHUP); every held signal's
    handler is restored after."""
    previous = {s: signal.getsignal(s) for s in STORE_HELD_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in STORE_HELD_SIGNALS[1:]:
        signal.signal(s, signal.SIG_DFL)
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


class signal_at_commit:
    """Within the block, send this process ``signum`` from inside SQLAlchemy at its next commit, once."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum, self.sent = signum, 0

    def _fire(self, _conn) -> None:
        if not self.sent:
            self.sent += 1
            os.kill(os.getpid(), self.signum)

    def __enter__(self) -> signal_at_commit:
        event.listen(Engine, "commit", self._fire)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(Engine, "commit", self._fire)


def test_the_trainers_tracker_ends_a_run_whose_write_a_ctrl_c_cut_into(store, ctrl_c):
    tracker = RunTracker.start(uri=store, experiment="ctrl-c")
    with pytest.raises(KeyboardInterrupt), signal_at_commit() as cut:
        tracker.set_tags({"written": "yes"})
    assert cut.sent == 1
    tracker.finish("failed")  # before: "database is locked" after 20 s, the run left RUNNING
    run = MlflowClient(tracking_uri=store).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["written"] == "yes" and run.data.tags["status"] == "failed"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["int", "term", "hup"])
def test_the_launchers_client_ends_a_run_whose_write_a_stop_signal_cut_into(store, ctrl_c, signum):
    """The launcher takes SIGTERM and SIGHUP as its Ctrl-C (`stop_on_signals`: `CancelInterrupted`)."""
    stop_on_signals()
    client = state._client(store)
    exp = client.get_experiment_by_name("ctrl-c")
    exp_id = exp.experiment_id if exp else client.create_experiment("ctrl-c")
    run_id = client.create_run(exp_id).info.run_id
    with pytest.raises(KeyboardInterrupt) as raised, signal_at_commit(signum) as cut:
        client.set_tag(run_id, "written", "yes")
    assert cut.sent == 1
    assert getattr(raised.value, "signum", signal.SIGINT) == signum
    assert isinstance(raised.value, CancelInterrupted) == (signum != signal.SIGINT)
    client.set_terminated(run_id, status="KILLED")
    run = MlflowClient(tracking_uri=store).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["written"] == "yes"
    assert copy.copy(client).client is client.client  # a copy looks its client up once, not endlessly


def test_a_ctrl_c_held_for_a_write_still_asks_a_running_trainer_for_its_checkpoint(ctrl_c):
    """Inside a `PreemptionGuard` (a training run), the held SIGINT and SIGTERM go to the guard, as ones
    that came between two writes: a checkpoint is asked for, nothing is raised, the guard's handlers
    are back."""
    with PreemptionGuard((signal.SIGINT, signal.SIGTERM)) as guard:
        handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
        try:
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                assert guard.received is None  # held while the block runs
        except KeyboardInterrupt:
            pytest.fail("the held Ctrl-C raised KeyboardInterrupt instead of reaching the guard")
        assert guard.received == signal.SIGINT  # given last, as it came
        assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "launcher_sigterm"])
def test_a_second_stop_signal_stops_a_hung_write_at_once_and_only_once(ctrl_c, signum):
    stop_on_signals()
    raised = []
    try:
        with interrupts_deferred(again_after_s=0.0):
            os.kill(os.getpid(), signum)  # held
            time.sleep(0.01)
            try:
                os.kill(os.getpid(), signum)  # later: the user's second Ctrl-C, a second kill
                time.sleep(1.0)  # interrupted at once
            except KeyboardInterrupt as e:
                raised.append(("inside", getattr(e, "signum", signal.SIGINT)))
    except KeyboardInterrupt:  # the held one must not be given again: it was the same stop
        raised.append(("after", signum))
    assert raised == [("inside", signum)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_during_a_hung_write_in_training_stops_at_once(ctrl_c):
    """Inside a `PreemptionGuard`, whose handler takes a first Ctrl-C as "checkpoint", the second one
    during a hung store call still stops at once: the two are not given to the guard as one."""
    with PreemptionGuard((signal.SIGINT,)) as guard:
        with pytest.raises(KeyboardInterrupt), interrupts_deferred(again_after_s=0.0):
            os.kill(os.getpid(), signal.SIGINT)  # held
            time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)  # the user's second Ctrl-C
            time.sleep(1.0)  # interrupted at once
        assert guard.received is None  # not turned into a checkpoint request


def test_ignored_and_default_signals_are_left_alone_and_so_are_other_threads(ctrl_c):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # its default action ends the process, and its locks
    with interrupts_deferred():
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    signal.signal(signal.SIGINT, signal.default_int_handler)
    errors: list[BaseException] = []

    def off_main() -> None:
        try:
            with interrupts_deferred():  # signal.signal would raise ValueError here
                pass
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert errors == []
