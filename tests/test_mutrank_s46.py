"""Session 46 (mutrank): tests that kill the hand-placed mutants of `dit_core.trainer.ranklog` and
`dit_core.trainer.out_lock` (the session-46 block of `tests/hand_mutants.txt`) that the 2-process runs
of the other tests let live. The store functions run against a real one-process gloo group on a
`HashStore` (every function takes the rank it speaks for, so one process plays several ranks); the
waits of a rank are faked by code compiled under a ``/torch/distributed/`` file name (where
`raised_waiting` and `main_thread_waits` look)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist
from _train_helpers import train_lock_free

from dit_core.configio import ConfigError
from dit_core.trainer import ranklog
from dit_core.trainer.out_lock import TRAIN_LOCK, OutFolderBusy, out_folder_lock
from dit_core.trainer.ranklog import (
    CollectiveTimeout,
    PeerWatch,
    collective_timed_out,
    failed_peers,
    peer_failures,
    publish_failure,
    raised_waiting,
    timeout_explained,
    waited_for,
    warnings_muted,
)

#: a file name where `ranklog.WAITING_IN` says a rank waits for its peers
IN_TORCH = "/site-packages/torch/distributed/fake_c10d.py"
_FAKE = compile(
    "def raise_in_torch(err):\n    raise err\n\n"
    "def wait_in_torch(lock, timeout):\n    return lock.acquire(timeout=timeout)\n",
    IN_TORCH,
    "exec",
)
_TORCH: dict = {}
exec(_FAKE, _TORCH)  # noqa: S102 - two functions whose frames name a torch.distributed file


@pytest.fixture
def store():
    """The store of a one-process gloo group (a `HashStore`, 2 s timeout), torn down after the test."""
    assert not dist.is_initialized()
    hash_store = dist.HashStore()
    hash_store.set_timeout(timedelta(seconds=2))
    dist.init_process_group("gloo", store=hash_store, rank=0, world_size=1)
    try:
        yield dist.distributed_c10d._get_default_store()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the errors left in the store
def test_mutrank_errors_left_by_ranks_are_read_by_the_others(store):
    """Each rank's error under its own key; `failed_peers` (any rank's look, leaving them) includes
    rank 0's and never the looker's own; `peer_failures` (rank 0's error path) reads ranks 1..world-1,
    each taken off the store once read; the text comes back as it was left (not bytes' repr)."""
    t0 = time.monotonic()
    assert failed_peers(0, 2) == {} and peer_failures(2) == {}
    assert time.monotonic() - t0 < 1.0  # a key nobody left is not waited for (the store's 2 s)
    publish_failure(1, "OSError: é unreadable")
    assert failed_peers(0, 2) == {1: "OSError: é unreadable"}
    assert failed_peers(1, 2) == {}  # its own is not a peer's
    publish_failure(0, "CollectiveTimeout: rank 0 stopped")
    publish_failure(2, "ValueError: bad shard")
    for _ in range(2):  # a look leaves them for the next
        assert failed_peers(1, 3) == {0: "CollectiveTimeout: rank 0 stopped", 2: "ValueError: bad shard"}
    assert peer_failures(3) == {1: "OSError: é unreadable", 2: "ValueError: bad shard"}
    assert peer_failures(3) == {} and failed_peers(0, 3) == {}  # taken: named once
    assert failed_peers(1, 3) == {0: "CollectiveTimeout: rank 0 stopped"}


def test_mutrank_a_failing_rank_waits_10_s_at_most_for_the_store(store):
    """`publish_failure` bounds the store's waits to `STORE_TIMEOUT_S` seconds (a store on a dead host
    would keep the failing process 30 min)."""
    publish_failure(1, "OSError: x")
    assert store.timeout == timedelta(seconds=ranklog.STORE_TIMEOUT_S) == timedelta(seconds=10)


class _SendOnlyStore:
    """A store client whose ``set`` is only sent (as a TCPStore client's is): it reaches the server
    with the next request that has an answer (``get``, ``check``); `drop` loses what was not."""

    def __init__(self) -> None:
        self.held: dict[str, bytes] = {}
        self.sent: list[tuple[str, bytes]] = []

    def set_timeout(self, timeout) -> None:
        pass

    def set(self, key: str, value: str) -> None:
        self.sent.append((key, value.encode()))

    def _flush(self) -> None:
        self.held.update(self.sent)
        self.sent.clear()

    def get(self, key: str) -> bytes:
        self._flush()
        return self.held[key]

    def check(self, keys: list[str]) -> bool:
        self._flush()
        return all(k in self.held for k in keys)

    def delete_key(self, key: str) -> bool:
        return self.held.pop(key, None) is not None

    def drop(self) -> None:
        self.sent.clear()


def test_mutrank_a_failing_rank_waits_until_the_store_holds_its_error(monkeypatch):
    """The process ends right after `publish_failure`: its write must have reached the store (a round
    trip), or rank 0 finds nothing and says gloo's lost connection only."""
    fake = _SendOnlyStore()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: fake)
    publish_failure(1, "OSError: x")
    fake.drop()  # the failing process has ended
    assert peer_failures(2) == {1: "OSError: x"}


# ---------------------------------------------------------------- a collective's errors
def _raised(err: BaseException, in_torch: bool) -> BaseException:
    """``err`` as raised in a torch.distributed frame (``in_torch``) or in this file, called from here."""
    try:
        if in_torch:
            _TORCH["raise_in_torch"](err)
        raise err
    except BaseException as e:  # noqa: BLE001
        return e


def test_mutrank_a_collective_timeout_is_told_from_the_frame_it_was_raised_in():
    """`raised_waiting` looks at the innermost frame (where it was raised), not the caller's;
    `collective_timed_out` knows gloo's "timed out" and NCCL's "timeout"; `timeout_explained` names
    the seconds waited and the flag."""
    gloo = _raised(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Read timed out"), in_torch=True)
    nccl = _raised(RuntimeError("Watchdog caught collective operation timeout: WorkNCCL(...)"), in_torch=True)
    assert raised_waiting(gloo) and collective_timed_out(gloo) and collective_timed_out(nccl)
    lost = _raised(RuntimeError("Connection closed by peer"), in_torch=True)
    assert raised_waiting(lost) and not collective_timed_out(lost)
    own = _raised(RuntimeError("Read timed out"), in_torch=False)  # this rank's own code
    assert not raised_waiting(own) and timeout_explained(own, 5, 0, "x") is own
    said = timeout_explained(nccl, 7.5, 1, "after step 2 of 50")
    assert isinstance(said, CollectiveTimeout) and str(said).startswith(
        "rank 1 stopped after step 2 of 50: it waited --dist-timeout-s 7.5 s for the other ranks"
    )
    assert waited_for({1: "OSError: x", 2: f"CollectiveTimeout: {said}"})
    assert not waited_for({1: "OSError: CollectiveTimeout: no", 2: "ValueError: y"})


# ---------------------------------------------------------------- the peer watch
@pytest.fixture
def quick_watch(monkeypatch):
    """`PeerWatch` looking every 0.05 s with 0.3 s of grace; its `exit_now` recorded, not done."""
    exits: list[int] = []
    monkeypatch.setattr(ranklog, "WATCH_EVERY_S", 0.05)
    monkeypatch.setattr(ranklog, "PEER_GRACE_S", 0.3)
    monkeypatch.setattr(ranklog, "exit_now", exits.append)
    return exits


def _watch_until_stuck(rank: int, wait, limit_s: float = 4.0):
    """Run a `PeerWatch` of ``rank`` (world 2) while the main thread blocks in ``wait(lock, limit_s)``;
    ``on_stuck`` releases it. (its calls, seconds the main thread was blocked)."""
    lock, calls = threading.Lock(), []
    lock.acquire()

    def on_stuck(failed, where):
        calls.append((failed, where))
        lock.release()

    t0 = time.monotonic()
    with PeerWatch(rank, 2, on_stuck):
        wait(lock, limit_s)
    return calls, time.monotonic() - t0


def _wait_busy(lock, timeout):
    """This rank busy on its own (its innermost frame is in this file)."""
    return lock.acquire(timeout=timeout)


def test_mutrank_the_watch_ends_a_waiting_rank_once_a_peer_failed_for_the_grace(store, quick_watch):
    """A peer's error stays in the store for `PEER_GRACE_S` while the main thread waits in a collective:
    ``on_stuck({1: error}, "")`` once (the grace counted from the first look that found it), and exit 1."""
    publish_failure(1, "OSError: x")
    calls, took = _watch_until_stuck(0, _TORCH["wait_in_torch"])
    assert calls == [({1: "OSError: x"}, "")] and quick_watch == [1]
    assert 0.3 <= took < 3.0


def test_mutrank_a_busy_rank_is_ended_only_once_its_peer_timed_out_waiting_for_it(store, quick_watch):
    """The main thread busy on its own: a peer's plain error is left to this rank (it gets to a
    collective); a peer's `CollectiveTimeout` (it waited for this rank) ends it, saying where it is."""
    publish_failure(1, "OSError: x")
    calls, took = _watch_until_stuck(0, _wait_busy, limit_s=1.0)
    assert calls == [] and quick_watch == [] and took >= 1.0
    publish_failure(1, "CollectiveTimeout: rank 1 stopped after step 3 of 50: it waited")
    calls, _ = _watch_until_stuck(0, _wait_busy)
    [(failed, where)] = calls
    assert failed == {1: "CollectiveTimeout: rank 1 stopped after step 3 of 50: it waited"}
    assert where.startswith(f"{__file__}:") and where.endswith(" in _wait_busy") and quick_watch == [1]


def test_mutrank_stop_returns_once_the_watch_no_longer_reads_the_store(monkeypatch):
    """`PeerWatch.stop` waits for a look at the store in progress (one store client used from two
    threads at once left a failing rank's own write waiting 10 s)."""
    reading, looks = threading.Event(), []

    def slow_look(rank, world):
        reading.set()
        time.sleep(0.3)
        looks.append(rank)
        return {}

    monkeypatch.setattr(ranklog, "failed_peers", slow_look)  # a look every 0.5 s; stop waits 1 s at most
    watch = PeerWatch(0, 2, lambda failed, where: None)
    with watch:
        assert reading.wait(5)
    assert not watch._thread.is_alive() and looks


# ---------------------------------------------------------------- rank 0 says the folder's warnings
def test_mutrank_warnings_are_muted_only_where_asked_and_only_inside_the_block():
    target = logging.getLogger(ranklog.DATA_LOGGER)
    before = target.level
    with warnings_muted(False):
        assert target.level == before
    with warnings_muted(True):
        assert target.level == logging.ERROR
    assert target.level == before


# ---------------------------------------------------------------- the run folder's lock
@pytest.mark.timeout(30)
def test_mutrank_a_held_folder_is_refused_at_once_naming_its_holder(tmp_path):
    (tmp_path / TRAIN_LOCK).write_text("123456789 a-very-long-host-name-left-by-a-killed-holder\n")
    with out_folder_lock(tmp_path) as path:
        assert path.read_text() == f"{os.getpid()} {socket.gethostname()}\n"  # no stale tail
        t0 = time.monotonic()
        busy = rf"\(pid {os.getpid()} on {socket.gethostname()}, lock "
        with pytest.raises(OutFolderBusy, match=busy), out_folder_lock(tmp_path):
            pass
        assert time.monotonic() - t0 < 5
    assert path.read_text() == "" and train_lock_free(tmp_path)


def test_mutrank_the_lock_is_released_at_the_end_though_a_forked_worker_still_runs(tmp_path):
    """A process forked while the lock is held (a DataLoader worker) shares it; the holder unlocks it
    explicitly at the end, so the folder is free while the worker has not exited yet."""
    r, w = os.pipe()
    with out_folder_lock(tmp_path):
        pid = os.fork()
        if pid == 0:  # the worker: waits for the test, then exits
            os.close(w)
            os.read(r, 1)
            os._exit(0)
    os.close(r)
    try:
        assert train_lock_free(tmp_path)
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)


def test_mutrank_a_file_system_without_flock_at_all_is_used_unlocked(tmp_path, monkeypatch, caplog):
    """flock fails on every call (unlocking too): the run goes on, claims no holder and ends cleanly."""

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)
    with caplog.at_level("WARNING", logger="dit_core.train"), out_folder_lock(tmp_path) as path:
        assert path.read_text() == ""
    assert "this file system has no flock" in caplog.text


def test_mutrank_an_unwritable_out_under_a_good_link_says_why_not_the_link(tmp_path, monkeypatch):
    """A link on the path that resolves is not the reason: the error's own words are."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    out, real_open = tmp_path / "link" / "run", os.open

    def no_write(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_write)
    said = r"^out: cannot write to .*run \(Permission denied\);"
    with pytest.raises(ConfigError, match=said), out_folder_lock(out):
        pass
