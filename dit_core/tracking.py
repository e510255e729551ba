"""MLflow tracking for a training run, in the schema of docs/training.md ("MLflow schema").

Only the main process creates a `RunTracker`; the client API is used (no fluent global run), so a
caller that has its own active run (a sweep) is not disturbed.

Faults (a dead or restarted server, a job killed before it saved the run id): `MetricSender`,
`RunTracker.start` and docs/testing-faults.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .atomic import atomic_write_text
from .trainer.signals import interrupts_deferred

log = logging.getLogger(__name__)

#: The MLflow experiment the trainer, the demo sweep and the analysis use unless told otherwise.
DEFAULT_EXPERIMENT = "ditscale-demo"
RUN_ID_FILE = "mlflow_run_id"
#: ``<out>/mlflow_run_key``: written before the run is created, and tagged on it as `RUN_KEY_TAG`.
RUN_KEY_FILE = "mlflow_run_key"
RUN_KEY_TAG = "ditscale.run_key"
#: Which features a run's FIDs were computed in (``family: extractor name``, the name changing with
#: the weights): the analysis pools FIDs only within one (`analysis.runs.fid_protocol`).
FEATURE_SPACE_TAG = "eval.feature_space"
#: A run resumed from another run folder's checkpoint (a fork): that checkpoint's path, the MLflow run
#: it belongs to (absent when it had none) and its step (this run's metrics start after it).
RESUMED_FROM_TAG = "resumed_from"
RESUMED_FROM_RUN_TAG = "resumed_from_run_id"
RESUMED_FROM_STEP_TAG = "resumed_from_step"
#: A run created (or first tagged) on resuming a checkpoint trained without MLflow (``--no-mlflow``):
#: "true", with `RESUMED_FROM_STEP_TAG` the checkpoint's step; its metrics start after that step.
RESUMED_WITHOUT_HISTORY_TAG = "resumed_without_history"
#: The steps a continued run has no metrics for, trained with ``--no-mlflow`` in between: ``"a-b"``
#: stretches (first and last step), comma-separated.
UNTRACKED_STEPS_TAG = "untracked_steps"

# The run schema (docs/training.md "MLflow schema"): each key the trainer writes and the sweeps, the
# analysis or the benchmarks read, defined once here.
#: Metrics of a log interval (step = optimizer step): the training loss (mean over the interval and the
#: ranks), the learning rate, the training FLOPs and images so far, and images/s (training steps only).
TRAIN_LOSS = "train/loss"
LR = "lr"
TRAIN_FLOPS = "compute/train_flops"
IMAGES_SEEN = "data/images_seen"
IMAGES_PER_S = "perf/images_per_s"
#: Validation losses, of the model and (``eval.val_ema``) of its EMA.
VAL_LOSS = "val/loss"
VAL_LOSS_EMA = "val/loss_ema"
#: Data reuse (`dit_core.data.data_accounting`): a finite dataset's distinct images, and passes over them.
UNIQUE_IMAGES = "data/unique_images"
EPOCHS = "data/epochs"
#: ``eval/<metric>``: the sample metrics (`dit_core.evaluate.metrics.METRICS`).
EVAL_PREFIX = "eval/"
#: The FID metrics a run may log (Inception, or a domain classifier's); a reader takes the first present.
FID_METRICS = ("eval/fid", "eval/fid_digits", "eval/fid_photos")
#: ``perf/<phase>``: seconds a finished run logs once, at its last step (this process only; docs/training.md
#: "Sweep throughput"): process start until `Trainer.run` (imports, data, model), MLflow (run start,
#: params, final flush), validation, evaluation (samples, metrics, grid), training steps.
PERF_PREFIX = "perf/"
FIXED_COST_METRICS = ("perf/startup_s", "perf/mlflow_s", "perf/val_s", "perf/eval_s", "perf/train_s")
#: Tags: how the run stands (`STATUS_*`), why it failed, and the sweep cell and job it belongs to.
STATUS_TAG = "status"
#: points a finished run could not send before it ended (it ends interrupted; a resume sends them)
METRICS_UNSENT_TAG = "metrics_unsent"
ERROR_TAG = "error"
#: A run that finishes after a failed attempt keeps that attempt's `ERROR_TAG` under this tag.
PREVIOUS_ERROR_TAG = "error.previous"
SWEEP_TAG = "sweep"
GRID_CELL_TAG = "grid_cell"
EXECUTOR_TAG = "executor"
JOB_ID_TAG = "job_id"
#: `STATUS_TAG` values: running while a trainer holds the run, then how it ended (`RunTracker.finish`).
STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUS_PREEMPTED = "preempted"
STATUS_INTERRUPTED = "interrupted"
#: Params a run logs besides its config fields (`dit_core.config.TrainConfig.to_flat_dict`).
MODEL_PARAMS = "model.params"
MODEL_PARAMS_NON_EMBEDDING = "model.params_non_embedding"
MODEL_FORWARD_GFLOPS = "model.forward_gflops"
MODEL_TRAIN_FLOPS_PER_IMAGE = "model.train_flops_per_image"
OPTIM_LR_EFFECTIVE = "optim.lr_effective"
OPTIM_WARMUP_STEPS_EFFECTIVE = "optim.warmup_steps_effective"
DATA_TRAIN_SIZE = "data.train_size"
WORLD_SIZE = "world_size"
GIT_COMMIT = "git.commit"
DERIVED_PARAMS = frozenset(
    {
        MODEL_PARAMS,
        MODEL_PARAMS_NON_EMBEDDING,
        MODEL_FORWARD_GFLOPS,
        MODEL_TRAIN_FLOPS_PER_IMAGE,
        OPTIM_LR_EFFECTIVE,
        OPTIM_WARMUP_STEPS_EFFECTIVE,
        GIT_COMMIT,
        WORLD_SIZE,
        DATA_TRAIN_SIZE,
    }
)


#: The distinct training images of a run's dataset: a whole number, or ``"unbounded"`` for a stream where
#: no image repeats (the trainer sets it; `analysis.runs` reads it as the run's `unique`, inf if unbounded).
UNIQUE_IMAGES_TAG = "data.unique_images"
UNBOUNDED = "unbounded"


def unique_images_tag(n: int | None) -> str:
    """`UNIQUE_IMAGES_TAG`'s value for ``n`` distinct images (None: an unbounded stream)."""
    return UNBOUNDED if n is None else str(int(n))


