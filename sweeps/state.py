"""The record of a cell: its one MLflow run (tags `RECORD_TAGS`, docs/sweeps.md "One record per
cell"), plus submitit's job for liveness; `read_states` gives each cell's state (`CellState`) and
`plan` the idempotent relaunch decision.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dit_core.atomic import atomic_write_text
from dit_core.configio import stable_hash
from dit_core.tracking import (
    ERROR_TAG,
    EXECUTOR_TAG,
    FID_METRICS,
    GRID_CELL_TAG,
    JOB_ID_TAG,
    RUN_ID_FILE,
    SWEEP_TAG,
    TRAIN_LOSS,
    VAL_LOSS,
    check_sqlite_store,
    check_tracking_server,
    end_run_if,
    sqlite_store_path,
)
from sweeps.executor import JobRef, job_liveness
from sweeps.lock import cell_lock_held

# tags of the launcher's record on each cell's run (the trainer also sets `executor` and `job_id`,
# to the same values, from the job's environment)
RECORD_TAGS = (EXECUTOR_TAG, JOB_ID_TAG, "job_folder", "attempts", "config_hash")
#: tag counting a cell's submissions stopped by their own launcher (its user's Ctrl-C while it waited, or
#: a cancel after their record failed): not tries
INTERRUPTS_TAG = "interrupts"
#: tag of the cell's run folder (absolute), written when its launcher creates the run and with each
#: record: a job's cell lock is held there, and a launch from another --output-dir is refused
#: (`check_cell_folder`) before the trainer has logged its ``out``
RUN_DIR_TAG = "run_dir"
#: file in a cell's folder naming the jobs its launcher cancelled because their record failed (the
#: tracking server gone), ``{job_id: the cell's interrupts counting that job}``: the record of such a job
#: may have been written before the server failed, and the cancel could not be written beside it
CANCELLED_FILE = ".cancelled_jobs.json"
#: ``status`` tag of a run whose job ended before its trainer took it over (the run is ended FAILED)
DIED_BEFORE_TRAINING = "died_before_training"
#: ``status`` tag of a run whose job ended under its trainer without ending it (SIGKILL, the OOM killer):
#: the launcher that sees the job over ends the run KILLED, so that no run says RUNNING for ever
KILLED_IN_TRAINING = "killed"

AUTH_HINT = (
    "start it on this machine (`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri "
    "sqlite:///mlflow.db`), or, for jobs on other nodes, one with authentication (`mlflow server "
    "--app-name basic-auth ...`, credentials in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; "
    "see slurm/README.md), or pass --tracking-uri"
)


@dataclass
class CellState:
    """One row of ``launch.py status``: the cell's state, run, progress and last job."""

    cell_id: str
    state: str
    run_id: str | None = None
    run_status: str | None = None  # MLflow's: SCHEDULED, RUNNING, FINISHED, FAILED, KILLED
    step: int | None = None
    loss: float | None = None  # last train/loss
    val_loss: float | None = None  # last val/loss
    val_step: int | None = None  # the step of `val_loss`
    fid: float | None = None
    fid_step: int | None = None  # the step of `fid`
    attempts: int = 0  # submissions, the job no launcher recorded too (`unrecorded`)
    interrupts: int = 0  # submissions stopped by their launcher (a Ctrl-C, a cancel after a failed record)
    job_id: str | None = None
    duplicates: int = 0
    config_hash: str | None = None
    params: dict[str, str] = field(default_factory=dict, repr=False)  # the trainer's flat config
    run_dir: str | None = None  # the folder its launcher made the run for (`RUN_DIR_TAG`; older runs: None)
    unrecorded: bool = False  # a job ran or runs in the run, which records none (`_unrecorded_job`)

    @property
    def tries(self) -> int:
        """Submissions that count against ``max_retries``: all but those their launcher stopped (a user's
        Ctrl-C, or a cancel because their record failed)."""
        return max(0, self.attempts - self.interrupts)


