"""A cooldown branched from a constant-lr trunk (Hagele et al. 2024, arXiv:2405.18392): a fork may change
the lr schedule where the lr of every step its checkpoint trained stays the same, and then ends bitwise
where the same schedule trained from step 0 ends. Any other schedule change in a fork is refused, naming
the first trained step whose lr it would change."""

from __future__ import annotations

import math
import uuid

import pytest
from _train_helpers import one_thread, tiny_config
from mlflow import MlflowClient
from test_resume_final_checks import TINY, _same_state

from dit_core.checkpoint import load_checkpoint
from dit_core.config import OptimConfig
from dit_core.configio import ConfigError
from dit_core.train import train
from dit_core.trainer.lr_schedule import first_lr_change

PEAK, WARMUP, FRAC = 3e-3, 2, 0.3
TRUNK = {"optim.lr": PEAK, "optim.warmup_steps": WARMUP, "optim.schedule": "constant"}
COOLDOWN = {**TRUNK, "optim.schedule": "constant_cooldown", "optim.cooldown_frac": FRAC,
            "optim.min_lr_ratio": 0.0}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _cfg(out, steps: int, schedule: dict, **extra):
    return tiny_config(out, steps=steps, batch=4, **{**TINY, "tracking.enabled": False, **schedule, **extra})


def test_first_lr_change_against_the_closed_form():
    """Constant vs a 10-step cooldown schedule (cooldown ceil(0.3 x 10) = 3 steps, from step 7): equal
    over steps 0-6; step 7 is the cooldown's first, at peak x (1 - 1/3). A peak that follows the budget
    (lr_flops_ref) differs from step 0, where the warmup gives peak / 2."""
    trunk, cool = OptimConfig(**_optim(TRUNK)), OptimConfig(**_optim(COOLDOWN))
    kw = {"hidden_size": 16, "flops_per_step": 1.0}
    assert first_lr_change(trunk, 7, cool, 10, 7, **kw) is None
    step, old, new = first_lr_change(trunk, 7, cool, 10, 10, **kw)
    assert step == 7 and old == PEAK and math.isclose(new, PEAK * (1 - 1 / 3), rel_tol=1e-15)
    by_budget = OptimConfig(**_optim(TRUNK), lr_flops_ref=5.0, lr_flops_exponent=0.5)
    step, old, new = first_lr_change(by_budget, 5, by_budget, 20, 3, **kw)
    assert step == 0 and old == PEAK / WARMUP and math.isclose(new, PEAK * 0.5 / WARMUP, rel_tol=1e-15)


def _optim(flat: dict) -> dict:
    return {k.removeprefix("optim."): v for k, v in flat.items()}


def test_a_cooldown_forked_from_a_constant_trunk_ends_where_the_cooldown_run_from_step_0_ends(tmp_path):
    """Trunk: constant lr to step 7. Branch: its step-7 checkpoint forked with the 10-step cooldown
    schedule, in a new MLflow run that logs the branch's schedule. Its step-10 training state is bitwise
    that of the cooldown schedule trained from step 0, and so is its validation loss."""
    client, experiment = MlflowClient(), f"cooldown-{uuid.uuid4().hex[:8]}"
    tracked = {"tracking.enabled": True, "tracking.experiment": experiment, "eval.val_every": 100}
    train(_cfg(tmp_path / "trunk", 7, TRUNK))
    trunk7 = tmp_path / "trunk" / "checkpoints" / "step_0000007.pt"
    branch = train(_cfg(tmp_path / "branch", 10, COOLDOWN, **tracked), resume=str(trunk7))
    whole = train(_cfg(tmp_path / "whole", 10, COOLDOWN, **tracked))
    assert branch.step == whole.step == 10 and branch.run_id != whole.run_id
    _same_state(load_checkpoint(branch.checkpoint), load_checkpoint(whole.checkpoint), "step 10")
    runs = {r: client.get_run(r).data for r in (branch.run_id, whole.run_id)}
    assert [runs[r].params["optim.schedule"] for r in runs] == ["constant_cooldown"] * 2
    assert runs[branch.run_id].metrics["val/loss"] == runs[whole.run_id].metrics["val/loss"]


@pytest.mark.parametrize(
    ("fork_at", "schedule", "changed_step"),
    [
        (8, COOLDOWN, 7),
        (4, {**TRUNK, "optim.schedule": "cosine"}, 3),
        (4, {**TRUNK, "optim.lr": PEAK * 1.001}, 0),
    ],
    ids=["after-the-cooldown-starts", "cosine", "a-peak-0.1%-higher"],
)
def test_a_fork_whose_schedule_changes_a_trained_steps_lr_is_refused(
    tmp_path, fork_at, schedule, changed_step
):
    """A fork past the cooldown's first step, a cosine branch (it decays from the second step after the
    warmup) and a peak 0.1 % higher would each give a trained step another lr: refused, naming that
    step, before anything is written."""
    train(_cfg(tmp_path / "trunk", 8, TRUNK, **{"checkpoint.every": 2}))
    ckpt = tmp_path / "trunk" / "checkpoints" / f"step_{fork_at:07d}.pt"
    said = rf"step {changed_step} \(the checkpoint is at step {fork_at}\) was trained at lr"
    with pytest.raises(ConfigError, match=rf"was written by a different config \(optim\..*{said}"):
        train(_cfg(tmp_path / "branch", 10, schedule), resume=str(ckpt))
    assert not (tmp_path / "branch" / "checkpoints").exists()


def test_a_run_continued_in_its_own_folder_keeps_its_schedule(tmp_path):
    """Only a fork (a new MLflow run) may change the schedule: the trunk's own folder, continued with the
    cooldown schedule, is refused as before (its run's params are written once)."""
    train(_cfg(tmp_path / "trunk", 7, TRUNK))
    with pytest.raises(ConfigError, match=r"optim.schedule: 'constant' -> 'constant_cooldown'.*new --out"):
        train(_cfg(tmp_path / "trunk", 10, COOLDOWN))
