"""A terminal's Ctrl-C inside a sweep's local job: the real trainer (`dit_core.train.train`) checkpoints
at the next step boundary and ends its run KILLED with ``status=interrupted``, so the relaunch resumes
from that step, not from the last periodic checkpoint; for a fresh process per cell (submitit's local
executor, whose controller ignores the terminal's SIGINT since session 47, `IGNORE_CTRL_C`; the
launcher passes one on to the job, which the terminal's has reached already) and for a warm worker's
child. `PreemptionGuard` units: the forwarded SIGINT is the same Ctrl-C, a later
one stops at once, and the CLI's rule (a second SIGINT stops at once) is unchanged."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from _sweep_specs import runs_by_cell, states_of, tiny_real_spec, wait_for

from dit_core.trainer.signals import LOCAL_JOB_ENV, PreemptionGuard, in_local_job
from sweeps.grid import ExecutorSpec, expand
from sweeps.runner import launch, sweep_dir

REPO = Path(__file__).resolve().parents[1]
EVERY = 150  # periodic checkpoint interval: the Ctrl-C comes right after the first one


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _latest_step(run_dir: Path) -> int:
    pointer = run_dir / "checkpoints" / "latest.json"
    return json.loads(pointer.read_text())["step"] if pointer.exists() else 0


def _job_logs(spec) -> str:
    """Every job log of the sweep (submitit's and the warm worker's ``<job>_0_log.err``), oldest first."""
    logs = sorted((sweep_dir(spec) / "jobs").rglob("*_0_log.err"), key=lambda p: p.stat().st_mtime)
    return "\n".join(p.read_text() for p in logs)


@pytest.mark.slow
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "plain"])
def test_ctrl_c_in_a_local_job_checkpoints_the_step_and_the_relaunch_resumes_it(
    job_env, tmp_path, caplog, warm
):
    """``sweeps/launch.py`` in its own process group, stopped by a terminal's Ctrl-C (SIGINT to the
    group) right after the cell's first periodic checkpoint: the trainer checkpoints the step it
    reached (past that one, before the next) and ends its run KILLED with ``status=interrupted``
    (no error: not stopped at once), the launcher exits 130 and counts no try, and the relaunch
    resumes from that step into the same run."""
    name = "warm" if warm else "plain"
    spec = tiny_real_spec(
        tmp_path, job_env, name, experiment=f"job-ctrl-c-{name}", budget=1.23e7 * 2.5 * EVERY,
        train={"checkpoint.every": EVERY, "log_every": 25},
        executor=ExecutorSpec(name="local", local_parallelism=1, local_warm=warm, max_retries=0),
    )  # fmt: skip
    (cell,) = expand(spec)
    assert 2 * EVERY < cell.steps < 3 * EVERY
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    data = {
        "name": spec.name, "experiment": spec.experiment, "tracking_uri": job_env,
        "output_dir": spec.output_dir, "families": [], "shapes": spec.shapes,
        "patch_sizes": spec.patch_sizes, "budgets": spec.budgets,
        "batch_size": spec.batch_size, "final_eval": False, "train": spec.train,
        "executor": {"name": "local", "local_parallelism": 1, "local_warm": warm},
    }  # fmt: skip
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, str(REPO / "sweeps" / "launch.py"), "-c", str(cfg), "--max-retries", "0"]
    cmd += ["--poll", "0.2"] + ([] if warm else ["--no-warm"])
    # as from a terminal: its own process group (the launcher and its local jobs), SIGINT at its default
    proc = subprocess.Popen(
        cmd, start_new_session=True, preexec_fn=_sigint_default, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:  # the first periodic checkpoint is written: Ctrl-C
        wait_for(lambda: _latest_step(run_dir) >= EVERY or proc.poll() is not None, "the first checkpoint")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, (out, err)

    stopped = _latest_step(run_dir)
    logs = _job_logs(spec)
    # a checkpoint of the step the Ctrl-C stopped at: past the periodic one, or that same step when the
    # signal landed right after it (a loaded machine), never the periodic one of an earlier step
    assert EVERY <= stopped < 2 * EVERY, (stopped, logs)
    assert f"stopped by SIGINT at step {stopped};" in logs, logs
    assert "received SIGINT: checkpointing at the next step boundary" in logs, logs
    assert "KeyboardInterrupt" not in logs, logs
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    tags = run.data.tags
    assert (run.info.status, tags["status"]) == ("KILLED", "interrupted"), (run.info.status, tags)
    assert (tags["attempts"], tags["interrupts"]) == ("1", "1") and "error" not in tags
    st = states_of(spec, job_env)[cell.cell_id]
    assert (st.state, st.tries) == ("interrupted", 0)

    # the relaunch resumes the cell from the Ctrl-C's checkpoint (in this process: no start-up to wait for)
    with caplog.at_level(logging.INFO, logger="dit_core.train"):
        res = launch(spec.replace(executor={"name": "debug"}), poll_s=0.3)
    assert res.submitted == [cell.cell_id] and res.errors == {}, res.errors
    assert res.results[cell.cell_id]["step"] == cell.steps
    resumed = re.findall(r"resumed from \S+ at step (\d+)", caplog.text)
    assert resumed == [str(stopped)], resumed
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert (run.info.status, run.data.tags["status"], run.data.tags["attempts"]) == (
        "FINISHED",
        "finished",
        "2",
    )


class _Guarded:
    """A `PreemptionGuard` in this process, SIGINT delivered to it for real."""

    def __init__(self, echo_s: float):
        self.guard = PreemptionGuard((signal.SIGINT,), sigint_echo_s=echo_s)

    def __enter__(self) -> PreemptionGuard:
        self.before = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self.guard.__enter__()

    def __exit__(self, *exc) -> None:
        self.guard.__exit__(*exc)
        signal.signal(signal.SIGINT, self.before)


def _sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # the handler runs in the main thread, between bytecodes


def test_a_local_jobs_forwarded_sigint_is_the_same_ctrl_c_and_a_later_one_stops_at_once(monkeypatch):
    """The guard's clock is the test's: two real SIGINTs 0.01 s apart could be more than the 0.3 s
    echo window apart on a loaded machine."""
    from dit_core.trainer import signals as guard_signals

    now = [100.0]
    monkeypatch.setattr(guard_signals, "time", SimpleNamespace(monotonic=lambda: now[0]))
    with _Guarded(echo_s=0.3) as guard:
        _sigint()
        now[0] += 0.2
        _sigint()  # submitit's controller's, within the echo window: ignored
        assert guard.received == signal.SIGINT
        now[0] += 0.15  # 0.35 s after the first
        with pytest.raises(KeyboardInterrupt):
            _sigint()  # a human's second Ctrl-C


def test_the_clis_second_sigint_still_stops_at_once():
    with _Guarded(echo_s=0.0) as guard:
        _sigint()
        assert guard.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            _sigint()


def test_local_jobs_are_known_by_their_environment():
    assert in_local_job({"SUBMITIT_EXECUTOR": "local"}) and in_local_job({LOCAL_JOB_ENV: "1"})
    assert not in_local_job({}) and not in_local_job({"SUBMITIT_EXECUTOR": "slurm"})
    # a debug job runs inside its launcher: a Ctrl-C must stop the launcher
    assert not in_local_job({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_DEBUG_JOB_ID": "1"})


class _SigintsAtStep(logging.Handler):
    """Sends this process ``n`` SIGINTs (back to back: as a terminal's and submitit's controller's
    arrive) when the trainer logs step 5."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def emit(self, record):
        if record.getMessage().startswith("step 5/"):
            for _ in range(self.n):
                os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("later", [False, True], ids=["forwarded", "later"])
