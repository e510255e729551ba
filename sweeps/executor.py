"""Running cells through submitit: executor set-up (slurm / local / debug) and the job callable
`CellJob`, which checkpoints and requeues on SLURM's warning signal (docs/sweeps.md, "Preemption").
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, NamedTuple

import submitit

from sweeps.grid import ExecutorSpec
from sweeps.ladder import grow_trunk
from sweeps.lock import cell_job_lock_lines, cell_lock_held
from sweeps.task import CellTask, build_config

log = logging.getLogger(__name__)


def slurm_status() -> str:
    """ "" when a SLURM controller answers, else why not (no ``sbatch`` on PATH, ``sinfo`` fails)."""
    if shutil.which("sbatch") is None:
        return "`sbatch` is not on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`sinfo` failed ({e})"
    if out.returncode != 0:
        return f"`sinfo` failed: {(out.stderr or out.stdout).strip()[:300]}"
    return ""


def resolve_executor_kind(name: str) -> str:
    """``auto`` -> ``slurm`` where a SLURM controller answers, else ``local``; checks SLURM when asked for.
    ``name``: a validated ``executor.name`` (`sweeps.grid.EXECUTORS`)."""
    if name == "auto":
        return "slurm" if not slurm_status() else "local"
    if name == "slurm" and (why := slurm_status()):
        raise ValueError(
            f"SLURM was requested (--executor slurm, or executor.name: slurm in the sweep's config) but "
            f"{why}; bring a cluster up (`sudo bash slurm/slurm-ci.sh up`), load your site's slurm module, "
            "or use --executor local"
        )
    return name


# sbatch(1), --signal: "the signal may be sent up to 60 seconds earlier than specified"
SLURM_SIGNAL_EARLY_S = 60
# a job needs this long after SLURM starts it to install submitit's USR2 handler (python, imports)
SLURM_HANDLER_STARTUP_S = 10


def check_slurm_signal(spec: ExecutorSpec, early_s: int = SLURM_SIGNAL_EARLY_S) -> None:
    """Raise ValueError when SLURM may send the warning signal (USR2, ``signal_delay_s`` before the
    time limit and up to ``early_s`` = 60 s earlier; the local executor's own limit: 0 s) before a
    job can catch it: a signal that lands during start-up kills the job with no checkpoint and no
    requeue."""
    earliest = 60 * spec.timeout_min - spec.signal_delay_s - early_s
    if earliest >= SLURM_HANDLER_STARTUP_S:
        return
    need = early_s + SLURM_HANDLER_STARTUP_S
    fix = f"give --time of at least {math.ceil((spec.signal_delay_s + need) / 60)} min"
    if 60 * spec.timeout_min >= need:
        fix += f" or a --signal-delay of at most {60 * spec.timeout_min - need} s"
    sender = (
        f"SLURM may send USR2 up to {early_s} s before the delay asks (sbatch --signal)"
        if early_s
        else "the local executor sends USR2 at the delay"
    )
    raise ValueError(
        f"--time {spec.timeout_min} min with --signal-delay {spec.signal_delay_s} s: {sender}, "
        f"{max(earliest, 0)} s after a job starts, before it can checkpoint and requeue; {fix}"
    )


def parse_sbatch_lines(lines: list[str]) -> dict[str, Any]:
    """``["--qos=high", "#SBATCH --exclusive", "constraint=a100"]`` -> submitit additional_parameters."""
    out: dict[str, Any] = {}
    for raw in lines:
        line = raw.strip().removeprefix("#SBATCH").strip().lstrip("-")
        if not line or " " in line.split("=", 1)[0]:
            raise ValueError(f"extra sbatch line {raw!r} is not of the form --key=value or --flag")
        key, sep, value = line.partition("=")
        out[key.replace("-", "_")] = value if sep else True
    return out


class OwnSessionSlurmExecutor(submitit.SlurmExecutor):
    """submitit's SLURM executor with `sbatch` started in a session of its own (`setsid --wait`). A
    terminal's Ctrl-C, or a SIGTERM to the launcher's process group, then reaches the launcher (which
    holds it until the jobs are recorded, `dit_core.trainer.signals.signals_deferred`) but not sbatch,
    which could otherwise die after the controller accepted the array and before it printed the array's
    id: jobs that no record names, trained again by a relaunch."""

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["setsid", "--wait", *super()._make_submission_command(submission_file_path)]


def make_executor(spec: ExecutorSpec, kind: str, folder: Path, job_name: str) -> submitit.Executor:
    """A configured submitit executor writing its pickles and logs under ``folder``."""
    folder = Path(folder)
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "local":  # one node: `sweeps.runner.prepare` refuses nodes > 1 for it
        ex = submitit.LocalExecutor(folder=folder / "%j", max_num_timeout=spec.max_num_timeout)
        ex.update_parameters(
            timeout_min=spec.timeout_min,
            tasks_per_node=spec.tasks_per_node,
            gpus_per_node=spec.gpus_per_node,
            signal_delay_s=spec.signal_delay_s,
        )  # the job's `setup` lines: `local_job_setup`, set per job by the launcher
        return ex
    if kind != "slurm":
        raise ValueError(f"unknown executor kind {kind!r}")
    # submitit's SLURM executor itself (its public constructor and SLURM-named parameters), not an
    # AutoExecutor: our subclass starts sbatch in its own session where `setsid` exists (util-linux,
    # on every Linux login node); without it, plain sbatch
    cls = OwnSessionSlurmExecutor if shutil.which("setsid") else submitit.SlurmExecutor
    ex = cls(folder=folder / "%j", max_num_timeout=spec.max_num_timeout)
    ex.update_parameters(**slurm_parameters(spec, job_name))
    return ex


def slurm_parameters(spec: ExecutorSpec, job_name: str) -> dict[str, Any]:
    """``spec`` as `submitit.SlurmExecutor.update_parameters` names it (sbatch's names: ``time``,
    ``ntasks_per_node``, ``mem``, ...); settings left unset are left to the cluster's defaults."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": spec.nodes,
        "ntasks_per_node": spec.tasks_per_node,
        "cpus_per_task": spec.cpus_per_task,
        "time": int(spec.timeout_min),
        "array_parallelism": spec.array_parallelism,
        "signal_delay_s": spec.signal_delay_s,
        "additional_parameters": {"requeue": True, **parse_sbatch_lines(spec.sbatch)},
    }
    mem = slurm_mem(spec.mem_gb) if spec.mem_gb else None
    optional = {"gpus_per_node": spec.gpus_per_node, "mem": mem, "partition": spec.partition}
    optional["setup"] = list(spec.setup)
    return params | {k: v for k, v in optional.items() if v}