@dataclass
class Plan:
    """Relaunch decision: cells to submit, and why the others are skipped."""

    submit: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # SLURM did not say whether their jobs are alive


def resolve_tracking_uri(uri: str | None) -> str:
    """``None`` or empty -> MLflow's default (``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``),
    made absolute so that jobs started in other directories write to the same store."""
    import mlflow

    if not (uri or "").strip():  # an empty `tracking_uri: ''` is unset too, not a store named ''
        uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    relative = re.match(r"(sqlite(?:\+\w+)?:///)(?!/)([^?]+)(.*)", uri)  # (scheme, FILE, ?options)
    if relative and sqlite_store_path(uri) is not None:
        scheme, path, options = relative.groups()
        uri = scheme + str(Path(path).resolve()) + options
    return uri


def check_tracking_uri(uri: str, timeout_s: float | None = None) -> None:
    """Raise ValueError when the tracking store cannot be used (an unknown scheme or a plain folder,
    server down, folder missing). ``timeout_s`` None: `check_tracking_server`'s default."""
    check_tracking_server(uri, AUTH_HINT, timeout_s)
    if re.fullmatch(r"sqlite(\+\w+)?://(/:memory:)?(\?.*)?", uri):
        raise ValueError(
            f"MLflow store {uri} is an in-memory database, which each job would open empty and lose on "
            "exiting: give a file, --tracking-uri sqlite:///FILE, or a tracking server"
        )
    path = sqlite_store_path(uri)
    if path is not None and not path.parent.is_dir():
        raise ValueError(f"MLflow sqlite store {uri}: folder {path.parent} does not exist; create it first")


def store_exists(uri: str) -> bool:
    """Whether the store at ``uri`` can be read without being made: False for a ``sqlite:///FILE``
    not made yet, empty, or without tables, which MLflow would turn into a store on opening it (a
    dry run must not). Call after `check_tracking_uri`, which refuses the files that are no store."""
    try:
        check_sqlite_store(uri, missing="no store yet")  # a reader's check: other URIs pass
    except ValueError:
        return False
    return True


def _client(tracking_uri: str) -> Any:
    """An `MlflowClient` of the store at ``tracking_uri`` (mlflow is imported when first needed), its
    calls whole under a Ctrl-C, SIGTERM or SIGHUP (`dit_core.tracking.InterruptSafeClient`)."""
    from dit_core.tracking import interrupt_safe_client

    return interrupt_safe_client(tracking_uri)


def ensure_experiment(tracking_uri: str, experiment: str) -> str:
    """Create the store's tables and the experiment once, before jobs start (concurrent jobs would
    otherwise race on sqlite migrations and on creating the experiment); returns its id."""
    from dit_core.tracking import get_or_create_experiment

    return get_or_create_experiment(_client(tracking_uri), experiment)


