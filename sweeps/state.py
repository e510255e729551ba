"""Each cell's state, from its MLflow run (tags ``sweep``, ``grid_cell``, ``status``) and its last job.

States: ``finished``; ``queued`` (job alive, training not started); ``running`` (job alive, including
requeued jobs); ``failed`` (the run failed, or the job died before training); ``interrupted`` (the
run says queued/running/preempted but its job is gone); ``missing`` (never submitted). `plan` turns
states into the idempotent relaunch decision: skip finished and live cells, resubmit the rest up to
``max_retries``.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.ledger import Ledger, Submission

__all__ = [
    "CellState",
    "Plan",
    "check_tracking_uri",
    "create_cell_run",
    "ensure_experiment",
    "job_alive",
    "plan",
    "read_runs",
    "read_states",
    "resolve_tracking_uri",
]

STATES = ("finished", "queued", "running", "failed", "interrupted", "missing")


@dataclass
class CellState:
    """One row of ``launch.py status``: the cell's state, run, progress and submissions."""

    cell_id: str
    state: str
    run_id: str | None = None
    run_status: str | None = None
    step: int | None = None
    loss: float | None = None  # last train/loss
    val_loss: float | None = None  # last val/loss
    fid: float | None = None
    attempts: int = 0
    job_id: str | None = None
    duplicates: int = 0


@dataclass
class Plan:
    """Relaunch decision: cells to submit, and why the others are skipped."""

    submit: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)


def resolve_tracking_uri(uri: str | None) -> str:
    """``None`` -> MLflow's default (``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``), made
    absolute so that jobs started in other directories write to the same store."""
    import mlflow

    if uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Raise ValueError when the tracking store cannot be used (server down, folder missing)."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                if r.status == 200:
                    return
                why = f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as e:
            why = str(getattr(e, "reason", e))
        raise ValueError(
            f"MLflow tracking server {uri} is unreachable ({why}); start it (`mlflow server --host 0.0.0.0 "
            "--port 5000 --backend-store-uri sqlite:///mlflow.db`) or pass --tracking-uri"
        )
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise ValueError(f"MLflow sqlite store {uri}: folder {folder} does not exist; create it first")


def ensure_experiment(tracking_uri: str, experiment: str) -> str:
    """Create the store's tables and the experiment once, before jobs start (concurrent jobs would
    otherwise race on sqlite migrations and on creating the experiment); returns its id."""
    from mlflow.tracking import MlflowClient

    from dit_core.tracking import get_or_create_experiment

    return get_or_create_experiment(MlflowClient(tracking_uri=tracking_uri), experiment)


def create_cell_run(tracking_uri: str, experiment: str, sweep: str, cell_id: str) -> str:
    """Pre-create a cell's MLflow run (tags ``sweep``, ``grid_cell``, ``status=queued``); the trainer
    continues it (``tracking.run_id``), so a cell never gets a second run, whatever happens to its jobs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment)
    run = client.create_run(
        exp_id, run_name=cell_id, tags={"sweep": sweep, "grid_cell": cell_id, "status": "queued"}
    )
    return run.info.run_id


def job_alive(sub: Submission | None, squeue: dict[str, str] | None = None) -> bool:
    """Is the job of ``sub`` still pending/running (SLURM: in squeue; local: controller pid alive)?"""
    if sub is None:
        return False
    if sub.executor == "slurm":
        if squeue is None:
            squeue = squeue_states([sub.job_id])
        return sub.job_id in squeue
    if sub.executor == "local":
        return _local_controller_alive(sub.job_id)
    return False  # debug jobs run in-process


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """``{job_id: state}`` for the given jobs still known to squeue (array tasks as ``N_i``)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted(set(job_ids)))],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _local_controller_alive(pid_text: str) -> bool:
    try:
        pid = int(pid_text)
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ValueError, OSError):
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return b"submitit.local._local" in cmd and not zombie


def read_runs(tracking_uri: str, experiment: str, sweep: str) -> dict[str, list[Any]]:
    """MLflow runs of ``sweep`` in ``experiment`` grouped by ``grid_cell`` tag (newest first)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.sweep = '{sweep}'",
        max_results=50_000,
        order_by=["attributes.start_time DESC"],
    )
    by_cell: dict[str, list[Any]] = {}
    for r in runs:
        cell = r.data.tags.get("grid_cell")
        if cell:
            by_cell.setdefault(cell, []).append(r)
    return by_cell


def _run_status(run: Any) -> str:
    tag = (run.data.tags.get("status") or "").lower()
    if tag:
        return tag
    return {"FINISHED": "finished", "FAILED": "failed", "KILLED": "failed"}.get(run.info.status, "running")


def read_states(
    tracking_uri: str,
    experiment: str,
    sweep: str,
    cell_ids: list[str],
    ledger: Ledger,
    with_progress: bool = False,
) -> dict[str, CellState]:
    """The state of every cell in ``cell_ids`` (``with_progress``: also last step and loss)."""
    runs = read_runs(tracking_uri, experiment, sweep)
    subs = {c: ledger.last(c) for c in cell_ids}
    slurm_ids = [s.job_id for s in subs.values() if s is not None and s.executor == "slurm"]
    squeue = squeue_states(slurm_ids) if slurm_ids else {}
    client = None
    out: dict[str, CellState] = {}
    for cid in cell_ids:
        sub = subs[cid]
        alive = job_alive(sub, squeue)
        st = CellState(cid, "missing", attempts=ledger.attempts(cid), job_id=sub.job_id if sub else None)
        cell_runs = runs.get(cid, [])
        if cell_runs:
            run = cell_runs[0]
            st.run_id, st.run_status = run.info.run_id, _run_status(run)
            st.duplicates = len(cell_runs) - 1
            st.loss = run.data.metrics.get("train/loss")
            st.val_loss = run.data.metrics.get("val/loss")
            st.fid = run.data.metrics.get("eval/fid", run.data.metrics.get("eval/fid_digits"))
            if with_progress and st.loss is not None:
                if client is None:
                    from mlflow.tracking import MlflowClient

                    client = MlflowClient(tracking_uri=tracking_uri)
                hist = client.get_metric_history(run.info.run_id, "train/loss")
                st.step = max((m.step for m in hist), default=None)
            if st.run_status == "finished":
                st.state = "finished"
            elif alive:
                st.state = "queued" if st.run_status == "queued" else "running"
            elif st.run_status == "failed":
                st.state = "failed"
            else:
                st.state = "interrupted"
        elif alive:
            st.state = "queued"
        elif sub is not None:
            st.state = "failed"  # submitted, job gone, no run: died before the trainer started
        out[cid] = st
    return out


def plan(states: dict[str, CellState], max_retries: int) -> Plan:
    """Idempotent relaunch: skip finished and live cells; resubmit missing, failed and interrupted
    cells while ``attempts <= max_retries`` (the first submission is not a retry)."""
    p = Plan()
    for cid, st in states.items():
        if st.state == "finished":
            p.finished.append(cid)
        elif st.state in ("running", "queued"):
            p.running.append(cid)
        elif st.state == "missing" or st.attempts <= max_retries:
            p.submit.append(cid)
        else:
            p.exhausted.append(cid)
    return p
