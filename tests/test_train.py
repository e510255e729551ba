"""End-to-end tests of `dit_core.train.train` on a tiny DiT (depth 2, width 32) on 16 px digits."""

from __future__ import annotations

import math

import pytest
import torch
from _train_helpers import metric_history as _history
from _train_helpers import nan_loss_at, one_thread, read_until, tiny_config
from mlflow import MlflowClient

from dit_core.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from dit_core.spec import train_flops_per_image
from dit_core.train import Trainer, train


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    """Run A: 40 steps. Run B: stopped at step 17 (mid log interval), resumed, finished to 40.
    Same final weights, EMA and optimizer state, same logged losses, one MLflow run."""
    a = train(tiny_config(tmp_path / "a", **{"eval.val_every": 10}))
    cfg_b = tiny_config(tmp_path / "b", **{"eval.val_every": 10})
    b1 = train(cfg_b, stop_at_step=17)
    assert b1.status == "preempted" and b1.step == 17
    assert latest_checkpoint(tmp_path / "b").name == "step_0000017.pt"
    b2 = train(cfg_b)
    assert (a.status, b2.status, b2.step) == ("finished", "finished", 40)
    assert b2.run_id == b1.run_id != a.run_id  # continued the same MLflow run

    ca, cb = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for key in ("model", "ema"):
        for name, t in ca[key].items():
            assert torch.equal(t, cb[key][name]), f"{key}.{name} differs after resume"
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ca["ledger"] == cb["ledger"] and ca["data_position"] == cb["data_position"]

    client = MlflowClient()
    for key in ("train/loss", "val/loss", "compute/train_flops", "data/images_seen"):
        ha, hb = _history(client, a.run_id, key), _history(client, b2.run_id, key)
        assert ha == hb, key
    assert sorted(_history(client, a.run_id, "train/loss")) == [5, 10, 15, 20, 25, 30, 35, 40]
    runs = client.search_runs(
        [client.get_experiment_by_name("test-train").experiment_id],
        filter_string=f"attributes.run_id = '{b2.run_id}'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["status"] == "finished"


def test_flops_budget_and_ledger(tmp_path):
    """steps = floor(budget / (train FLOPs per image * batch)); the ledger counts true FLOPs."""
    cfg = tiny_config(tmp_path, steps=None, batch=8, **{"checkpoint.every": 0})
    fpi = train_flops_per_image(
        cfg.model.resolve(input_size=16, in_channels=1, num_classes=10, learn_sigma=True).to_dit_config()
    )
    budget = 7.5 * fpi * 8  # 7.5 steps -> 7
    res = train(cfg.replace(**{"budget.train_flops": budget}))
    assert res.step == res.total_steps == 7
    assert res.images_seen == 7 * 8
    assert res.train_flops == pytest.approx(fpi * 56, rel=1e-12)
    ck = load_checkpoint(tmp_path)
    assert ck["ledger"]["train_flops"] == pytest.approx(fpi * 56, rel=1e-12)
    client = MlflowClient()
    flops = _history(client, res.run_id, "compute/train_flops")
    assert flops == {5: pytest.approx(fpi * 40), 7: pytest.approx(fpi * 56)}
    assert _history(client, res.run_id, "data/images_seen") == {5: 40.0, 7: 56.0}
    params = client.get_run(res.run_id).data.params
    assert float(params["budget.train_flops"]) == pytest.approx(budget)
    assert params["budget.max_steps"] == "7" and params["model.depth"] == "2"
    assert float(params["model.train_flops_per_image"]) == pytest.approx(fpi)
    model = _model(ck)
    assert int(params["model.params"]) == sum(p.numel() for p in model.parameters())
    embeddings = ("pos_embed", "t_embedder.", "y_embedder.")
    assert int(params["model.params_non_embedding"]) == sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith(embeddings)
    )


def _model(ck):
    from dit_core.config import TrainConfig
    from dit_core.models import DiT

    return DiT.from_config(TrainConfig.from_flat_dict(ck["config"]).model.to_dit_config())


def test_budget_below_one_step_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, steps=None, **{"budget.train_flops": 1e3})
    with pytest.raises(ValueError, match="budget smaller than one step.*raise --train-flops"):
        train(cfg)


