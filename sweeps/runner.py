"""Launching a sweep: validate, plan (idempotent), submit through submitit, wait with progress.

`launch` is what ``python sweeps/launch.py`` calls. Everything that can be wrong with the input
(unknown family, bad patch size, a budget below one step, unreachable tracking server, SLURM asked
for but absent) raises ValueError before anything is submitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from dit_core.tracking import JOB_ID_TAG
from dit_core.trainer.signals import signals_deferred
from sweeps.eta import cell_work, time_left
from sweeps.executor import (
    SLURM_ALIVE,
    SLURM_PENDING,
    SLURM_SIGNAL_EARLY_S,
    CellJob,
    JobRef,
    SlurmUnreachable,
    check_slurm_signal,
    local_job_setup,
    make_executor,
    parse_sbatch_lines,
    resolve_executor_kind,
    slurm_job_alive,
    slurm_kill,
    slurm_kill_wait_s,
    slurm_state,
    squeue_jobs_in,
    squeue_states,
    warm_unsupported,
)
from sweeps.grid import Cell, ExecutorSpec, SweepSpec, expand, write_spec_record
from sweeps.ladder import trained_cells
from sweeps.lock import cell_lock_held, sweep_lock
from sweeps.state import (
    DIED_BEFORE_TRAINING,
    KILLED_IN_TRAINING,
    CellState,
    Plan,
    Submission,
    check_cell_folder,
    check_resumable_cell,
    check_tracking_uri,
    config_hash,
    create_cell_runs,
    end_orphaned_runs,
    ensure_experiment,
    forget_cancelled,
    note_cancelled,
    peer_named_error,
    plan,
    read_runs,
    read_states,
    record_interrupts,
    record_submissions,
    resolve_tracking_uri,
    store_exists,
)
from sweeps.task import CellTask, check_trainer, make_tasks
from sweeps.warm import WarmExecutor, WarmJob, WarmWorkerGone

log = logging.getLogger(__name__)

#: Seconds a launcher waits for the result of a SLURM job seen over without one (a file system slow to
#: show it), each job's wait alongside the others' (submitit's own, 15 s, runs one job after another).
RESULT_GRACE_S = 15.0
#: Fresh warm workers a launch starts for one that died (`_Runner._restart_worker`).
WARM_RESTARTS = 1
#: Seconds between two `squeue` calls while a launcher waits for SLURM jobs to end.
SLURM_END_POLL_S = 0.5
#: Seconds a launcher waits, once it has every SLURM job's result, for SLURM to call the jobs over.
SLURM_SETTLE_S = 30.0


@dataclass
class Prepared:
    """A validated sweep: its cells, executor kind, absolute tracking URI and folder."""

    spec: SweepSpec
    cells: list[Cell]
    kind: str
    tracking_uri: str
    sweep_dir: Path


@dataclass
class Progress:
    """Counts shown while waiting: done / running / queued or held in the scheduler (SLURM) / failed /
    waiting for a free local slot."""

    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0
    elapsed_s: float = 0.0
    queued: int = 0
    held: int = 0
    work_done: float | None = None  # fraction of the launch's work done (`sweeps.eta`), once known
    eta_s: float | None = None  # seconds left, estimated once a cell has finished


@dataclass
class LaunchResult:
    """What a launch did: the plan, the submitted cells with job ids and log files, failures (cell ->
    error), and per cell the seconds since the launch when its job was submitted and when it was seen
    to end."""

    prepared: Prepared
    plan: Plan
    job_ids: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    waited: bool = True
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def submitted(self) -> list[str]:
        return list(self.job_ids)

    def busy_slots(self) -> float:
        """Average number of cells alive from the first submission to the last end (at most the
        executor's parallelism): the local executor's busy cores = this x threads per cell."""
        if not self.timings:
            return 0.0
        t0 = min(a for a, _ in self.timings.values())
        t1 = max(b for _, b in self.timings.values())
        return sum(b - a for a, b in self.timings.values()) / max(t1 - t0, 1e-9)


def sweep_dir(spec: SweepSpec) -> Path:
    return (Path(spec.output_dir) / spec.name).resolve()


def job_name(spec: SweepSpec) -> str:
    """The SLURM job name of the sweep's jobs."""
    return f"ditscale-{spec.name}"


def prepare(spec: SweepSpec) -> Prepared:
    """Validate everything; raises ValueError naming the problem. Submits nothing."""
    cells = expand(spec)
    kind = resolve_executor_kind(spec.executor.name)
    uri = resolve_tracking_uri(spec.tracking_uri)
    check_tracking_uri(uri)
    check_executor(spec, kind)
    check_output_dir(sweep_dir(spec))
    return Prepared(spec, cells, kind, uri, sweep_dir(spec))


def check_executor(spec: SweepSpec, kind: str) -> None:
    """ValueError for executor settings that cannot work on ``kind`` ("slurm" or "local")."""
    if kind == "local" and spec.executor.nodes > 1:
        raise ValueError(f"nodes={spec.executor.nodes} needs SLURM; the local executor runs on one node")
    check_slurm_signal(spec.executor, early_s=SLURM_SIGNAL_EARLY_S if kind == "slurm" else 0)
    if kind == "slurm":  # else refused only when the jobs are submitted, after the sweep's folder is made
        parse_sbatch_lines(spec.executor.sbatch)


def check_wait(kind: str, wait: bool) -> None:
    """ValueError for not waiting where the jobs need their launcher to wait (the debug executor)."""
    if not wait and kind == "debug":
        raise ValueError(
            "--no-wait with --executor debug: the debug executor runs each cell inside this launcher "
            "while it waits, so nothing would train (and the launch would count a try of every cell); "
            "drop --no-wait, or use --executor local"
        )


def check_output_dir(sdir: Path) -> None:
    """ValueError, creating nothing, where the sweep's folder ``sdir`` cannot be made or written: its
    nearest existing folder is a file, or is not writable. ``sdir``: absolute (`sweep_dir`)."""
    near = next(p for p in (sdir, *sdir.parents) if p.exists())
    if not near.is_dir():
        raise ValueError(
            f"--output-dir: {near} is a file, not a folder, so the sweep's folder {sdir} cannot be made; "
            "give a folder"
        )
    if not os.access(near, os.W_OK | os.X_OK):
        raise ValueError(
            f"--output-dir: {near} is not writable, so the sweep's folder {sdir} cannot be made or "
            "written; give a folder you can write"
        )


def preview(spec: SweepSpec, tasks: dict[str, CellTask], configs: dict, uri: str,
            unknown: tuple[str, ...] = ()) -> dict[str, CellState]:  # fmt: skip
    """What a launch of ``tasks`` would find in the store at ``uri``, read only (a dry run): the cells'
    states, once they pass the refusals of a relaunch, per cell with a record: settings changed since
    its run was created (`check_resumable_cell`), a folder and run that do not belong together
    (`check_cell_folder`). A store not made yet is not opened (every cell missing); ``unknown``:
    settings whose value is not known here (a placeholder), not compared with the runs'."""
    run_dirs = {cid: t.run_dir for cid, t in tasks.items()}
    if store_exists(uri):
        states = read_states(uri, spec.experiment, spec.name, run_dirs)
    else:
        states = {cid: CellState(cid, "missing") for cid in tasks}
    for cid, st in states.items():
        seen = dataclasses.replace(st, params={k: v for k, v in st.params.items() if k not in unknown})
        check_resumable_cell(spec.name, seen, tasks[cid].overrides, configs[cid])
        check_cell_folder(spec.name, seen, tasks[cid].run_dir, spec.experiment, uri)
    return states


def longest_first(cells: list[Cell]) -> list[Cell]:
    """Cells by decreasing budget, then steps (within a budget the smaller model, with more steps,
    takes longer): the local executor starts the longest first so that the last ones are short."""
    return sorted(cells, key=lambda c: (c.budget, c.steps), reverse=True)


def launch(
    spec: SweepSpec,
    *,
    wait: bool = True,
    poll_s: float = 2.0,
    on_progress: Callable[[Progress], None] | None = None,
    record: SweepSpec | None = None,
    jobs_gone: bool = False,
) -> LaunchResult:
    """Submit the cells that are not finished or live (one job array on SLURM; locally, a new cell
    as soon as a slot frees, longest first) and, with ``wait``, block until they end. Relaunching
    the same sweep submits only what is missing, failed or interrupted. ``record`` (default ``spec``)
    is kept as the sweep's last launch (`sweeps.grid.write_spec_record`) once the settings are checked.
    ``jobs_gone``: the SLURM jobs whose state is unknown are gone for good (`check_known`)."""
    prep = prepare(spec)
    check_wait(prep.kind, wait)
    threads = threads_per_process(spec.executor, prep.kind)
    sdir, uri = prep.sweep_dir, prep.tracking_uri
    all_tasks = make_tasks(spec, prep.cells, sdir, uri, threads)
    configs = check_trainer(spec.trainer, list(all_tasks.values()))  # bad settings: refused before any folder
    # a warm worker starts next: its imports overlap with the MLflow reads below
    warm = _start_warm(prep, threads)
    interrupted, runner = False, None
    try:
        with sweep_lock(sdir):
            # a relaunch's refusals first, reading only: a refused launch makes no store or experiment
            states = preview(spec, all_tasks, configs, uri)
            check_known(states, jobs_gone)
            if prep.kind == "slurm":
                check_unrecorded(spec, uri, states)
            ensure_experiment(uri, spec.experiment)
            # the store as resolved here (absolute): `status` from another folder reads the same one
            write_spec_record((record or spec).replace(tracking_uri=uri), sdir)
            _end_unstarted(uri, states)
            the_plan = plan(states, spec.executor.max_retries)
            for cid in the_plan.exhausted:
                log.warning(
                    "cell %s failed %d times; not retried (raise --max-retries)", cid, states[cid].tries
                )
            result = LaunchResult(prep, the_plan, waited=wait)
            todo = set(the_plan.submit)
            tasks = [all_tasks[c.cell_id] for c in longest_first(prep.cells) if c.cell_id in todo]
            if not tasks:
                n_fin, n_live = len(the_plan.finished), len(the_plan.running)
                log.info("nothing to submit: %d finished, %d running", n_fin, n_live)
                return result
            executor = warm or make_executor(spec.executor, prep.kind, sdir / "jobs", job_name=job_name(spec))
            others = {cid: all_tasks[cid].run_dir for cid in the_plan.running}
            work = _work(prep.cells, all_tasks)
            runner = _Runner(prep, executor, result, states, on_progress, poll_s, others, work=work)
            runner.run(tasks, wait)
        return result
    except KeyboardInterrupt:
        interrupted = True  # `_Runner._interrupted` has waited for the jobs, or killed them
        raise
    finally:
        for w in [warm, *(runner.restarted if runner else [])]:
            if w is not None and not w.submitted:
                w.kill()  # nothing to run (all done or live, or an error): stop its imports
            elif w is not None:  # it exits once its cells have
                w.close(wait_s=30.0 if wait and not interrupted else None)


def check_known(states: dict[str, CellState], jobs_gone: bool = False) -> None:
    """ValueError where SLURM did not say whether some cells' jobs are alive (state ``unknown``): a
    launch now could start a second job of a cell that still trains. With ``jobs_gone`` (the user says
    the cluster is gone for good) those cells are taken for interrupted instead, loudly."""
    unknown = sorted(c for c, st in states.items() if st.state == "unknown")
    if unknown and jobs_gone:
        log.warning(
            "--slurm-jobs-gone: the SLURM jobs of %d cell(s) (%s) are taken for over, their cells for "
            "interrupted (failed where the job never started), and resubmitted; a job of them that still "
            "runs would train its cell twice",
            len(unknown), ", ".join(unknown[:8]),
        )  # fmt: skip
        take_jobs_gone(states)
    elif unknown:
        raise ValueError(
            f"SLURM does not answer (sacct and squeue failed), so whether the jobs of {len(unknown)} "
            f"cell(s) ({', '.join(unknown[:8])}) are still alive is not known; nothing submitted: launch "
            "again once `squeue` answers, or, if that cluster is gone for good (its jobs with it), add "
            "--slurm-jobs-gone"
        )


def take_jobs_gone(states: dict[str, CellState]) -> list[str]:
    """--slurm-jobs-gone: the cells whose job state is unknown taken for interrupted (failed where the job
    never started: run SCHEDULED), in ``states``; returns them."""
    unknown = sorted(c for c, st in states.items() if st.state == "unknown")
    for c in unknown:
        states[c].state = "failed" if states[c].run_status == "SCHEDULED" else "interrupted"
    return unknown


def check_unrecorded(spec: SweepSpec, uri: str, states: dict[str, CellState]) -> None:
    """ValueError where squeue lists live jobs of this sweep (its job name, their output in its ``jobs``
    folder) that no cell's run records: a launcher killed (SIGKILL) between submitting them and writing
    them into their runs. They train their cells into their runs unrecorded, and a launch now would
    submit a second job of each of those cells beside them."""
    try:
        listed = squeue_jobs_in(sweep_dir(spec) / "jobs", job_name(spec))
    except SlurmUnreachable as e:  # `check_known` has refused where a record's liveness is unknown
        log.warning("%s; jobs of this sweep that no run records are not looked for", e)
        return
    recorded = {st.job_id for st in states.values()}
    if any(j not in recorded for j in listed):  # the other cells' records too (an adaptive sweep's budgets)
        runs = read_runs(uri, spec.experiment, spec.name)
        recorded |= {rs[0].data.tags.get(JOB_ID_TAG) for rs in runs.values()}
    if unrecorded := [j for j in listed if j not in recorded]:
        ids = ",".join(unrecorded)
        raise ValueError(
            f"squeue lists job(s) {ids} of sweep {spec.name!r} (their logs in {sweep_dir(spec) / 'jobs'}) "
            "that no cell's MLflow run records: a launcher was killed between submitting and recording "
            "them, and they train their cells unrecorded; nothing submitted (a second job of those cells "
            f"would train beside them): wait until `squeue -j {ids}` lists none, or `scancel {ids}`, then "
            "launch again"
        )


def _end_unstarted(uri: str, states: dict[str, CellState]) -> None:
    """End the runs of cells whose last job is over but left the run open (seen by this launch), out of
    retries or not (`sweeps.state.end_orphaned_runs`): still SCHEDULED (the job died before its trainer
    started): FAILED; still RUNNING (the trainer was killed, e.g. SIGKILL): KILLED, tag status=killed."""
    killed = "its job ended while the trainer ran, without ending the run (killed)"
    for state, left, status, tag, why, error in (
        ("failed", "SCHEDULED", "FAILED", DIED_BEFORE_TRAINING, "its job ended before training", ""),
        ("interrupted", "RUNNING", "KILLED", KILLED_IN_TRAINING, killed, killed),
    ):
        runs = {st.run_id: st for st in states.values() if (st.state, st.run_status) == (state, left)}
        errors = dict.fromkeys(runs, error)
        for run_id in end_orphaned_runs(uri, errors, status=status, tag=tag, left=(left,)) if runs else []:
            runs[run_id].run_status = status
            log.warning("cell %s: %s; run %s ended %s", runs[run_id].cell_id, why, run_id, status)


def _start_warm(prep: Prepared, threads: int) -> WarmExecutor | None:
    """A `sweeps.warm.WarmExecutor` for a local sweep that can use one, else None (plain submitit)."""
    ex = prep.spec.executor
    if prep.kind != "local":
        return None
    if why := warm_unsupported(ex):
        log.info("local cells run as fresh processes (no warm worker: %s)", why)
        return None
    return WarmExecutor(
        prep.sweep_dir / "jobs", threads=threads, trainer=prep.spec.trainer, tracking_uri=prep.tracking_uri,
        timeout_min=ex.timeout_min, signal_delay_s=ex.signal_delay_s, max_num_timeout=ex.max_num_timeout,
    )  # fmt: skip


@dataclass
class _Runner:
    """Submits tasks (one array on SLURM; locally one per free slot of ``local_parallelism``) and waits."""

    prep: Prepared
    executor: Any
    result: LaunchResult
    states: dict[str, CellState]
    on_progress: Callable[[Progress], None] | None
    poll_s: float
    others: dict[str, str]  # live cells of an earlier launcher: {cell: run folder}; they hold slots
    jobs: dict[str, Any] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)  # submitted and recorded, not yet seen to end
    run_dirs: dict[str, str] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)
    work: dict[str, float] = field(default_factory=dict)  # {cell: FLOP-equivalents}; {}: no estimate
    over_since: dict[str, float] = field(default_factory=dict)  # SLURM cells seen over without a result
    queue: dict[str, str] = field(default_factory=dict)  # {cell: squeue's state} (`_gone_unseen`)
    sacct_calls: int = -1  # submitit's sacct calls when squeue was last asked about PENDING jobs
    held: list[int] = field(default_factory=list)  # the signals `signals_deferred` holds while submitting
    restarted: list[WarmExecutor] = field(default_factory=list)  # warm workers started for a dead one

    def _submit(self, tasks: list[CellTask]) -> None:
        """Submit ``tasks``, each continuing its cell's one MLflow run, and record the job in it."""
        spec, uri = self.prep.spec, self.prep.tracking_uri
        new = {t.cell_id: config_hash(t.overrides) for t in tasks if self.states[t.cell_id].run_id is None}
        dirs = {t.cell_id: t.run_dir for t in tasks}
        for cid, run_id in create_cell_runs(uri, spec.experiment, spec.name, new, dirs).items():
            self.states[cid].run_id = run_id
        prepared = []
        for t in tasks:
            st = self.states[t.cell_id]
            Path(t.run_dir).mkdir(parents=True, exist_ok=True)
            prepared.append(dataclasses.replace(t, overrides={**t.overrides, "tracking.run_id": st.run_id}))
        with signals_deferred(*STOP_SIGNALS) as self.held:  # no job goes out unrecorded
            self._submit_and_record(prepared)

    def _submit_and_record(self, prepared: list[CellTask]) -> None:
        """`_submit`'s critical section: submit ``prepared`` and record each job in its cell's run."""
        spec, uri = self.prep.spec, self.prep.tracking_uri
        if self.prep.kind == "slurm":
            jobs = self.executor.map_array(CellJob(), prepared)  # one job array (sbatch in its own session)
        else:
            jobs = []
            for t in prepared:
                if self.prep.kind == "local" and not isinstance(self.executor, WarmExecutor):
                    self.executor.update_parameters(
                        setup=local_job_setup(spec.executor, t.run_dir, t.threads)
                    )
                try:
                    jobs.append(self._submit_one(t))
                except WarmWorkerGone:  # died since `_run` looked: those not sent are not started
                    self._not_started(prepared[len(jobs) :])
                    prepared = prepared[: len(jobs)]
                    break
        now = time.monotonic() - self.t0
        subs = []
        for t, j in zip(prepared, jobs):
            st = self.states[t.cell_id]
            self.jobs[t.cell_id] = j
            self.run_dirs[t.cell_id] = t.run_dir
            self.result.job_ids[t.cell_id] = str(j.job_id)
            self.result.timings[t.cell_id] = (now, now)
            self.result.logs[t.cell_id] = _log_files(j)
            ref = JobRef(self.prep.kind, str(j.job_id), str(getattr(j.paths, "folder", "")), t.run_dir)
            cfg_hash = config_hash(t.overrides)
            subs.append(Submission(st.run_id, ref, st.attempts + 1, cfg_hash, st.attempts > 0, st.interrupts))
            log.info("submitted %s as %s job %s", t.cell_id, self.prep.kind, j.job_id)
        try:
            record_submissions(uri, subs)
        except Exception as e:  # the tracking server failed after its retries: no job may run unrecorded
            self._cancel_unrecorded(prepared, jobs, e)
        for t in prepared:  # their interrupts are in the record now
            with contextlib.suppress(OSError):
                forget_cancelled(t.run_dir)
        self.live |= {t.cell_id for t in prepared}

    def _submit_one(self, task: CellTask) -> Any:
        """Submit ``task`` to the executor, to a fresh warm worker where this launch's has died and may be
        replaced (`_restart_worker`)."""
        try:
            return self.executor.submit(CellJob(), task)
        except WarmWorkerGone:
            if not self._restart_worker():
                raise
        return self.executor.submit(CellJob(), task)

    def _cancel_unrecorded(self, prepared: list[CellTask], jobs: list[Any], error: Exception) -> None:
        """``jobs`` went out but their record failed: a relaunch would take their cells for missing and
        submit a second job into each run. Cancel them (and wait until the local ones have ended), then
        raise RuntimeError naming them, why, and that a relaunch resumes."""
        cells = [t.cell_id for t in prepared]
        for cid in cells:  # not this launch's any more
            for d in (self.jobs, self.run_dirs, self.result.job_ids, self.result.timings, self.result.logs):
                d.pop(cid, None)
        ids = ", ".join(str(j.job_id) for j in jobs)
        if self.prep.kind != "debug":  # a debug job ran to its end inside `submit`: a try
            for t, j in zip(prepared, jobs):  # a record written before the failure: this job is no try
                try:
                    note_cancelled(t.run_dir, str(j.job_id), self.states[t.cell_id].interrupts + 1)
                except OSError as e:  # the cancel goes on: at worst the job counts as a try
                    log.error("cell %s: could not note job %s as cancelled: %s", t.cell_id, j.job_id, e)
        log.warning("recording %d job(s) in their runs failed: cancelling them (%s)", len(jobs), ids)
        hurried = lambda: len(_stops(self.held)) >= 2  # noqa: E731 - the user's second Ctrl-C
        left = _cancel_jobs(jobs, self.prep.kind, hurry=hurried)
        what = (
            f"recording the job(s) of {len(cells)} cell(s) ({', '.join(cells[:8])}) in their MLflow runs at "
        )
        what += f"{self.prep.tracking_uri} failed ({_error_line(error)})"
        if hurried():
            text = _hurried_text(what, ids, left, self.prep.kind)
        elif left:
            text = (
                f"{what}, and job(s) {', '.join(left)} could not be cancelled or had not ended when the "
                f"launcher stopped waiting (up to {CANCEL_WAIT_S:.0f} s); make sure they are gone (on SLURM "
                "`squeue -j JOB` lists none: `scancel` them; else kill the process that holds the cell's "
                "lock) before launching again, or a relaunch would train those cells twice"
            )
        else:
            text = (
                f"{what}; job(s) {ids} cancelled so that none trains unrecorded. Launch again once the "
                "tracking server answers: the relaunch submits those cells again and resumes them in their "
                "runs"
            )
        if stops := _stops(self.held):  # the user's Ctrl-C, acted on here: said with what it stopped
            self.held[:] = [s for s in self.held if s not in STOP_SIGNALS]
            raise CancelInterrupted(text, stops[0]) from error
        raise RuntimeError(text) from error

    def _worker_gone(self) -> bool:
        """Whether this launch's warm worker has died (killed: the OOM killer, ``kill -9``): it forks no
        more cells (those it forked train on, holding their locks)."""
        return isinstance(self.executor, WarmExecutor) and not self.executor.alive()

    def _restart_worker(self) -> bool:
        """Replace this launch's dead warm worker by a fresh one, for the cells it had not forked; those it
        forked keep their jobs. Once a launch (`WARM_RESTARTS`), and only for a worker that had forked a
        cell: one that died starting up (a broken set-up, too little memory for the imports) would die
        again. Returns whether it did."""
        dead = self.executor
        if not isinstance(dead, WarmExecutor) or len(self.restarted) >= WARM_RESTARTS or not dead.forked():
            return False
        try:
            fresh = _start_warm(self.prep, threads_per_process(self.prep.spec.executor, self.prep.kind))
        except OSError as e:  # no process to be had (what may have killed the dead one): not started
            log.error("could not start a fresh warm worker: %s", e)
            fresh = None
        if fresh is None:
            return False
        self.restarted.append(fresh)
        self.executor = fresh
        log.warning(
            "the warm worker (pid %d) that forks this launch's cells died (killed?; its log: %s): the cells "
            "it had not forked go to a fresh one (pid %d; its log: %s)",
            dead.proc.pid, dead.log_path, fresh.proc.pid, fresh.log_path,
        )  # fmt: skip
        return True

    def _not_started(self, tasks: list[CellTask]) -> None:
        """Fail ``tasks``, which the dead warm worker cannot start, saying so and that a relaunch runs it."""
        ex = self.executor
        why = (
            f"not started: the warm worker (pid {ex.proc.pid}) that forks this launch's cells died (killed?; "
            f"its log: {ex.log_path}); relaunch the same command to run it"
        )
        for t in tasks:
            self.result.errors[t.cell_id] = why
            log.error("cell %s %s", t.cell_id, why)

    def _unforked(self, tasks: list[CellTask]) -> list[CellTask]:
        """Those of ``tasks`` sent to a warm worker that died before forking them (`WarmJob.unforked`):
        nothing of them ran, so they are pending again, for a fresh worker (`_restart_worker`) or as not
        started, their job recorded as an interrupt (no try; the next submission counts one more)."""
        back = [c for c in sorted(self.live) if isinstance(j := self.jobs[c], WarmJob) and j.unforked()]
        for c in back:
            st = self.states[c]
            st.attempts, st.interrupts = st.attempts + 1, st.interrupts + 1  # as recorded, and the interrupt
            for d in (self.result.job_ids, self.result.timings, self.result.logs):
                d.pop(c, None)
            log.warning(
                "cell %s: its warm worker died before forking job %s; sent again", c, self.jobs[c].job_id
            )
        if back:
            record_interrupts(
                self.prep.tracking_uri, {self.states[c].run_id: self.states[c].interrupts for c in back}
            )
        self.live.difference_update(back)
        return [t for t in tasks if t.cell_id in back]

    def run(self, tasks: list[CellTask], wait: bool) -> None:
        try:
            self._run(tasks, wait)
        except KeyboardInterrupt as e:
            self._interrupted(stop_signal(e))
            raise

    def _run(self, tasks: list[CellTask], wait: bool) -> None:
        kind, width = self.prep.kind, self.prep.spec.executor.local_parallelism
        pending = list(tasks) if kind == "local" and wait else []
        if not pending:
            if kind == "local" and len(tasks) > width:
                log.warning("not waiting: all %d local jobs start at once", len(tasks))
            self._submit(tasks)
        if not wait:
            if kind == "local":
                self._until_locked()
            self.live.clear()  # the jobs go on without this launcher
            return
        live = self.live
        # locally a freed slot is refilled within 50 ms; SLURM state is polled every poll_s
        tick = min(self.poll_s, 0.05) if kind == "local" else self.poll_s
        last_report = -1.0
        while True:
            pending = self._unforked(tasks) + pending
            # the cells it forked are waited for, the rest go to a fresh one, or fail
            if pending and self._worker_gone() and not self._restart_worker():
                self._not_started(pending)
                pending = []
            if pending:
                self.others = {c: d for c, d in self.others.items() if cell_lock_held(d)}
                free = width - len(live) - len(self.others)
                if free > 0:
                    batch, pending = pending[:free], pending[free:]
                    self._submit(batch)
            gone = self._gone_unseen(live) if kind == "slurm" else set()
            for cid in sorted(live):
                job = self.jobs[cid]
                if kind == "debug" or self._ended(cid, job, gone):
                    live.discard(cid)
                    start = self.result.timings[cid][0]
                    self.result.timings[cid] = (start, time.monotonic() - self.t0)
                    self._collect(cid, job)
            now = time.monotonic()
            if now - last_report >= self.poll_s or (not live and not pending):
                self._report(live, pending)
                last_report = now
            if not live and not pending:
                if kind == "slurm":
                    self._until_slurm_over()
                return
            time.sleep(tick)

    def _until_slurm_over(self) -> None:
        """Once every SLURM job's result is collected: wait up to `SLURM_SETTLE_S` until squeue lists none
        of them (`_until_slurm_ended`): a job's result shows while the job is still RUNNING or COMPLETING,
        so the table printed next called a failed cell `running` (and a relaunch right after skipped it)."""
        ids = [str(j.job_id) for j in self.jobs.values()]
        if alive := _until_slurm_ended(ids, SLURM_SETTLE_S, hurry=lambda: False, said=None):
            log.warning(
                "SLURM still lists job(s) %s %.0f s after their results", ", ".join(alive), SLURM_SETTLE_S
            )

    def _ended(self, cid: str, job: Any, gone: set[str]) -> bool:
        """Whether to collect ``job`` now: once ``job.done()``, or its cell is in ``gone`` (`_gone_unseen`).
        A SLURM job without a result is not over while the controller still lists it (sacct can call a job
        NODE_FAIL, done for submitit, before its requeue shows there); then it gets `RESULT_GRACE_S` from
        when it was first seen over for its result to show (a slow file system), alongside the others:
        submitit's own wait, in `job.results()`, takes 15 s per job, one after another."""
        if cid not in gone and not job.done():
            return False
        if self.prep.kind != "slurm" or job.paths.result_pickle.exists():
            return True
        if cid not in gone and slurm_job_alive(str(job.job_id)):
            return False
        since = self.over_since.setdefault(cid, time.monotonic())
        return time.monotonic() - since >= RESULT_GRACE_S

    def _gone_unseen(self, live: set[str]) -> set[str]:
        """Cells whose SLURM job sacct does not show (state UNKNOWN: accounting down or absent, where
        submitit's ``done()`` never comes for a job that ended without a result) and ``squeue`` answers
        without listing it: over. One ``squeue`` call, also about the PENDING jobs (held or not: sacct
        gives no reason) once per sacct call; its answers go to `queue`, for the progress line."""
        sacct = {c: slurm_state(self.jobs[c]) for c in live if not self.jobs[c].paths.result_pickle.exists()}
        calls = submitit.SlurmJob.watcher.num_calls  # the class's one watcher
        fresh, self.sacct_calls = calls != self.sacct_calls, calls
        ask = {
            c: str(self.jobs[c].job_id)
            for c, s in sacct.items()
            if s == "UNKNOWN" or (fresh and s == "PENDING")
        }
        if not ask:
            return set()
        try:
            queue = squeue_states(list(ask.values()))
        except SlurmUnreachable:  # nothing answers: nothing is taken for over
            return set()
        self.queue.update({c: queue.get(j, "OVER") for c, j in ask.items()})
        return {c for c, j in ask.items() if sacct[c] == "UNKNOWN" and queue.get(j) not in SLURM_ALIVE}

    def _word(self, cid: str) -> str:
        """A live SLURM cell's word on the progress line, as `status` has it: queued, held or running.
        sacct's state, but squeue's (`queue`) where sacct says PENDING or does not show the job yet:
        queued while neither has answered."""
        state = slurm_state(self.jobs[cid], mode="cache")
        if state in ("UNKNOWN", "PENDING"):
            state = self.queue.get(cid) or "PENDING"
        return "held" if state == "HELD" else "queued" if state in SLURM_PENDING else "running"

    def _interrupted(self, signum: int = signal.SIGINT, wait_s: float = 10.0) -> None:
        """Ctrl-C (or ``signum``, one of `STOP_SIGNALS`) while this launcher waits: pass a Ctrl-C on to
        each process of the live local jobs (`_ctrl_c`: a terminal's reached a plain job already, not a
        warm one, nor a signal to the launcher alone) and end the warm worker (it forks no more jobs),
        record each live local cell's submission as interrupted (not a try), wait up to ``wait_s`` for
        the jobs to end, and end the runs their trainers did not: KILLED, tag status=interrupted. A
        second signal during that wait kills the jobs still alive (every process, `_kill_jobs`) and
        ends their runs so at once, then raises. SLURM jobs go on running."""
        if self.prep.kind == "slurm" or not self.live:
            return
        cells = sorted(self.live)
        uri = self.prep.tracking_uri
        counts = {self.states[c].run_id: self.states[c].interrupts + 1 for c in cells}
        alive = set(cells)
        local = self.prep.kind == "local"  # a debug job runs in this process: interrupted with it
        signalled: set[int] = set()
        try:
            with signals_deferred(*STOP_SIGNALS):  # a second signal lets the record be written first
                _ctrl_c([self.jobs[c] for c in cells if local], signalled)
                if isinstance(self.executor, WarmExecutor):  # its own session: forks no job after this
                    self.executor.stop()
                record_interrupts(uri, counts)
            log.warning("interrupted: %s stopped; not counted as tries (--max-retries)", ", ".join(cells))
            deadline = time.monotonic() + wait_s
            while alive and time.monotonic() < deadline:
                alive = {c for c in alive if not (self.prep.kind == "debug" or self.jobs[c].done())}
                if alive:
                    _ctrl_c([self.jobs[c] for c in alive if local], signalled)  # processes started since
                    time.sleep(0.05)
        except KeyboardInterrupt as e:  # a signal again: stop waiting for the jobs' checkpoints
            with signals_deferred(*STOP_SIGNALS):  # a third one waits until the runs are ended
                left = [self.jobs[c] for c in sorted(alive) if local and not self.jobs[c].done()]
                again = _signal_word(stop_signal(e))
                if left:
                    log.warning(
                        "%s again: killing job(s) %s now", again, ", ".join(str(j.job_id) for j in left)
                    )
                still = set(_kill_jobs(left))
                self._end_interrupted([c for c in cells if str(self.jobs[c].job_id) not in still])
            if left:  # said by the CLI as what the signal stopped
                raise CancelInterrupted(_killed_text(left, still, again), signum) from None
            raise
        self._end_interrupted([c for c in cells if c not in alive])

    def _end_interrupted(self, cells: list[str]) -> None:
        """End the runs of ``cells``, whose jobs are over, that their trainers left open: KILLED, tag
        status=interrupted; a run its trainer ended keeps its end (`end_orphaned_runs` ends only
        SCHEDULED or RUNNING runs): each run is ended once."""
        over = {self.states[c].run_id: "" for c in cells}
        if over:  # their jobs are over: nothing else will end these runs
            uri = self.prep.tracking_uri
            end_orphaned_runs(uri, over, status="KILLED", tag="interrupted", left=("SCHEDULED", "RUNNING"))

    def _until_locked(self, timeout_s: float = 30.0) -> None:
        """Before the sweep lock is released: wait until each local job holds its cell's lock (or
        has ended), so that a relaunch right after a --no-wait launch sees every job alive. A warm
        worker takes the locks once its imports are done: it is waited for as long as it lives."""
        deadline = time.monotonic() + (float("inf") if isinstance(self.executor, WarmExecutor) else timeout_s)
        for cid, job in self.jobs.items():
            while not cell_lock_held(self.run_dirs[cid]) and not job.done() and time.monotonic() < deadline:
                time.sleep(0.02)

    def _collect(self, cid: str, job: Any) -> None:
        try:
            if self.prep.kind == "slurm" and not job.paths.result_pickle.exists():  # `_ended` waited for it
                raise RuntimeError(_no_result(job))
            self.result.results[cid] = job.results()[0]  # rank 0's result when a cell has several tasks
        except Exception as e:  # a failed cell is reported, the sweep goes on
            run_id, uri = self.states[cid].run_id, self.prep.tracking_uri
            err = _error_line(e)
            if getattr(job, "num_tasks", 1) > 1:  # rank 0's error: mostly gloo's lost peer
                err = peer_named_error(uri, run_id) or err
            self.result.errors[cid] = err
            log.error("cell %s failed (job %s): %s", cid, job.job_id, err)
            # a job that died before its trainer took the run over leaves it SCHEDULED: end it here
            end_orphaned_runs(uri, {run_id: f"job {job.job_id} ended before training: {err}"})
            # one killed under its trainer (SIGKILL, the OOM killer) leaves it RUNNING: KILLED, status=killed
            end_orphaned_runs(uri, {run_id: err}, status="KILLED", tag=KILLED_IN_TRAINING, left=("RUNNING",))

    def _report(self, live: set[str], pending: list[CellTask]) -> None:
        if self.on_progress is None:
            return
        words = [self._word(cid) for cid in live] if self.prep.kind == "slurm" else []
        queued, held = words.count("queued"), words.count("held")
        elapsed = time.monotonic() - self.t0
        left = None
        if self.work and self.prep.kind == "local":  # on SLURM the queue decides when cells start
            spans = {  # a failed cell teaches no rate and has no work left
                c: (a, None if c in live else b)
                for c, (a, b) in self.result.timings.items()
                if c not in self.result.errors
            }
            slots = self.prep.spec.executor.local_parallelism
            left = time_left(self.work, spans, [t.cell_id for t in pending], elapsed, slots)
        self.on_progress(
            Progress(
                total=len(self.result.job_ids)
                + len(pending)
                + len(self.result.errors.keys() - self.result.job_ids),
                done=len(self.result.results),
                running=len(live) - queued - held,
                failed=len(self.result.errors),
                pending=len(pending),
                elapsed_s=elapsed,
                queued=queued,
                held=held,
                work_done=left[0] if left else None,
                eta_s=left[1] if left else None,
            )
        )


