"""Faults on purpose on the real single-node SLURM cluster (`SLURM_CI_ACCOUNTING=1 SLURM_CI_CPUS=4
bash slurm/slurm-ci.sh up`): a 2-task cell trains as one distributed run equal to 1 process.
(The node-DOWN requeue test is in tests/test_faults_slurm_down.py.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from _sweep_specs import tiny_real_spec
from mlflow.tracking import MlflowClient

from dit_core.checkpoint import load_checkpoint
from sweeps.grid import ExecutorSpec, SweepSpec, expand
from sweeps.runner import launch, sweep_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _spec(tmp_path: Path, uri: str, name: str, tasks: int = 1, budget: float = 3e8, **train) -> SweepSpec:
    """One tiny cell through `dit_core.train` (1 block, width 32, patch 4 on 16 px digits, batch 8)."""
    return tiny_real_spec(
        tmp_path, uri, name, experiment="faults-slurm", budget=budget,
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
    (two,) = _runs(uri, specs["two"])
    job = two.data.tags["job_id"]  # the cell's record: its MLflow run
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
