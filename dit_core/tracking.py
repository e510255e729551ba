"""MLflow tracking for a training run, in the schema of docs/training.md ("MLflow schema").

- params: every `TrainConfig` field, dotted (``model.depth``, ``optim.lr``, ...; None is logged as
  ""), plus ``model.params``, ``model.params_non_embedding``, ``model.forward_gflops``,
  ``model.train_flops_per_image``, ``data.train_size``, ``world_size`` and ``git.commit``;
- metrics with ``step`` = optimizer step: ``train/loss``, ``val/loss``, ``eval/<metric>``, ``lr``,
  ``compute/train_flops`` (cumulative true FLOPs), ``data/images_seen``, ``perf/images_per_s``;
- tags: ``status`` (running / finished / failed / preempted), ``sweep``, ``grid_cell``,
  ``executor``/``job_id`` when run under SLURM or submitit;
- artifacts: ``config.json`` (the resolved config), ``samples/step_XXXXXXX.png`` sample grids.

Only the main process creates a `RunTracker`; the client API is used (no fluent global run), so a
caller that has its own active run (a sweep) is not disturbed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXPERIMENT", "RUN_ID_FILE", "RunTracker", "executor_tags", "format_param", "git_commit"]

#: The MLflow experiment the trainer, the demo sweep and the analysis use unless told otherwise.
DEFAULT_EXPERIMENT = "ditscale-demo"
RUN_ID_FILE = "mlflow_run_id"
_TERMINAL = {"finished": "FINISHED", "failed": "FAILED", "preempted": "KILLED"}
_MAX_PARAM_LEN = 6000


def format_param(value: Any) -> str:
    """A config value as an MLflow param string: None -> "", lists/dicts -> JSON, else ``str``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD commit of the repository holding ``path`` (default: this package), or None."""
    where = Path(path) if path else Path(__file__).resolve().parent
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
        tags["executor"] = "slurm"
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            tags["job_id"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        else:
            tags["job_id"] = env["SLURM_JOB_ID"]
    elif env.get("SUBMITIT_LOCAL_JOB_ID"):
        tags["executor"] = env.get("SUBMITIT_EXECUTOR", "local")
        tags["job_id"] = env["SUBMITIT_LOCAL_JOB_ID"]
    if env.get("DITSCALE_EXECUTOR_JOB_ID"):
        tags["job_id"] = env["DITSCALE_EXECUTOR_JOB_ID"]
    return tags


# MLflow >= 3 opens experiments without this tag on its GenAI overview; "custom_model_development"
# makes the UI open on the runs table, where sweeps are compared.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def get_or_create_experiment(client, name: str) -> str:
    """Id of experiment `name`, created (tagged as a model-training experiment) if missing.

    Safe against a concurrent job creating it at the same time."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, tags=dict([EXPERIMENT_KIND_TAG]))
    except MlflowException:  # created meanwhile by another launcher or job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class RunTracker:
    """One MLflow run: created, or continued when a run id is known (resume, or given by a sweep)."""

    def __init__(self, client, run_id: str, resumed: bool):
        self.client, self.run_id, self.resumed = client, run_id, resumed

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
    ) -> RunTracker:
        """Continue ``run_id`` (or, with ``reuse_saved_id``, the id saved in ``<out_dir>/mlflow_run_id``)
        or create a run in ``experiment``; the id is saved to ``<out_dir>/mlflow_run_id``."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=uri)
        id_file = Path(out_dir) / RUN_ID_FILE if out_dir is not None else None
        if run_id is None and reuse_saved_id and id_file is not None and id_file.is_file():
            run_id = id_file.read_text().strip() or None
        tags = {k: str(v) for k, v in (tags or {}).items()}
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
            exp_id = get_or_create_experiment(client, experiment)
            run = client.create_run(exp_id, run_name=run_name, tags=tags)
            tracker = cls(client, run.info.run_id, resumed=False)
            log.info("MLflow run %s (%s) in experiment %r at %s", run.info.run_id, run.info.run_name,
                     experiment, client.tracking_uri)  # fmt: skip
        if id_file is not None:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(tracker.run_id + "\n")
            os.replace(tmp, id_file)
        tracker.set_tags({**tags, "status": "running"})
        return tracker

    # ------------------------------------------------------------------ logging
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
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

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
        """Set the ``status`` tag and end the run: finished -> FINISHED, failed -> FAILED,
        preempted -> KILLED (a requeued job continues the same run)."""
        if status not in _TERMINAL:
            raise ValueError(f"status must be one of {sorted(_TERMINAL)}, got {status!r}")
        self.set_tags({"status": status})
        self.client.set_terminated(self.run_id, status=_TERMINAL[status])