def config_hash(overrides: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over a cell's dotted overrides (without ``tracking.run_id``)."""
    return stable_hash({k: v for k, v in overrides.items() if k != "tracking.run_id"}, 16)


#: Concurrent requests when the launcher writes many cells' runs to an mlflow server (one at a time
#: for a sqlite or file store, whose writers would only wait on each other's locks).
WRITE_THREADS = 8


def _each(tracking_uri: str, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[fn(x) for x in items]``, `WRITE_THREADS` at a time against an HTTP tracking server."""
    if len(items) < 2 or not tracking_uri.startswith(("http://", "https://")):
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(WRITE_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def create_cell_runs(
    tracking_uri: str,
    experiment: str,
    sweep: str,
    hashes: dict[str, str],
    run_dirs: dict[str, str] | None = None,
) -> dict[str, str]:
    """Create each cell's one MLflow run (``hashes``: ``{cell_id: config hash}``; status SCHEDULED,
    tags ``sweep``, ``grid_cell``, ``config_hash``, ``attempts=0`` and, given ``run_dirs``
    ``{cell_id: run folder}``, `RUN_DIR_TAG`); the trainer continues it (``tracking.run_id``).
    Returns ``{cell_id: run_id}``."""
    if not hashes:
        return {}
    client = _client(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment)

    def one(cell_id: str) -> str:
        tags = {SWEEP_TAG: sweep, GRID_CELL_TAG: cell_id, "config_hash": hashes[cell_id], "attempts": "0"}
        if run_dirs and cell_id in run_dirs:
            tags[RUN_DIR_TAG] = run_dirs[cell_id]
        run = client.create_run(exp_id, run_name=cell_id, tags=tags)
        client.update_run(run.info.run_id, status="SCHEDULED")
        return run.info.run_id

    return dict(zip(hashes, _each(tracking_uri, one, list(hashes))))


class Submission(NamedTuple):
    """One cell's submission as `record_submissions` writes it into the cell's run."""

    run_id: str
    job: JobRef
    attempts: int
    config_hash: str
    resubmitted: bool
    interrupts: int = 0  # the cell's `INTERRUPTS_TAG`, written with the record when above 0


def record_submissions(tracking_uri: str, subs: list[Submission]) -> None:
    """Write each submission into its cell's run: the job (executor, id, folder, run folder), the attempt
    count and the config hash (and the interrupts, where any: those a `CANCELLED_FILE` added are kept so);
    a resubmitted cell's run goes back to SCHEDULED until its trainer starts."""
    from mlflow.entities import RunTag

    client = _client(tracking_uri)

    def one(sub: Submission) -> None:
        values = (sub.job.executor, sub.job.job_id, sub.job.folder, str(sub.attempts), sub.config_hash)
        tags = [RunTag(k, v) for k, v in zip(RECORD_TAGS, values, strict=True)]
        if sub.interrupts > 0:
            tags.append(RunTag(INTERRUPTS_TAG, str(sub.interrupts)))
        if sub.job.run_dir:  # the folder this job's lock is in (a sweep folder moved: the new one)
            tags.append(RunTag(RUN_DIR_TAG, sub.job.run_dir))
        client.log_batch(sub.run_id, tags=tags)
        if sub.resubmitted:
            client.update_run(sub.run_id, status="SCHEDULED")

    _each(tracking_uri, one, subs)


def note_cancelled(run_dir: str | Path, job_id: str, interrupts: int) -> None:
    """Write into the cell folder ``run_dir``'s `CANCELLED_FILE` that its launcher cancelled the job
    ``job_id`` (whose record failed), and the cell's interrupts counting it: should the record have been
    written, `read_states` then counts that job as no try. Atomic (`dit_core.atomic`)."""
    jobs = {**cancelled_jobs(run_dir), str(job_id): int(interrupts)}
    atomic_write_text(Path(run_dir) / CANCELLED_FILE, json.dumps(jobs, sort_keys=True))


def cancelled_jobs(run_dir: str | Path) -> dict[str, int]:
    """The cell folder's `CANCELLED_FILE` (`note_cancelled`): ``{job_id: interrupts}``, {} without one."""
    try:
        jobs = json.loads((Path(run_dir) / CANCELLED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in jobs.items()} if isinstance(jobs, dict) else {}


def forget_cancelled(run_dir: str | Path) -> None:
    """Drop the cell folder's `CANCELLED_FILE` once a later submission's record (which carries its
    interrupts) is written."""
    (Path(run_dir) / CANCELLED_FILE).unlink(missing_ok=True)


def record_interrupts(tracking_uri: str, counts: dict[str, int]) -> None:
    """Set each run's `INTERRUPTS_TAG` (``counts``: ``{run_id: submissions stopped by a Ctrl-C}``)."""
    client = _client(tracking_uri)
    _each(tracking_uri, lambda item: client.set_tag(item[0], INTERRUPTS_TAG, str(item[1])), [*counts.items()])


def end_orphaned_runs(
    tracking_uri: str,
    errors: dict[str, str],
    *,
    status: str = "FAILED",
    tag: str = DIED_BEFORE_TRAINING,
    left: tuple[str, ...] = ("SCHEDULED",),
) -> list[str]:
    """End the runs of ``errors`` (``{run_id: the job's error, or ""}``), whose jobs are over, that are
    still in a status of ``left`` (SCHEDULED: the trainer never took the run over, so nothing else
    would end it): ``status``, with the status tag ``tag`` and the ``error`` tag, as the trainer ends a
    run. Returns the ids of the runs ended."""
    client = _client(tracking_uri)
    ended = _each(
        tracking_uri,
        lambda item: end_run_if(client, item[0], left=left, status=status, tag=tag, error=item[1]),
        list(errors.items()),
    )
    return [run_id for run_id, yes in zip(errors, ended, strict=True) if yes]


def peer_named_error(uri: str, run_id: str | None) -> str | None:
    """The ``error`` tag of a several-task cell's run where it names a rank other than 0: rank 0's
    (`dit_core.trainer.ranklog.with_peer_failures`: "... (on rank 1); rank 0 then stopped on ...") or
    one a rank's job wrote before training (`sweeps.executor.end_unstarted_run`: "... (on rank 1)");
    else None (rank 0's own error, or the run not readable: the job's error line stands)."""
    if run_id is None:
        return None
    try:
        error = _client(uri).get_run(run_id).data.tags.get(ERROR_TAG, "")
    except Exception:  # noqa: BLE001 - the store failing here: the job's error line is still true
        return None
    return error if " (on rank " in error else None


def check_resumable_cell(sweep: str, st: CellState, overrides: dict[str, Any], config: Any = None) -> None:
    """Refuse to continue a cell whose settings changed since its run was created: resuming its
    checkpoint under other settings would mix two experiments. Equal config hashes pass at once;
    otherwise the new config (``config``, the trainer's dataclass built from ``overrides``, else the
    overrides alone) is compared with the one the trainer logged as the run's params, so an override
    dropped since (its field back at the default) counts as a change too."""
    if st.run_id is None or st.config_hash in (None, config_hash(overrides)):
        return
    from dit_core.configio import flatten, parse_scalar
    from dit_core.trainer.resume import config_changes  # the trainer's rule, one place

    if dataclasses.is_dataclass(config):  # typed by the trainer's own config
        new = flatten(config)
    else:  # YAML 1.1 reads "1e-3" as a string
        new = {k: parse_scalar(v) if isinstance(v, str) else v for k, v in overrides.items()}
    new = {k: v for k, v in new.items() if k != "tracking.run_id" and v is not None}
    saved = {k: v for k, v in st.params.items() if k in new}  # the run's params hold the full config
    if diff := config_changes(saved, {k: new[k] for k in saved}):
        raise ValueError(
            f"cell {st.cell_id} of sweep {sweep!r} was launched with other settings ({'; '.join(diff[:8])}); "
            "start a new sweep with --name NEW, or delete its folder and MLflow runs to redo it"
        )


def check_cell_folder(sweep: str, st: CellState, run_dir: str | Path, experiment: str, uri: str) -> None:
    """Refuse a cell whose run folder and MLflow record do not belong together: a folder that names
    a run this experiment does not hold (relaunched with another --experiment or --tracking-uri; or the
    run was deleted, into MLflow's trash: the message says so and how to restore it), or an unfinished
    run that trains in another folder that still exists (another --output-dir): going on would start
    a second run of the cell, or train one run from two folders; or a failed or interrupted cell whose
    run has trained steps and whose folder is gone: it would restart at step 0 inside that run."""
    run_dir = Path(run_dir)
    if st.run_id is None:
        saved = run_dir / RUN_ID_FILE
        other = saved.read_text().strip() if saved.is_file() else ""
        if not other:
            return
        where = f"cell {st.cell_id} of sweep {sweep!r}: its folder {run_dir} belongs to MLflow run {other}"
        run = _stored_run(uri, other)
        if run is not None and run.info.lifecycle_stage == "deleted":
            raise ValueError(
                f"{where}, which was deleted (lifecycle_stage 'deleted', in MLflow's trash) at {uri}; "
                f"restore it to continue the cell (`MLFLOW_TRACKING_URI={uri} mlflow runs restore --run-id "
                f"{other}`), or delete the folder {run_dir} to start the cell over (`mlflow gc "
                f"--backend-store-uri {uri} --run-ids {other}` then purges the deleted run)"
            )
        raise ValueError(
            f"{where}, which experiment {experiment!r} at {uri} does not hold; relaunch with the "
            "--experiment and --tracking-uri the sweep was launched with, or delete that folder to start "
            "the cell over"
        )
    old = st.params.get("out") or st.run_dir
    if st.state != "finished" and old and Path(old) != run_dir and Path(old).is_dir():
        raise ValueError(
            f"cell {st.cell_id} of sweep {sweep!r}: its MLflow run {st.run_id} trains in {old}, not in "
            f"{run_dir}; relaunch with --output-dir {Path(old).parents[2]}, or start a new sweep with "
            "--name NEW"
        )
    if st.state in ("failed", "interrupted") and st.loss is not None and not run_dir.is_dir():
        raise ValueError(
            f"cell {st.cell_id} of sweep {sweep!r}: its MLflow run {st.run_id} has trained steps, but its "
            f"folder {run_dir} is gone with its checkpoints, so a relaunch would train it again from step 0 "
            f"into the same run; put the folder back to resume it, or, to start the cell over in a new run, "
            f"delete the old one (`MLFLOW_TRACKING_URI={uri} mlflow runs delete --run-id {st.run_id}`)"
        )


def _stored_run(uri: str, run_id: str) -> Any | None:
    """The run ``run_id`` of the store at ``uri`` in any lifecycle stage (`read_runs` sees active runs
    only), or None where the store has no such run."""
    from mlflow.exceptions import MlflowException

    if not store_exists(uri):  # a dry run before the store is made: it holds no run, and stays unmade
        return None
    try:
        return _client(uri).get_run(run_id)
    except MlflowException:
        return None


#: Runs per ``search_runs`` request (MLflow's default page; its maximum is 50,000).
PAGE_SIZE = 1000


def read_runs(tracking_uri: str, experiment: str, sweep: str) -> dict[str, list[Any]]:
    """MLflow runs of ``sweep`` in ``experiment`` grouped by ``grid_cell`` tag (oldest first: a
    cell's record is its first run; more than one would be a duplicate).

    Read in pages of `PAGE_SIZE` runs filtered on the ``sweep`` tag: a 1,000-cell sweep costs one
    request, and each run arrives with its tags, params and latest metrics (nothing per run)."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    by_cell: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.{SWEEP_TAG} = '{sweep}'",
            max_results=PAGE_SIZE,
            order_by=["attributes.start_time ASC"],  # the store breaks ties by run id: stable pages
            page_token=token,
        )
        for r in page:
            cell = r.data.tags.get(GRID_CELL_TAG)
            if cell:
                by_cell.setdefault(cell, []).append(r)
        token = page.token
        if not token:
            return by_cell


def read_runs_again(
    tracking_uri: str, experiment: str, sweep: str, runs: dict[str, list[Any]]
) -> dict[str, list[Any]]:
    """Some cells' runs (``runs``, as `read_runs` groups them) read again: each cell's record (its first
    run) by run id, `PAGE_SIZE` ids per request, so that the request reads those runs only (its later
    runs, duplicates, are kept as they were). A cell whose record is no longer found (deleted
    meanwhile) is read by `read_runs`; one found nowhere is left out."""
    client = _client(tracking_uri)
    cell_of = {rs[0].info.run_id: cid for cid, rs in runs.items()}
    ids = list(cell_of)
    exps = sorted({rs[0].info.experiment_id for rs in runs.values()})
    out: dict[str, list[Any]] = {}
    for i in range(0, len(ids), PAGE_SIZE):
        chunk = ids[i : i + PAGE_SIZE]
        listed = ", ".join(f"'{r}'" for r in chunk)
        for r in client.search_runs(
            exps, filter_string=f"attributes.run_id IN ({listed})", max_results=len(chunk)
        ):
            cid = cell_of[r.info.run_id]
            out[cid] = [r, *runs[cid][1:]]
    if lost := [cid for cid in runs if cid not in out]:
        fresh = read_runs(tracking_uri, experiment, sweep)
        out.update({cid: fresh[cid] for cid in lost if cid in fresh})
    return out


def latest_step(run: Any, key: str) -> int | None:
    """The step of the latest ``key`` point of a run as `search_runs` returns it: MLflow keeps per
    key the point with the largest (step, timestamp, value), so this is the run's last step of
    ``key`` without reading its history."""
    for m in run.data._metric_objs:  # RunData keeps the Metric entities (with steps) it was built from
        if m.key == key:
            return int(m.step)
    return None


def latest_metric(run: Any, keys: tuple[str, ...]) -> tuple[float | None, int | None]:
    """The latest point of the first of ``keys`` that ``run`` logged: (value, step), else (None, None)."""
    key = next((k for k in keys if k in run.data.metrics), None)
    return (None, None) if key is None else (run.data.metrics[key], latest_step(run, key))


def job_ref(run: Any, run_dir: str) -> JobRef | None:
    """The last submission recorded on ``run``, or None if it was never submitted."""
    t = run.data.tags
    if not t.get(JOB_ID_TAG) or not t.get(EXECUTOR_TAG) or int(t.get("attempts") or 0) < 1:
        return None
    return JobRef(t[EXECUTOR_TAG], t[JOB_ID_TAG], t.get("job_folder", ""), run_dir)


def read_states(
    tracking_uri: str,
    experiment: str,
    sweep: str,
    cells: dict[str, str],
    runs: dict[str, list[Any]] | None = None,
) -> dict[str, CellState]:
    """The state of every cell in ``cells`` (``{cell_id: run folder}``), with each run's last step.
    ``runs``: `read_runs` already done by the caller (else read here). The
    tracking store is read in `read_runs`' pages, then the runs of the cells whose job is found dead
    once more (`read_runs_again`); job liveness is one batched SLURM query."""
    if runs is None:
        runs = read_runs(tracking_uri, experiment, sweep)
    # a job's lock is in the folder its run was made for, which another --output-dir does not see
    cells = {
        cid: runs[cid][0].data.tags.get(RUN_DIR_TAG) or rd if cid in runs else rd for cid, rd in cells.items()
    }
    refs = {cid: job_ref(runs[cid][0], rd) for cid, rd in cells.items() if cid in runs}
    # a FINISHED run is finished whatever its job does: ask the scheduler about the others only
    unfinished = {c: r for c, r in refs.items() if r is not None and runs[c][0].info.status != "FINISHED"}
    alive = job_liveness(unfinished)  # "unknown" where SLURM did not answer: never taken for over
    alive |= _unrecorded_alive(runs, refs, cells)
    # and the unfinished runs a job no launcher recorded ran in (`_unrecorded_job`)
    unrecorded = [
        c for c, r in refs.items()
        if r is None and runs[c][0].info.status != "FINISHED" and _unrecorded_job(runs[c][0], False)
    ]  # fmt: skip
    if dead := [c for c in [*unfinished, *unrecorded] if c not in alive]:
        # a job that ended between the runs' read and the liveness check: read its run again, or a cell
        # that just finished would look interrupted (run RUNNING, job gone) and be resubmitted
        runs = {**runs, **read_runs_again(tracking_uri, experiment, sweep, {c: runs[c] for c in dead})}
    out = {cid: CellState(cid, "missing") for cid in cells}
    for cid, st in out.items():
        if cid not in runs:
            continue
        run, ref = runs[cid][0], refs[cid]
        t = run.data.tags
        st.run_id, st.run_status = run.info.run_id, run.info.status
        st.duplicates = len(runs[cid]) - 1
        st.attempts = int(t.get("attempts") or 0)
        st.interrupts = int(t.get(INTERRUPTS_TAG) or 0)
        if ref is not None:  # its last job cancelled by its launcher, after a record that did get written
            st.interrupts = max(st.interrupts, cancelled_jobs(cells[cid]).get(ref.job_id, 0))
        elif _unrecorded_job(run, cid in alive):  # a submission too, a try unless its launcher cancelled it
            st.unrecorded, st.attempts = True, st.attempts + 1
            st.interrupts = max(st.interrupts, max(cancelled_jobs(cells[cid]).values(), default=0))
        st.job_id, st.config_hash = t.get(JOB_ID_TAG), t.get("config_hash")
        st.params, st.run_dir = dict(run.data.params), t.get(RUN_DIR_TAG)
        st.loss, st.step = latest_metric(run, (TRAIN_LOSS,))
        st.val_loss, st.val_step = latest_metric(run, (VAL_LOSS,))
        st.fid, st.fid_step = latest_metric(run, FID_METRICS)
        live = alive.get(cid, "")
        if st.run_status == "FINISHED":
            st.state = "finished"
        elif live in ("unknown", "held"):
            st.state = live
        elif live:
            st.state = "queued" if live == "pending" or st.run_status == "SCHEDULED" else "running"
        elif ref is None and not st.unrecorded:
            st.state = "missing"  # run created, submission never recorded, no job seen
        elif st.run_status in ("FAILED", "SCHEDULED"):
            st.state = "failed"
        else:
            st.state = "interrupted"
    return out


def _unrecorded_alive(
    runs: dict[str, list[Any]], refs: dict[str, JobRef | None], cells: dict[str, str]
) -> dict[str, str]:
    """``{cell: "running"}`` for the unfinished cells whose run records no job but whose cell lock a live
    local job holds: its launcher was killed (SIGKILL) between submitting it and recording it, and it
    trains the cell's run all the same; a launch must not start a second job of it (which waits for the
    lock, fails, and, seen over, ended the run KILLED while the first one trained it)."""
    return {
        c: "running"
        for c, ref in refs.items()
        if ref is None and runs[c][0].info.status != "FINISHED" and cell_lock_held(cells[c])
    }


def _unrecorded_job(run: Any, alive: bool) -> bool:
    """Whether a job ran (its trainer took the run over: no longer SCHEDULED) or runs (``alive``: it holds
    the cell's lock) in ``run``, a launcher's (`create_cell_runs`: ``attempts=0``) that records no job:
    its launcher was killed (SIGKILL) between submitting the job and recording it, or its record failed
    and it cancelled the job (`CANCELLED_FILE`). Not a run a trainer started by hand (no attempts tag)."""
    return run.data.tags.get("attempts") == "0" and (alive or run.info.status != "SCHEDULED")


def mark_waiting(states: dict[str, CellState]) -> list[str]:
    """For `status` while a launch of the sweep is alive (`sweeps.lock.launcher_pid`): the cells it has
    not submitted yet (`missing`: no run yet, or one that records no job), which its `plan` submits,
    become `waiting`, as the local executor submits each when a slot frees. Returns those cells."""
    out = [c for c, st in states.items() if st.state == "missing"]
    for c in out:
        states[c].state = "waiting"
    return out


def plan(states: dict[str, CellState], max_retries: int) -> Plan:
    """Idempotent relaunch: skip finished and live (held too) cells, and those whose job's state is unknown;
    resubmit missing, failed and interrupted
    cells while ``tries <= max_retries`` (the first submission is not a retry; a submission stopped
    by a Ctrl-C of its launcher is not a try)."""
    p = Plan()
    skipped = {"finished": p.finished, "running": p.running, "queued": p.running, "held": p.running,
               "unknown": p.unknown}  # fmt: skip
    for cid, st in states.items():
        if st.state in skipped:
            skipped[st.state].append(cid)
        elif st.state == "missing" or st.tries <= max_retries:
            p.submit.append(cid)
        else:
            p.exhausted.append(cid)
    return p