def feature_space_tag(spaces: dict[str, str]) -> str:
    """`FEATURE_SPACE_TAG`'s value for ``{family: extractor name}``: ``"photos: photoscnn-...-w<digest>"``."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(spaces.items()))


#: Metric points a `MetricSender` holds while the server is unreachable before dropping the oldest
#: (about 100 bytes each; 6 points per log interval: some 16k intervals of outage).
MAX_BUFFERED_POINTS = 100_000
#: Points per MLflow ``log_batch`` request (MLflow's limit is 1000 metrics).
_BATCH = 1000
_TERMINAL = {STATUS_FINISHED: "FINISHED", STATUS_FAILED: "FAILED", STATUS_PREEMPTED: "KILLED",
             STATUS_INTERRUPTED: "KILLED"}  # fmt: skip
_MAX_PARAM_LEN = 6000


def format_param(value: Any) -> str:
    """A config value as an MLflow param string: None -> "", lists/dicts -> JSON, else ``str``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)  # a tuple as a list
    return str(value)


@functools.cache
def git_commit() -> str | None:
    """HEAD commit of the repository holding this package, or None. Looked up once per process: a
    process runs the code it imported (a warm sweep worker looks it up before forking its cells,
    `sweeps.warm`)."""
    where = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def executor_tags(env: dict[str, str] | None = None) -> dict[str, str]:
    """``{"executor": "slurm"|"local", "job_id": ...}`` from the SLURM / submitit environment."""
    env = dict(os.environ) if env is None else env
    tags: dict[str, str] = {}
    if env.get("SLURM_JOB_ID"):
        tags[EXECUTOR_TAG] = "slurm"
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            tags[JOB_ID_TAG] = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        else:
            tags[JOB_ID_TAG] = env["SLURM_JOB_ID"]
    elif env.get("SUBMITIT_LOCAL_JOB_ID"):
        tags[EXECUTOR_TAG] = env.get("SUBMITIT_EXECUTOR", "local")
        tags[JOB_ID_TAG] = env["SUBMITIT_LOCAL_JOB_ID"]
    if env.get("DITSCALE_EXECUTOR_JOB_ID"):
        tags[JOB_ID_TAG] = env["DITSCALE_EXECUTOR_JOB_ID"]
    return tags


def sqlite_store_path(uri: str | None) -> Path | None:
    """FILE of a ``sqlite:///FILE`` (or ``sqlite+driver:///FILE``) URI, without its ``?options``; None for
    other stores and in-memory databases."""
    m = re.match(r"sqlite(\+\w+)?:///([^?]+)", uri or "")
    return None if m is None or m.group(2) == ":memory:" else Path(unquote(m.group(2)))


