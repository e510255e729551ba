"""Preemption signals: SIGTERM, SIGUSR1 and SIGUSR2 (what SLURM and submitit send before a job is
preempted or times out) set a flag; the loop checkpoints at the next step boundary and stops.

Handlers are only installed from the main thread. Previous Python-level handlers are remembered so
that, after the checkpoint, the trainer can hand the signal on (submitit's USR2 handler requeues
the job).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

__all__ = ["INTERRUPT_SIGNALS", "PREEMPTION_SIGNALS", "PreemptionGuard"]

PREEMPTION_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2")) if s is not None
)
#: the CLI's: a terminal's Ctrl-C (SIGINT) checkpoints like a preemption; a second one stops at once
INTERRUPT_SIGNALS = (*PREEMPTION_SIGNALS, signal.SIGINT)


class PreemptionGuard:
    """Context manager: while active, the preemption signals only record themselves in ``received``."""

    def __init__(self, signals: tuple[int, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
        if self.received is None:
            again = " (Ctrl-C again stops at once, without it)" if signum == signal.SIGINT else ""
            log.warning(
                "received %s: checkpointing at the next step boundary%s", signal.Signals(signum).name, again
            )
        self.received = signum

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        else:
            log.info("not in the main thread: preemption signals are not intercepted")
        return self

    def __exit__(self, *exc) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev)  # type: ignore[arg-type]
        self._previous = {}

    def previous_handler(self, signum: int) -> Callable | None:
        """The Python handler that was installed for ``signum`` before ours, if any."""
        prev = self._previous.get(signum)
        return prev if callable(prev) and prev is not signal.default_int_handler else None
