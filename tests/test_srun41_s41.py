"""Session 41 (helper `srun41`): a rank of a 2-task SLURM cell that fails on its own data is named in the
cell's MLflow run, as under `accelerate launch` (tests/test_ranks2_s40.py), through the process group's
store that submitit's torch-distributed environment sets up (`dit_core.trainer.ranklog`).

The fault is real, with no hook in the library: the cell trains on a latents folder of two shards whose
second was cut short (an interrupted copy). The val split (the training folder: no ``data.val_root``)
spreads its examples over the sorted items, so rank 0 validates on the first shard and rank 1 on the
second, and rank 1's first validation (step 0) fails to open it while rank 0 waits in the all-reduce.
(An image folder cannot fail one rank: a file that fails to load is replaced by the next readable one.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from dit_core.checkpoint import load_checkpoint
from dit_core.data.latents import MANIFEST_FORMAT, shard_name
from sweeps.grid import DataSpec, ExecutorSpec, SweepSpec, expand
from sweeps.runner import launch, sweep_dir

pytestmark = pytest.mark.slow

SHARD = 8  # items per shard; 16 in all, the val split's 8 examples are items 0, 2, ..., 14


def _latents(root: Path) -> bytes:
    """``root``: 2 shards of 8 latents (4 x 8 x 8) of classes a, b; returns shard 1's bytes."""
    g = torch.Generator().manual_seed(0)
    root.mkdir()
    for k in range(2):
        lat = torch.randn(SHARD, 2, 4, 8, 8, generator=g)
        save_file({"latents": lat, "labels": torch.arange(SHARD) % 2}, str(root / shard_name(k)))
    manifest = {
        "format": MANIFEST_FORMAT, "version": 1, "vae": "none", "scale_factor": 1.0, "image_size": 64,
        "latent_shape": [4, 8, 8], "classes": ["a", "b"], "num_items": 2 * SHARD,
        "shards": [{"file": shard_name(k), "count": SHARD} for k in range(2)], "skipped": [],
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return (root / shard_name(1)).read_bytes()


def _spec(tmp_path: Path, uri: str, root: Path, executor: str) -> SweepSpec:
    """One cell (1 block, width 32, patch 4 on the 8 x 8 latents, batch 8, 6 steps) on 2 tasks,
    validating at steps 0, 4 and 6 on 8 examples, a checkpoint every 2 steps."""
    return SweepSpec(
        name="bad-shard", experiment=f"srun41-{tmp_path.name}", tracking_uri=uri,
        output_dir=str(tmp_path / "sweep"), families=[], shapes=[[1, 32, 2]], patch_sizes=[4],
        budgets=[3e7], batch_size=8, final_eval=False,
        data=DataSpec(name="latents", input_size=8, in_channels=4, num_classes=2, root=str(root)),
        train={"log_every": 1, "checkpoint.every": 2, "eval.val_every": 4, "eval.val_examples": 8},
        executor=ExecutorSpec(name=executor, tasks_per_node=2, timeout_min=10, mem_gb=4, signal_delay_s=30,
                              local_parallelism=1),
    )  # fmt: skip


@pytest.mark.timeout(600)
@pytest.mark.parametrize("executor", [pytest.param("slurm", marks=pytest.mark.slurm), "local"])
def test_a_rank_failing_on_its_val_shard_in_a_two_task_cell_is_named_and_a_relaunch_resumes(
    job_env, tmp_path, executor
):
    """Rank 1 of a 2-task cell (SLURM: one srun task per rank; local: submitit's local tasks) fails
    opening its val shard at step 0: the launch ends within seconds of the job (no rank waits for gloo's
    timeout), the cell failed (run FAILED, status tag failed), and the run's error names rank 1's own
    error first, "(on rank 1)", not only gloo's lost peer; the launcher's error for the cell (its FAILED
    line) is that tag, where it was rank 0's gloo error. With the shard whole again, a relaunch retries
    the cell into the same run: FINISHED on 2 ranks, attempt 2, the error kept as error.previous."""
    uri, root = job_env, tmp_path / "latents"
    whole = _latents(root)
    (root / shard_name(1)).write_bytes(whole[: len(whole) // 2])  # cut short: its header says more
    spec = _spec(tmp_path, uri, root, executor)
    (cell,) = expand(spec)
    t0 = time.monotonic()
    res = launch(spec, poll_s=0.5)
    took = time.monotonic() - t0
    assert cell.cell_id in res.errors, (res.errors, res.results)
    assert took < 240, f"the failed cell took {took:.0f} s: a rank waited for gloo's timeout?"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.experiment)
    (run,) = client.search_runs([exp.experiment_id], f"tags.sweep = '{spec.name}'")
    tags = run.data.tags
    assert (run.info.status, tags["status"], tags["executor"]) == ("FAILED", "failed", executor), tags
    error = tags["error"]
    assert error.startswith("SafetensorError: Error while deserializing header"), error
    assert " (on rank 1); rank 0 then stopped on " in error, error
    assert run.data.params["world_size"] == "2"
    # the launcher's FAILED line says the same (it said rank 0's gloo error: "Connection closed by peer")
    assert res.errors[cell.cell_id] == error

    (root / shard_name(1)).write_bytes(whole)  # the copy finished
    again = launch(spec, poll_s=0.5)
    assert again.errors == {}, again.errors
    # seen once (session 42): a lagging sacct called the failed job RUNNING, the relaunch skipped the
    # cell (tests/test_sacct_s42.py); the plan says why if it comes back
    assert cell.cell_id in again.results, (again.plan, again.job_ids)
    assert again.results[cell.cell_id]["step"] == cell.steps
    run = client.get_run(run.info.run_id)  # the same run: one per cell
    tags = run.data.tags
    assert (run.info.status, tags["status"], tags["attempts"]) == ("FINISHED", "finished", "2"), tags
    assert "error" not in tags and tags["error.previous"] == error
    vals = client.get_metric_history(run.info.run_id, "val/loss")
    assert sorted(m.step for m in vals) == [0, 4, 6]  # and at the last step
    ck = load_checkpoint(sweep_dir(spec) / "cells" / cell.cell_id)
    assert (ck["step"], ck["mlflow_run_id"]) == (cell.steps, run.info.run_id)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", [pytest.param("slurm", marks=pytest.mark.slurm), "local"])
def test_a_rank_failing_on_its_val_folder_before_training_is_named_in_the_cell_s_run(
    job_env, tmp_path, executor
):
    """With ``data.val_root`` the val folder is read when the trainer is built, before it takes the run
    over: rank 1 fails opening its shard there while rank 0 waits in the out-folder check's broadcast,
    and rank 1's job ends the run itself (`sweeps.executor.end_unstarted_run`: FAILED, status
    died_before_training). Its error tag was rank 1's error without its rank, and the launcher's line
    rank 0's gloo error; now the tag names the rank, "(on rank 1)", and the launcher's line repeats it."""
    uri = job_env
    _latents(tmp_path / "latents")
    whole = _latents(tmp_path / "val")
    (tmp_path / "val" / shard_name(1)).write_bytes(whole[: len(whole) // 2])
    spec = _spec(tmp_path, uri, tmp_path / "latents", executor)
    spec = spec.replace(train={**spec.train, "data.val_root": str(tmp_path / "val")})
    (cell,) = expand(spec)
    t0 = time.monotonic()
    res = launch(spec, poll_s=0.5)
    assert time.monotonic() - t0 < 240
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.experiment)
    (run,) = client.search_runs([exp.experiment_id], f"tags.sweep = '{spec.name}'")
    tags = run.data.tags
    assert (run.info.status, tags["status"]) == ("FAILED", "died_before_training"), tags
    error = tags["error"]
    assert error.startswith("SafetensorError: Error while deserializing header"), error
    assert error.endswith(" (on rank 1)"), error
    assert res.errors[cell.cell_id] == error