def sbatch_flags(spec: ExecutorSpec, folder: Path, job_name: str, n_jobs: int) -> list[str]:
    """The ``#SBATCH`` flags of the script `make_executor`'s executor writes for ``n_jobs`` cells (one job
    array where more than one, as `map_array` sends them), without submitting or making anything."""
    from submitit.slurm.slurm import _make_sbatch_string  # the function the executor writes it with

    params = slurm_parameters(spec, job_name) | ({"map_count": n_jobs} if n_jobs > 1 else {})
    text = _make_sbatch_string(command="", folder=Path(folder) / "%j", **params)
    return [ln.removeprefix("#SBATCH").strip() for ln in text.splitlines() if ln.startswith("#SBATCH")]


def slurm_mem(mem_gb: float) -> str:
    """sbatch's ``--mem`` for ``mem_gb`` GB: whole GB as ``4GB``, else in MB (``1536MB``)."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


#: A local job's first ``setup`` line: a no-op EXIT trap keeps the job's shell (``sh -c "SETUP && ... &&
#: CONTROLLER"``, whose pid is the job's id) as the parent of submitit's controller, which names the job
#: after its parent. bash (``/bin/sh`` on Fedora, RHEL, Arch) would run the last command in the shell's
#: own process: the controller's parent was the launcher, and every local job failed. dash keeps it.
KEEP_JOB_SHELL = "trap : EXIT"
#: Set in a local job's environment where SIGINT was not ignored before `IGNORE_CTRL_C`: its tasks take
#: SIGINT back (`take_ctrl_c`).
TAKE_CTRL_C_ENV = "DITSCALE_TAKE_CTRL_C"
#: A local job's last ``setup`` line: its shell, and so submitit's controller, ignore SIGINT. A terminal's
#: Ctrl-C reaches the controller (the launcher's process group), which on a SIGINT would SIGINT its tasks
#: and SIGKILL them 1 s later, checkpointed or not; its tasks take SIGINT back (`CellJob`), and get the
#: terminal's Ctrl-C and the one the launcher passes on (`sweeps.runner._ctrl_c`), as a warm job does;
#: unless the sweep's own set-up lines ignore SIGINT (``trap '' INT``, listed by ``trap``): then it stays so.
_IF_NOT_TRAPPED = f'case "$(trap)" in *"\' INT"*|*"\' SIGINT"*) ;; *) export {TAKE_CTRL_C_ENV}=1 ;; esac'
IGNORE_CTRL_C = "{ " + _IF_NOT_TRAPPED + "; trap '' INT; }"


def local_job_setup(spec: ExecutorSpec, run_dir: str, threads: int) -> list[str]:
    """submitit ``setup`` lines of one local job: keep its shell (`KEEP_JOB_SHELL`), hold the cell's lock
    (`sweeps.lock`) for the job's life, export the thread count for every process of the job, the
    sweep's own lines, then keep a Ctrl-C from submitit's controller (`IGNORE_CTRL_C`)."""
    env = [f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"] if threads else []
    return [KEEP_JOB_SHELL] + cell_job_lock_lines(run_dir) + env + list(spec.setup) + [IGNORE_CTRL_C]


class JobRef(NamedTuple):
    """A cell's last job as its MLflow run records it; ``run_dir`` holds the cell's lock."""

    executor: str  # slurm / local / debug
    job_id: str
    folder: str
    run_dir: str


# SLURM job states (sacct/squeue) of a job that is not over; PENDING-like ones are "pending"; HELD: what
# `squeue_states` calls a PENDING job held by `scontrol hold` (reason JobHeldUser/JobHeldAdmin)
SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD"}
SLURM_ALIVE = SLURM_PENDING | {
    "HELD", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT",
}  # fmt: skip


class SlurmUnreachable(RuntimeError):
    """SLURM's controller gave no answer (``squeue`` cannot run, timed out, or failed for another reason
    than job ids it no longer lists): whether a job is alive is not known."""


def slurm_state(job: Any, mode: str = "standard") -> str:
    """A submitit SLURM job's state as its sacct watcher has it (CANCELLED, not "CANCELLED by 0");
    UNKNOWN where sacct has not shown it. ``mode``: submitit's ("cache": no sacct call)."""
    try:
        words = str(job.watcher.get_state(job.job_id, mode=mode)).split()
    except Exception:  # the state words a message or asks squeue: never let it break a wait
        return "UNKNOWN"
    return words[0].upper() if words else "UNKNOWN"