def _work(cells: list[Cell], tasks: dict[str, CellTask]) -> dict[str, float]:
    """Each cell's work for the time-left estimate; {} (no estimate) when a trainer's overrides are
    not `TrainConfig`'s: the estimate is cosmetic and never stops a launch."""
    try:
        todo = trained_cells(cells, tasks)
        return {
            c.cell_id: cell_work(c, tasks[c.cell_id].overrides, tasks[c.cell_id].trunk is None) for c in todo
        }
    except Exception as e:
        log.debug("no time-left estimate: %s", e)
        return {}


#: Seconds a launcher waits for the local jobs it cancelled to end (a warm worker forks them once its
#: imports are done, and only then can they be signalled) before it kills them.
CANCEL_WAIT_S = 120.0
#: Seconds a launcher waits for the local jobs it killed (SIGKILL) to be seen over.
KILL_WAIT_S = 10.0


def _cancel_jobs(jobs: list[Any], kind: str, hurry: Callable[[], bool]) -> list[str]:
    """Cancel ``jobs``: SLURM's with ``scancel``; local ones with a Ctrl-C (`_ctrl_c`: the trainer
    checkpoints and ends its run KILLED), waiting up to `CANCEL_WAIT_S` for them to end; those still
    alive then, or as soon as ``hurry()`` (a second Ctrl-C of the user while the launcher waits), are
    killed (`_kill_jobs`). Returns the ids of the jobs that scancel failed on or that did not end."""
    if kind == "debug":  # ran to its end inside `submit`
        return []
    if kind == "slurm":
        left = []
        for j in jobs:
            try:
                j.cancel(check=True)
            except (subprocess.CalledProcessError, OSError) as e:
                log.error("scancel %s failed: %s", j.job_id, e)
                left.append(str(j.job_id))
        return left + _until_slurm_ended(
            [str(j.job_id) for j in jobs if str(j.job_id) not in left], CANCEL_WAIT_S, hurry
        )
    deadline = time.monotonic() + CANCEL_WAIT_S
    signalled: set[int] = set()
    alive = list(jobs)
    while alive and time.monotonic() < deadline:
        if hurry():
            log.warning("Ctrl-C again: killing job(s) %s now", ", ".join(str(j.job_id) for j in alive))
            return _kill_jobs(alive)
        _ctrl_c(alive, signalled)
        time.sleep(0.05)
        alive = [j for j in alive if not j.done()]
    if alive:
        ids = ", ".join(str(j.job_id) for j in alive)
        log.warning("job(s) %s did not end %.0f s after their Ctrl-C: killing them", ids, CANCEL_WAIT_S)
    return _kill_jobs(alive)


