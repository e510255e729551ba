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
import time
from collections.abc import Iterator
from pathlib import Path

CELL_LOCK = ".job.lock"  # in the cell's run folder
LAUNCH_LOCK = ".launch.lock"  # in the sweep's folder
_FD = 9  # the job shell's descriptor for the cell lock (dash/sh allow 0-9)
#: A starting job waits this long for the cell lock (a `status` check holds it for microseconds).
CELL_LOCK_WAIT_S = 10.0


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Exclusive lock so two launches of the same sweep cannot submit the same cells twice."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LAUNCH_LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise RuntimeError(
                f"another launch of this sweep is running (pid {holder}, lock {sweep_dir / LAUNCH_LOCK}); "
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


def _held(path: Path) -> str | None:
    """The first bytes of ``path`` (its holder may have written its pid there) where a live process holds
    an exclusive flock on it, else None (no such file, or no holder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return None


def launcher_pid(sweep_dir: str | Path) -> int | None:
    """The pid of the live launcher that holds the sweep's lock (`sweep_lock`; 0 where it has not written
    it yet), else None: no launch of it is running (the kernel drops the lock with its holder, so a
    killed launcher holds none)."""
    text = _held(Path(sweep_dir) / LAUNCH_LOCK)
    return None if text is None else int(text) if text.isdigit() else 0


def cell_lock_held(run_dir: str | Path) -> bool:
    """Whether a live job holds the lock of the cell whose run folder is ``run_dir``."""
    return _held(Path(run_dir) / CELL_LOCK) is not None


def take_cell_lock(fd: int, what: str, wait_s: float = CELL_LOCK_WAIT_S) -> None:
    """Lock the open cell lock file ``fd`` exclusively, waiting up to ``wait_s`` while another job holds
    it; then RuntimeError ``"<what>: another job of this cell is alive"``. The one definition of the
    wait: a warm worker calls it, a local job's shell runs this file with it (`cell_job_lock_lines`),
    before `sweeps` can be imported; so this module imports the standard library only."""
    end = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > end:
                raise RuntimeError(f"{what}: another job of this cell is alive") from None
            time.sleep(0.05)


def cell_job_lock_lines(run_dir: str | Path) -> list[str]:
    """Shell lines for submitit's ``setup`` that make a local job hold its cell's lock: open the lock
    file on descriptor 9 (inherited by submitit's controller, not by the trainer processes) and lock
    it with `take_cell_lock` (this file run as a script: the lock belongs to the open file, which the
    shell keeps); a job whose cell is already held by a live job fails with a message."""
    path = shlex.quote(str(Path(run_dir) / CELL_LOCK))
    script = shlex.quote(str(Path(__file__).resolve()))
    python = shlex.quote(sys.executable)  # -I: no PYTHONPATH, user site or script folder on sys.path
    return [f"exec {_FD}>>{path}", f"{python} -I {script} {_FD} {path} {CELL_LOCK_WAIT_S}"]


if __name__ == "__main__":  # a local job's shell: python lock.py FD LOCK_FILE WAIT_S
    try:
        take_cell_lock(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
    except RuntimeError as e:
        sys.exit(str(e))