def job_liveness(refs: dict[str, JobRef]) -> dict[str, str]:
    """``{cell: "pending" | "held" | "running" | "unknown"}`` for cells whose job (of another launcher) is
    alive, or, "unknown", may be (SLURM did not answer); absent: over. Local jobs by the cell's lock
    (`sweeps.lock`: a rebuilt submitit `LocalJob` cannot tell), SLURM jobs by one batched ``sacct``,
    and ``squeue``, whose answer decides (sacct's only where squeue gives none); debug jobs never."""
    out = {c: "running" for c, r in refs.items() if r.executor == "local" and cell_lock_held(r.run_dir)}
    slurm = {c: r for c, r in refs.items() if r.executor == "slurm"}
    if slurm:
        out.update(_slurm_liveness(slurm))
    return out


def _slurm_liveness(refs: dict[str, JobRef]) -> dict[str, str]:
    jobs = {cid: submitit.SlurmJob(folder=r.folder or ".", job_id=r.job_id) for cid, r in refs.items()}
    submitit.SlurmJob.watcher.update()  # one sacct call for every registered job
    states = {c: slurm_state(j, mode="cache") for c, j in jobs.items()}
    # squeue (the controller) decides every job it answers about: sacct, which the accounting daemon
    # writes after the controller, can still say RUNNING for a job just over (a relaunch then skipped
    # its failed cell as running), calls a cancelled job CANCELLED while squeue lists it COMPLETING (its
    # processes still run), says PENDING for a held job and UNKNOWN for one it has not seen
    lost: list[str] = []
    try:
        queue = squeue_states([r.job_id for r in refs.values()])
    except SlurmUnreachable as e:  # squeue silent: sacct's word stands, and UNKNOWN is not over
        lost = sorted(c for c, s in states.items() if s == "UNKNOWN")
        if lost:
            log.warning("%s; cells %s: job state unknown", e, ", ".join(lost))
    else:
        states = {c: queue.get(refs[c].job_id, "OVER") for c in states}  # not listed: over
    word = {"HELD": "held", **dict.fromkeys(SLURM_PENDING, "pending")}
    out = {c: word.get(s, "running") for c, s in states.items() if s in SLURM_ALIVE}
    return out | dict.fromkeys(lost, "unknown")


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """``{job_id: state}`` for the given jobs still known to squeue (array tasks as ``N_i``; HELD: PENDING,
    held by `scontrol hold`, reason JobHeldUser/JobHeldAdmin); raises
    `SlurmUnreachable` when squeue gives no answer (an unknown job id is an answer: not listed)."""
    if not job_ids:
        return {}
    out = _squeue(["-o", "%i %T %r", "-j", ",".join(sorted(set(job_ids)))], unknown_ids_ok=True)
    rows = [line.split(None, 2) for line in out.splitlines()]
    held = {r[0] for r in rows if len(r) == 3 and r[1] == "PENDING" and "held" in r[2].lower()}
    return {r[0]: "HELD" if r[0] in held else r[1] for r in rows if len(r) >= 2}