def _until_slurm_ended(
    job_ids: list[str],
    wait_s: float,
    hurry: Callable[[], bool],
    said: str | None = "cancelled ",
) -> list[str]:
    """Wait up to ``wait_s`` (or until ``hurry()``) until `squeue` lists none of the SLURM jobs ``job_ids``
    as alive: sacct calls a cancelled or failed job over at once, while its processes may run on for
    SLURM's KillWait (they get SIGTERM first, and a trainer writes its checkpoint) as COMPLETING. Logs
    once that it waits for the ``said`` jobs (None: silent). Returns the ids still listed, or all of them
    where squeue never answered."""
    deadline = time.monotonic() + wait_s
    while job_ids:
        try:
            queue = squeue_states(job_ids)
            job_ids = [j for j in job_ids if queue.get(j) in SLURM_ALIVE]
        except SlurmUnreachable as e:  # not known to be over: waited for as alive
            log.warning("%s; waiting for job(s) %s", e, ", ".join(job_ids))
        if not job_ids or time.monotonic() > deadline or hurry():
            break
        if said is not None:
            ids = ", ".join(job_ids)
            log.warning("waiting up to %.0f s for the %sSLURM job(s) %s to end", wait_s, said, ids)
            said = None
        time.sleep(SLURM_END_POLL_S)
    return job_ids