class InterruptSafeClient:
    """An ``MlflowClient`` whose calls finish before a Ctrl-C (or the launcher's SIGTERM, SIGHUP) acts
    (`interrupts_deferred`, in the main thread): one cut in half would leave a SQL store's transaction
    open, and every later write of this process, the run's end included, wait on its lock. Other
    attributes are the client's."""

    def __init__(self, client: Any):
        self.client = client

    def __getattr__(self, name: str) -> Any:
        if name == "client":  # not set yet (a copy being made): no endless lookup
            raise AttributeError(name)
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with interrupts_deferred():
                return attr(*args, **kwargs)

        return call


@contextlib.contextmanager
def _store_folder_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder of the SQLite store ``path`` (no file left beside it); none
    where the folder does not exist (MLflow then says so itself)."""
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a file system without flock (Lustre without -o flock): unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def interrupt_safe_client(uri: str | None = None) -> InterruptSafeClient:
    """An `MlflowClient` of the store at ``uri`` (None: MLflow's default), its calls whole under a Ctrl-C
    (`InterruptSafeClient`). A ``sqlite:///FILE`` store is opened here under a lock on its folder:
    the first open of a new store runs MLflow's schema migrations, and two processes migrating at once
    (two trainers or launchers started together on a fresh store) failed with alembic errors and could
    leave it half-migrated. MLflow keeps the opened store per URI, so later calls do not migrate again."""
    from mlflow import MlflowClient, get_tracking_uri

    if (path := sqlite_store_path(uri or get_tracking_uri())) is None:
        return InterruptSafeClient(MlflowClient(tracking_uri=uri))
    with _store_folder_lock(path), interrupts_deferred():  # the client opens (and migrates) the store
        return InterruptSafeClient(MlflowClient(tracking_uri=uri))


def get_or_create_experiment(client, name: str) -> str:
    """Id of experiment `name`, created if missing (safe against a concurrent job creating it at the
    same time). Its kind tag makes MLflow >= 3's UI open it on the runs table, not the GenAI overview;
    a ``sqlite:///FILE`` store gets its artifacts in ``mlruns/`` beside FILE (MLflow's default:
    ``./mlruns`` of whatever folder the command ran in; a server decides for itself)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    store = sqlite_store_path(client.tracking_uri)
    where = None if store is None else (store.resolve().parent / "mlruns").as_uri()
    try:
        kind = {"mlflow.experimentKind": "custom_model_development"}
        return client.create_experiment(name, artifact_location=where, tags=kind)
    except MlflowException:  # created meanwhile by another launcher or job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class MetricSender:
    """Sends metric points to one MLflow run from a background thread, through a bounded buffer.

    `put` never blocks on the network. The thread sends batches of up to 1000 points with
    ``client.log_batch``; when that fails (server down, network), the batch goes back to the front
    of the buffer, one warning names the outage, and the send is retried after ``retry_s[0]``
    seconds, doubling up to ``retry_s[1]``. When it succeeds again a warning says how long the
    outage lasted and how many points were sent late. More than ``max_buffered`` points: the oldest
    are dropped, with a warning (``stats["dropped"]``). MLflow's own HTTP client retries for minutes
    before raising, which only delays delivery here (docs/testing-faults.md:
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` leaves the retrying to this class).
    """

    def __init__(
        self,
        client,
        run_id: str,
        *,
        max_buffered: int = MAX_BUFFERED_POINTS,
        retry_s: tuple[float, float] = (0.5, 10.0),
    ):
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be >= 1, got {max_buffered}")
        self.client, self.run_id = client, run_id
        self.max_buffered, self.retry_s = int(max_buffered), retry_s
        self._buffer: collections.deque = collections.deque()
        self._in_flight: list = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._down_since: float | None = None
        #: sent, dropped, failed_sends, outages, max_buffered (the most points held at once),
        #: late (points held when the last outage ended), outage_s (total seconds unreachable).
        self.stats = dict.fromkeys(
            ("sent", "dropped", "failed_sends", "outages", "max_buffered", "late"), 0
        ) | {"outage_s": 0.0}
        self._thread = threading.Thread(target=self._run, name=f"mlflow-metrics-{run_id[:8]}", daemon=True)
        self._thread.start()

    def put(self, points: list) -> None:
        """Queue ``mlflow.entities.Metric`` points for sending."""
        if not points:
            return
        with self._cond:
            self._buffer.extend(points)
            held = len(self._buffer) + len(self._in_flight)
            self.stats["max_buffered"] = max(self.stats["max_buffered"], held)
            over = len(self._buffer) - self.max_buffered
            if over > 0:
                for _ in range(over):
                    self._buffer.popleft()
                if self.stats["dropped"] == 0:
                    log.warning("MLflow metric buffer full (%d points) while %s is unreachable: dropping the "
                                "oldest points (bring the tracking server back)",
                                self.max_buffered, self.client.tracking_uri)  # fmt: skip
                self.stats["dropped"] += over
            self._cond.notify_all()

    def pending(self) -> list:
        """Points not yet known to be on the server (in flight first, then buffered), oldest first."""
        with self._cond:
            return [*self._in_flight, *self._buffer]

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every point was sent or ``timeout`` seconds passed; return how many are left."""
        with self._cond:
            self._cond.wait_for(lambda: not (self._buffer or self._in_flight), timeout)
            return len(self._buffer) + len(self._in_flight)

    def close(self, timeout: float | None = None) -> int:
        """`flush`, then stop the thread; returns the points left unsent (each was warned about)."""
        left = self.flush(timeout)
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        if left:
            down = 0.0 if self._down_since is None else time.monotonic() - self._down_since
            log.warning("%d metric points of run %s were not sent to %s (unreachable for %.0f s)", left,
                        self.run_id, self.client.tracking_uri, down)  # fmt: skip
        return left

    def _run(self) -> None:
        delay = self.retry_s[0]
        while True:
            with self._cond:
                while not self._buffer and not self._stopping.is_set():
                    self._cond.wait()
                if not self._buffer:
                    return
                batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), _BATCH))]
                self._in_flight = batch
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as err:  # noqa: BLE001 - any failure: keep the points, retry later
                with self._cond:
                    self._buffer.extendleft(reversed(batch))
                    self._in_flight = []
                    self.stats["failed_sends"] += 1
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        why = f"{type(err).__name__}: {err}"
                        why = why if len(why) < 300 else why[:300] + "..."
                        self.stats["outages"] += 1
                        log.warning("MLflow at %s is unreachable (%s); training continues, metrics are "
                                    "buffered (%d now, at most %d) and retried", self.client.tracking_uri,
                                    why, len(self._buffer), self.max_buffered)  # fmt: skip
                    self._cond.notify_all()
                if self._stopping.wait(delay):
                    return  # closing: what is left is reported by close()
                delay = min(2 * delay, self.retry_s[1])
                continue
            with self._cond:
                self._in_flight = []
                self.stats["sent"] += len(batch)
                if self._down_since is not None:
                    down = time.monotonic() - self._down_since
                    self.stats["outage_s"] += down
                    self.stats["late"] = len(batch) + len(self._buffer)
                    log.warning("MLflow at %s is reachable again after %.1f s; sending %d buffered metric "
                                "points", self.client.tracking_uri, down, self.stats["late"])  # fmt: skip
                    self._down_since = None
                delay = self.retry_s[0]
                self._cond.notify_all()


def end_run_if(client, run_id: str, *, left: tuple[str, ...], status: str, tag: str, error: str = "") -> bool:
    """End run ``run_id`` as ``status`` (FAILED, KILLED), with tag status=``tag`` and ``error`` (if
    any) as the ``error`` tag, if its MLflow status is still one of ``left``: a run nothing else will
    end, since the process that should have is gone. False if it is not (someone ended it, or took it
    over) or not in this store. The one rule for the trainer's superseded runs and the launcher's
    orphaned ones (`sweeps.state.end_orphaned_runs`)."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    try:
        if not run_id or client.get_run(run_id).info.status not in left:
            return False
    except MlflowException:
        return False  # not in this store: nothing here to end
    tags = [RunTag(STATUS_TAG, tag)] + ([RunTag(ERROR_TAG, error[:5000])] if error else [])
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, status=status)
    return True


