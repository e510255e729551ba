"""File locks: one launcher per sweep (`sweep_lock`) and one live job per cell (`cell_job_lock_lines`).

Both are ``flock`` locks, which the kernel drops when the last process holding them exits, SIGKILL
included, so a lock never outlives its holder. A local job takes its cell's lock in the job's
shell before submitit's controller starts, and the controller inherits it: the lock is held for
the job's whole life, requeues included, and `cell_lock_held` tells another process (a relaunch,
``status``) whether the cell's job is alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

CELL_LOCK = ".job.lock"  # in the cell's run folder
_FD = 9  # the job shell's descriptor for the cell lock (dash/sh allow 0-9)
#: A starting job waits this long for the cell lock (a `status` check holds it for microseconds).
CELL_LOCK_WAIT_S = 10.0


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Exclusive lock so two launches of the same sweep cannot submit the same cells twice."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".launch.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise RuntimeError(
                f"another launch of this sweep is running (pid {holder}, lock {sweep_dir / '.launch.lock'}); "
                "wait for it or use `python sweeps/launch.py status`"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cell_lock_held(run_dir: str | Path) -> bool:
    """Whether a live job holds the lock of the cell whose run folder is ``run_dir``."""
    path = Path(run_dir) / CELL_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return False


def cell_job_lock_lines(run_dir: str | Path) -> list[str]:
    """Shell lines for submitit's ``setup`` that make a local job hold its cell's lock: open the lock
    file on descriptor 9 (inherited by submitit's controller, not by the trainer processes) and lock
    it, waiting up to 10 s; a job whose cell is already held by a live job fails with a message."""
    path = Path(run_dir) / CELL_LOCK
    code = (
        "import fcntl,sys,time\n"
        f"end=time.monotonic()+{CELL_LOCK_WAIT_S}\n"
        "while True:\n"
        " try: fcntl.flock(9,fcntl.LOCK_EX|fcntl.LOCK_NB); break\n"
        " except BlockingIOError:\n"
        "  if time.monotonic()>end: sys.exit(sys.argv[1]+': another job of this cell is alive')\n"
        "  time.sleep(0.05)\n"
    )
    return [
        f"exec {_FD}>>{shlex.quote(str(path))}",
        f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {shlex.quote(str(path))}",
    ]
