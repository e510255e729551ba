"""Preemption signals: SIGTERM, SIGUSR1 and SIGUSR2 (what SLURM and submitit send before a job is
preempted or times out) set a flag; the loop checkpoints at the next step boundary and stops.

A terminal's Ctrl-C (SIGINT) does the same for the CLI (`INTERRUPT_SIGNALS`; a second one stops at
once) and for a sweep's local job (`in_local_job`), where a second SIGINT within `SIGINT_ECHO_S` of
the first is that same Ctrl-C: the launcher passes the terminal's SIGINT on to its jobs, which a plain
job (sharing the launcher's process group) has got already. A closed terminal or a dropped ssh session
(SIGHUP) is taken as a Ctrl-C nobody can repeat (`CTRL_C_SIGNALS`): more SIGHUPs (the shell's and the
kernel's) are that same hangup, and a SIGHUP ignored when the process started (``nohup``) stays ignored.

With several processes the ranks agree on a signal through a small all-reduce whose schedule
(`SignalSync`) is bounded in steps and in seconds, and identical on every rank.

Handlers are only installed from the main thread. Previous Python-level handlers are remembered so
that, after the checkpoint, the trainer can hand the signal on (submitit's USR2 handler requeues
the job).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

log = logging.getLogger(__name__)

__all__ = [
    "CTRL_C_SIGNALS",
    "HANGUP_SIGNALS",
    "INTERRUPT_SIGNALS",
    "LOCAL_JOB_ENV",
    "PREEMPTION_SIGNALS",
    "SIGINT_ECHO_S",
    "SIGNAL_SYNC_EVERY",
    "SIGNAL_SYNC_S",
    "PreemptionGuard",
    "SignalSync",
    "STORE_HELD_SIGNALS",
    "interrupts_deferred",
    "signals_deferred",
    "in_local_job",
]

PREEMPTION_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2")) if s is not None
)
#: A closed terminal, a dropped ssh session: SIGHUP (none on Windows)
HANGUP_SIGNALS = tuple(s for s in (getattr(signal, "SIGHUP", None),) if s is not None)
#: The signals taken as a terminal's Ctrl-C: the CLI exits with 128 + the signal, a local job's run ends
#: ``interrupted``; SIGINT again stops at once, SIGHUP again is the same hangup
CTRL_C_SIGNALS = (signal.SIGINT, *HANGUP_SIGNALS)
#: the CLI's: a terminal's Ctrl-C (SIGINT) or hangup (SIGHUP) checkpoints like a preemption
INTERRUPT_SIGNALS = (*PREEMPTION_SIGNALS, *CTRL_C_SIGNALS)
#: What a tracking-store call holds (`interrupts_deferred`): the signals whose Python handlers may raise
#: (a Ctrl-C; SIGTERM and SIGHUP in the launcher, `sweeps.runner.stop_on_signals`)
STORE_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, *HANGUP_SIGNALS)
#: In a local job, a SIGINT this many seconds or less after the first is the same Ctrl-C: the launcher,
#: stopped by the terminal's SIGINT, passes one on to a plain job, which the terminal's has reached too
#: (submitit's controller, which also did, ignores it since session 47: `sweeps.executor.IGNORE_CTRL_C`).
#: A human's second Ctrl-C after that stops the job at once.
SIGINT_ECHO_S = 2.0
#: "1" in a warm worker's child (`sweeps.warm`): a local job, like one of submitit's local executor
LOCAL_JOB_ENV = "DITSCALE_LOCAL_JOB"
#: With several processes, the most steps between two all-reduces that agree on a received signal...
SIGNAL_SYNC_EVERY = 10
#: ... and the most seconds, at the step time measured since the previous one (`SignalSync`): torchrun
#: gives the ranks 30 s between its SIGTERM and its SIGKILL, SLURM's ``--signal`` lead time is similar,
#: and the checkpoint has to be written in that time too. One all-reduce of two floats over gloo costs
#: 0.2-0.4 ms (2 shared CPU cores), so one per 2 s costs nothing measurable.
SIGNAL_SYNC_S = 2.0


def in_local_job(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a local sweep job, whose Ctrl-C may come twice: from a terminal (a plain
    job shares its launcher's process group) and from the launcher, which forwards one to each job (a warm
    worker's jobs, in their own session, get that one only). A job of submitit's local executor
    (``SUBMITIT_EXECUTOR=local``) or a warm worker's child (`LOCAL_JOB_ENV`); not a debug job, which
    runs inside the launcher."""
    env = os.environ if env is None else env
    if env.get("SUBMITIT_DEBUG_JOB_ID"):
        return False
    return env.get(LOCAL_JOB_ENV) == "1" or env.get("SUBMITIT_EXECUTOR") == "local"


