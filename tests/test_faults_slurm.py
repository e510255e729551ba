"""Faults on purpose on the real single-node SLURM cluster (`SLURM_CI_ACCOUNTING=1 SLURM_CI_CPUS=4
bash slurm/slurm-ci.sh up`): a 2-task cell trains as one distributed run equal to 1 process, and a
cell whose node is set DOWN mid-run is requeued and finishes. Figures: docs/testing-faults.md.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from dit_core.checkpoint import latest_checkpoint, load_checkpoint
from sweeps.grid import ExecutorSpec, SweepSpec, expand
from sweeps.ledger import Ledger
from sweeps.runner import launch, sweep_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _spec(tmp_path: Path, uri: str, name: str, tasks: int = 1, budget: float = 3e8, **train) -> SweepSpec:
    """One tiny cell through `dit_core.train` (1 block, width 32, patch 4 on 16 px digits, batch 8)."""
    return SweepSpec(
        name=name,
        experiment=f"faults-slurm-{tmp_path.name}",
        tracking_uri=uri,
        output_dir=str(tmp_path / name),
        families=[],
        shapes=[[1, 32, 2]],
        patch_sizes=[4],
        budgets=[budget],
        batch_size=8,
        final_eval=False,
        train={"log_every": 1, "checkpoint.every": 2, **train},
        executor=ExecutorSpec(name="slurm", tasks_per_node=tasks, timeout_min=10, mem_gb=2 * tasks,
                              signal_delay_s=30),
    )  # fmt: skip


def _runs(uri: str, spec: SweepSpec) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.experiment)
    return client.search_runs([exp.experiment_id], f"tags.sweep = '{spec.name}'")


def _scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def test_two_task_slurm_cell_is_one_distributed_run_equal_to_one_process(job_env, tmp_path):
    """tasks_per_node=2 on SLURM: 2 gloo ranks split the batch of 8; one MLflow run (world_size 2);
    weights equal the 1-task cell's up to the all-reduce order, losses likewise."""
    uri = job_env
    specs = {n: _spec(tmp_path, uri, n, tasks=t) for n, t in (("one", 1), ("two", 2))}
    results = {n: launch(s, poll_s=0.5) for n, s in specs.items()}
    (cell,) = expand(specs["one"])
    for n, res in results.items():
        assert res.errors == {}, f"{n}: {res.errors}"
        assert res.results[cell.cell_id]["step"] == cell.steps
    job = Ledger.load(sweep_dir(specs["two"])).last(cell.cell_id).job_id
    assert "NumTasks=2" in _scontrol_job(job).split()
    (r1,), (r2,) = _runs(uri, specs["one"]), _runs(uri, specs["two"])
    assert (r1.data.params["world_size"], r2.data.params["world_size"]) == ("1", "2")
    assert r2.data.tags["status"] == "finished" and r2.data.tags["executor"] == "slurm"
    c1 = load_checkpoint(sweep_dir(specs["one"]) / "cells" / cell.cell_id)
    c2 = load_checkpoint(sweep_dir(specs["two"]) / "cells" / cell.cell_id)
    assert c1["ledger"] == c2["ledger"] and c1["data_position"] == c2["data_position"]
    for key in ("model", "ema"):
        for name, t in c1[key].items():
            torch.testing.assert_close(c2[key][name], t, atol=2e-6, rtol=0, msg=f"{key}.{name}")
    client = MlflowClient(uri)
    h1 = {m.step: m.value for m in client.get_metric_history(r1.info.run_id, "train/loss")}
    h2 = [(m.step, m.value) for m in client.get_metric_history(r2.info.run_id, "train/loss")]
    assert sorted(s for s, _ in h2) == list(range(1, cell.steps + 1))  # each step once
    assert all(abs(h1[s] - v) < 1e-5 for s, v in h2)


def _node() -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()[0]


def test_cell_on_a_node_set_down_is_requeued_and_finishes(job_env, tmp_path, artifacts_dir):
    """Mid-run (after a checkpoint) the node is set DOWN: SLURM kills the job and requeues it; when
    the node is back the job resumes from its checkpoint and finishes in the same MLflow run."""
    others = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    if others:
        pytest.skip(
            f"SLURM is running other jobs ({', '.join(others)}); setting the node DOWN would kill them"
        )
    uri = job_env
    spec = _spec(tmp_path, uri, "down", budget=2.5e10, log_every=50, **{"checkpoint.every": 100})
    (cell,) = expand(spec)
    assert cell.steps > 1000
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("res", launch(spec, poll_s=1.0)))
    thread.start()
    run_dir = sweep_dir(spec) / "cells" / cell.cell_id
    node = _node()
    t0 = time.monotonic()
    try:
        while latest_checkpoint(run_dir) is None:
            assert time.monotonic() - t0 < 180 and thread.is_alive(), "the job wrote no checkpoint"
            time.sleep(0.2)
        step_at_down = load_checkpoint(run_dir)["step"]
        job = Ledger.load(sweep_dir(spec)).last(cell.cell_id).job_id
        subprocess.run(
            ["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=faults-test"], check=True
        )
        t_down = time.monotonic()
        deadline = t_down + 60
        while "JobState=RUNNING" in _scontrol_job(job) and time.monotonic() < deadline:
            time.sleep(0.2)
        state_when_down = next(w for w in _scontrol_job(job).split() if w.startswith("JobState="))
    finally:
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=True)
    t_resume = time.monotonic()
    thread.join(300)
    assert not thread.is_alive(), "the requeued job did not finish"
    res = box["res"]
    assert res.errors == {}, res.errors
    out = res.results[cell.cell_id]
    assert out["step"] == cell.steps
    info = _scontrol_job(job)
    restarts = int(next(w for w in info.split() if w.startswith("Restarts=")).split("=")[1])
    assert restarts >= 1, info
    (run,) = _runs(uri, spec)
    assert run.data.tags["status"] == "finished"
    hist = MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")
    steps = sorted(m.step for m in hist)
    assert steps == sorted(set(steps)) and steps[-1] == cell.steps
    assert steps == [*range(50, cell.steps + 1, 50)] + ([cell.steps] if cell.steps % 50 else [])
    figures = {
        "steps": cell.steps,
        "checkpoint_step_at_down": step_at_down,
        "job_state_after_down": state_when_down,
        "node_down_s": round(t_resume - t_down, 1),
        "restarts": restarts,
        "finished_s_after_resume": round(time.monotonic() - t_resume, 1),
        "mlflow_runs": 1,
    }
    (artifacts_dir / "faults_slurm_down.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
