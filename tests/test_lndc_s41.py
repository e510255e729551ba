"""Session 41 (lndc): a non-finite validation loss stops the run like a non-finite training loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import one_thread, tiny_config
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from dit_core.checkpoint import list_checkpoints, load_checkpoint
from dit_core.data.latents import MANIFEST_FORMAT, shard_name
from dit_core.train import Trainer, train


def _latents_folder(root, latents: torch.Tensor, labels: torch.Tensor) -> str:
    """A latents folder of one shard: ``latents`` (n, 2, C, h, w), ``labels`` (n,), classes a and b."""
    root.mkdir()
    save_file({"latents": latents.contiguous(), "labels": labels}, str(root / shard_name(0)))
    manifest = {
        "format": MANIFEST_FORMAT, "version": 1, "vae": "none", "scale_factor": 1.0, "image_size": 32,
        "latent_shape": list(latents.shape[2:]), "classes": ["a", "b"], "num_items": len(labels),
        "shards": [{"file": shard_name(0), "count": len(labels)}], "skipped": [],
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


def _config(tmp_path, poisoned: bool, **overrides):
    """A depth-1 DiT on 4x4x4 latents, 8 steps of 4, validation on 8 of the val folder's 16 latents,
    one of which (``poisoned``) holds an inf, as an fp16 VAE's overflow would leave it."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 2
    train_root = tmp_path / "train"
    if not train_root.exists():
        _latents_folder(train_root, torch.randn(16, 2, 4, 4, 4, generator=g), labels)
    val = torch.randn(16, 2, 4, 4, 4, generator=g)
    if poisoned:
        val[4, :, 0, 0, 0] = float("inf")  # item 4: among the 8 spread over the 16
    val_root = _latents_folder(tmp_path / ("poisoned" if poisoned else "val"), val, labels)
    return tiny_config(
        tmp_path / "run", steps=8, batch=4,
        **{"data.name": "latents", "data.root": str(train_root), "data.val_root": val_root,
           "data.image_size": 32, "model.depth": 1, "model.hidden_size": 16, "model.patch_size": 2,
           "eval.val_every": 2, "eval.val_examples": 8, "checkpoint.every": 2, "log_every": 2, **overrides},
    )  # fmt: skip


def _failed_with(out, message: str) -> None:
    """The run in ``out`` is FAILED, its error tag ``message``, and logged no val/loss at all."""
    client = MlflowClient()
    run = client.get_run((out / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert run.data.tags["error"] == f"FloatingPointError: {message}"
    assert not client.get_metric_history(run.info.run_id, "val/loss")


def test_a_non_finite_validation_loss_at_step_0_stops_the_run_and_fails_it(tmp_path):
    """Training is finite, validation is not: the run used to log val/loss inf and finish, a run whose
    final loss a fit would take (or drop, silently). Now it stops at the first validation (step 0) with
    the training loss's FloatingPointError (exit 1 from the CLI; the MLflow run FAILED, its error tag
    saying "non-finite", as the sweeps' retry advice and the analysis's divergence rule read it)."""
    cfg = _config(tmp_path, poisoned=True)
    with one_thread(), pytest.raises(FloatingPointError) as err:
        train(cfg)
    assert str(err.value) == (
        "non-finite validation loss val/loss (nan) at step 0; the run stopped and kept its last good "
        "checkpoint (none yet). The validation data may hold non-finite values, or the model overflow on "
        "it: check data.val_root (or the val split), or use bf16 instead of fp16"
    )
    assert not list_checkpoints(cfg.out)
    _failed_with(tmp_path / "run", str(err.value))


def test_a_non_finite_validation_loss_mid_run_keeps_the_last_good_checkpoint(tmp_path):
    """Resumed at step 4 with a val folder of which one latent is inf: the validation of step 6 stops
    the run before step 6's checkpoint, so step 4's (finite weights) is the newest, named in the error."""
    with one_thread():
        res = Trainer(_config(tmp_path, poisoned=False)).run(stop_at_step=4)
        assert (res.status, res.step) == ("preempted", 4)
        with pytest.raises(FloatingPointError) as err:
            train(_config(tmp_path, poisoned=True))
    newest = list_checkpoints(tmp_path / "run")[-1]
    assert newest.name == "step_0000004.pt"
    assert str(err.value).startswith(
        f"non-finite validation loss val/loss (nan) at step 6; the run stopped and kept its last good "
        f"checkpoint ({newest})."
    )
    assert all(torch.isfinite(t).all() for t in load_checkpoint(newest)["model"].values())
    client = MlflowClient()
    run = client.get_run((tmp_path / "run" / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FAILED" and "non-finite validation loss" in run.data.tags["error"]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/loss")) == [0, 2, 4]


def test_a_non_finite_validation_after_a_non_finite_training_loss_names_the_training_loss(tmp_path):
    """Weights gone NaN between two logs make the validation NaN too: the error names the training loss
    (the cause, with its lr advice), not the validation data."""
    with one_thread():
        tr = Trainer(_config(tmp_path, poisoned=False, **{"tracking.enabled": False}))
        tr.step, tr.pending = 3, [torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(2.0)]
        tr.validator = lambda models: dict.fromkeys(models, float("nan"))
        with pytest.raises(FloatingPointError, match=r"^non-finite training loss \(nan\) at step 2 "):
            tr.validate()
        tr.pending = []
        with pytest.raises(
            FloatingPointError, match=r"^non-finite validation loss val/loss \(nan\) at step 3"
        ):
            tr.validate()


@pytest.mark.timeout(200)
def test_two_processes_stop_together_on_a_non_finite_validation_loss(tmp_path):
    """The validation loss is all-reduced, so both ranks of a 2-process run (gloo on CPU, the CLI under
    ``accelerate launch``) find it non-finite at step 0 and stop with the same error: each exits 1
    through the CLI, none is left waiting in a collective, and the run's error tag names it once."""
    cfg = _config(tmp_path, poisoned=True)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "--num_processes", "2", "-m", "dit_core.train"]  # fmt: skip
    flags = ["--data", "latents", "--data-root", cfg.data.root, "--data.val_root", cfg.data.val_root,
             "--model", "none", "--depth", "1", "--width", "16", "--heads", "2", "--patch-size", "2",
             "--max-steps", "8", "--batch-size", "4", "--val-every", "2", "--val-examples", "8",
             "--experiment", "test-train", "--out", str(cfg.out)]  # fmt: skip
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=repo)
    proc = subprocess.run([*launch, *flags], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.count("non-finite validation loss val/loss (nan) at step 0") == 2, proc.stderr[-3000:]
    assert proc.stderr.count("exitcode  : 1 (pid") == 2 or "exitcode  : 1" in proc.stderr, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.split("ERROR dit_core.train: ", 1)[1].splitlines()[0]
    _failed_with(Path(cfg.out), message)
