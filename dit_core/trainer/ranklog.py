"""Which process says what: warnings that every rank would give alike are said by rank 0 only, and the
error of a rank that fails is named by rank 0, which owns the MLflow run; and how long a rank waits for
the others (`process_state`, the trainer's and ``python -m dit_core.evaluate``'s ``--dist-timeout-s``)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

log = logging.getLogger(__name__)

__all__ = [
    "DATA_LOGGER",
    "FAILURE_KEY",
    "PEER_GRACE_S",
    "STORE_TIMEOUT_S",
    "WAITING_IN",
    "WATCH_EVERY_S",
    "CollectiveTimeout",
    "PeerWatch",
    "collective_timed_out",
    "exit_now",
    "failed_peers",
    "main_thread_at",
    "main_thread_waits",
    "peer_failures",
    "process_state",
    "publish_failure",
    "raised_waiting",
    "timeout_explained",
    "waited_for",
    "warnings_muted",
    "with_peer_failures",
]

#: the logger of a folder's scan, which names each unreadable file, the same on every rank
DATA_LOGGER = "dit_core.data.imagefolder"
#: the key, in the process group's store, under which a failing rank leaves its error for rank 0
FAILURE_KEY = "ditscale/failed/{rank}"
#: the most seconds a failing rank waits for the store to take its error (the process ends next)
STORE_TIMEOUT_S = 10.0
#: seconds between two looks of `PeerWatch` at the store for an error another rank left
WATCH_EVERY_S = 0.5
#: seconds `PeerWatch` gives a rank that left its error to end: its lost connections then stop this
#: rank's collective, which this rank's own error path handles (2-3 s, measured)
PEER_GRACE_S = 5.0
#: where the main thread's innermost Python frame is while it waits for its peers (`main_thread_waits`):
#: in a collective, or in DDP's backward (its gradients' all-reduce) or forward (its buffers' broadcast)
WAITING_IN = ("/torch/distributed/", "/torch/autograd/", "/torch/nn/parallel/")


@contextlib.contextmanager
def warnings_muted(muted: bool) -> Iterator[None]:
    """While the block runs and ``muted`` holds, `DATA_LOGGER` (and its children) pass on errors only:
    for what another rank, or an earlier read of the same folder, says already. Only the block's
    calls are muted: a file that fails to load while training is named by the rank that loads it."""
    target = logging.getLogger(DATA_LOGGER)
    level = target.level
    if muted:
        target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def _store():
    """The default process group's key-value store (torchrun's or rank 0's TCPStore), or None."""
    try:
        import torch.distributed as dist

        return dist.distributed_c10d._get_default_store() if dist.is_initialized() else None
    except Exception:  # noqa: BLE001 - no store: the error is only in this rank's own log
        return None


def publish_failure(rank: int, error: str) -> None:
    """Leave this rank's ``error`` for rank 0 (`peer_failures`), before this process exits and its peers,
    waiting in a collective, see only gloo's lost connection. Best effort: without a store, nothing."""
    store = _store()
    if store is None:
        return
    key = FAILURE_KEY.format(rank=rank)
    try:
        store.set_timeout(timedelta(seconds=STORE_TIMEOUT_S))  # a store on a dead host: not 30 min
        store.set(key, error)
        store.get(key)  # a round trip: the store holds it before this rank's connections close
    except Exception as e:  # noqa: BLE001 - the store is gone with rank 0: nobody to tell
        log.debug("could not leave rank %d's error in the store: %s", rank, e)


def failed_peers(rank: int, world: int) -> dict[int, str]:
    """``{rank: error}`` that ranks other than ``rank`` left with `publish_failure`, left in the store
    (`peer_failures` takes rank 0's peers' off it)."""
    return _left_errors([other for other in range(world) if other != rank], take=False)


def peer_failures(world: int) -> dict[int, str]:
    """``{rank: error}`` that other ranks left with `publish_failure` (each taken off the store once
    read); without waiting: a rank that failed left its error before its process ended."""
    return _left_errors(range(1, world), take=True)


def _left_errors(ranks, take: bool) -> dict[int, str]:
    """``{rank: error}`` that ``ranks`` left in the store (``take``: deleting each once read)."""
    store, found = _store(), {}
    for rank in ranks if store is not None else ():
        key = FAILURE_KEY.format(rank=rank)
        try:
            if store.check([key]):
                found[rank] = store.get(key).decode(errors="replace")
                if take:
                    store.delete_key(key)
        except Exception as e:  # noqa: BLE001 - the store is gone: this rank's collective fails too
            log.debug("could not read rank %d's error from the store: %s", rank, e)
    return found


def with_peer_failures(own: str, peers: dict[int, str]) -> str:
    """Rank 0's error ``own`` with the errors other ranks left (`peer_failures`) first, each logged:
    ``"<peer error> (on rank 1); rank 0 then stopped on <own>"``. A peer's error that is rank 0's own
    (a non-finite loss, which every rank finds in the same all-reduced losses; a Ctrl-C) is left out;
    ``own`` when no other remains."""
    peers = {rank: error for rank, error in peers.items() if error != own}
    for rank, error in peers.items():
        log.error("rank %d failed: %s", rank, error)
    if not peers:
        return own
    first = "; ".join(f"{error} (on rank {rank})" for rank, error in peers.items())
    return f"{first}; rank 0 then stopped on {own}"


