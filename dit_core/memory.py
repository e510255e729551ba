"""Keep freed heap memory in the process instead of returning it to the kernel after every forward.

glibc's malloc serves large blocks with ``mmap`` and gives freed memory at the top of the heap back
to the kernel, so a CPU forward whose activations are a few MB each can pay a page fault per 4 KiB
page on every call (measured in docs/evaluation.md: ~15 % of a CPU evaluation's time).
`keep_freed_memory` raises the mmap threshold to its 64-bit maximum (32 MiB) and the trim threshold
to 1 GiB so the blocks of one forward are reused by the next. Numerics are unchanged.

The price is that a process keeps up to 1 GiB of freed heap for reuse. Set
``DITSCALE_MALLOC_DEFAULTS=1`` to leave glibc's defaults. A no-op off Linux/glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["DEFAULTS_ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory", "out_of_memory"]

log = logging.getLogger(__name__)

#: glibc's `mallopt` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks below this come from the heap, not from ``mmap`` (glibc's maximum on 64-bit)
MMAP_THRESHOLD = 32 << 20
#: free memory at the top of the heap kept before it is returned to the kernel
TRIM_THRESHOLD = 1 << 30
#: set: leave glibc's defaults (for comparisons)
DEFAULTS_ENV = "DITSCALE_MALLOC_DEFAULTS"

_applied = False


def keep_freed_memory() -> bool:
    """Set glibc's thresholds so that freed blocks stay in the process (once per process; forked
    children inherit it). True when they are set, False off glibc or with ``DITSCALE_MALLOC_DEFAULTS``."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get(DEFAULTS_ENV, "") not in ("", "0"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.debug("mallopt refused the thresholds; glibc's defaults stay")
    _applied = ok
    return ok


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: CPU or GPU (``torch.OutOfMemoryError`` is a RuntimeError
    whose message says so), torch or numpy."""
    if isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(
        s in str(err) for s in ("can't allocate memory", "out of memory", "Cannot allocate memory")
    )
