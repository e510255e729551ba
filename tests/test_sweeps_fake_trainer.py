"""A stand-in trainer that keeps `dit_core.train`'s contract, for fast tests of the sweep machinery.

Contract (docs/interfaces.md and the trainer issue): ``train(cfg) -> result`` runs one cell to
completion; resumes from ``cfg.out_dir`` when a checkpoint exists and continues the same MLflow run
(its id is kept in the folder); tags runs ``sweep``, ``grid_cell``, ``status``; on SIGUSR1/SIGUSR2/
SIGTERM it checkpoints at the next step boundary and then chains to the previously installed Python
handler (submitit's requeue handler) or exits; a Ctrl-C (KeyboardInterrupt) fails the run, unless
``sigint`` says otherwise. "Training" is a deterministic recurrence ``w <- w - lr * (w - target)`` so
the final state after an interruption can be compared exactly.

Jobs import this module by name (``trainer: test_sweeps_fake_trainer``) with ``tests/`` on PYTHONPATH.
No tests here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: What a warm worker imports for this trainer (`sweeps.warm.warm_imports`): MLflow and its SQL store,
#: not torch, which it never uses (the default list's torch, dynamo and torchvision cost ~5 s a worker)
WARM_IMPORTS = ("mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "sweeps.executor")


@dataclass
class ModelCfg:
    name: str | None = None
    depth: int = 2
    hidden_size: int = 32
    num_heads: int = 2
    patch_size: int = 2
    input_size: int = 16
    in_channels: int = 1
    num_classes: int = 10
    learn_sigma: bool = True


@dataclass
class DataCfg:
    name: str = "digits"
    root: str | None = None
    image_size: int = 16


@dataclass
class BudgetCfg:
    max_steps: int | None = 10
    train_flops: float | None = None
    global_batch_size: int = 8


@dataclass
class TrackingCfg:
    uri: str | None = None
    experiment: str = "fake"
    run_name: str | None = None
    run_id: str | None = None
    sweep: str | None = None
    grid_cell: str | None = None


@dataclass
class TrainSections:
    """The sections of `dit_core.train.TrainConfig` that a sweep's dotted overrides reach; each
    stand-in trainer's config adds its own fields after them."""

    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    budget: BudgetCfg = field(default_factory=BudgetCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)


@dataclass
class TrainConfig(TrainSections):
    out: str = "fake_run"
    seed: int = 0  # logged like the real trainer's (a sweep's `seeds` set it per cell); not used
    step_s: float = 0.02  # sleep per step, so that a signal can arrive mid-run
    fail_cell: str = ""  # this grid cell raises ...
    fail_times: int = 0  # ... on its first `fail_times` starts
    setup_error: str = ""  # raise ValueError(setup_error) before touching MLflow (a set-up failure)
    progress_file: str = ""  # optional: write the step here each step (tests wait on it)
    events_file: str = ""  # optional: append "<cell> start|end <unix time>" (parallelism tests)
    # a Ctrl-C (SIGINT): "raise" fails the run; "checkpoint" stops at the step boundary and ends the run
    # KILLED, status=interrupted, as `dit_core.train` in a local job; "ignore" (a trainer slow to stop)
    sigint: str = "raise"
    hold_file: str = ""  # optional: wait before the last step until this file exists (or a signal comes)


