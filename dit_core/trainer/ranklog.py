"""Which process says what: warnings that every rank would give alike are said by rank 0 only."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["DATA_LOGGER", "warnings_muted"]

#: the logger of a folder's scan, which names each unreadable file, the same on every rank
DATA_LOGGER = "dit_core.data.imagefolder"


@contextlib.contextmanager
def warnings_muted(muted: bool, logger: str = DATA_LOGGER) -> Iterator[None]:
    """While the block runs and ``muted`` holds, ``logger`` (and its children) pass on errors only:
    for what another rank, or an earlier read of the same folder, says already. Only the block's
    calls are muted: a file that fails to load while training is named by the rank that loads it."""
    if not muted:
        yield
        return
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)
