"""Atomic file writes: a reader, or a job killed at any moment (SIGKILL included), sees the old file or
the new one, never a torn one. Torch-free, so the launcher and the analysis can use it."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def atomic_write(path: Path, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync it and rename it over ``path``: a
    reader (or a job killed at any moment) sees the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty ``.<name>.<random>.tmp`` beside ``path``, open for writing. Created with mode 0o666
    like a plain ``open()``, so the umask (or the folder's default ACL) gives the renamed file its
    usual mode (0o644 for umask 022), not the 0o600 of ``tempfile.mkstemp``."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut after it keeps the new file)."""
    with contextlib.suppress(OSError):  # platforms that cannot open or fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write` of ``text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode())