@dataclass
class TrainResult:
    step: int
    weight: float
    loss: float
    run_id: str
    starts: int
    threads: int  # OMP_NUM_THREADS the job gave this process (0: unset)
    draw: float  # an unseeded numpy draw at the start: cells forked from one process must differ
    job_id: str  # DITSCALE_EXECUTOR_JOB_ID as the trainer sees it (what dit_core.train tags the run with)


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _flat(cfg, prefix: str = "") -> dict:
    """``{"model.depth": 2, ...}``: the config as the real trainer logs it (MLflow params)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_flat(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = "" if v is None else str(v)
    return out


def _hold(path: str, caught: list[int]) -> None:
    """Wait, where ``path`` is given, until the file ``path`` exists or a signal was caught: a test's
    handshake that keeps the cell running, its last step not taken, until the test has looked (a fixed
    number of steps raced the test's own reads on a loaded machine)."""
    while path and not caught and not os.path.exists(path):
        time.sleep(0.05)


def _ctrl_c_once():
    """A SIGINT handler that raises KeyboardInterrupt the first time only: the plain job's controller
    passes the terminal's Ctrl-C on, and that echo, landing while the first one unwinds (before the
    ``except`` block ignores SIGINT), would leave the run active for MLflow's atexit hook (FINISHED)."""
    raised: list[int] = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise KeyboardInterrupt

    return handler


def _event(cfg: TrainConfig, what: str) -> None:
    if cfg.events_file:
        with open(cfg.events_file, "a") as f:
            f.write(f"{cfg.tracking.grid_cell} {what} {time.time()!r}\n")


def train(cfg: TrainConfig) -> TrainResult:
    import mlflow as fluent

    from dit_core.tracking import InterruptSafeClient

    # each store call whole under a Ctrl-C, as the real trainer's: one cut in half left SQLite's lock
    # held, and the run's end below waited 20 s on it, then failed (CI saw the Ctrl-C tests time out)
    mlflow = InterruptSafeClient(fluent)

    if cfg.setup_error:
        raise ValueError(cfg.setup_error)
    draw = float(np.random.random())
    _event(cfg, "start")

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.json"
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "w": 0.0}
    starts_file = out / "starts"
    starts = int(starts_file.read_text()) + 1 if starts_file.exists() else 1
    starts_file.write_text(str(starts))
    (out / "pid").write_text(str(os.getpid()))  # tests signal the trainer process by this

    tr = cfg.tracking
    mlflow.set_tracking_uri(tr.uri)
    run_id_file = out / "mlflow_run_id"
    run_id = tr.run_id or (run_id_file.read_text().strip() if run_id_file.exists() else None)
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        mlflow.set_experiment(tr.experiment)
        run = mlflow.start_run(run_name=tr.run_name, tags={"sweep": tr.sweep, "grid_cell": tr.grid_cell})
    run_id_file.write_text(run.info.run_id)
    if state["step"] == 0:
        mlflow.log_params({k: v for k, v in _flat(cfg).items() if not k.startswith("tracking.")})
    mlflow.set_tag("status", "running")
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    if job_id:
        mlflow.set_tag("executor_job_id", job_id)

    caught: list[int] = []
    sigs = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
    sigs += (signal.SIGINT,) if cfg.sigint == "checkpoint" else ()
    previous = {s: signal.signal(s, lambda n, f: caught.append(n)) for s in sigs}
    if cfg.sigint == "ignore":
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    elif cfg.sigint == "raise" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        # as Python's own: a process started with SIGINT ignored (an xdist worker's child) keeps ignoring it
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _ctrl_c_once())
    try:
        if tr.grid_cell == cfg.fail_cell and starts <= cfg.fail_times:
            raise RuntimeError(f"injected failure of {cfg.fail_cell} (start {starts})")
        target = 1.0 + cfg.model.hidden_size / 100.0
        while state["step"] < cfg.budget.max_steps:
            if state["step"] == cfg.budget.max_steps - 1:
                _hold(cfg.hold_file, caught)
            time.sleep(cfg.step_s)
            state["w"] = state["w"] - 0.1 * (state["w"] - target)
            state["step"] += 1
            loss = (state["w"] - target) ** 2
            mlflow.log_metric("train/loss", loss, step=state["step"])
            _save(ckpt, state)
            if cfg.progress_file:
                Path(cfg.progress_file).write_text(str(state["step"]))
            if caught:  # checkpoint is on disk: hand over to submitit (requeue) or exit
                ctrl_c = caught[0] == signal.SIGINT
                mlflow.set_tag("status", "interrupted" if ctrl_c else "preempted")
                mlflow.end_run(status="KILLED")
                _event(cfg, "end")
                handler = previous[caught[0]]
                if callable(handler) and not ctrl_c:
                    handler(caught[0], None)
                sys.exit(0)
        loss = (state["w"] - target) ** 2  # also when a requeued attempt finds the last step done
        mlflow.log_metric("eval/fid", 100.0 * loss, step=state["step"])
        mlflow.set_tag("status", "finished")
        mlflow.end_run()
        _event(cfg, "end")
        threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        job_id = os.environ.get("DITSCALE_EXECUTOR_JOB_ID", "")
        return TrainResult(state["step"], state["w"], loss, run.info.run_id, starts, threads, draw, job_id)
    except (Exception, KeyboardInterrupt):
        # as the real trainer, a Ctrl-C fails the run too: left active, MLflow's atexit hook would end
        # it FINISHED. The second SIGINT a submitit job gets (its controller's) must not cut this short:
        # `_ctrl_c_once` drops it, also one that comes before this block's first line (CI saw that)
        held = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            mlflow.set_tag("status", "failed")
            mlflow.end_run(status="FAILED")
        finally:
            signal.signal(signal.SIGINT, held)
        _event(cfg, "end")
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