def test_non_finite_loss_stops_keeps_last_good_checkpoint_and_fails_run(tmp_path, monkeypatch):
    """A NaN loss at step 13 (checkpoints every 5): FloatingPointError naming step 13, the newest
    checkpoint is step 10 (nothing written with NaN weights), the MLflow run is FAILED."""
    nan_loss_at(monkeypatch, 13)
    cfg = tiny_config(tmp_path, steps=30, **{"checkpoint.every": 5, "log_every": 4})
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step 13"):
        train(cfg)
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step_0000010.pt"
    assert all(torch.isfinite(t).all() for t in load_checkpoint(tmp_path)["model"].values())
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert "step 13" in run.data.tags["error"]


def test_lr_overflow_is_caught_before_a_checkpoint(tmp_path):
    """lr = 1e30 blows the weights up; the run fails and keeps no non-finite checkpoint."""
    cfg = tiny_config(tmp_path, steps=20, **{"optim.lr": 1e30, "checkpoint.every": 3})
    with pytest.raises(FloatingPointError, match="non-finite"):
        train(cfg)
    for p in list_checkpoints(tmp_path):
        assert all(torch.isfinite(t).all() for t in load_checkpoint(p)["model"].values())


def test_options_bf16_gradclip_checkpointing_cosine_run(tmp_path):
    """bf16 autocast, grad clipping, activation checkpointing, warmup + cosine: the run finishes
    with finite losses and the logged lr follows the closed form."""
    cfg = tiny_config(
        tmp_path, steps=10,
        **{"precision": "bf16", "optim.grad_clip": 0.5, "grad_checkpointing": True, "checkpoint.every": 0,
           "optim.schedule": "cosine", "optim.warmup_steps": 3, "optim.lr": 1e-3, "optim.min_lr_ratio": 0.1},
    )  # fmt: skip
    res = train(cfg)
    assert res.status == "finished" and math.isfinite(res.train_loss)
    lrs = _history(MlflowClient(), res.run_id, "lr")
    # step 5 logs the lr of step index 4: cosine from 1e-3 (index 3) to 1e-4 (index 9), progress 1/6
    assert lrs[5] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 6)))
    assert lrs[10] == pytest.approx(1e-4)


def test_optimizer_lr_follows_the_closed_form_in_warmup_schedule_end_and_after_resume(tmp_path):
    """The lr AdamW holds in its param groups after chosen steps, against the closed form, with
    the lr rule across widths, scaled warmup and cosine: width 32 with inverse_width at base 64
    -> peak 2e-3; 20 steps; warmup max(2, round(0.2 * 20)) = 4; cosine to 0.1 x peak."""
    peak, total, warm, floor = 2e-3, 20, 4, 2e-4

    def closed(s):
        if s < warm:
            return peak * (s + 1) / warm
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - 1 - warm)))

    opts = {"optim.lr": 1e-3, "optim.lr_scaling": "inverse_width", "optim.lr_base_width": 64,
            "optim.warmup_steps": 2, "optim.warmup_frac": 0.2, "optim.schedule": "cosine",
            "optim.min_lr_ratio": 0.1, "checkpoint.every": 0}  # fmt: skip
    tr = Trainer(tiny_config(tmp_path / "a", steps=total, **opts, **{"tracking.enabled": False}))
    used = {}
    for _ in range(total):
        tr.train_step()
        used[tr.step - 1] = [g["lr"] for g in tr.optimizer.param_groups]
    for s in (0, 1, 3, 4, 11, 19):  # warmup, its last step, the peak, mid-cosine, the last step
        assert used[s] == [pytest.approx(closed(s), rel=1e-12)], s
    assert used[19] == [pytest.approx(floor)]

    stopped = train(tiny_config(tmp_path / "b", steps=total, **opts), stop_at_step=7)
    params = MlflowClient().get_run(stopped.run_id).data.params
    assert float(params["optim.lr_effective"]) == pytest.approx(peak)
    assert params["optim.warmup_steps_effective"] == str(warm)
    resumed = Trainer(tiny_config(tmp_path / "b", steps=total, **opts))
    assert resumed.step == 7
    resumed.train_step()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [pytest.approx(closed(7), rel=1e-12)]


