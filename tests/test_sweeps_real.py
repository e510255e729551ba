"""One tiny grid through the real trainer (`dit_core.train`) on submitit's local executor."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.grid import ExecutorSpec, SweepSpec, expand
from sweeps.runner import launch, sweep_dir
from sweeps.state import read_states


def tiny_spec(tmp_path: Path, uri: str) -> SweepSpec:
    """Two custom shapes (1 and 2 blocks, width 32, 2 heads), patch 4 on 16 px digits, batch 8."""
    return SweepSpec(
        name="real",
        experiment=f"real-{tmp_path.name}",
        tracking_uri=uri,
        output_dir=str(tmp_path / "runs"),
        families=[],
        shapes=[[1, 32, 2], [2, 32, 2]],
        patch_sizes=[4],
        budgets=[3e8],
        batch_size=8,
        final_eval=False,
        train={"log_every": 1, "checkpoint.every": 2, "eval.val_every": 3, "eval.val_examples": 16},
        executor=ExecutorSpec(name="local", local_parallelism=2),
    )


@pytest.mark.slow
def test_tiny_grid_through_the_real_trainer(tmp_path, job_env):
    uri = job_env
    spec = tiny_spec(tmp_path, uri)
    cells = expand(spec)
    assert [c.cell_id for c in cells] == ["d1w32h2-4-3e8", "d2w32h2-4-3e8"]
    res = launch(spec, poll_s=0.5)
    assert res.errors == {}, res.errors
    client = MlflowClient(uri)
    run_dirs = {c.cell_id: str(sweep_dir(spec) / "cells" / c.cell_id) for c in cells}
    states = read_states(uri, spec.experiment, spec.name, run_dirs)
    for c in cells:
        st = states[c.cell_id]
        assert st.state == "finished" and st.duplicates == 0
        run = client.get_run(st.run_id)
        p = run.data.params
        assert (int(p["model.depth"]), int(p["model.hidden_size"]), int(p["model.patch_size"])) == (
            c.model.depth, 32, 4,
        )  # fmt: skip
        assert int(p["model.params"]) == c.params and int(p["budget.max_steps"]) == c.steps
        assert float(p["budget.train_flops"]) == c.budget
        assert run.data.tags["sweep"] == "real" and run.data.tags["grid_cell"] == c.cell_id
        hist = client.get_metric_history(st.run_id, "train/loss")
        assert sorted(m.step for m in hist) == list(range(1, c.steps + 1))
        flops = client.get_metric_history(st.run_id, "compute/train_flops")
        assert max(m.value for m in flops) == pytest.approx(c.train_flops, rel=1e-9)
        assert res.results[c.cell_id]["step"] == c.steps
    again = launch(spec, poll_s=0.5)
    assert again.submitted == []


@pytest.mark.slow
def test_two_tasks_per_cell_train_as_one_distributed_run(tmp_path, job_env):
    """tasks_per_node=2: submitit's environment becomes torch-distributed (gloo on CPU), world size 2."""
    uri = job_env
    spec = tiny_spec(tmp_path, uri).replace(
        name="ddp", shapes=[[1, 32, 2]], executor={"tasks_per_node": 2, "local_parallelism": 1}
    )
    (cell,) = expand(spec)
    res = launch(spec, poll_s=0.5)
    assert res.errors == {}, res.errors
    assert res.results[cell.cell_id]["step"] == cell.steps
    (run,) = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name(spec.experiment).experiment_id], "tags.sweep = 'ddp'"
    )
    assert run.data.params["world_size"] == "2" and run.data.tags["status"] == "finished"
    assert int(run.data.params["budget.global_batch_size"]) == 8  # split 4 + 4 over the two ranks