#: The signals that stop a launch as a Ctrl-C does: SIGINT, and SIGTERM and SIGHUP where the CLI takes
#: them so (`stop_on_signals`).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class CancelInterrupted(KeyboardInterrupt):
    """The user's Ctrl-C (or ``signum``, one of `STOP_SIGNALS`) that the launcher acted on (cancelling
    jobs whose record failed, or a second one killing the local jobs); says what became of them. Without
    text: SIGTERM or SIGHUP to the launcher, not acted on yet (`stop_on_signals`)."""

    def __init__(self, text: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(text)
        self.signum = signum


def _raise_stopped(signum: int, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    raise CancelInterrupted("", signum)


def stop_on_signals() -> None:
    """Take SIGTERM and SIGHUP to this process (`kill`, `timeout`, a scheduler, a closed terminal) as
    its Ctrl-C: each raises a `CancelInterrupted` without text, so that a launch stops as on a Ctrl-C
    (`_Runner._interrupted`). One this process inherited as ignored stays so (``nohup``: a closed
    terminal must not stop the launch). For the CLI's own process, from its main thread."""
    for s in STOP_SIGNALS[1:]:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _raise_stopped)


def stop_signal(e: KeyboardInterrupt) -> int:
    """The signal that raised ``e``: a `CancelInterrupted`'s, else SIGINT (Python's own Ctrl-C)."""
    return getattr(e, "signum", signal.SIGINT)


def _stops(signals: Iterable[int]) -> list[int]:
    """Those of ``signals`` that are `STOP_SIGNALS`, in their order."""
    return [s for s in signals if s in STOP_SIGNALS]


def _signal_word(signum: int) -> str:
    """How a message names a stop signal: "Ctrl-C" for SIGINT, else its name."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _ctrl_c(jobs: Iterable[Any], signalled: set[int]) -> None:
    """SIGINT, as a terminal's Ctrl-C, to each process of the local ``jobs`` (`_ctrl_c_targets`) not in
    ``signalled`` (then added: a trainer takes a second SIGINT 2 s or more after the first for a second
    Ctrl-C and skips its checkpoint). A process that ignores SIGINT is left for a later call: a plain
    job's task starts with it ignored (`sweeps.executor.IGNORE_CTRL_C`) until `CellJob` takes it back."""
    for j in jobs:
        for pid in _ctrl_c_targets(j) - signalled:
            if _sigint_ignored(pid):
                continue
            signalled.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)