def test_lr_rule_across_budgets_uses_the_runs_planned_flops(tmp_path):
    """lr_flops_ref at a quarter of the run's planned FLOPs (steps x batch x FLOPs per image) with
    exponent 0.5 halves the peak AdamW uses; a ref above the run leaves it alone."""
    opts = {"optim.lr": 1e-3, "optim.schedule": "constant", "checkpoint.every": 0, "tracking.enabled": False}
    plain = Trainer(tiny_config(tmp_path / "a", steps=6, **opts))
    planned = 6 * plain.batch * plain.fpi
    for ref, peak in ((planned / 4, 5e-4), (planned * 1.01, 1e-3)):
        rule = {"optim.lr_flops_ref": ref, "optim.lr_flops_exponent": 0.5}
        tr = Trainer(tiny_config(tmp_path / f"r{ref:.0f}", steps=6, **opts, **rule))
        tr.train_step()
        assert [g["lr"] for g in tr.optimizer.param_groups] == [pytest.approx(peak, rel=1e-12)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_the_blocks_in_low_precision_and_resumes(tmp_path, precision):
    """The trainer's own autocast (no Accelerate mixed precision): the attention projections compute
    in the low precision, the model returns fp32, and fp16's loss scaler is checkpointed and
    restored. fp16 runs on CPU here through an explicit accelerator (the CLI asks for CUDA)."""
    from accelerate import Accelerator

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    cfg = tiny_config(tmp_path, steps=4, **{"precision": precision, "tracking.enabled": False,
                                            "checkpoint.every": 0, "optim.grad_clip": 1.0})  # fmt: skip
    tr = Trainer(cfg, accelerator=Accelerator(cpu=True))
    seen = []
    linear = next(m for m in tr.model.blocks[0].modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    assert (
        tr.train_model(torch.randn(2, 1, 16, 16), torch.tensor([3, 9]), torch.tensor([0, 1])).dtype
        == torch.float32
    )
    res = tr.run(stop_at_step=2)
    assert seen and set(seen) == {dtype} and res.step == 2
    ck = load_checkpoint(tmp_path)
    assert ("scaler" in ck) == (precision == "fp16")
    again = Trainer(cfg, accelerator=Accelerator(cpu=True))
    if precision == "fp16":
        assert again.scaler.state_dict() == ck["scaler"] and again.scaler.get_scale() == ck["scaler"]["scale"]
    assert again.run().status == "finished"


def test_progress_lines_when_not_a_terminal(tmp_path, caplog):
    caplog.set_level("INFO", logger="dit_core.train")
    train(tiny_config(tmp_path, steps=10, **{"tracking.enabled": False}), progress_bar=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert any(line.startswith("step 5/10 | loss ") and "img/s | eta" in line for line in lines)


def _launch_env() -> dict[str, str]:
    import os

    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


_TINY_FLAGS = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2",
               "--data", "digits", "--image-size", "16", "--global-batch-size", "8", "--log-every", "3",
               "--experiment", "test-train"]  # fmt: skip


@pytest.mark.timeout(240)
def test_two_process_accelerate_launch_matches_one_process(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: 2 gloo ranks split the global batch
    of 8 (4 each); the MLflow run is created once; the weights equal a 1-process run's (the step
    randomness is drawn per global batch), up to the all-reduce order."""
    import subprocess
    import sys

    one = train(tiny_config(tmp_path / "one", steps=6, **{"log_every": 3}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "0", "-m", "dit_core.train", *_TINY_FLAGS, "--max-steps", "6", "--ckpt-every", "10",
           "--out", str(tmp_path / "two")]  # fmt: skip
    proc = subprocess.run(cmd, env=_launch_env(), capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    run_id = (tmp_path / "two" / "mlflow_run_id").read_text().strip()
    exp = client.get_experiment_by_name("test-train").experiment_id
    mine = client.search_runs([exp], filter_string=f"params.out = '{tmp_path / 'two'}'")
    assert [r.info.run_id for r in mine] == [run_id]  # rank 1 created no run
    run = client.get_run(run_id)
    assert run.data.params["world_size"] == "2" and run.info.status == "FINISHED"
    assert _history(client, run_id, "data/images_seen") == {3: 24.0, 6: 48.0}
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert b["step"] == 6 and b["ledger"]["images_seen"] == 48
    for name, t in a["model"].items():
        torch.testing.assert_close(b["model"][name], t, atol=2e-6, rtol=0, msg=name)
    la, lb = _history(client, one.run_id, "train/loss"), _history(client, run_id, "train/loss")
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) < 1e-5 for k in la)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_checkpoints_exits_143_and_resumes_into_the_same_run(tmp_path, signame, code):
    """SIGTERM (SIGINT: a terminal's Ctrl-C) to `python -m dit_core.train`: checkpoint at a step > 0
    that loads, exit code 143 (130), no traceback, MLflow run KILLED with status=preempted; resuming
    finishes the same run."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dit_core.train", *_TINY_FLAGS, "--max-steps", "100000", "--ckpt-every", "0",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=_launch_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        read_until(proc, "step 6/100000 | loss")
        proc.send_signal(getattr(signal, signame))
        rest = proc.stderr.read()
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == code, rest[-3000:]
    assert f"received {signame}" in rest and "Traceback" not in rest
    ck = load_checkpoint(out)  # weights_only load of the newest checkpoint
    step = ck["step"]
    assert step >= 6 and ck["ledger"]["images_seen"] == 8 * step
    run_id = (out / "mlflow_run_id").read_text().strip()
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["status"] == "preempted"

    cfg = tiny_config(out, steps=step + 4, **{"log_every": 3, "checkpoint.every": 0})
    res = train(cfg)  # --resume auto is the default
    assert (res.status, res.step, res.run_id) == ("finished", step + 4, run_id)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert max(_history(client, run_id, "data/images_seen").values()) == 8 * (step + 4)


def test_eval_every_logs_sample_metrics_and_a_grid(tmp_path):
    """eval_every: `dit_core.evaluate.evaluate_model` on the EMA model -> eval/<metric> at that step,
    plus a PNG sample grid artifact."""
    cfg = tiny_config(
        tmp_path, steps=5,
        **{"eval.eval_every": 5, "eval.num_samples": 16, "eval.steps": 4, "eval.batch_size": 16,
           "eval.grid_images": 4, "eval.metrics": ["fid_digits"], "checkpoint.every": 0},
    )  # fmt: skip
    res = train(cfg)
    assert set(res.eval) >= {"fid_digits"} and math.isfinite(res.eval["fid_digits"])
    client = MlflowClient()
    assert _history(client, res.run_id, "eval/fid_digits") == {5: pytest.approx(res.eval["fid_digits"])}
    grid = client.download_artifacts(res.run_id, "samples/step_0000005.png", str(tmp_path / "dl"))
    from PIL import Image

    img = Image.open(grid)
    assert img.mode == "RGB" and img.size == (2 * 16 + 3, 2 * 16 + 3)  # 2x2 grid, 1 px padding


def test_signal_hands_over_to_a_previous_handler_after_the_checkpoint(tmp_path, monkeypatch):
    """submitit installs a USR2 handler that requeues the job: on USR2 the trainer checkpoints at the
    next step boundary, ends the MLflow run as KILLED, restores the handler and then calls it."""
    import signal

    from _train_helpers import signal_after_step, signal_handlers

    calls = []

    def requeue(signum, frame):
        calls.append((signum, latest_checkpoint(tmp_path)))

    signal_after_step(monkeypatch, 3, signal.SIGUSR2)
    with signal_handlers({signal.SIGUSR2: requeue}):
        res = train(tiny_config(tmp_path, steps=50, **{"checkpoint.every": 0}))
        assert signal.getsignal(signal.SIGUSR2) is requeue  # restored
    assert (res.status, res.signal, res.step) == ("preempted", "SIGUSR2", 3)
    assert calls == [(signal.SIGUSR2, tmp_path / "checkpoints" / "step_0000003.pt")]
    run = MlflowClient().get_run(res.run_id)
    assert run.info.status == "KILLED" and run.data.tags["status"] == "preempted"


def test_resume_refuses_a_different_config_and_resume_never(tmp_path):
    train(tiny_config(tmp_path, steps=3, **{"tracking.enabled": False}))
    with pytest.raises(ValueError, match=r"different config \(model.depth: '2' -> '3'"):
        train(tiny_config(tmp_path, steps=6, **{"model.depth": 3, "tracking.enabled": False}))
    with pytest.raises(ValueError, match="already holds checkpoints and --resume never"):
        train(tiny_config(tmp_path, steps=6, **{"tracking.enabled": False}), resume="never")
    longer = train(tiny_config(tmp_path, steps=6, **{"tracking.enabled": False}))  # a bigger budget is fine
    assert (longer.step, longer.images_seen) == (6, 48)


def test_cli_exit_codes_in_process(tmp_path):
    from dit_core.train import main

    flags = [*_TINY_FLAGS, "--no-mlflow", "--ckpt-every", "0"]
    assert main([*flags, "--max-steps", "3", "--out", str(tmp_path / "ok")]) == 0
    assert load_checkpoint(tmp_path / "ok")["step"] == 3
    assert main([*flags, "--max-steps", "20", "--lr", "1e30", "--out", str(tmp_path / "nan")]) == 1
    assert main([*flags, "--train-flops", "10", "--out", str(tmp_path / "small")]) == 2