class PreemptionGuard:
    """Context manager: while active, the preemption signals only record themselves in ``received``.

    A SIGINT after an earlier SIGINT or SIGHUP raises KeyboardInterrupt (stop at once, without the
    checkpoint), unless it came within ``sigint_echo_s`` seconds of the first one (a local job's:
    `SIGINT_ECHO_S`), which counts as that same Ctrl-C and is ignored. A SIGHUP after either is the
    same hangup (a shell sends its jobs one, the kernel another as the shell exits) and is ignored;
    so is a SIGHUP that was ignored (SIG_IGN) when the guard was entered: ``nohup``. A `signals_deferred`
    entered inside the guard takes its signals over (the trainer's run is ended so)."""

    def __init__(self, signals: tuple[int, ...] = PREEMPTION_SIGNALS, *, sigint_echo_s: float = 0.0):
        self.signals = signals
        self.sigint_echo_s = sigint_echo_s
        self.received: int | None = None
        self._first_sigint: float | None = None  # time.monotonic() of the first SIGINT
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum in CTRL_C_SIGNALS:
            now = time.monotonic()
            if self._first_sigint is None:
                self._first_sigint = now
            elif signum != signal.SIGINT:
                log.info("%s again: the same hangup", signal.Signals(signum).name)
                return
            elif self.sigint_echo_s and now - self._first_sigint <= self.sigint_echo_s:
                log.info("SIGINT again %.3f s after the first: the same Ctrl-C", now - self._first_sigint)
                return
            elif self.received in CTRL_C_SIGNALS:
                raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
        if self.received is None:
            again = ""
            if signum == signal.SIGINT:
                later = f", over {self.sigint_echo_s:g} s later," if self.sigint_echo_s else ""
                again = f" (Ctrl-C again{later} stops at once, without it)"
            log.warning(
                "received %s: checkpointing at the next step boundary%s", signal.Signals(signum).name, again
            )
        self.received = signum

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                if s in HANGUP_SIGNALS and signal.getsignal(s) == signal.SIG_IGN:
                    log.info("%s is ignored (nohup): a hangup leaves the run alone", signal.Signals(s).name)
                    continue
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


