"""Warm workers for the local executor: every cell forked from one process that imported it all once.

One *zygote* per launch (``python -m sweeps.warm``) imports the trainer, torch and MLflow and opens
the sweep's store, then forks a child per cell; it keeps the guarantees of submitit's local jobs
(cell lock, USR2 requeue, exit codes and logs, cancel, Ctrl-C): docs/sweeps.md, "Warm workers".

Protocol: the launcher writes the task to ``<job_id>_submitted.pkl`` and one JSON line ``{"job_id",
"folder", "run_dir"}`` to the zygote's stdin; the zygote reports only through files in the job folder,
``<job_id>_0_log.out`` / ``.err``, ``<job_id>_0_result.pkl`` (``("success", result)`` or ``("error",
traceback)``) and ``<job_id>_exit`` (the exit status; negative: killed by that signal), so it
outlives a ``--no-wait`` launcher (at end of input it exits once its children have).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dit_core.atomic import atomic_write_bytes
from dit_core.trainer.signals import LOCAL_JOB_ENV
from sweeps.lock import CELL_LOCK, cell_lock_held, take_cell_lock
from sweeps.lock import CELL_LOCK_WAIT_S as _LOCK_WAIT_S  # a module global: tests shorten it

log = logging.getLogger(__name__)

#: Exit status of a child that checkpointed on SIGUSR2 and wants to be forked again.
REQUEUE_EXIT = 75
#: Modules the zygote imports before forking (missing ones are skipped): what a demo cell's trainer
#: would otherwise import in every job (torch._dynamo: the first optimizer; torchvision and the
#: evaluation stack: the first evaluation; the SQL store: the first MLflow request). A trainer module
#: that defines its own ``WARM_IMPORTS`` (a tuple of module names) is warmed with those instead
#: (`warm_imports`): one without torch need not pay for importing it.
WARM_IMPORTS = (
    "torch", "torch._dynamo", "accelerate", "psutil", "mlflow", "mlflow.tracking", "mlflow.entities",
    "mlflow.store.tracking.sqlalchemy_store", "torchvision.utils", "dit_core.tracking", "dit_core.evaluate",
    "dit_core.evaluate.metrics", "dit_core.trainer.loop", "dit_core.data.build",
    "dit_core.diffusion.gaussian", "dit_core.diffusion.samplers", "sweeps.executor",
)  # fmt: skip
_POLL_S = 0.05


class WarmWorkerGone(RuntimeError):
    """`WarmExecutor.submit` to a worker that has died (killed: the OOM killer, ``kill -9``): nothing sent."""


class _Requeue(BaseException):
    """Raised by the child's SIGUSR2 handler, after the trainer's checkpoint: fork this cell again."""


# ---------------------------------------------------------------------------------- launcher side
class WarmJob:
    """A cell's job in a `WarmExecutor`; the interface `sweeps.runner` uses of a submitit job."""

    def __init__(self, executor: WarmExecutor, job_id: str, folder: Path, run_dir: str):
        self.executor, self.job_id, self.run_dir = executor, job_id, run_dir
        out, err = (folder / f"{job_id}_0_log.{ext}" for ext in ("out", "err"))
        self.paths = SimpleNamespace(folder=folder, stdout=out, stderr=err)

    def _file(self, suffix: str) -> Path:
        return self.paths.folder / f"{self.job_id}{suffix}"

    def exit_code(self) -> int | None:
        """The job's exit status once the zygote has reaped it (negative: killed by that signal)."""
        try:
            return int(self._file("_exit").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def done(self) -> bool:
        if self._file("_exit").exists():
            return True
        # the zygote died (killed, Ctrl-C): the job is over once nothing holds the cell's lock
        return not self.executor.alive() and not cell_lock_held(self.run_dir)

    def unforked(self) -> bool:
        """Whether the job's worker died without forking it (nothing holds the cell's lock, and there is no
        log, result or exit status; looked at in that order: a child holds the lock until it exits):
        nothing of it ran."""
        if self.executor.alive() or cell_lock_held(self.run_dir):
            return False
        return not any(self._file(f).exists() for f in ("_0_log.out", "_0_result.pkl", "_exit"))

    def results(self) -> list[Any]:
        """``[result]`` of a job that succeeded; raises RuntimeError (with the remote traceback) else. A job
        whose worker died (no exit status) succeeded where its child wrote "success": the child writes it
        once the cell is trained, just before it exits 0."""
        code = self.exit_code()
        try:
            kind, value = pickle.loads(self._file("_0_result.pkl").read_bytes())
        except FileNotFoundError:
            kind, value = "error", None
        if kind == "success" and code in (0, None):
            return [value]
        if code is None:
            why = "its warm worker exited before the job ended"
        elif code < 0:
            why = f"killed by {signal.Signals(-code).name}"
        else:
            why = f"exit status {code}"
        raise RuntimeError(
            f"job {self.job_id} failed ({why}); logs in {self.paths.folder}\n{value or ''}".rstrip()
        )

    def pid(self) -> int | None:
        """The job's process, once it has named itself (`_child`, before the cell starts; None before, and
        between a requeued child's end and its successor's naming itself)."""
        try:
            return int(self._file("_pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def cancel(self, check: bool = True) -> None:  # noqa: ARG002 - submitit's signature
        """SIGINT to the job's process, as submitit's local jobs get."""
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(self._file("_pid").read_text()), signal.SIGINT)


class WarmExecutor:
    """Runs cells as children of one zygote process (module docstring); ``submit(fn, task)`` like
    submitit's executors (``fn`` is ignored: a child runs `sweeps.executor.run_task`)."""

    def __init__(
        self,
        folder: Path,
        *,
        threads: int,
        trainer: str,
        tracking_uri: str | None,
        timeout_min: float = 60,
        signal_delay_s: int = 90,
        max_num_timeout: int = 3,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if threads:  # read by OpenMP / MKL / OpenBLAS when torch and numpy load in the zygote
            env |= dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), str(threads))
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        config = {
            "threads": threads, "trainer": trainer, "tracking_uri": tracking_uri,
            "timeout_s": 60.0 * timeout_min, "signal_delay_s": signal_delay_s,
            "max_num_timeout": max_num_timeout,
        }  # fmt: skip
        self.log_path = self.folder / f"warm_{os.getpid()}_{time.time_ns()}.log"
        # in a session of its own: a terminal's Ctrl-C (or hangup) reaches the launcher alone, whose
        # Ctrl-C to the jobs (`sweeps.runner._ctrl_c`) is then their only one, however late it comes
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sweeps.warm", json.dumps(config)], start_new_session=True,
                stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
            )  # fmt: skip
        self.submitted = 0  # jobs so far

    def alive(self) -> bool:
        return self.proc.poll() is None

    def forked(self) -> bool:
        """Whether the worker has forked a cell (its child opened its logs): it got through its start-up."""
        jobs = (f"{self.proc.pid}_{n}" for n in range(1, self.submitted + 1))
        return any((self.folder / job / f"{job}_0_log.out").exists() for job in jobs)

    def submit(self, fn: Any, task: Any) -> WarmJob:  # noqa: ARG002 - submitit's signature
        self.submitted += 1
        job_id = f"{self.proc.pid}_{self.submitted}"
        folder = self.folder / job_id
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / f"{job_id}_submitted.pkl", pickle.dumps(task))
        msg = {"job_id": job_id, "folder": str(folder), "run_dir": task.run_dir}
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as e:
            raise WarmWorkerGone(f"the warm worker (pid {self.proc.pid}) is gone; see {self.log_path}") from e
        return WarmJob(self, job_id, folder, task.run_dir)

    def stop(self) -> None:
        """End the zygote (SIGKILL: it may have inherited SIGINT or SIGTERM ignored): it forks no more
        jobs; those it forked run on (each gets the launcher's Ctrl-C itself, `sweeps.runner._ctrl_c`)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def close(self, wait_s: float | None = None) -> None:
        """End of input: the zygote exits once its children have; ``wait_s``: wait that long for it."""
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        if wait_s:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait_s)

    def kill(self) -> None:
        """Stop a zygote that has no job yet (nothing to submit)."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.log_path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- zygote side
