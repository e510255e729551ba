"""Sweeps on the real single-node SLURM cluster (`bash slurm/slurm-ci.sh up`, accounting on).

Skipped with a reason where `sinfo` is absent or the cluster is down (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from _sweep_specs import fake_final_weight, fake_trainer_spec, runs_by_cell, tiny_real_spec
from mlflow.tracking import MlflowClient

from sweeps.grid import ExecutorSpec, SweepSpec, expand
from sweeps.runner import launch, sweep_dir
from sweeps.state import read_states

pytestmark = pytest.mark.slurm


def slurm_spec(tmp_path: Path, uri: str, **train) -> SweepSpec:
    return fake_trainer_spec(
        tmp_path, uri, name="slurm", experiment="slurm", budgets=[1.3e9, 2.6e9], train=train,
        executor=ExecutorSpec(name="slurm", timeout_min=10, array_parallelism=4, mem_gb=1, signal_delay_s=30),
    )  # fmt: skip


def cell_tags(uri: str, spec: SweepSpec, cell_id: str) -> dict[str, str]:
    """The tags of the cell's one MLflow run (its record: job id, folder, attempts, config hash)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.experiment)
    (run,) = client.search_runs(
        [exp.experiment_id], f"tags.sweep = '{spec.name}' and tags.grid_cell = '{cell_id}'"
    )
    return run.data.tags


