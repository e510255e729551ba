"""One trainer per run folder: an exclusive ``flock`` on ``<out>/.train.lock`` for a run's lifecycle.

Two trainers on one ``--out`` would both write its checkpoints and log to its MLflow run.
`Trainer.run` takes this lock (non-blocking) before it writes anything there, and a second trainer
fails with `OutFolderBusy` (a `ConfigError`: the CLI prints ``error: out: ...`` and exits 2) naming
the folder and the pid holding it. The lock is released when the run ends (any way: ``finally``), so
one process may train several runs one after another (the sweeps' warm workers); like every
``flock`` (`sweeps.lock`), the kernel drops it when its holder dies, SIGKILL included. It is another
file than the sweeps' cell job lock (``.job.lock``), which the job's shell holds around the trainer.

The file stays in the folder between runs and holds ``"<pid> <host>"`` of the holder while locked.
Processes forked while it is held (DataLoader workers) share the lock until they exit; the holder
unlocks explicitly at the end, which releases it for them too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..checkpoint import checkpoint_dir, list_checkpoints
from ..configio import ConfigError

__all__ = ["TRAIN_LOCK", "OutFolderBusy", "checkpoints_state", "out_folder_lock"]

log = logging.getLogger("dit_core.train")

TRAIN_LOCK = ".train.lock"
#: What ``flock`` fails with on a file system that does not support it (e.g. Lustre mounted without
#: ``flock``): the run goes on unlocked, with a warning, rather than not at all.
_NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
#: What creating the run folder or its lock file fails with where ``out`` cannot be written or made: no
#: permission, a read-only or pseudo file system (``/proc``), a path through a file, or a link to a
#: target that does not exist (``mkdir`` says it exists, and it is no folder).
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EEXIST)


class OutFolderBusy(ConfigError):
    """Another trainer holds the run folder's `TRAIN_LOCK`."""


@contextlib.contextmanager
def out_folder_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<out>/.train.lock`` (creating ``out``) for the ``with`` block; `OutFolderBusy` at once,
    without waiting, if another process (or another open of it in this one) holds it."""
    out = Path(out)
    path = out / TRAIN_LOCK
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by exec'd programs
    except OSError as e:
        if e.errno not in _NOT_WRITABLE:
            raise
        raise ConfigError(
            f"out: cannot write to {out} ({_why(out, e)}); the trainer writes its checkpoints there: give "
            "a folder you can write to with --out"
        ) from None
    try:
        if not _try_lock(fd, path):
            yield path
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _why(out: Path, e: OSError) -> str:
    """Why ``out`` could not be made: a link on its path to nothing, else the error's own words."""
    broken = next((p for p in (out, *out.parents) if p.is_symlink() and not p.exists()), None)
    if broken is None:
        return e.strerror
    return f"{broken} is a link to {os.readlink(broken)}, which does not exist"


def _try_lock(fd: int, path: Path) -> bool:
    """Lock ``fd`` (True); False, with a warning, where the file system has no ``flock``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        who = f"pid {' on '.join(holder[:2])}" if holder else "pid unknown"
        raise OutFolderBusy(
            f"out: {path.parent} is in use by another trainer ({who}, lock {path}); wait for it to "
            "finish, or use another --out"
        ) from None
    except OSError as e:
        if e.errno not in _NO_FLOCK:
            raise
        log.warning("cannot lock %s (%s): this file system has no flock, so nothing stops a second "
                    "trainer on this --out", path, e.strerror)  # fmt: skip
        return False
    return True


def checkpoints_state(out: str | os.PathLike) -> tuple[tuple[str, int, int], ...]:
    """``(name, size, mtime_ns)`` of the step files and ``latest.json`` of ``<out>/checkpoints``: a
    trainer compares it before and after taking the lock, to notice checkpoints another trainer
    wrote (and finished) while this one was reading its resume point."""
    state = []
    for p in [*list_checkpoints(out), checkpoint_dir(out) / "latest.json"]:
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            state.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(state)