@dataclass
class _Slot:
    job_id: str
    folder: Path
    run_dir: str
    lock_fd: int
    pid: int = 0
    started: float = 0.0
    warned: bool = False
    requeues: int = 0


def _warm_up(trainer: str) -> None:
    """Import what a job imports."""
    _import_or_skip(trainer)  # first: it may name what to warm
    for name in warm_imports(trainer):
        _import_or_skip(name)
    tracking = sys.modules.get("dit_core.tracking")
    if tracking is not None:
        tracking.git_commit()  # cached: the children skip the `git rev-parse`


def _open_store(tracking_uri: str | None) -> None:
    """Open the MLflow store once (its engine and schema check are cached by MLflow per URI, so children
    reuse them; pooled connections are closed before forking). Called at the first request, once the
    launcher has made the store: at start-up a worker opening a store not made yet would run MLflow's
    migrations beside the launcher's, and the loser leaves the store half-migrated for every later open
    ("table ... already exists")."""
    if tracking_uri:
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - the children will report a real problem themselves
            log.warning("could not open the MLflow store %s in the warm worker: %s", tracking_uri, e)
    _dispose_sql_engines()


def _import_or_skip(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as e:
        log.info("warm import %s skipped: %s", name, e)


def warm_imports(trainer: str) -> tuple[str, ...]:
    """The modules a warm worker imports for ``trainer`` besides it: the trainer module's own
    ``WARM_IMPORTS`` where it defines one (and imports), else `WARM_IMPORTS`."""
    module = sys.modules.get(trainer)
    own = getattr(module, "WARM_IMPORTS", None)
    if own is None:
        return WARM_IMPORTS
    if isinstance(own, str) or not all(isinstance(n, str) for n in own):
        raise TypeError(f"{trainer}.WARM_IMPORTS must be a tuple of module names, got {own!r}")
    return tuple(own)


def _dispose_sql_engines() -> None:
    """Close pooled SQL connections (MLflow's SQLAlchemy store) so no connection spans a fork (the
    zygote opens none after this: each child opens its own)."""
    mod = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if mod is not None:
        for engine in list(mod.SqlAlchemyStore._engine_map.values()):
            engine.dispose()


def _lock(run_dir: str) -> int:
    """An fd holding the cell's lock exclusively; RuntimeError if a live job holds it for 10 s."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(run_dir) / CELL_LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        take_cell_lock(fd, run_dir, _LOCK_WAIT_S)
    except RuntimeError:
        os.close(fd)
        raise
    return fd


def _child(slot: _Slot, others: list[int], threads: int) -> int:
    """The forked cell: its own logs, signals and thread count, then `run_task`. Returns the exit status."""
    for fd in others:  # other cells' locks must not live on in this process
        with contextlib.suppress(OSError):
            os.close(fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, ext in ((1, "out"), (2, "err")):
        log_file = slot.folder / f"{slot.job_id}_0_log.{ext}"
        os.dup2(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # a local job, as submitit's local ones: `dit_core.train.train` checkpoints on a Ctrl-C
    os.environ[LOCAL_JOB_ENV] = "1"

    def requeue(signum, frame):  # the trainer calls this after its checkpoint (its previous handler)
        raise _Requeue()

    signal.signal(signal.SIGUSR2, requeue)
    # unseeded draws differ between cells, as in fresh processes (the trainer seeds its own): Python
    # reseeds `random` in a forked child itself, numpy's global generator is reseeded here
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    result_path = slot.folder / f"{slot.job_id}_0_result.pkl"
    code = 0
    try:
        # the child names itself (not the zygote after its fork: killed in between, by a launcher's
        # Ctrl-C, it left a job no Ctrl-C or kill could find), once it takes a Ctrl-C as one
        atomic_write_bytes(slot.folder / f"{slot.job_id}_pid", str(os.getpid()).encode())
        from sweeps.executor import run_task

        task = pickle.loads((slot.folder / f"{slot.job_id}_submitted.pkl").read_bytes())
        log.info("cell %s (sweep %s), warm job %s", task.cell_id, task.sweep, slot.job_id)
        outcome: tuple[str, Any] = ("success", run_task(task, slot.job_id))
    except _Requeue:
        log.info("requeue: the cell is forked again and resumes from its checkpoint")
        # unnamed while alive (its pid cannot be reused yet): until the next child names itself, a
        # Ctrl-C finds no process, as before the first fork, instead of this one's pid, dead or reused
        (slot.folder / f"{slot.job_id}_pid").unlink(missing_ok=True)
        return REQUEUE_EXIT
    except BaseException:  # noqa: BLE001 - everything is reported through the result file
        traceback.print_exc()
        outcome, code = ("error", traceback.format_exc()), 1
    try:
        atomic_write_bytes(result_path, pickle.dumps(outcome))
    except Exception:  # noqa: BLE001 - an unpicklable result
        atomic_write_bytes(result_path, pickle.dumps(("error", traceback.format_exc())))
        code = 1
    return code


class _Zygote:
    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = config
        self.slots: dict[str, _Slot] = {}  # job_id -> slot
        self.by_pid: dict[int, _Slot] = {}
        self.store_opened = False

    def fork(self, slot: _Slot) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        others = [s.lock_fd for s in self.slots.values() if s is not slot] + [sys.stdin.fileno()]
        pid = os.fork()
        if pid == 0:  # the child never returns into the zygote's loop
            code = 1
            try:
                code = _child(slot, others, int(self.cfg["threads"]))
            finally:
                with contextlib.suppress(Exception):
                    logging.shutdown()
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        slot.pid, slot.started, slot.warned = pid, time.monotonic(), False
        self.by_pid[pid] = slot

    def request(self, msg: dict[str, Any]) -> None:
        folder = Path(msg["folder"])
        try:
            fd = _lock(msg["run_dir"])
        except (RuntimeError, OSError) as e:
            atomic_write_bytes(
                folder / f"{msg['job_id']}_0_result.pkl", pickle.dumps(("error", f"RuntimeError: {e}"))
            )
            atomic_write_bytes(folder / f"{msg['job_id']}_exit", b"1")
            return
        slot = _Slot(msg["job_id"], folder, msg["run_dir"], fd)
        self.slots[slot.job_id] = slot
        if not self.store_opened:
            self.store_opened = True
            _open_store(self.cfg.get("tracking_uri"))
        self.fork(slot)

    def reap(self) -> None:
        while self.by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.by_pid.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == REQUEUE_EXIT:
                if slot.requeues < int(self.cfg["max_num_timeout"]):
                    slot.requeues += 1
                    print(f"job {slot.job_id}: requeue {slot.requeues}", flush=True)
                    self.fork(slot)
                    continue
                msg = f"RuntimeError: job {slot.job_id} requeued {slot.requeues} times (max_num_timeout)"
                atomic_write_bytes(slot.folder / f"{slot.job_id}_0_result.pkl", pickle.dumps(("error", msg)))
            del self.slots[slot.job_id]
            os.close(slot.lock_fd)  # released before the exit is reported: a relaunch sees it over
            atomic_write_bytes(slot.folder / f"{slot.job_id}_exit", str(code).encode())

    def time_limits(self) -> None:
        limit = float(self.cfg["timeout_s"]) - float(self.cfg["signal_delay_s"])
        now = time.monotonic()
        for slot in self.by_pid.values():
            if not slot.warned and now - slot.started > limit:
                slot.warned = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGUSR2)

    def loop(self) -> int:
        fd, buf, eof = sys.stdin.fileno(), b"", False
        while not eof or self.by_pid:
            if not eof:
                ready, _, _ = select.select([fd], [], [], _POLL_S)
                if ready:
                    chunk = os.read(fd, 1 << 16)
                    eof = not chunk
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self.request(json.loads(line))
            else:
                time.sleep(_POLL_S)
            self.reap()
            self.time_limits()
        return 0


def serve(config: dict[str, Any]) -> int:
    """The zygote: warm up, then fork a child per request on stdin until end of input and no child."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    _warm_up(config["trainer"])
    log.info("warm worker %d ready in %.2f s", os.getpid(), time.perf_counter() - t0)
    return _Zygote(config).loop()


if __name__ == "__main__":
    sys.exit(serve(json.loads(sys.argv[1])))