def raised_waiting(err: BaseException) -> bool:
    """Whether ``err`` is a RuntimeError raised where a rank waits for its peers (`WAITING_IN`): a
    collective's lost connection or timeout, not an error of this rank's own."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename.replace(os.sep, "/") if tb is not None else ""
    return isinstance(err, RuntimeError) and any(part in where for part in WAITING_IN)


def collective_timed_out(err: BaseException) -> bool:
    """Whether ``err`` is a collective's timeout (the process group's, `TrainConfig.dist_timeout_s`):
    `raised_waiting`, saying "timed out" (gloo) or "timeout" (NCCL)."""
    return raised_waiting(err) and re.search(r"timed? ?out", str(err), re.IGNORECASE) is not None


class CollectiveTimeout(RuntimeError):
    """This rank waited ``--dist-timeout-s`` for another in a collective (`timeout_explained`)."""


def process_state(timeout_s: float):
    """Accelerate's process-wide `accelerate.PartialState`; with several processes, its process group
    is made here, its collectives timing out after ``timeout_s`` (``--dist-timeout-s``). The first call
    of a process sets it (a CLI's, before its Accelerator). The timeout is given to ``init_process_group``
    directly: ``InitProcessGroupKwargs.to_kwargs()`` (accelerate 1.16) drops a timeout equal to its own
    default (600 s) and torch's gloo default (1800 s) would then apply."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout_s))


def timeout_explained(err: BaseException, timeout_s: float, rank: int, when: str) -> BaseException:
    """``err``, or for a collective's timeout (`collective_timed_out`) a `CollectiveTimeout` that says
    where (``when``: "after step 2 of 50") and names the flag to raise it (raised from ``err``)."""
    if not collective_timed_out(err):
        return err
    return CollectiveTimeout(
        f"rank {rank} stopped {when}: it waited --dist-timeout-s {timeout_s:g} s for the other "
        "ranks in a collective; one is stuck (a deadlock, stuck I/O, an endless loop) or slower than "
        "that; if it is only slow, give a larger --dist-timeout-s"
    )


def main_thread_waits() -> bool:
    """Whether the main thread is in torch's distributed or autograd code (`WAITING_IN`): where it
    waits for a peer, not busy on its own (an MLflow call, a checkpoint write, data loading)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    where = frame.f_code.co_filename.replace(os.sep, "/") if frame is not None else ""
    return any(part in where for part in WAITING_IN)


def main_thread_at() -> str:
    """Where the main thread is: its innermost Python frame, "file:line in function" ("?" if none)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}" if frame else "?"


def waited_for(failed: dict[int, str]) -> bool:
    """Whether one of the errors ``failed`` ``{rank: error}`` left is a `CollectiveTimeout`: that rank
    gave up waiting for the others in a collective."""
    return any(error.startswith(f"{CollectiveTimeout.__name__}: ") for error in failed.values())


class PeerWatch:
    """While a multi-process trainer is built and while it trains, a daemon thread that ends this
    process when another rank failed but its process did not end (stuck in a collective, a non-daemon
    thread): this rank, waiting for it in a collective, would otherwise wait for gloo's timeout (30 min;
    a gloo collective cannot be aborted). Every `WATCH_EVERY_S` it looks in the store for an error another
    rank left (`publish_failure`); one there for `PEER_GRACE_S`, while this rank waits for its peers
    (`main_thread_waits`: a rank busy on its own, e.g. starting its MLflow run, gets there first) and its
    own error path has not started (`claim`), is handed to ``on_stuck({rank: error}, "")``, which ends
    the run, and the process then exits with code 1. A peer that timed out waiting for this rank
    (`waited_for`) while this rank is busy on its own is handed over too, with where this rank's main
    thread is (``on_stuck(failed, main_thread_at())``): this rank is the one stuck (or too slow), and its
    peers are gone."""

    def __init__(self, rank: int, world: int, on_stuck: Callable[[dict[int, str], str], None]) -> None:
        self.rank, self.world, self.on_stuck = rank, world, on_stuck
        self._claimed = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ditscale-peer-watch", daemon=True)

    def __enter__(self) -> PeerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End the watch and wait (up to 2 looks) until its thread no longer reads the store: one
        process group store client, used from two threads at once, left a failing rank's own write
        waiting 10 s for its answer (CI, session 42)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2 * WATCH_EVERY_S)

    def claim(self) -> None:
        """This rank's own error path ends the run: the watch stands down. Blocks for good when the
        watch has claimed it first (it is ending the process)."""
        self._claimed.acquire()

    def _watch(self) -> None:
        seen: dict[int, float] = {}
        while not self._stop.wait(WATCH_EVERY_S):
            found, now = failed_peers(self.rank, self.world), time.monotonic()
            seen = {rank: seen.get(rank, now) for rank in found}
            if not any(now - t >= PEER_GRACE_S for t in seen.values()):
                continue
            waits = main_thread_waits()
            if not (waits or waited_for(found)):
                continue
            if self._stop.is_set() or not self._claimed.acquire(blocking=False):
                return  # this rank is ending the run itself
            try:
                self.on_stuck(found, "" if waits else main_thread_at())
            except Exception as e:  # noqa: BLE001 - the process ends all the same
                log.error("rank %d could not end its run: %s", self.rank, e, exc_info=True)
            finally:
                exit_now(1)


def exit_now(code: int) -> None:
    """End this process at once, from any thread (its main thread may be blocked in gloo)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
