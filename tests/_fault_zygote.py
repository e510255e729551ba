"""Fork server for the SIGKILL test (tests/test_faults_sigkill.py): imports the trainer once, then
forks one child per training attempt, so a kill-and-resume costs milliseconds of start-up instead of
the ~5-15 s of importing torch, accelerate and mlflow in a fresh interpreter.

Each child is a fresh `dit_core.train.train(tiny_config(out, **overrides))`: nothing of one attempt
survives in memory into the next (the zygote itself never trains), only the run folder and the
MLflow store do, as with a real job. The child reports what it is doing as lines
``<pid> <seconds> <event> [detail]`` appended to an events file, so the test can aim its kills:

- ``start`` the child began; ``run-created <id>`` a new MLflow run exists (its id not yet saved);
- ``step <n>`` optimizer step n is done; ``metrics-sent <k>`` a ``log_batch`` of k metrics returned;
- ``ckpt-begin <step>`` / ``ckpt-written <step>``: a checkpoint's bytes are being written, slowed to
  ``slow_write_s`` seconds in 4 chunks so a kill can land inside the write;
- ``done`` train() returned.

Protocol (JSON lines): stdin ``{"out", "events", "overrides", "slow_write_s", "pause_after_create_s"}``;
stdout ``{"pid": N}`` when forked, then ``{"pid": N, "status": S}`` when it ended (S = exit code, or
minus the signal number). EOF on stdin ends the zygote.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import traceback


def _warm_up() -> None:
    """Import what a training run imports (torch, accelerate, dynamo via AdamW, sklearn via the digits,
    mlflow's client and stores) without creating threads or opening the MLflow store."""
    import tempfile

    import mlflow.store.tracking.rest_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import torch
    from _train_helpers import tiny_config
    from mlflow import MlflowClient  # noqa: F401

    from dit_core.trainer.loop import Trainer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(tiny_config(tmp, **{"tracking.enabled": False}))
    if threading.active_count() != 1:
        raise RuntimeError(f"the zygote must not fork with threads: {threading.enumerate()}")


def _child(job: dict) -> int:
    import torch
    from _train_helpers import tiny_config
    from mlflow import MlflowClient

    from dit_core.train import train
    from dit_core.trainer.loop import Trainer

    fd = os.open(job["events"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    t0 = time.time()

    def emit(event: str, detail: object = "") -> None:
        os.write(fd, f"{os.getpid()} {time.time() - t0:.4f} {event} {detail}\n".encode())

    emit("start")
    real_save, slow = torch.save, float(job.get("slow_write_s", 0.0))

    def save(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and "model" in obj and hasattr(f, "write")):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        emit("ckpt-begin", obj["step"])
        n = 4
        for i in range(n):
            f.write(data[i * len(data) // n : (i + 1) * len(data) // n])
            f.flush()
            time.sleep(slow / n)
        emit("ckpt-written", obj["step"])

    torch.save = save

    real_create, pause = MlflowClient.create_run, float(job.get("pause_after_create_s", 0.0))

    def create_run(self, *args, **kwargs):
        run = real_create(self, *args, **kwargs)
        emit("run-created", run.info.run_id)
        time.sleep(pause)  # widen the window between creating the run and saving its id
        return run

    MlflowClient.create_run = create_run
    real_log_batch = MlflowClient.log_batch

    def log_batch(self, run_id, metrics=(), *args, **kwargs):
        out = real_log_batch(self, run_id, metrics, *args, **kwargs)
        if metrics:
            emit("metrics-sent", len(metrics))
        return out

    MlflowClient.log_batch = log_batch
    real_step = Trainer.train_step

    def train_step(self):
        real_step(self)
        emit("step", self.step)

    Trainer.train_step = train_step
    torch.set_num_threads(1)
    result = train(tiny_config(job["out"], **job.get("overrides", {})), progress_bar=False)
    emit("done", f"{result.status} {result.step}")
    return 0


def main() -> int:
    _warm_up()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(job)
            except BaseException:  # noqa: BLE001 - report and exit the child, never return to the loop
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"pid": pid, "status": code}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