def test_trainer_in_a_local_job_checkpoints_on_ctrl_c_or_stops_at_once_on_a_later_one(
    tmp_path, session_mlflow_dir, monkeypatch, later
):
    """`dit_core.train.train` in a local job: two SIGINTs at once (the terminal's and the one submitit's
    controller forwards) checkpoint at the next step boundary; a second SIGINT past `SIGINT_ECHO_S`
    (here: with the window closed) stops at once, without a checkpoint. Either way the run ends
    KILLED with ``status=interrupted``, the stop at once with its ``error`` tag."""
    from _train_helpers import one_thread, tiny_config
    from mlflow.tracking import MlflowClient

    import dit_core.trainer.loop as loop
    from dit_core.train import train

    if later:
        monkeypatch.setattr(loop, "SIGINT_ECHO_S", 0.0)
    uri = f"sqlite:///{session_mlflow_dir}/mlflow.db"
    exp = f"job-ctrl-c-trainer-{tmp_path.name}"
    cfg = tiny_config(
        tmp_path, steps=40, **{"checkpoint.every": 0, "tracking.uri": uri, "tracking.experiment": exp}
    )
    hook, before = _SigintsAtStep(2), signal.signal(signal.SIGINT, signal.default_int_handler)
    logger = logging.getLogger("dit_core.train")
    logger.addHandler(hook)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with one_thread():
            if later:
                with pytest.raises(KeyboardInterrupt):
                    train(cfg, local_job=True, progress_bar=False)
            else:
                res = train(cfg, local_job=True, progress_bar=False)
                assert (res.status, res.signal, res.step) == ("preempted", "SIGINT", 5)
    finally:
        logger.removeHandler(hook)
        logger.setLevel(old_level)
        signal.signal(signal.SIGINT, before)
    steps = [p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")]
    assert steps == ([] if later else ["step_0000005.pt"])
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "interrupted")
    assert run.data.tags.get("error", "").startswith("KeyboardInterrupt") == later