class SignalSync:
    """When the ranks of a multi-process run next agree on a signal: after `SIGNAL_SYNC_EVERY` steps
    or, at the step time seen so far, `SIGNAL_SYNC_S` seconds, whichever comes first (at least one step).

    Every rank must take the same decision, and their clocks differ, so rank 0 alone measures: at each
    agreement it `propose`s the next interval in steps from its own clock (the time since the previous
    agreement, which includes validation and checkpoint writes, over the steps taken), the other ranks
    propose 0, the all-reduce adds the proposals, and every rank `agree`s on the sum, an integer,
    hence identical everywhere. The first agreement, before any step was timed, sets one step."""

    def __init__(
        self,
        every_steps: int = SIGNAL_SYNC_EVERY,
        every_s: float = SIGNAL_SYNC_S,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.every_steps, self.every_s, self.clock = int(every_steps), float(every_s), clock
        self.interval = 1  # steps between the last agreement and the next
        self.next_step: int | None = None  # None: agree at the first call
        self._last: tuple[int, float] | None = None  # (step, clock) of the last agreement

    def due(self, step: int) -> bool:
        """Whether the ranks agree at ``step`` (every rank asks with the same step)."""
        return self.next_step is None or step >= self.next_step

    def propose(self, step: int) -> int:
        """Rank 0's next interval, in steps, from its clock: 1 before any step was timed, the same as
        now when no step passed since the last agreement (a repeated check at one step, sampling)."""
        if self._last is None:
            return 1
        steps = step - self._last[0]
        if steps <= 0:
            return self.interval
        step_s = (self.clock() - self._last[1]) / steps
        fit = int(self.every_s // step_s) if step_s > 0 else self.every_steps
        return max(1, min(self.every_steps, fit))

    def agree(self, step: int, interval: int) -> None:
        """Record an agreement at ``step`` on ``interval`` (the all-reduced proposal)."""
        self.interval = max(1, int(interval))
        self.next_step = step + self.interval
        self._last = (step, self.clock())


@contextlib.contextmanager
def signals_deferred(*sigs: int, during: str = "", again_after_s: float | None = None) -> Iterator[list[int]]:
    """Hold ``sigs`` until the block ends, then restore the handlers there were and deliver each one that
    came, which then acts as it would have. Yields the list of the signals held so far (the block may act
    on them, and take off it those it acted on). Used where a signal in the middle would lose something:
    a run being ended in MLflow (torchrun SIGTERMs the other ranks as soon as one dies, a terminal closes;
    ``during`` names it in a warning), a sweep's jobs between submitting and recording them
    (`sweeps.runner`). A signal ignored when the block starts (SIG_IGN: SIGHUP under ``nohup``) stays
    ignored. ``again_after_s``: a SIGINT that comes more than that many seconds after the first one held
    is a second Ctrl-C and raises KeyboardInterrupt at once, for both (None: every SIGINT waits). Entered
    inside a `PreemptionGuard`, it takes the guard's signals over, with no instant at their default
    handlers between the two, and ends by restoring those from before the guard. A no-op off the main
    thread (Python runs signal handlers there only)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    first_sigint: list[float] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and again_after_s is not None:
            if first_sigint and time.monotonic() - first_sigint[0] > again_after_s:
                log.warning(
                    "Ctrl-C again while %s: stopping at once, before that is done", during or "holding it"
                )
                raise KeyboardInterrupt
            first_sigint[:] = first_sigint or [time.monotonic()]
        got.append(signum)

    taken = [s for s in sigs if signal.getsignal(s) != signal.SIG_IGN]
    old = {s: _before_guard(s, signal.signal(s, hold)) for s in taken}
    acting = got
    try:
        yield got
    except KeyboardInterrupt:  # one ends the block (a second Ctrl-C): it acts for a held SIGINT too
        acting = [s for s in got if s != signal.SIGINT]
        raise
    finally:
        for s, handler in old.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        # SIGINT last: its KeyboardInterrupt would end this loop before the others acted
        for s in sorted(dict.fromkeys(acting), key=lambda s: s == signal.SIGINT):
            if during:
                log.warning("received %s while %s; acting on it now", signal.Signals(s).name, during)
            signal.raise_signal(s)


@contextlib.contextmanager
def interrupts_deferred(again_after_s: float = SIGINT_ECHO_S) -> Iterator[None]:
    """Hold `STORE_HELD_SIGNALS` that a Python handler takes until the block ends, then give each to that
    handler, restored as it was (a `PreemptionGuard`'s too: the run still checkpoints). For a
    tracking-store call: an exception a handler raises in the middle of MLflow's SQL (a Ctrl-C's
    KeyboardInterrupt, the launcher's `CancelInterrupted` on SIGTERM or SIGHUP) leaves the transaction
    open, and SQLite's lock then stops every later write of this process, the run's end included
    (MLflow's 20 s busy timeout, then an error: the run is left RUNNING). The same signal again more
    than ``again_after_s`` after the first goes to its handler at once, and only then (SIGINT raises
    KeyboardInterrupt: a second Ctrl-C, for a store that hangs). A no-op off the main thread; a
    signal at its default action (which ends the process, and its locks) or ignored is left alone."""
    taken: dict[int, Callable] = {}
    if threading.current_thread() is threading.main_thread():
        taken = {s: h for s in STORE_HELD_SIGNALS if callable(h := signal.getsignal(s))}
    if not taken:
        yield
        return
    held: dict[int, float] = {}  # signal -> time.monotonic() of its first arrival

    def hold(signum: int, frame: FrameType | None) -> None:
        first = held.get(signum)
        if first is None:
            held[signum] = time.monotonic()
        elif time.monotonic() - first > again_after_s:  # meant: given now, not again as the block ends
            del held[signum]
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            taken[signum](signum, frame)

    for s in taken:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in taken.items():
            signal.signal(s, handler)
        for s in sorted(held, key=lambda s: s == signal.SIGINT):  # SIGINT's KeyboardInterrupt last
            signal.raise_signal(s)


def _before_guard(signum: int, handler: object) -> object:
    """``handler``, or if it is a `PreemptionGuard`'s, the one from before that guard, which the guard's
    exit then leaves alone: a deferral entered inside a guard takes ``signum`` over from it."""
    guard = getattr(handler, "__self__", None)
    return guard._previous.pop(signum) if isinstance(guard, PreemptionGuard) else handler