def sacct_states(job: str, until: str, tasks: int, timeout_s: float = 30.0) -> list[str]:
    """States of the array's tasks from accounting, polled until all ``tasks`` are ``until`` (or
    timeout): a task's result pickle appears a moment before SLURM marks it COMPLETED, and until
    slurmdbd splits the array, sacct can show its pending tasks as one row."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job], capture_output=True, text=True
        ).stdout.split()
        states = [line.split("|")[1] for line in sorted(out)]
        if (len(states) == tasks and all(s == until for s in states)) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_2x2_grid_runs_as_one_array_lands_in_mlflow_and_relaunch_submits_nothing(job_env, tmp_path):
    spec = slurm_spec(tmp_path, job_env)
    cells = expand(spec)
    assert len(cells) == 4
    res = launch(spec, poll_s=1.0)
    assert res.errors == {}, res.errors
    arrays = {j.split("_")[0] for j in res.job_ids.values()}
    assert len(arrays) == 1 and sorted(j.split("_")[1] for j in res.job_ids.values()) == ["0", "1", "2", "3"]
    runs = runs_by_cell(job_env, spec.experiment)
    assert {k: len(v) for k, v in runs.items()} == {c.cell_id: 1 for c in cells}
    for c in cells:
        run = runs[c.cell_id][0]
        assert run.data.tags["status"] == "finished" and run.data.tags["executor_job_id"]
        assert res.results[c.cell_id]["weight"] == pytest.approx(fake_final_weight(c), rel=1e-12)
    assert sacct_states(arrays.pop(), until="COMPLETED", tasks=4) == ["COMPLETED"] * 4

    again = launch(spec, poll_s=1.0)
    assert again.submitted == [] and sorted(again.plan.finished) == sorted(c.cell_id for c in cells)
    assert {k: len(v) for k, v in runs_by_cell(job_env, spec.experiment).items()} == {
        c.cell_id: 1 for c in cells
    }


def test_relaunch_while_the_array_is_queued_or_running_submits_nothing(job_env, tmp_path):
    """Right after a --no-wait launch the array's tasks are pending or running (sacct may not know
    them yet: squeue answers then); a relaunch submits nothing and creates no MLflow run."""
    # each cell waits before its last step until the test has looked: B-2-1.3e9 has one step (0.3 s),
    # and could finish before the relaunch had read its state on a loaded machine
    release = tmp_path / "release"
    spec = slurm_spec(tmp_path, job_env, step_s=0.3, hold_file=str(release))
    cells = [c.cell_id for c in expand(spec)]
    first = launch(spec, wait=False)
    try:
        assert sorted(first.submitted) == sorted(cells)
        again = launch(spec, wait=False)
        assert again.submitted == [] and sorted(again.plan.running) == sorted(cells)
        run_dirs = {c: str(sweep_dir(spec) / "cells" / c) for c in cells}
        states = read_states(job_env, spec.experiment, spec.name, run_dirs)
        assert {s.state for s in states.values()} <= {"queued", "running"}
        runs = runs_by_cell(job_env, spec.experiment)
        assert {k: len(v) for k, v in runs.items()} == {c: 1 for c in cells}
        assert all(cell_tags(job_env, spec, c)["attempts"] == "1" for c in cells)
    finally:
        release.touch()
    deadline = time.monotonic() + 180
    while {s.state for s in read_states(job_env, spec.experiment, spec.name, run_dirs).values()} != {
        "finished"
    }:
        assert time.monotonic() < deadline, "the array did not finish"
        time.sleep(1.0)
    assert launch(spec, wait=False).submitted == []
    assert {k: len(v) for k, v in runs_by_cell(job_env, spec.experiment).items()} == {c: 1 for c in cells}


@pytest.mark.slow
def test_time_limit_requeues_and_resumes(job_env, tmp_path):
    """A real 2-minute SLURM time limit: USR2 45 s before it, checkpoint, requeue, resume."""
    step_s = 1.0
    spec = slurm_spec(tmp_path, job_env, step_s=step_s).replace(
        families=["S"], budgets=[3.5e10],
        # SLURM may send USR2 up to 60 s before the delay asks (sbatch --signal): 15-75 s after each
        # start (at --time 1 it once came 0.04 s in, before submitit's handler, and the job died).
        # Allow the requeues that takes (the default 3 failed the cell once in CI); the test is about
        # resuming, not the cap
        executor={"timeout_min": 2, "signal_delay_s": 45, "max_num_timeout": 10},
    )  # fmt: skip
    (cell,) = expand(spec)
    # more work than fits before the latest first USR2 (75 s after the start), with room for SLURM's
    # time-limit checks to run late on a loaded machine
    assert cell.steps * step_s > 75 + 30
    res = launch(spec, poll_s=1.0)
    assert res.errors == {}
    out = res.results[cell.cell_id]
    assert out["starts"] >= 2 and out["step"] == cell.steps
    assert out["weight"] == pytest.approx(fake_final_weight(cell), rel=1e-12)
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    assert run.data.tags["status"] == "finished"


def real_spec(tmp_path: Path, uri: str, name: str) -> SweepSpec:
    """One tiny cell through `dit_core.train` (1 block, width 32, patch 4 on 16 px, batch 8, ~1500 steps)."""
    return tiny_real_spec(
        tmp_path, uri, name, experiment="slurm-real", budget=2.5e10,
        train={"log_every": 50, "checkpoint.every": 100, "checkpoint.keep_last": 0},
        executor=ExecutorSpec(name="slurm", timeout_min=10, mem_gb=2, signal_delay_s=30),
    )  # fmt: skip


@pytest.mark.slow
def test_real_trainer_requeued_by_scancel_ends_with_the_uninterrupted_weights(job_env, tmp_path):
    """Two identical cells run side by side on SLURM; one gets USR2 mid-run, is requeued and resumes.
    Both must end with bit-identical weights, EMA and loss, and the interrupted one in one MLflow run."""
    import torch

    from dit_core.checkpoint import latest_checkpoint, load_checkpoint

    specs = {n: real_spec(tmp_path, job_env, n) for n in ("plain", "requeued")}
    (cell,) = expand(specs["plain"])
    assert cell.steps > 1000
    box: dict = {}
    threads = [
        threading.Thread(target=lambda n=n: box.setdefault(n, launch(specs[n], poll_s=1.0))) for n in specs
    ]
    for t in threads:
        t.start()
    run_dir = sweep_dir(specs["requeued"]) / "cells" / cell.cell_id
    deadline = time.monotonic() + 120
    while latest_checkpoint(run_dir) is None:
        assert time.monotonic() < deadline and threads[1].is_alive(), "the job wrote no checkpoint"
        time.sleep(0.2)
    job_id = cell_tags(job_env, specs["requeued"], cell.cell_id)["job_id"]  # the cell's record
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    for t in threads:
        t.join(240)
        assert not t.is_alive(), "a job did not finish"
    assert box["plain"].errors == {} and box["requeued"].errors == {}
    a, b = box["plain"].results[cell.cell_id], box["requeued"].results[cell.cell_id]
    assert a["step"] == b["step"] == cell.steps and a["train_loss"] == b["train_loss"]
    assert (
        "Restarts=1"
        in subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    )
    ca = load_checkpoint(sweep_dir(specs["plain"]) / "cells" / cell.cell_id)
    cb = load_checkpoint(run_dir)
    for key in ("model", "ema"):
        assert ca[key].keys() == cb[key].keys()
        for name in ca[key]:
            assert torch.equal(ca[key][name], cb[key][name]), f"{key}.{name} differs after the requeue"
    runs = runs_by_cell(job_env, specs["plain"].experiment)
    assert len(runs[cell.cell_id]) == 2  # one per sweep: the requeued cell continued its run
    for run in runs[cell.cell_id]:
        assert run.data.tags["status"] == "finished"
        hist = MlflowClient(job_env).get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in sorted(hist, key=lambda m: m.step)][-1] == cell.steps


def test_a_ladder_requeued_while_it_grows_its_trunk_ends_each_cell_as_its_schedule_from_step_0(
    job_env, tmp_path
):
    """`--ladder` on SLURM: two cells of one model in one array, both running at once, so one job grows
    the shared trunk while the other waits for its lock. Once the trunk has a checkpoint, both get USR2
    (as before a time limit): both are requeued, the trunk resumes from its checkpoint, and each cell
    ends in its one MLflow run at the val/loss of the same cell (its constant_cooldown schedule) trained
    from step 0 in one piece."""
    import torch

    from dit_core.config import TrainConfig
    from dit_core.train import train
    from sweeps.task import make_tasks

    cfg = {"log_every": 100, "checkpoint.every": 100, "eval.eval_every": 0, "eval.val_examples": 64}
    spec = tiny_real_spec(
        tmp_path, job_env, "ladder", experiment="slurm-ladder", budget=1e9, train=cfg,
        executor=ExecutorSpec(name="slurm", timeout_min=10, array_parallelism=2, mem_gb=2, signal_delay_s=30),
    )  # fmt: skip
    (probe,) = expand(spec)
    spec = spec.replace(budgets=[s * probe.batch_size * probe.train_flops_per_image for s in (500, 1000)])
    spec = spec.replace(ladder=True, final_eval=True)
    cells = expand(spec)
    tasks = make_tasks(spec, cells, sweep_dir(spec), job_env)
    trunk = tasks[cells[0].cell_id].trunk
    box: dict = {}
    th = threading.Thread(target=lambda: box.setdefault("result", launch(spec, poll_s=1.0)))
    th.start()
    deadline = time.monotonic() + 120
    while not (Path(trunk.run_dir) / "checkpoints" / "step_0000100.pt").is_file():
        assert time.monotonic() < deadline and th.is_alive(), "the trunk wrote no checkpoint"
        time.sleep(0.1)
    jobs = [cell_tags(job_env, spec, c.cell_id)["job_id"] for c in cells]
    for job in jobs:
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    th.join(300)
    assert not th.is_alive(), "the ladder did not finish"
    assert box["result"].errors == {}
    for job in jobs:
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert "Restarts=1" in shown, job
    runs = runs_by_cell(job_env, spec.experiment)
    torch.set_num_threads(1)
    for c in cells:
        (run,) = runs[c.cell_id]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        ref = {k: v for k, v in tasks[c.cell_id].overrides.items() if not k.startswith("tracking.")}
        ref |= {"tracking.enabled": False, "out": str(tmp_path / "ref" / c.cell_id)}
        want = train(TrainConfig().replace(**ref), progress_bar=False).val_loss
        assert run.data.metrics["val/loss"] == pytest.approx(want, rel=1e-6, abs=0)
