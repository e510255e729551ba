"""A trainer stand-in that starts in a fraction of a second, for sweeps of hundreds of cells.

It writes what a real cell writes as far as ``launch.py status``, the relaunch plan and the analysis
read it (docs/training.md, "MLflow schema"), through MLflow's REST API with the standard library
only (``import mlflow`` alone costs ~1.5 s of CPU a job):

- run status RUNNING, then FINISHED with an end time (the sweep created the run: ``tracking.run_id``);
- tags ``status`` (running -> finished), ``sweep``, ``grid_cell``, ``executor``/``job_id`` of the job,
  ``data.unique_images``;
- params: the flat config plus ``model.params``, ``model.params_non_embedding``,
  ``model.forward_gflops``, ``model.train_flops_per_image``, ``data.train_size``, ``world_size``;
- metrics at ``points`` steps up to ``budget.max_steps``: ``train/loss``, ``lr``,
  ``compute/train_flops``, ``data/images_seen``, ``perf/images_per_s``, and ``val/loss`` plus the
  ``perf/*_s`` fixed costs at the last step. The loss is a closed form of the step and the size.

It trains nothing. Each request is retried (0.2 s, doubling, 8 tries) on a connection error or a
5xx answer; the result counts requests, retries and metric points so a benchmark can add them up.
Jobs import it by name (``trainer: _scale_trainer``) with ``tests/`` on PYTHONPATH.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = ["TrainConfig", "train"]

from test_sweeps_fake_trainer import (
    WARM_IMPORTS,  # noqa: F401 - what a warm worker imports for it
    TrainSections,
    _flat,
)

from dit_core.spec import (
    forward_gflops,
    model_config,
    non_embedding_param_count,
    param_count,
    train_flops_per_image,
)
from dit_core.tracking import UNIQUE_IMAGES_TAG, executor_tags, unique_images_tag

FIXED_COSTS = ("perf/startup_s", "perf/mlflow_s", "perf/val_s", "perf/eval_s", "perf/train_s")


@dataclass
class TrainConfig(TrainSections):
    out: str = "scale_run"
    points: int = 5  # logged steps per metric key


class _Rest:
    """POSTs to ``<uri>/api/2.0/mlflow/...`` with MLflow's basic-auth variables when they are set."""

    def __init__(self, uri: str) -> None:
        if not uri.startswith(("http://", "https://")):
            raise ValueError(f"the scale stand-in writes to an mlflow server over REST; got {uri!r}")
        self.base = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.headers = {"Content-Type": "application/json"}
        user, pw = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user and pw:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
        self.requests = self.retries = 0
        self.seconds = 0.0

    def post(self, path: str, body: dict, tries: int = 8) -> dict:
        data = json.dumps(body).encode()
        wait = 0.2
        for attempt in range(tries):
            t0 = time.perf_counter()
            try:
                req = urllib.request.Request(self.base + path, data=data, headers=self.headers)
                with urllib.request.urlopen(req, timeout=60) as r:
                    out = json.loads(r.read() or b"{}")
                self.requests += 1
                return out
            except urllib.error.HTTPError as e:  # a 4xx is a bug in the request: no retry
                if e.code < 500 or attempt == tries - 1:
                    raise RuntimeError(f"POST {path}: HTTP {e.code} {e.read()[:500]!r}") from None
            except OSError:
                if attempt == tries - 1:
                    raise
            finally:
                self.seconds += time.perf_counter() - t0
            self.retries += 1
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")


def train(cfg: TrainConfig) -> dict:
    """Write one finished cell into its run ``cfg.tracking.run_id``; returns counts and timings."""
    t_start = time.time()
    tr = cfg.tracking
    if not tr.run_id:
        raise ValueError("the scale stand-in continues the run its sweep created (tracking.run_id)")
    rest = _Rest(tr.uri or "")
    m = cfg.model
    dit = model_config(
        depth=m.depth, hidden_size=m.hidden_size, num_heads=m.num_heads, patch_size=m.patch_size,
        input_size=m.input_size, in_channels=m.in_channels, num_classes=m.num_classes,
        learn_sigma=m.learn_sigma,
    )  # fmt: skip
    fpi = train_flops_per_image(dit)
    n = param_count(dit)
    steps, batch = int(cfg.budget.max_steps or 1), cfg.budget.global_batch_size

    rest.post("runs/update", {"run_id": tr.run_id, "status": "RUNNING"})
    tags = {"sweep": tr.sweep, "grid_cell": tr.grid_cell, **executor_tags(), "status": "running"}
    tags[UNIQUE_IMAGES_TAG] = unique_images_tag(None)  # the photo stream
    params = {k: v for k, v in _flat(cfg).items() if not k.startswith("tracking.")}
    params |= {
        "model.params": n,
        "model.params_non_embedding": non_embedding_param_count(dit),
        "model.forward_gflops": forward_gflops(dit),
        "model.train_flops_per_image": fpi,
        "data.train_size": 0,
        "world_size": 1,
    }
    rest.post(
        "runs/log-batch",
        {
            "run_id": tr.run_id,
            "tags": [{"key": k, "value": str(v)} for k, v in tags.items() if v is not None],
            "params": [{"key": k, "value": str(v)} for k, v in params.items()],
        },
    )
    now = int(time.time() * 1000)
    logged = sorted({max(1, round(steps * (i + 1) / max(1, cfg.points))) for i in range(cfg.points)})
    metrics = []
    floor = 0.1 + 30.0 / (n**0.3)  # a smaller model ends higher
    for s in logged:
        loss = floor * (1.0 + 2.0 / s)
        point = {
            "train/loss": loss,
            "lr": 1e-4 * min(1.0, s / 10),
            "compute/train_flops": s * batch * fpi,
            "data/images_seen": float(s * batch),
            "perf/images_per_s": 1000.0,
        }
        if s == logged[-1]:
            point |= {"val/loss": loss * 1.01, **dict.fromkeys(FIXED_COSTS, 0.01)}
        metrics += [{"key": k, "value": float(v), "timestamp": now, "step": s} for k, v in point.items()]
    rest.post("runs/log-batch", {"run_id": tr.run_id, "metrics": metrics})
    rest.post("runs/log-batch", {"run_id": tr.run_id, "tags": [{"key": "status", "value": "finished"}]})
    rest.post("runs/update", {"run_id": tr.run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})
    return {
        "step": steps,
        "loss": floor * (1.0 + 2.0 / logged[-1]),
        "points": len(metrics),
        "requests": rest.requests,
        "retries": rest.retries,
        "write_s": rest.seconds,
        "t_start": t_start,
        "t_end": time.time(),
    }
