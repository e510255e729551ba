"""A run's last step is checkpointed before its validation and evaluation: an evaluation that fails
there costs no training, and the relaunch runs only what was left, into the same MLflow run."""

from __future__ import annotations

import uuid

import pytest
from _train_helpers import assert_same_tensors, one_thread, tiny_config
from mlflow import MlflowClient

from dit_core.checkpoint import list_checkpoints, load_checkpoint
from dit_core.tracking import FIXED_COST_METRICS
from dit_core.train import Trainer, train
from dit_core.trainer import loop as trainer_loop

TINY = {"model.depth": 1, "model.hidden_size": 16, "model.num_heads": 2, "data.image_size": 8,
        "eval.val_examples": 8, "log_every": 2}  # fmt: skip
#: validation every 2 steps, sample metrics at step 3 and at the last step (5), checkpoints every 2
CHECKS = {"eval.val_every": 2, "eval.eval_every": 3, "eval.num_samples": 8, "eval.steps": 2,
          "eval.batch_size": 8, "eval.grid_images": 4, "eval.metrics": ["fid_digits"],
          "checkpoint.every": 2}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _cfg(out, experiment: str, **overrides):
    track = {"tracking.enabled": True, "tracking.experiment": experiment}
    return tiny_config(out, steps=5, batch=4, **{**TINY, **CHECKS, **track, **overrides})


def _points(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric point of a run, ``{key: [(step, value), ...]}`` sorted by step (duplicates kept)."""
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def _same_state(a: dict, b: dict, where: str) -> None:
    """The training state of two checkpoints is bitwise the same. Python's global RNG is left out: MLflow
    draws from it (run names) while a run with tracking starts, and no training step uses it."""
    for key in ("model", "ema", "optimizer", "data_position", "step", "ledger"):
        assert_same_tensors(a[key], b[key], f"{where}.{key}")
    for key in ("torch", "numpy"):
        assert_same_tensors(a["rng"][key], b["rng"][key], f"{where}.rng.{key}")


def test_a_failing_final_evaluation_keeps_the_last_step_and_the_relaunch_only_evaluates(
    tmp_path, monkeypatch
):
    """Run "ref" finishes; run "run" fails in its final evaluation (step 5), leaves a checkpoint of
    step 5 saying that step's validation and evaluation are due, and its relaunch trains nothing,
    logs the step-5 metrics once into the same run and finishes it: the same metrics and the same
    final state, bitwise, as "ref"."""
    client = MlflowClient()
    experiment = f"final-checks-{uuid.uuid4().hex[:8]}"
    ref = train(_cfg(tmp_path / "ref", experiment))
    assert ref.status == "finished"
    ref_points = _points(client, ref.run_id)
    for key, points in ref_points.items():  # a run whose final evaluation succeeds: one point per step
        assert len({s for s, _ in points}) == len(points), key
    assert [s for s, _ in ref_points["eval/fid_digits"]] == [3, 5]
    assert [s for s, _ in ref_points["val/loss"]] == [0, 2, 4, 5]

    real = trainer_loop.evaluate_samples
    calls = []

    def fails_at_the_last_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # step 3 is the first call, step 5 the second
            raise RuntimeError("the reference statistics are unreadable")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_loop, "evaluate_samples", fails_at_the_last_step)
    cfg = _cfg(tmp_path / "run", experiment)
    with pytest.raises(RuntimeError, match="reference statistics"):
        train(cfg)
    monkeypatch.setattr(trainer_loop, "evaluate_samples", real)
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    failed = client.get_run(run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["status"] == "failed"
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step_0000002.pt", "step_0000004.pt", "step_0000005.pt"]  # step 5 is kept
    kept = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000005.pt")
    assert kept["step"] == 5 and kept["loop"]["due"] == ["val", "eval"]
    assert [s for s, _ in _points(client, run_id)["eval/fid_digits"]] == [3]  # step 5's failed

    trained = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: (trained.append(self.step), step(self))[1])
    res = train(cfg)
    assert trained == []  # nothing retrained
    assert (res.status, res.step, res.run_id) == ("finished", 5, run_id)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    final = load_checkpoint(res.checkpoint)
    assert res.checkpoint.endswith("step_0000005.pt") and final["loop"]["due"] == []
    assert res.eval == pytest.approx(ref.eval, rel=1e-5) and res.val_loss == pytest.approx(ref.val_loss)
    assert load_checkpoint(ref.checkpoint)["loop"]["due"] == []

    points = _points(client, run_id)
    assert points.keys() == ref_points.keys()
    for key, ref_key_points in ref_points.items():
        steps = [s for s, _ in points[key]]
        assert steps == [s for s, _ in ref_key_points], key  # the same steps, each once
        if key not in FIXED_COST_METRICS and key != "perf/images_per_s":
            assert [v for _, v in points[key]] == pytest.approx([v for _, v in ref_key_points], rel=1e-5), key
    _same_state(final, load_checkpoint(ref.checkpoint), "step 5")
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == [
        "samples/step_0000003.png",
        "samples/step_0000005.png",
    ]


def test_a_relaunch_with_the_failing_evaluation_turned_off_just_finishes(tmp_path, monkeypatch):
    """The due checks follow the relaunch's config: with eval.eval_every 0 only the validation runs."""
    client = MlflowClient()
    cfg = _cfg(tmp_path / "run", f"final-checks-off-{uuid.uuid4().hex[:8]}")

    def fails(*args, **kwargs):
        raise RuntimeError("no reference")

    monkeypatch.setattr(trainer_loop, "evaluate_samples", fails)
    with pytest.raises(RuntimeError, match="no reference"):
        train(cfg.replace(**{"eval.eval_every": 5}))  # evaluates only at the last step
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000005.pt")["step"] == 5
    trained = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: (trained.append(self.step), step(self))[1])
    res = train(cfg.replace(**{"eval.eval_every": 0}))
    assert (res.status, res.step, res.eval, trained) == ("finished", 5, {}, [])
    assert load_checkpoint(res.checkpoint)["loop"]["due"] == []
    points = _points(client, res.run_id)
    assert [s for s, _ in points["val/loss"]] == [0, 2, 4, 5] and "eval/fid_digits" not in points
    assert client.get_run(res.run_id).info.status == "FINISHED"


