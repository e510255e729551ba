"""Launching a sweep: validate, plan (idempotent), submit through submitit, wait with progress.

`launch` is what ``python sweeps/launch.py`` calls. Everything that can be wrong with the input
(unknown family, bad patch size, a budget below one step, unreachable tracking server, SLURM asked
for but absent) raises ValueError before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.executor import CellJob, make_executor, resolve_executor_kind
from sweeps.grid import Cell, SweepSpec, expand
from sweeps.ledger import Ledger, sweep_lock
from sweeps.state import (
    Plan,
    check_tracking_uri,
    create_cell_run,
    ensure_experiment,
    plan,
    read_states,
    resolve_tracking_uri,
)
from sweeps.task import CellTask, check_trainer, make_task

__all__ = ["LaunchResult", "Prepared", "Progress", "launch", "prepare", "sweep_dir"]

log = logging.getLogger(__name__)


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
    """Counts shown while waiting: done / running / queued in the scheduler (SLURM) / failed /
    waiting to be submitted (local waves)."""

    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0
    elapsed_s: float = 0.0
    queued: int = 0


@dataclass
class LaunchResult:
    """What a launch did: the plan, the submitted cells with job ids, and failures (cell -> error)."""

    prepared: Prepared
    plan: Plan
    job_ids: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    waited: bool = True

    @property
    def submitted(self) -> list[str]:
        return list(self.job_ids)


def sweep_dir(spec: SweepSpec) -> Path:
    return (Path(spec.output_dir) / spec.name).resolve()


def prepare(spec: SweepSpec, check_tracking: bool = True) -> Prepared:
    """Validate everything; raises ValueError naming the problem. Submits nothing."""
    cells = expand(spec)
    kind = resolve_executor_kind(spec.executor.name)
    uri = resolve_tracking_uri(spec.tracking_uri)
    if check_tracking:
        check_tracking_uri(uri)
    if kind == "local" and spec.executor.nodes > 1:
        raise ValueError(f"nodes={spec.executor.nodes} needs SLURM; the local executor runs on one node")
    return Prepared(spec, cells, kind, uri, sweep_dir(spec))


def launch(
    spec: SweepSpec,
    *,
    wait: bool = True,
    poll_s: float = 2.0,
    on_progress: Callable[[Progress], None] | None = None,
) -> LaunchResult:
    """Submit the cells that are not finished or live (one job array on SLURM) and, with ``wait``,
    block until they end. Relaunching the same sweep submits only what is missing or failed."""
    prep = prepare(spec)
    sdir = prep.sweep_dir
    threads = _threads_per_process(prep)
    all_tasks = {c.cell_id: make_task(spec, c, sdir, prep.tracking_uri, threads) for c in prep.cells}
    check_trainer(spec.trainer, list(all_tasks.values()))
    with sweep_lock(sdir):
        ledger = Ledger.load(sdir)
        _check_unchanged(ledger, all_tasks)
        ensure_experiment(prep.tracking_uri, spec.experiment)
        ids = [c.cell_id for c in prep.cells]
        states = read_states(prep.tracking_uri, spec.experiment, spec.name, ids, ledger)
        the_plan = plan(states, spec.executor.max_retries)
        for cid in the_plan.exhausted:
            log.warning(
                "cell %s failed %d times; not retried (raise --max-retries)", cid, states[cid].attempts
            )
        result = LaunchResult(prep, the_plan, waited=wait)
        tasks = [all_tasks[cid] for cid in the_plan.submit]
        run_ids = {cid: states[cid].run_id for cid in the_plan.submit if states[cid].run_id}
        if not tasks:
            log.info(
                "nothing to submit: %d finished, %d running", len(the_plan.finished), len(the_plan.running)
            )
            return result
        executor = make_executor(spec.executor, prep.kind, sdir / "jobs", job_name=f"ditscale-{spec.name}")
        _Runner(prep, executor, ledger, result, on_progress, poll_s, run_ids).run(tasks, wait)
    return result


class _Runner:
    """Submits tasks (one array on SLURM; at most ``local_parallelism`` at once locally) and waits."""

    def __init__(
        self,
        prep: Prepared,
        executor: Any,
        ledger: Ledger,
        result: LaunchResult,
        on_progress: Callable[[Progress], None] | None,
        poll_s: float,
        run_ids: dict[str, str],
    ) -> None:
        self.prep, self.executor, self.ledger, self.result = prep, executor, ledger, result
        self.on_progress, self.poll_s, self.run_ids = on_progress, poll_s, run_ids
        self.jobs: dict[str, Any] = {}
        self.t0 = time.monotonic()

    def _with_run(self, task: CellTask) -> CellTask:
        """Every submitted cell continues its one MLflow run: the existing one, else one created now."""
        spec = self.prep.spec
        run_id = self.run_ids.get(task.cell_id) or create_cell_run(
            self.prep.tracking_uri, spec.experiment, spec.name, task.cell_id
        )
        return dataclasses.replace(task, overrides={**task.overrides, "tracking.run_id": run_id})

    def _submit(self, tasks: list[CellTask]) -> None:
        tasks = [self._with_run(t) for t in tasks]
        if self.prep.kind == "slurm":
            jobs = self.executor.map_array(CellJob(), tasks)  # one job array
        else:
            jobs = [self.executor.submit(CellJob(), t) for t in tasks]
        for t, j in zip(tasks, jobs):
            self.jobs[t.cell_id] = j
            self.result.job_ids[t.cell_id] = str(j.job_id)
            folder = str(getattr(j.paths, "folder", ""))
            config = {k: v for k, v in t.overrides.items() if k != "tracking.run_id"}
            self.ledger.record(t.cell_id, self.prep.kind, str(j.job_id), folder, config)
            log.info("submitted %s as %s job %s", t.cell_id, self.prep.kind, j.job_id)

    def run(self, tasks: list[CellTask], wait: bool) -> None:
        kind, ex = self.prep.kind, self.prep.spec.executor
        if kind == "local" and wait:
            pending = list(tasks)
            width = ex.local_parallelism
        else:
            if kind == "local" and len(tasks) > ex.local_parallelism:
                log.warning("not waiting: all %d local jobs start at once", len(tasks))
            pending, width = [], 0
            self._submit(tasks)
        if not wait:
            return
        live: set[str] = set(self.jobs)
        while True:
            if pending and len(live) < width:
                batch, pending = pending[: width - len(live)], pending[width - len(live) :]
                self._submit(batch)
                live |= {t.cell_id for t in batch}
            for cid in sorted(live):
                job = self.jobs[cid]
                if kind == "debug" or job.done():
                    live.discard(cid)
                    self._collect(cid, job)
            self._report(live, pending)
            if not live and not pending:
                return
            time.sleep(self.poll_s)

    def _collect(self, cid: str, job: Any) -> None:
        try:
            self.result.results[cid] = job.results()[0]  # rank 0's result when a cell has several tasks
        except Exception as e:  # a failed cell is reported, the sweep goes on
            self.result.errors[cid] = _error_line(e)
            log.error("cell %s failed (job %s): %s", cid, job.job_id, self.result.errors[cid])

    def _report(self, live: set[str], pending: list[CellTask]) -> None:
        if self.on_progress is None:
            return
        failed = len(self.result.errors)
        done = len(self.result.results)
        queued = sum(_is_queued(self.jobs[cid]) for cid in live) if self.prep.kind == "slurm" else 0
        self.on_progress(
            Progress(
                total=len(self.result.job_ids) + len(pending),
                done=done,
                running=len(live) - queued,
                failed=failed,
                pending=len(pending),
                elapsed_s=time.monotonic() - self.t0,
                queued=queued,
            )
        )


def _is_queued(job: Any) -> bool:
    """Whether a SLURM job still waits in the queue (submitit batches the sacct/squeue calls)."""
    try:
        return str(job.state).upper() in ("PENDING", "REQUEUED", "CONFIGURING")
    except Exception:  # the state is cosmetic here; never let it break the wait loop
        return False


def _threads_per_process(prep: Prepared) -> int:
    """CPU threads for torch in each job process: SLURM gives each task ``cpus_per_task`` cores; local
    jobs share this machine's cores between ``local_parallelism`` cells x ``tasks_per_node``."""
    ex = prep.spec.executor
    if prep.kind == "slurm":
        return ex.cpus_per_task
    return max(1, (os.cpu_count() or 1) // (ex.local_parallelism * ex.tasks_per_node))


def _check_unchanged(ledger: Ledger, tasks: dict[str, CellTask]) -> None:
    """A cell id must keep its settings: resuming a checkpoint under other settings would mix runs."""
    for cid, task in tasks.items():
        diff = ledger.changed_settings(cid, task.overrides)
        if diff:
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:5])
            raise ValueError(
                f"cell {cid} of sweep {task.sweep!r} was launched with other settings ({what}); "
                "start a new sweep with --name NEW, or delete its folder and MLflow runs to redo it"
            )


def _error_line(e: BaseException) -> str:
    """The remote exception line (``RuntimeError: ...``) of a submitit FailedJobError, else str(e)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    found = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", ln)]
    return found[-1] if found else (lines[0] if lines else type(e).__name__)