def _sigint_ignored(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (``SigIgn`` in Linux's /proc/PID/status; elsewhere, or
    once it is gone: False)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    return False


def _ctrl_c_targets(job: Any) -> set[int]:
    """The processes of the local ``job`` a Ctrl-C goes to: a warm job's once its child has named itself;
    a submitit job's shell (its ``job_id``: submitit names a job with set-up lines, which
    `local_job_setup` always gives, after its controller's parent) and what the controller's tasks
    started, not the controller (the shell's child), which on a SIGINT kills its tasks 1 s later whether
    or not they have checkpointed (a terminal's it ignores: `sweeps.executor.IGNORE_CTRL_C`): it ends
    once they have."""
    root = _job_root(job)
    if isinstance(job, WarmJob):
        return _process_tree(root) if root else set()
    return {root}.union(*(_process_tree(task) for c in _children(root) for task in _children(c)))


def _job_root(job: Any) -> int | None:
    """The root process of the local ``job``: a warm job's forked child (None before its fork), a
    submitit job's shell (its ``job_id``)."""
    return job.pid() if isinstance(job, WarmJob) else int(job.job_id)


def _hurried_text(what: str, ids: str, left: list[str], kind: str) -> str:
    """What a second Ctrl-C during the cancel of the jobs ``ids`` (``what``: why they were cancelled) did:
    local jobs are killed; SLURM's still listed (``left``) get ``scancel --full --signal=KILL``, which
    slurmctld refuses for a job already ending (COMPLETING): SLURM kills it after its KillWait."""
    again = "Launch again once the tracking server answers: the relaunch resumes those cells in their runs"
    if kind != "slurm":
        gone = (
            f"; {', '.join(left)} not seen to end: kill the process that holds the cell's lock"
            if left
            else ""
        )
        return f"{what}; job(s) {ids} killed (SIGKILL) on a second Ctrl-C{gone}. {again}"
    if not left:
        return f"{what}; job(s) {ids} cancelled and ended. {again}"
    listed = ",".join(left)
    log.warning("Ctrl-C again: scancel --full --signal=KILL %s", listed)
    said = slurm_kill(left)
    kill = "sent" if not said else f"refused ({said})"
    if said:
        wait = slurm_kill_wait_s()
        kill += ": slurmctld signals no job that is already ending (COMPLETING); SLURM itself kills its "
        kill += f"processes {'KillWait' if wait is None else f'{wait} s (KillWait)'} after the cancel"
    return (
        f"{what}; job(s) {ids} cancelled; on a second Ctrl-C the launcher stopped waiting for "
        f"{', '.join(left)} to end, and scancel --full --signal=KILL {listed} was {kill}. Make sure "
        f"`squeue -j {listed}` lists none before launching again (a relaunch meanwhile skips their cells "
        f"as live). {again}"
    )


def _killed_text(jobs: list[Any], still: set[str], again: str = "Ctrl-C") -> str:
    """What a second Ctrl-C (``again``: how it is named) did to the local ``jobs`` it killed (``still``:
    the ids not seen to end)."""
    ids = ", ".join(str(j.job_id) for j in jobs)
    text = (
        f"local job(s) {ids} killed (SIGKILL) on a second {again}, the MLflow runs their trainers left open "
        "ended KILLED (status=interrupted); not counted as tries (--max-retries)"
    )
    if still:
        text += f"; {', '.join(sorted(still))} not seen to end: kill the process that holds the cell's lock"
    return text + ". Relaunch the same command to resume them from their last checkpoints"


def _kill_jobs(jobs: list[Any], wait_s: float = KILL_WAIT_S) -> list[str]:
    """SIGKILL every process of the local ``jobs`` (a warm job not forked yet: its worker, which then
    never forks it) and wait up to ``wait_s`` for them to be over. Returns the ids of those that are not."""
    deadline = time.monotonic() + wait_s
    alive = list(jobs)
    while alive:
        for j in alive:
            root = _job_root(j)
            if root is None and j.executor.alive():
                j.executor.proc.kill()
                root = j.pid()  # forked just before (its child names itself: maybe on a later pass)
            for pid in _process_tree(root) if root else ():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        alive = [j for j in alive if not j.done()]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return [str(j.job_id) for j in alive]


def _process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants (Linux's /proc; elsewhere ``pid`` alone)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += [k for k in _children(p) if k not in out]
    return out


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux's /proc; elsewhere none)."""
    out: list[int] = []
    for kids in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            out += [int(k) for k in kids.read_text().split()]
    return out


def threads_per_process(ex: ExecutorSpec, kind: str) -> int:
    """CPU threads for torch in each job process of executor ``kind``: SLURM gives each task
    ``cpus_per_task`` cores; local jobs share this machine's cores between ``local_parallelism`` cells x
    ``tasks_per_node``."""
    if kind == "slurm":
        return ex.cpus_per_task
    return max(1, (os.cpu_count() or 1) // (ex.local_parallelism * ex.tasks_per_node))


def _log_files(job: Any) -> str:
    """Where a job's output goes: its stdout and stderr files (else its folder)."""
    files = [str(getattr(job.paths, k)) for k in ("stdout", "stderr") if hasattr(job.paths, k)]
    return ", ".join(files) or str(getattr(job.paths, "folder", ""))


def _no_result(job: Any) -> str:
    """Why a SLURM job ended without a result: its state (CANCELLED, TIMEOUT, ...) and what to do."""
    state = slurm_state(job)
    if state == "UNKNOWN":
        state = "(sacct does not show it; squeue no longer lists it)"
    return (
        f"job {job.job_id} ended {state} without a result (scancel, a time limit or a kill stopped it); "
        "relaunch the sweep to resume the cell from its last checkpoint"
    )


def _error_line(e: BaseException) -> str:
    """The remote exception line (``RuntimeError: ...``) of a submitit FailedJobError, else str(e)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    found = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", ln)]
    return found[-1] if found else (lines[0] if lines else type(e).__name__)