def _squeue(args: list[str], unknown_ids_ok: bool = False) -> str:
    """``squeue -h -r ARGS``' output (array tasks one a line); raises `SlurmUnreachable` when squeue gives
    no answer (``unknown_ids_ok``: job ids it no longer lists are an answer, not a failure)."""
    try:
        done = subprocess.run(["squeue", "-h", "-r", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmUnreachable(f"`squeue` gave no answer ({e})") from None
    if done.returncode != 0 and not (unknown_ids_ok and "invalid job id" in done.stderr.lower()):
        why = (done.stderr or done.stdout).strip()[:300] or f"exit status {done.returncode}"
        raise SlurmUnreachable(f"`squeue` failed: {why}")
    return done.stdout


def squeue_jobs_in(folder: str | Path, job_name: str) -> list[str]:
    """The ids (array tasks as ``N_i``) of the jobs named ``job_name`` that squeue lists, not over, with
    their output in ``folder`` (a sweep's submitit folder); raises `SlurmUnreachable`."""
    out = _squeue(["-n", job_name, "-O", "JobArrayID:64,State:24,StdOut:4096"])
    rows = [line.split(None, 2) for line in out.splitlines()]
    inside = str(Path(folder).resolve()) + os.sep
    return [r[0] for r in rows if len(r) == 3 and r[1] in SLURM_ALIVE and r[2].rstrip().startswith(inside)]


def slurm_job_alive(job_id: str) -> bool:
    """Whether ``squeue`` (slurmctld itself) still lists job ``job_id`` as not over, or does not answer
    (a job is not called over unseen). A launcher asks it when ``sacct`` has called the job done
    without a result: after a node failure sacct can report NODE_FAIL (which submitit takes for done)
    while the controller has already requeued the job."""
    try:
        return squeue_states([job_id]).get(job_id) in SLURM_ALIVE
    except SlurmUnreachable:
        return True


def slurm_kill(job_ids: list[str]) -> str:
    """``scancel --full --signal=KILL`` the jobs ``job_ids`` (every process, the batch shell too); "" when
    scancel took it, else what it said. slurmctld refuses a job that is already ending (COMPLETING after a
    plain scancel): its processes get SLURM's own SIGKILL `slurm_kill_wait_s` after their SIGTERM."""
    try:
        done = subprocess.run(
            ["scancel", "--full", "--signal=KILL", *job_ids], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scancel gave no answer ({e})"
    return "" if done.returncode == 0 else (done.stderr or done.stdout).strip()[:300] or "scancel failed"


def slurm_kill_wait_s() -> int | None:
    """The cluster's KillWait (`scontrol show config`): seconds from a cancelled job's SIGTERM to SLURM's
    SIGKILL; None where scontrol does not say."""
    found = re.search(r"^KillWait\s*=\s*(\d+)", _stdout(["scontrol", "show", "config"]), re.MULTILINE)
    return int(found.group(1)) if found else None


def _stdout(cmd: list[str]) -> str:
    """The standard output of ``cmd``; "" where it cannot run or does not answer within 30 s."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def slurm_requeued() -> bool:
    """Inside a SLURM job: has the controller already requeued it (``JobState`` PENDING/REQUEUED*,
    as after a node failure under ``--requeue`` or a preemption that requeues)? False outside SLURM,
    for a cancelled or timed-out job, and when ``scontrol`` does not answer."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    out = _stdout(["scontrol", "-o", "show", "job", job])
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("JobState", "") in SLURM_PENDING


class CellJob(submitit.helpers.Checkpointable):
    """The callable each job runs: ``CellJob()(task)`` trains one cell to completion; with several
    tasks each is one rank (submitit's environment exported as torch-distributed variables)."""

    def __call__(self, task: CellTask) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # one GPU per rank when GPUs were allocated (checked without initialising CUDA)
            has_gpus = bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=has_gpus, overwrite=True
            )
        rank = f"{env.global_rank}/{env.num_tasks}"
        shield_requeue_from_sigterm()
        take_ctrl_c()
        log.info("cell %s (sweep %s), job %s, rank %s", task.cell_id, task.sweep, env.job_id, rank)
        return run_task(task, str(env.job_id), rank=env.global_rank)

    def checkpoint(self, task: CellTask) -> submitit.helpers.DelayedSubmission:
        """Resubmit the same task: the trainer has already saved its checkpoint in ``task.run_dir``."""
        log.info("cell %s: requeue, resuming from %s", task.cell_id, task.run_dir)
        return submitit.helpers.DelayedSubmission(CellJob(), task)


def shield_requeue_from_sigterm() -> None:
    """Make submitit's requeue handler run with SIGTERM ignored (its child processes inherit that):
    SLURM answers its ``scontrol requeue`` with a SIGTERM that must not kill ``scontrol`` (the cell
    would be recorded failed though requeued). Call in the job's main thread, after submitit's handler
    is installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    # the signal submitit's requeue handler listens on (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default)
    sig = signal.Signals["SIG" + str(submitit.JobEnvironment.USR_SIG).upper().removeprefix("SIG")]
    handler = signal.getsignal(sig)
    if not callable(handler) or getattr(handler, "shields_sigterm", False):
        return

    def shielded(signum: int, frame: Any) -> None:
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            handler(signum, frame)
        finally:
            signal.signal(signal.SIGTERM, previous)

    shielded.shields_sigterm = True  # type: ignore[attr-defined]
    signal.signal(sig, shielded)


def take_ctrl_c() -> None:
    """Take SIGINT as Python does (KeyboardInterrupt; the trainer installs its own handler) where this
    process started with it ignored by its job's shell (`IGNORE_CTRL_C`, which sets `TAKE_CTRL_C_ENV`):
    a local job's tasks. Call in the job's main thread."""
    if (
        os.environ.pop(TAKE_CTRL_C_ENV, "") != "1"
        or threading.current_thread() is not threading.main_thread()
    ):
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_task(task: CellTask, job_id: str, rank: int = 0) -> dict[str, Any]:
    """Train ``task``'s cell in this process (the body of every job: submitit's or a warm worker's;
    ``rank``: this task's among a cell's several) and return the trainer's result as a dict; a run
    stopped by a signal without a requeue handler behind it raises RuntimeError (its checkpoint is
    saved: a relaunch resumes it)."""
    os.environ["DITSCALE_EXECUTOR_JOB_ID"] = job_id  # the run's job_id tag (never one inherited)
    Path(task.run_dir).mkdir(parents=True, exist_ok=True)
    if task.threads:  # before the trainer imports torch; set directly if it is already imported
        os.environ["OMP_NUM_THREADS"] = str(task.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(task.threads)
    stopped = None  # a ladder's trunk stopped by a signal: the cell's run was never taken over
    try:
        trainer = importlib.import_module(task.trainer)
        cfg = build_config(trainer, task.overrides)
        if task.trunk is not None and not _has_checkpoint(task.run_dir):  # else: resume its own
            ckpt, stopped = grow_trunk(task.trunk, trainer.train, lambda o: build_config(trainer, o))
            result = stopped if stopped is not None else trainer.train(cfg, resume=str(ckpt))
        else:
            result = trainer.train(cfg)
    except Exception as e:
        end_unstarted_run(task, e, rank=rank)
        raise
    status = result.get("status") if isinstance(result, dict) else getattr(result, "status", None)
    status = "finished" if status is None else str(status).lower()
    if status not in ("finished", "preempted"):
        # a trainer that reports a failure instead of raising: the job fails, as if it had raised
        err = RuntimeError(f"trainer {task.trainer} returned status {status!r}, not 'finished'")
        end_unstarted_run(task, err, left=("SCHEDULED", "RUNNING"), tag="failed", rank=rank)
        raise err
    if status == "preempted":
        if slurm_requeued():
            # SLURM requeued this job before it signalled it (a node failure under --requeue): the
            # requeued attempt resumes from the checkpoint and writes the cell's result, so this
            # attempt leaves it open (SystemExit: submitit writes no result pickle)
            log.warning("cell %s: SLURM requeued job %s; the next attempt resumes it", task.cell_id, job_id)
            raise SystemExit(0)
        # a signal without a requeue handler behind it (e.g. SIGTERM: cancel, hard time limit):
        # the checkpoint is saved; fail this job so that a relaunch resumes the cell
        what = "its trunk" if stopped is not None else f"cell {task.cell_id}"
        err = RuntimeError(
            f"{what} stopped by {getattr(result, 'signal', None)} at step {getattr(result, 'step', '?')}; "
            "its checkpoint is saved: relaunch the sweep to resume"
        )
        if stopped is not None:
            end_unstarted_run(task, err, rank=rank)
        raise err
    return _as_dict(result)


def _has_checkpoint(run_dir: str) -> bool:
    from dit_core.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir) is not None


def end_unstarted_run(
    task: CellTask, err: BaseException, left: tuple[str, ...] = ("SCHEDULED",), tag: str = "", rank: int = 0
) -> None:
    """End the cell's run from inside the job, as a waiting launcher would (`sweeps.state.end_orphaned_runs`):
    FAILED with tag ``tag`` (default died_before_training) and the error, if its status is one of
    ``left`` (default SCHEDULED: the trainer failed before taking the run over). The error of a rank
    other than 0 names it, as the trainer's own tag does: "<error> (on rank 1)". A preemption signal
    meanwhile (torchrun's SIGTERM once another rank has exited) waits until the run is ended."""
    run_id, uri = task.overrides.get("tracking.run_id"), task.overrides.get("tracking.uri")
    if not run_id or not uri:
        return
    try:
        from dit_core import tracking
        from dit_core.trainer.signals import PREEMPTION_SIGNALS, signals_deferred
        from sweeps.state import DIED_BEFORE_TRAINING

        error, tag = f"{type(err).__name__}: {err}", tag or DIED_BEFORE_TRAINING
        error += f" (on rank {rank})" if rank else ""
        with signals_deferred(*PREEMPTION_SIGNALS, during=f"ending cell {task.cell_id}'s run"):
            tracking.end_run_if(
                tracking.interrupt_safe_client(uri), run_id, left=left, status="FAILED", tag=tag, error=error
            )
    except Exception as e:  # the job's own error is what matters: it is raised next
        log.warning("cell %s: could not end its MLflow run %s (%s)", task.cell_id, run_id, e)


def warm_unsupported(spec: ExecutorSpec) -> str:
    """Why the local executor cannot run ``spec``'s cells in warm workers (`sweeps.warm`), "" if it
    can: ``local_warm`` off, several processes per cell, GPUs, or ``setup`` lines (a fork runs no shell)."""
    why = {
        "local_warm is off": not spec.local_warm,
        f"tasks_per_node={spec.tasks_per_node}": spec.tasks_per_node != 1,
        f"gpus_per_node={spec.gpus_per_node}": spec.gpus_per_node,
        "setup lines are set": spec.setup,
        "no os.fork on this platform": not hasattr(os, "fork"),
    }
    return next((w for w, bad in why.items() if bad), "")


def _as_dict(result: Any) -> dict[str, Any]:
    """A trainer result's plain fields (what pickles and logs anywhere)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        plain = (type(None), str, int, float, bool, list, tuple, dict)
        return {k: v for k, v in dataclasses.asdict(result).items() if isinstance(v, plain)}
    return result if isinstance(result, dict) else {"result": repr(result)}
