"""Session 39, the lead's own fixes: a run that finishes after a failed attempt."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import nan_loss_at, one_thread, tiny_config
from mlflow import MlflowClient

from dit_core.train import train


def test_a_run_finished_after_a_failed_attempt_keeps_the_error_only_as_error_previous(tmp_path, monkeypatch):
    """A NaN loss at step 7 fails the run (tag `error`); resumed without the fault, the same MLflow run
    finishes. Its `error` tag is gone (a finished run with an `error` reads as a failure in the MLflow
    UI's tag column and to scripts); the old message is kept as `error.previous`."""
    from dit_core.diffusion.gaussian import GaussianDiffusion

    cfg = tiny_config(tmp_path, steps=12, **{"checkpoint.every": 5, "log_every": 4})
    real = nan_loss_at(monkeypatch, 7)
    with one_thread(), pytest.raises(FloatingPointError, match="at step 7"):
        train(cfg)
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    client = MlflowClient()
    failed = client.get_run(run_id)
    assert (failed.info.status, failed.data.tags["status"]) == ("FAILED", "failed")
    error = failed.data.tags["error"]
    assert "step 7" in error
    monkeypatch.setattr(GaussianDiffusion, "training_losses", real)
    with one_thread():
        train(cfg)  # resume="auto": from the step-5 checkpoint
    assert (tmp_path / "mlflow_run_id").read_text().strip() == run_id
    done = client.get_run(run_id)
    assert (done.info.status, done.data.tags["status"]) == ("FINISHED", "finished")
    assert "error" not in done.data.tags
    assert done.data.tags["error.previous"] == error


@pytest.mark.parametrize("objective, sampler", [("eps", "ddim"), ("flow", "euler")])
def test_one_step_inversion_is_refused_because_one_step_sampling_forgets_its_noise(objective, sampler):
    """With the exact Gaussian oracle, one sampling step maps two very different noises to images
    closer than the data's own spread (it reads x_T as pure noise): no noise gives back a chosen x0, so
    `invert(steps=1)` is refused by name; two steps invert (the closed-form round trip elsewhere)."""
    from test_diffusion_analytic import SHAPE
    from test_diffusion_sampling import diffusion_and_oracle

    from dit_core.diffusion import invert, sample

    d, oracle = diffusion_and_oracle(objective)
    y = torch.zeros(2, dtype=torch.long)
    z = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    out = sample(oracle, d, z.shape, y, sampler=sampler, steps=1, noise=torch.stack([z[0], -z[0]]))
    assert (out[0] - out[1]).abs().max() < 0.25 * (z[0] - -z[0]).abs().max()  # the noise is forgotten
    x0 = torch.zeros(2, *SHAPE)
    with pytest.raises(ValueError, match=r"steps=1 cannot be inverted.*use steps >= 2"):
        invert(oracle, d, x0, y, sampler=sampler, steps=1)
    invert(oracle, d, x0, y, sampler=sampler, steps=2)