def logged_steps(client, run_id: str, keys: Collection[str] | None = None) -> dict[str, set[int]]:
    """``{metric key: the steps run ``run_id`` holds a value at}``, for the keys it holds (of ``keys``)."""
    held = client.get_run(run_id).data.metrics
    return {
        k: {m.step for m in client.get_metric_history(run_id, k)} for k in held if keys is None or k in keys
    }


class RunTracker:
    """One MLflow run: created, or continued when a run id is known (resume, or given by a sweep).

    Metrics go through a `MetricSender` (never blocking on the server) and are deduplicated by
    ``(key, step)``: the first value logged for a step is kept, later ones are skipped, including
    the ones a resumed run finds already on the server."""

    def __init__(self, client, run_id: str, resumed: bool):
        self.client, self.run_id, self.resumed = client, run_id, resumed
        self._logged: dict[str, set[int]] = logged_steps(client, run_id) if resumed else {}
        self.skipped = 0  # points not logged because their (key, step) was already logged
        self.sender = MetricSender(client, run_id)

    @classmethod
    def start(
        cls,
        *,
        uri: str | None,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        out_dir: str | os.PathLike | None = None,
        reuse_saved_id: bool = True,
        spare_run_id: str | None = None,
    ) -> RunTracker:
        """Continue ``run_id`` (or, with ``reuse_saved_id``, the id saved in ``<out_dir>/mlflow_run_id``,
        or the run tagged with the key in ``<out_dir>/mlflow_run_key``) or create a run in
        ``experiment``; the id is saved to ``<out_dir>/mlflow_run_id``. Without ``reuse_saved_id`` the
        run saved there is ended if left RUNNING, unless it is ``spare_run_id`` (a fork's parent run,
        which its own trainer may still be writing)."""
        from mlflow.exceptions import MlflowException

        client = interrupt_safe_client(uri)
        out = Path(out_dir) if out_dir is not None else None
        id_file = out / RUN_ID_FILE if out is not None else None
        if run_id is None and reuse_saved_id and id_file is not None and id_file.is_file():
            run_id = id_file.read_text().strip() or None
        tags = {k: str(v) for k, v in (tags or {}).items()}
        exp_id = None
        if run_id is None and out is not None and reuse_saved_id:
            exp_id = get_or_create_experiment(client, experiment)
            run_id = _run_with_saved_key(client, exp_id, out)
        if run_id is not None:
            try:
                run = client.get_run(run_id)
            except MlflowException as e:
                raise ValueError(
                    f"MLflow run {run_id} (to resume) is not in the tracking store "
                    f"{client.tracking_uri}: {e}. "
                    "Point --tracking-uri at the store the run was created in, or start a new --out"
                ) from None
            client.update_run(run_id, status="RUNNING")
            tracker = cls(client, run_id, resumed=True)
            log.info("continuing MLflow run %s (%s)", run_id, run.info.run_name)
        else:
            if not reuse_saved_id and id_file is not None and id_file.is_file():
                old = id_file.read_text().strip()  # left RUNNING by a killed job: end it, or it stays so
                if old != spare_run_id and end_run_if(
                    client, old, left=("RUNNING",), status="KILLED", tag="superseded"
                ):
                    log.warning(
                        "MLflow run %s, left running in this folder, ended as KILLED (a new run starts in "
                        "it: --resume never, or a resume from another folder's checkpoint)",
                        old,
                    )
            exp_id = exp_id or get_or_create_experiment(client, experiment)
            run_tags = dict(tags)
            if out is not None:  # saved before the run exists: a job killed right after finds it
                run_tags[RUN_KEY_TAG] = uuid.uuid4().hex
                atomic_write_text(out / RUN_KEY_FILE, run_tags[RUN_KEY_TAG] + "\n")
            run = client.create_run(exp_id, run_name=run_name, tags=run_tags)
            tracker = cls(client, run.info.run_id, resumed=False)
            log.info("MLflow run %s (%s) in experiment %r at %s", run.info.run_id, run.info.run_name,
                     experiment, client.tracking_uri)  # fmt: skip
        if id_file is not None:
            atomic_write_text(id_file, tracker.run_id + "\n")
        tracker.set_tags({**tags, STATUS_TAG: STATUS_RUNNING})
        return tracker

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; ones already logged (a resumed run) are kept, and a changed value is warned about."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = []
        for k, v in params.items():
            s = format_param(v)
            if len(s) > _MAX_PARAM_LEN:
                log.warning("param %s is %d characters long; truncated for MLflow", k, len(s))
                s = s[:_MAX_PARAM_LEN]
            if k in existing:
                if existing[k] != s:
                    log.warning("param %s was %r in this run and is now %r; MLflow keeps %r", k,
                                existing[k], s, existing[k])  # fmt: skip
                continue
            new.append(Param(k, s))
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` (returns at once; see `MetricSender`). A ``(key, step)``
        already logged in this run is skipped."""
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        self._queue([(k, float(v), now, int(step)) for k, v in metrics.items()])

    def _queue(self, points: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        batch = []
        for key, value, timestamp, step in points:
            steps = self._logged.setdefault(key, set())
            if step in steps:
                self.skipped += 1
                continue
            steps.add(step)
            batch.append(Metric(key, value, timestamp, step))
        self.sender.put(batch)

    def unsent_points(self) -> list[list]:
        """``[[key, value, timestamp_ms, step], ...]``: points logged but not known to be on the server
        (plain lists, for a checkpoint)."""
        return [[m.key, m.value, m.timestamp, m.step] for m in self.sender.pending()]

    def requeue(self, points: list) -> None:
        """Queue points saved by `unsent_points` (a resumed run); those already on the server are skipped."""
        self._queue([(str(k), float(v), int(t), int(s)) for k, v, t, s in points])

    def flush(self, timeout: float | None = None) -> int:
        """Wait for buffered metrics to be sent (at most ``timeout`` s); returns how many are left."""
        return self.sender.flush(timeout)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_image(self, image, artifact_file: str) -> None:
        """``image``: uint8 ``(H, W, C)`` numpy array or PIL image."""
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def finish(self, status: str) -> None:
        """Send the buffered metrics (waiting at most 300 s), set the ``status`` tag and
        end the run: finished -> FINISHED, failed -> FAILED, preempted -> KILLED (a requeued job
        continues the same run), interrupted -> KILLED (a Ctrl-C of a sweep's local job). A finished
        run that an earlier attempt left with an ``error`` tag keeps it as ``error.previous``. A finished
        run whose last metric points could not be sent ends interrupted (KILLED) with ``metrics_unsent``:
        its final checkpoint holds them, and the resume a relaunch makes sends them and ends it FINISHED
        (FINISHED, the analysis would fit a point before the run's last as its result)."""
        if (left := self.sender.close(300.0)) and status == STATUS_FINISHED:
            log.warning("run %s ends interrupted, not finished: %d metric points unsent (kept in the final "
                        "checkpoint); run it again (relaunch the sweep, or the trainer with the same --out) "
                        "to send them", self.run_id, left)  # fmt: skip
            self.set_tags({METRICS_UNSENT_TAG: left})
            status = STATUS_INTERRUPTED
        self.set_tags({STATUS_TAG: status})
        if status == STATUS_FINISHED:  # an earlier attempt's error is history, not this run's outcome
            tags = self.client.get_run(self.run_id).data.tags
            if (error := tags.get(ERROR_TAG)) is not None:
                self.set_tags({PREVIOUS_ERROR_TAG: error})
                self.client.delete_tag(self.run_id, ERROR_TAG)
            if METRICS_UNSENT_TAG in tags:  # sent by this attempt
                self.client.delete_tag(self.run_id, METRICS_UNSENT_TAG)
        self.client.set_terminated(self.run_id, status=_TERMINAL[status])


def _run_with_saved_key(client, exp_id: str, out: Path) -> str | None:
    """The run of ``exp_id`` tagged with the key in ``<out>/mlflow_run_key``, if there is one."""
    key_file = out / RUN_KEY_FILE
    if not key_file.is_file():
        return None
    key = key_file.read_text().strip()
    if not key.isalnum():
        log.warning("ignoring unreadable %s", key_file)
        return None
    runs = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=2)
    if runs:
        log.warning("found MLflow run %s by its key in %s (the run id was never saved: the job that "
                    "created it was killed); continuing it", runs[0].info.run_id, key_file)  # fmt: skip
        return runs[0].info.run_id
    return None


#: URI schemes of MLflow's database and server stores (``postgresql+psycopg2://`` counts as postgresql)
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


#: The first 16 bytes of every SQLite database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
#: An SQLite database with tables but without these is not an MLflow store (another program's).
MLFLOW_TABLES = ("experiments", "runs", "metrics", "params")


def check_sqlite_store(uri: str, *, missing: str | None = None) -> None:
    """ValueError, reading only, when a ``sqlite:///FILE`` URI names something MLflow must not open:
    a folder, a file that is not an SQLite database (a CSV or text given by mistake), or an SQLite
    database with tables but not MLflow's (another program's, to which MLflow would add its ~30).
    ``missing`` None (a trainer or launcher, which create the store): a missing file, an empty one or
    a database without tables is a new store, unless the folder it would be made in is not writable
    (MLflow would retry opening it for ~100 s, then fail). Else (a reader) each of those is refused,
    ``missing`` being the message for a missing file: MLflow would create an empty store just to look.
    Other URIs are not checked here."""
    path = sqlite_store_path(uri)
    if path is None:
        return
    instead = "give the MLflow store's database, e.g. --tracking-uri sqlite:///path/to/mlflow.db"
    if not path.exists():
        if missing is None:
            _check_creatable(path)
            return
        raise ValueError(missing)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an MLflow store; {instead}")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if not head and missing is None:
        return  # an empty file: SQLite makes it a new database
    if head != SQLITE_MAGIC:
        what = "an empty file" if not head else "not an SQLite database"
        csv = " (a CSV of points is read with --csv FILE)"
        if head and (path.suffix.lower() in (".csv", ".txt", ".tsv") or b"," in head):
            csv = f"; a CSV of points is read with --csv {path}"
        raise ValueError(f"{path} is {what}, so not an MLflow store (it holds no runs); {instead}{csv}")
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        ) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        raise ValueError(f"{path} cannot be read as an SQLite database ({e}): damaged? {instead}") from None
    if not tables and missing is None:
        return
    if lacking := [t for t in MLFLOW_TABLES if t not in tables]:
        has = f"its tables: {', '.join(sorted(tables)[:8])}" if tables else "it has no tables"
        raise ValueError(
            f"{path} is an SQLite database but not an MLflow store (no {', '.join(lacking)} table; {has}), "
            f"so it holds no runs and is left as it is; {instead}"
        )


def _check_creatable(path: Path) -> None:
    """ValueError when a new store cannot be made at ``path``: the nearest thing on its path that exists
    (MLflow makes the folders after it) is a file, not a folder (MLflow: a FileExistsError traceback), is
    not writable (another user's, a read-only mount), or refuses a new file all the same (/proc or /sys
    for root, whom the permission bits let write; a full disk): MLflow would retry opening the database
    for ~100 s, then fail. The last is tried with a nameless file (``O_TMPFILE``), gone when closed."""
    import tempfile

    folder = next((p for p in path.parents if p.exists()), None)
    if folder is None:
        return
    if not folder.is_dir():
        why = f"{folder} is a file, not a folder"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why = f"{folder} is not writable"
    else:
        try:
            with tempfile.TemporaryFile(dir=folder):
                return
        except OSError as e:
            why = f"{folder} cannot hold files ({e.strerror or e})"
    raise ValueError(
        f"{path}: no MLflow store can be made there, {why}; give a store in a folder you can write to, e.g. "
        "--tracking-uri sqlite:///path/to/mlflow.db"
    )


#: Seconds a tracking server's check may take in all, its two requests together (`check_tracking_server`).
CHECK_TIMEOUT_S = 5.0
#: Seconds past that deadline the check waits for its requests to report a timeout of their own, which tells
#: a connect that timed out ("unreachable") from a server that does not answer; then it stops waiting.
_CHECK_GRACE_S = 0.5


def check_tracking_server(uri: str | None, hint: str, timeout_s: float | None = None) -> None:
    """Raise ValueError, before anything is created, when ``uri`` is not a store of
    `TRACKING_SCHEMES` (an unknown scheme; a plain folder: MLflow's file store is in maintenance
    mode), a ``sqlite:///FILE`` that `check_sqlite_store` refuses (a CSV, another program's
    database, a folder that cannot hold one), an http(s) MLflow server that does not answer its
    ``/health`` probe (``hint`` says how to fix that; one that accepts but does not answer in time is
    refused then, unprobed), or one that answers a 5xx to it or to `STORE_PROBE`, a 400 to the probe,
    or nothing to the probe in time (up, but its store fails or is locked). MLflow would retry a 5xx
    for minutes. The two requests share one deadline, ``timeout_s`` from the first (None =
    `CHECK_TIMEOUT_S`): a server that trickles its answer a byte at a time is refused by it too.
    Unset = MLflow's default store."""
    timeout_s = CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if uri and uri.split(":", 1)[0].split("+")[0] not in TRACKING_SCHEMES:
        raise ValueError(
            f"tracking URI {uri!r}: give a database or a server, e.g. sqlite:///path/to/mlflow.db or "
            "http://host:5000 (MLflow's folder store is in maintenance mode; schemes taken here: "
            f"{', '.join(TRACKING_SCHEMES)})"
        )
    if not uri.startswith(("http://", "https://")):
        check_sqlite_store(uri)
        return
    status, detail = _ServerCheck.start(uri, hint, timeout_s).result()
    if status >= 500 or status == BAD_STORE:
        raise ValueError(
            f"MLflow tracking server {uri} answers HTTP {status}{detail}: the server is up but its store "
            "fails (e.g. its database is down, damaged, full or locked); see the server's log, fix it or "
            "restart the server, then run this again"
        )


#: The read the store probe makes (one experiment): it touches the server's database, `/health` does not.
STORE_PROBE = "/api/2.0/mlflow/experiments/search"
#: MLflow's answer to the probe when its database raises a SQLAlchemy error other than a lost
#: connection (a damaged file); 401/403 (credentials) and 404 are left to MLflow's own messages.
BAD_STORE = 400


@dataclasses.dataclass
class _ServerCheck:
    """One check of an MLflow server: ``/health``, then `STORE_PROBE`, made by a thread of its own that
    the caller waits for until ``deadline`` (`time.monotonic`) and `_CHECK_GRACE_S`. Each request's
    socket timeout is the time left, but it bounds each read, not the answer: a server that trickles
    bytes would hold the thread for ever, so the caller leaves it then (a daemon thread, reading until
    the server lets go of it)."""

    uri: str
    hint: str
    timeout_s: float
    deadline: float
    #: The request in progress: "/health" or `STORE_PROBE`.
    asking: str = "/health"
    #: (HTTP status, `` (the server's message)`` or "") to judge, or the error to raise; None while asking.
    outcome: tuple[int, str] | Exception | None = None
    thread: threading.Thread | None = None

    @classmethod
    def start(cls, uri: str, hint: str, timeout_s: float) -> _ServerCheck:
        # imported before the clock starts: a cold import takes seconds on a busy machine
        import urllib.request  # noqa: F401

        import mlflow.tracking.request_header.registry  # noqa: F401 - the probe's headers
        import requests  # noqa: F401
        from mlflow.utils import credentials, rest_utils  # noqa: F401

        check = cls(uri, hint, timeout_s, time.monotonic() + timeout_s)
        check.thread = threading.Thread(target=check._run, name="mlflow-server-check", daemon=True)
        check.thread.start()
        return check

    def result(self) -> tuple[int, str]:
        """Wait for the check; (status, detail) of the last answer, or the ValueError saying what is wrong."""
        self.thread.join(max(self.deadline - time.monotonic(), 0.0) + _CHECK_GRACE_S)
        if self.thread.is_alive():  # each read came in time, the answer did not
            raise self.late()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def late(self) -> ValueError:
        """The error for a request that got no whole answer by the deadline."""
        if self.asking == "/health":
            return ValueError(
                f"MLflow tracking server {self.uri} did not answer within {self.timeout_s:g} s (GET "
                "/health): it accepts connections but sends no answer, or only part of one (stuck, stopped "
                f"or overloaded?); {self.hint}"
            )
        return ValueError(
            f"MLflow tracking server {self.uri} is up (/health answered) but its store did not answer within "
            f"{self.timeout_s:g} s (GET {STORE_PROBE}): its database is locked, overloaded or down; see the "
            "server's log, end what holds the database (e.g. another process writing an sqlite file) or "
            "fix it, or restart the server, then run this again"
        )

    def _left(self) -> float:
        """Seconds to the deadline; `late` when none are left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.late()
        return left

    def _run(self) -> None:
        try:
            self.outcome = self._ask()
        except Exception as e:  # noqa: BLE001 - raised in the caller's thread by `result`
            self.outcome = e

    def _ask(self) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=self._left()) as r:
                status, why = r.status, f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            status, why = e.code, str(e.reason)
        except (urllib.error.URLError, OSError) as e:
            if _answer_timed_out(e):
                raise self.late() from None
            status, why = 0, str(getattr(e, "reason", e))
        if status == 0:
            raise ValueError(f"MLflow tracking server {self.uri} is unreachable ({why}); {self.hint}")
        if status >= 500:
            return status, ""
        if status != 200:  # MLflow answers /health 200, with basic-auth too
            raise ValueError(
                f"MLflow tracking server {self.uri}: GET /health answers HTTP {status} ({why}), where an "
                "MLflow server answers 200: another program holds that address, or MLflow serves under a "
                f"path prefix (give it in the URI, e.g. http://host:5000/PREFIX); {self.hint}"
            )
        self.asking = STORE_PROBE
        return self._store_probe()

    def _store_probe(self) -> tuple[int, str]:
        """(HTTP status, `` (the server's message)`` or "") of one `STORE_PROBE` read, sent once with
        MLflow's credentials (``MLFLOW_TRACKING_*``) and no retries: MLflow's own take minutes on a 5xx.
        Only this probe skips them; a run's requests keep them, to ride out a server's restart."""
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        try:
            r = http_request(
                get_default_host_creds(self.uri), STORE_PROBE, "GET", max_retries=0, timeout=self._left(),
                raise_on_status=False, params={"max_results": 1},
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the connection failed: MLflow's error says why
            if _answer_timed_out(e):  # /health answered: the server is up, its database is not
                raise self.late() from None
            raise ValueError(f"MLflow tracking server {self.uri} is unreachable ({e}); {self.hint}") from None
        try:
            body = r.json()
        except ValueError:  # not JSON, e.g. a proxy's HTML page
            body = None
        message = str(body.get("message", "")).strip() if isinstance(body, dict) else ""
        return r.status_code, f" ({message.splitlines()[0][:300]})" if message else ""  # one line


def _answer_timed_out(e: BaseException) -> bool:
    """Whether ``e`` or an error it wraps (its cause, context, ``reason`` or first argument, as urllib,
    requests and urllib3 wrap one another's) is a read that got no answer in time, on a connection the
    server accepted. A connect that timed out (urllib wraps it in a URLError) is not one."""
    import urllib.error

    import requests
    import urllib3

    connect = (
        urllib.error.URLError,
        requests.exceptions.ConnectTimeout,
        urllib3.exceptions.ConnectTimeoutError,
    )
    read = (TimeoutError, requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)
    todo, seen = [e], set()
    while todo:
        x = todo.pop()
        if not isinstance(x, BaseException) or id(x) in seen or isinstance(x, connect):
            continue
        if isinstance(x, read):
            return True
        seen.add(id(x))
        todo += [x.__cause__, x.__context__, getattr(x, "reason", None), *x.args[:1]]
    return False
