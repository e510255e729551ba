"""The sweep machinery on submitit's local executor: completion, idempotent relaunch, retries, requeue.

Jobs run `tests/test_sweeps_fake_trainer.py` (the trainer contract with a deterministic recurrence
instead of a DiT) so that these checks take seconds; `test_real_trainer_cell` runs one tiny cell
through `dit_core.train`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.families import Scale
from sweeps.grid import ExecutorSpec, SweepSpec, expand
from sweeps.ledger import Ledger
from sweeps.runner import launch, sweep_dir
from sweeps.state import read_states


def small_spec(tmp_path: Path, uri: str, **train) -> SweepSpec:
    """S and B (demo scale), patch 2, one budget: S trains 8 steps, B 2 steps (batch 8)."""
    return SweepSpec(
        name="t",
        experiment=f"sweep-test-{tmp_path.name}",
        tracking_uri=uri,
        output_dir=str(tmp_path / "runs"),
        families=["S", "B"],
        budgets=[2.6e9],
        batch_size=8,
        trainer="test_sweeps_fake_trainer",
        final_eval=False,
        train={"step_s": 0.01, **train},
        scale=Scale(8, 4),
        executor=ExecutorSpec(name="local", local_parallelism=2, max_retries=1),
    )


def runs_by_cell(uri: str, experiment: str) -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id]):
        out.setdefault(r.data.tags["grid_cell"], []).append(r)
    return out


def test_local_sweep_completes_then_relaunch_submits_nothing(job_env, tmp_path):
    spec = small_spec(tmp_path, job_env)
    cells = expand(spec)
    assert [c.steps for c in cells] == [8, 2]

    res = launch(spec, poll_s=0.3)
    assert res.errors == {}
    assert sorted(res.submitted) == sorted(c.cell_id for c in cells)
    runs = runs_by_cell(job_env, spec.experiment)
    assert sorted(runs) == sorted(c.cell_id for c in cells)
    client = MlflowClient(job_env)
    for c in cells:
        (run,) = runs[c.cell_id]  # exactly one run per cell
        assert run.data.tags["status"] == "finished" and run.data.tags["sweep"] == "t"
        hist = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in hist) == list(range(1, c.steps + 1))
        # the job's result is the trainer's: w_k = target * (1 - 0.9^k)
        target = 1.0 + c.model.hidden_size / 100.0
        assert res.results[c.cell_id]["weight"] == pytest.approx(target * (1 - 0.9**c.steps))

    again = launch(spec, poll_s=0.3)
    assert again.submitted == [] and sorted(again.plan.finished) == sorted(c.cell_id for c in cells)
    assert {k: len(v) for k, v in runs_by_cell(job_env, spec.experiment).items()} == {
        c.cell_id: 1 for c in cells
    }
    assert all(Ledger.load(sweep_dir(spec)).attempts(c.cell_id) == 1 for c in cells)
    # the same cell ids with other settings would resume checkpoints under a different config
    with pytest.raises(ValueError, match=r"launched with other settings \(budget.global_batch_size: 8 -> 4"):
        launch(spec.replace(batch_size=4))


def test_failed_cell_is_retried_in_the_same_run_up_to_the_limit(job_env, tmp_path):
    spec = small_spec(tmp_path, job_env, fail_cell="B-2-2.6e9", fail_times=2).replace(families=["B"])
    first = launch(spec, poll_s=0.3)
    assert list(first.errors) == ["B-2-2.6e9"] and "injected failure" in first.errors["B-2-2.6e9"]
    ledger = Ledger.load(sweep_dir(spec))
    states = read_states(job_env, spec.experiment, spec.name, ["B-2-2.6e9"], ledger)
    assert states["B-2-2.6e9"].state == "failed" and states["B-2-2.6e9"].attempts == 1

    second = launch(spec, poll_s=0.3)  # retry 1 of max_retries=1: fails again (fail_times=2)
    assert second.submitted == ["B-2-2.6e9"] and list(second.errors) == ["B-2-2.6e9"]
    third = launch(spec, poll_s=0.3)  # out of retries: nothing submitted
    assert third.submitted == [] and third.plan.exhausted == ["B-2-2.6e9"]

    fourth = launch(spec.replace(executor={"max_retries": 2}), poll_s=0.3)  # allowed again: succeeds
    assert fourth.submitted == ["B-2-2.6e9"] and fourth.errors == {}
    runs = runs_by_cell(job_env, spec.experiment)
    assert len(runs["B-2-2.6e9"]) == 1  # every retry continued the cell's one MLflow run
    assert runs["B-2-2.6e9"][0].data.tags["status"] == "finished"
    assert fourth.results["B-2-2.6e9"]["starts"] == 3
    assert Ledger.load(sweep_dir(spec)).attempts("B-2-2.6e9") == 3


def test_preempted_local_job_requeues_and_resumes_to_the_same_result(job_env, tmp_path):
    """USR2 mid-run: checkpoint, requeue by submitit's local controller, resume, same final state."""
    progress = tmp_path / "progress"
    spec = small_spec(tmp_path, job_env, step_s=0.1, progress_file=str(progress)).replace(
        families=["S"], budgets=[1e10]
    )
    (cell,) = expand(spec)
    assert cell.steps == 31
    import threading

    res_box = {}
    t = threading.Thread(target=lambda: res_box.setdefault("r", launch(spec, poll_s=0.3)))
    t.start()
    deadline = time.monotonic() + 60
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 5):
        assert time.monotonic() < deadline, "job never made progress"
        time.sleep(0.1)
    job_id = Ledger.load(sweep_dir(spec)).last(cell.cell_id).job_id
    os.kill(_task_pid(int(job_id)), 12)  # SIGUSR2 to the task, as SLURM does before a time limit
    t.join(90)
    res = res_box["r"]
    assert res.errors == {}
    out = res.results[cell.cell_id]
    assert out["starts"] == 2 and out["step"] == cell.steps
    target = 1.0 + cell.model.hidden_size / 100.0
    assert out["weight"] == pytest.approx(target * (1 - 0.9**cell.steps), rel=1e-12)
    (run,) = runs_by_cell(job_env, spec.experiment)[cell.cell_id]
    hist = MlflowClient(job_env).get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in hist) == list(range(1, cell.steps + 1))


def _task_pid(controller_pid: int) -> int:
    """The python task process started by submitit's local controller."""
    children = Path(f"/proc/{controller_pid}/task/{controller_pid}/children").read_text().split()
    assert children, "local controller has no task process"
    return int(children[0])