def test_a_preemption_during_the_last_step_stops_before_its_checks_and_the_relaunch_runs_them(
    tmp_path, monkeypatch
):
    """SIGTERM while the last step trains: the run stops at that step boundary as promised (status
    preempted, SIGTERM; no long final evaluation in the grace period), its checkpoint says the step's
    validation and evaluation are due, and the relaunch trains nothing and runs just those."""
    import os
    import signal

    cfg = _cfg(tmp_path / "run", f"final-checks-preempt-{uuid.uuid4().hex[:8]}")
    evaluated, trained = [], []
    real_eval, step = trainer_loop.evaluate_samples, Trainer.train_step

    def evaluate(*args, **kwargs):
        evaluated.append(1)
        return real_eval(*args, **kwargs)

    def preempted_in_the_last_step(self):
        step(self)
        if self.step == self.total:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer_loop, "evaluate_samples", evaluate)
    monkeypatch.setattr(Trainer, "train_step", preempted_in_the_last_step)
    res = train(cfg)
    assert (res.status, res.step, res.signal, len(evaluated)) == ("preempted", 5, "SIGTERM", 1)  # step 3's
    assert load_checkpoint(res.checkpoint)["loop"]["due"] == ["val", "eval"]
    assert MlflowClient().get_run(res.run_id).info.status == "KILLED"

    monkeypatch.setattr(Trainer, "train_step", lambda self: (trained.append(self.step), step(self))[1])
    again = train(cfg)
    assert (again.status, again.step, again.run_id, trained) == ("finished", 5, res.run_id, [])
    assert len(evaluated) == 2 and load_checkpoint(again.checkpoint)["loop"]["due"] == []
    points = _points(MlflowClient(), res.run_id)
    assert [s for s, _ in points["val/loss"]] == [0, 2, 4, 5]
    assert [s for s, _ in points["eval/fid_digits"]] == [3, 5]


@pytest.mark.parametrize("during", ["step", "evaluation"])
def test_a_preemption_at_a_step_with_an_evaluation_due_stops_before_it_is_done_and_the_relaunch_runs_it(
    tmp_path, monkeypatch, during
):
    """SIGTERM while step 3 (sample metrics due, not the last step) trains, or between the sampling
    batches of its evaluation: the run stops there without finishing the evaluation (a FID can outlast
    SLURM's grace period), its checkpoint says step 3's evaluation is due, and the relaunch evaluates
    step 3 first and trains on: the same metric points, each once, and the same final state, bitwise,
    as an uninterrupted run."""
    import os
    import signal

    import dit_core.diffusion

    client = MlflowClient()
    experiment = f"mid-checks-preempt-{uuid.uuid4().hex[:8]}"
    two_batches = {"eval.batch_size": 4}  # 8 samples: the signal can come between two batches
    ref = train(_cfg(tmp_path / "ref", experiment, **two_batches))
    ref_points = _points(client, ref.run_id)

    cfg = _cfg(tmp_path / "run", experiment, **two_batches)
    evaluated, batches = [], []
    real_eval, step, real_sample = (
        trainer_loop.evaluate_samples,
        Trainer.train_step,
        dit_core.diffusion.sample,
    )

    def evaluate(*args, **kwargs):
        evaluated.append(1)
        return real_eval(*args, **kwargs)

    def preempted_in_step_3(self):
        step(self)
        if during == "step" and self.step == 3 and not evaluated:
            os.kill(os.getpid(), signal.SIGTERM)

    def sample(*args, **kwargs):  # the first sampling batch of the first evaluation gets the signal
        batches.append(1)
        if during == "evaluation" and len(batches) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(trainer_loop, "evaluate_samples", evaluate)
    monkeypatch.setattr(Trainer, "train_step", preempted_in_step_3)
    monkeypatch.setattr(dit_core.diffusion, "sample", sample)
    res = train(cfg)
    assert (res.status, res.step, res.signal) == ("preempted", 3, "SIGTERM")
    assert (len(evaluated), len(batches)) == ((0, 0) if during == "step" else (1, 1))  # not the 2nd batch
    assert load_checkpoint(res.checkpoint)["loop"]["due"] == ["eval"]
    assert "eval/fid_digits" not in _points(client, res.run_id)

    again = train(cfg)
    assert (again.status, again.step, again.run_id) == ("finished", 5, res.run_id)
    points = _points(client, res.run_id)
    for key, ref_key_points in ref_points.items():
        assert [s for s, _ in points[key]] == [s for s, _ in ref_key_points], key  # the same steps, each once
        if key not in FIXED_COST_METRICS and key != "perf/images_per_s":
            assert [v for _, v in points[key]] == pytest.approx([v for _, v in ref_key_points], rel=1e-5), key
    _same_state(load_checkpoint(again.checkpoint), load_checkpoint(ref.checkpoint), "step 5")
