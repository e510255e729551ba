"""The trainer's lifecycle on a DiT of depth 1, width 16, on 8 px digits, batch 4, a few steps:
checkpoint contents and bitwise resume, the lr AdamW really holds, the EMA's closed form, signals,
MLflow metrics against values recomputed from per-step checkpoints, and the error messages.
Fast enough (about 10-20 s) to be the mutation-testing selection of `dit_core/trainer/`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
import types

import pytest
import torch
from _train_helpers import assert_same_tensors, one_thread, signal_after_step, signal_handlers, tiny_config
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from dit_core.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from dit_core.configio import ConfigError
from dit_core.spec import param_count, train_flops_per_image
from dit_core.train import TrainConfig, Trainer, train
from dit_core.trainer.loop import make_accelerator, process_start_time
from dit_core.trainer.resume import check_resumable, config_changes, find_checkpoint
from dit_core.trainer.signals import PREEMPTION_SIGNALS, PreemptionGuard

TINY = {"model.depth": 1, "model.hidden_size": 16, "model.num_heads": 2, "data.image_size": 8,
        "eval.val_examples": 8, "tracking.enabled": False, "checkpoint.every": 0, "log_every": 2}  # fmt: skip


def tiny(out, steps: int = 6, **overrides) -> TrainConfig:
    return tiny_config(out, steps=steps, batch=4, **{**TINY, **overrides})


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _closed_lr(s: int, peak: float, warm: int, total: int, floor: float) -> float:
    """Linear warmup over `warm` steps, then cosine from peak (step warm) to floor (the last step)."""
    if s < warm:
        return peak * (s + 1) / warm
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - 1 - warm)))


COSINE = {"optim.lr": 1e-3, "optim.warmup_steps": 2, "optim.warmup_frac": 0.0, "optim.schedule": "cosine",
          "optim.min_lr_ratio": 0.1, "optim.lr_scaling": "none"}  # fmt: skip


def _per_step_losses(tmp_path, steps: int = 6, **overrides) -> list[float]:
    """l[k-1] = the training loss of step k, from a run that logs (and checkpoints) every step."""
    train(tiny(tmp_path / "per_step", steps, log_every=1, **{"checkpoint.every": 1}, **overrides))
    return [load_checkpoint(p)["loop"]["last_loss"] for p in list_checkpoints(tmp_path / "per_step")]


# ---------------------------------------------------------------------------------------- loop, train


def test_checkpoints_hold_the_true_state_and_resume_is_bitwise(tmp_path, caplog):
    """Run a: 6 steps, a checkpoint every 2. Run b: stopped at step 3 (inside a log interval of 2),
    resumed to 6. Every checkpoint b writes equals a's, tensor for tensor; the losses stored in
    them are the means of the per-step losses of a run that logs every step."""
    caplog.set_level(logging.INFO, logger="dit_core.train")
    loss = _per_step_losses(tmp_path, **COSINE)
    a = train(tiny(tmp_path / "a", **COSINE, **{"checkpoint.every": 2}))
    cfg_b = tiny(tmp_path / "b", **COSINE, **{"checkpoint.every": 2})
    b1 = train(cfg_b, stop_at_step=3)
    tr = Trainer(tiny(tmp_path / "x", **COSINE))  # resolved config and FLOPs, nothing trained
    fpi = train_flops_per_image(tr.dit_cfg)
    assert tr.fpi == fpi

    assert (b1.status, b1.step, b1.total_steps, b1.signal, b1.run_id) == ("preempted", 3, 6, None, None)
    assert b1.out == str(tmp_path / "b") and b1.images_seen == 12 and b1.train_flops == fpi * 12
    assert b1.checkpoint == str(tmp_path / "b" / "checkpoints" / "step_0000003.pt")
    assert b1.train_loss == pytest.approx((loss[0] + loss[1]) / 2, rel=1e-6) and b1.val_loss is None
    assert b1.eval == {}
    c3 = load_checkpoint(b1.checkpoint)
    assert c3["step"] == 3
    assert c3["ledger"] == {
        "images_seen": 12,
        "train_flops": fpi * 12,
        "train_flops_per_image": fpi,
        "steps": 3,
    }
    assert c3["scheduler"] == {"schedule": "cosine", "last_step": 3, "total_steps": 6,
                               "lr": pytest.approx(_closed_lr(2, 1e-3, 2, 6, 1e-4), rel=1e-12)}  # fmt: skip
    assert c3["config"] == {**tr.flat, "out": str(tmp_path / "b"), "checkpoint.every": 2}
    assert c3["mlflow_run_id"] == ""
    assert c3["loop"]["pending_losses"] == [pytest.approx(loss[2], rel=1e-6)]  # step 3, not logged yet
    assert c3["loop"]["last_loss"] == pytest.approx((loss[0] + loss[1]) / 2, rel=1e-6)
    assert c3["loop"]["last_val"] is None and c3["loop"]["unsent_metrics"] == []
    for _ in range(3):  # the data stream of a fresh trainer after 3 batches
        tr.stream.next_batch()
    assert c3["data_position"] == tr.stream.state_dict()
    assert "scaler" not in c3

    b2 = train(cfg_b)
    assert (b2.status, b2.step, b2.images_seen, b2.train_flops) == ("finished", 6, 24, fpi * 24)
    assert (a.status, a.step, a.images_seen) == ("finished", 6, 24)
    assert a.train_loss == b2.train_loss == pytest.approx((loss[4] + loss[5]) / 2, rel=1e-6)
    names = lambda out: [p.name for p in list_checkpoints(out)]  # noqa: E731
    assert names(tmp_path / "a") == ["step_0000002.pt", "step_0000004.pt", "step_0000006.pt"]
    assert names(tmp_path / "b") == [
        "step_0000002.pt",
        "step_0000003.pt",
        "step_0000004.pt",
        "step_0000006.pt",
    ]
    for step in (2, 4, 6):
        ca = load_checkpoint(tmp_path / "a" / "checkpoints" / f"step_{step:07d}.pt")
        cb = load_checkpoint(tmp_path / "b" / "checkpoints" / f"step_{step:07d}.pt")
        assert (ca["config"].pop("out"), cb["config"].pop("out")) == (
            str(tmp_path / "a"),
            str(tmp_path / "b"),
        )
        assert (ca.pop("folder"), cb.pop("folder")) == (
            str((tmp_path / "a").resolve()),
            str((tmp_path / "b").resolve()),
        )
        assert_same_tensors(ca, cb, f"step {step}")
        assert ca["loop"]["last_loss"] == pytest.approx((loss[step - 2] + loss[step - 1]) / 2, rel=1e-6)
        assert ca["loop"]["pending_losses"] == []
    assert load_checkpoint(a.checkpoint)["step"] == 6 and a.checkpoint.endswith("step_0000006.pt")

    text = [r.getMessage() for r in caplog.records]  # whole messages
    assert (
        f"resumed from {tmp_path / 'b' / 'checkpoints' / 'step_0000003.pt'} at step 3 (12 images seen)"
        in text
    )
    assert (
        f"stopped at step 3/6 (stop_at_step); checkpoint {b1.checkpoint}; resume with the same --out" in text
    )
    assert f"finished 6 steps; train/loss {a.train_loss}, checkpoint {a.checkpoint}" in text
    n = f"{param_count(tr.dit_cfg):,}"
    assert f"training custom DiT ({n} params, {fpi:.3g} train FLOPs/image, peak lr 0.001) for 6 steps of 4 " \
           "images on 1 process(es), from step 3" in text  # fmt: skip


def test_a_resumed_run_reports_the_last_losses_it_was_stopped_with(tmp_path):
    """val_every 3, stopped at 4, resumed and stopped at 5: no log or validation since the resume, so
    the result carries the train loss of steps 3-4 and the validation loss of step 3."""
    cfg = tiny(tmp_path / "run", **{"eval.val_every": 3, "checkpoint.every": 3})
    first = train(cfg, stop_at_step=4)
    second = train(cfg, stop_at_step=5)
    at3 = Trainer(
        tiny(tmp_path / "other", **{"eval.val_every": 3}),
        resume=str(tmp_path / "run" / "checkpoints" / "step_0000003.pt"),
    )
    assert at3.step == 3
    val3 = at3.validator({"v": at3.model})["v"]
    assert first.val_loss == second.val_loss == pytest.approx(val3, rel=1e-6)
    assert second.train_loss == first.train_loss == load_checkpoint(first.checkpoint)["loop"]["last_loss"]
    assert load_checkpoint(second.checkpoint)["loop"]["last_val"] == first.val_loss


def test_keep_last_and_a_nested_new_out_folder(tmp_path):
    out = tmp_path / "x" / "y" / "run"
    res = train(tiny(out, 4, **{"checkpoint.every": 1, "checkpoint.keep_last": 2}))
    assert [p.name for p in list_checkpoints(out)] == ["step_0000003.pt", "step_0000004.pt"]
    assert res.checkpoint == str(out / "checkpoints" / "step_0000004.pt")


def test_several_processes_agree_on_a_signal_every_sync_interval_and_average_the_losses(tmp_path):
    """With world_size 2 the ranks' flags and losses go through `reduce`; here a stand-in for the
    collective adds the other rank's value (the real 2-process runs are in test_dist_s39.py and
    test_sync_s39.py). The flag goes with rank 0's proposed sync interval (`SignalSync`), to which the
    other rank adds 0; at 0.01 s per step the interval is SIGNAL_SYNC_EVERY steps."""
    from dit_core.trainer.signals import SIGNAL_SYNC_EVERY, SignalSync

    tr = Trainer(tiny(tmp_path, 2))
    other = {"flag": 0.0, "losses": torch.zeros(0)}

    def reduce(t, reduction):
        if reduction == "sum":
            return t + torch.tensor([other["flag"], 0.0])
        assert reduction == "mean"
        return (t + other["losses"]) / 2

    now = [0.0]
    tr.world, tr.acc = 2, types.SimpleNamespace(reduce=reduce)
    tr.signal_sync = SignalSync(clock=lambda: now[0])
    guard = PreemptionGuard()
    tr.step = 0
    assert tr.preempt_requested(guard) is False  # agreed at the first check; the next one step later
    other["flag"], tr.step, now[0] = 1.0, 1, 0.01  # the other rank received a signal
    assert tr.preempt_requested(guard) is True
    assert tr.signal_sync.next_step == 1 + SIGNAL_SYNC_EVERY
    tr.step = 2  # between syncs nobody stops, not even the rank that got it
    guard.received = signal.SIGTERM
    assert tr.preempt_requested(guard) is False
    other["flag"], tr.step = 0.0, 1 + SIGNAL_SYNC_EVERY
    assert tr.preempt_requested(guard) is True
    tr.pending = [torch.tensor(1.0), torch.tensor(3.0)]
    other["losses"] = torch.tensor([5.0, 7.0])
    assert tr.reduced_pending().tolist() == [3.0, 5.0]
    tr.pending = []
    assert tr.reduced_pending().shape == (0,)


def test_run_writes_the_resolved_config_json(tmp_path):
    res = train(tiny(tmp_path / "r", steps=2))
    tr = Trainer(tiny(tmp_path / "other", steps=2))
    expected = {**dataclasses.asdict(tr.cfg), "out": str(tmp_path / "r")}
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == json.loads(
        json.dumps(expected, default=str)
    )
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".train.lock", "checkpoints", "config.json"]
    assert res.checkpoint.endswith("step_0000002.pt")


def test_the_lr_in_the_param_groups_follows_the_closed_form_and_continues_after_resume(tmp_path):
    total = 6
    tr = Trainer(tiny(tmp_path / "a", total, **COSINE))
    assert (tr.peak_lr, tr.warmup, tr.total, tr.batch) == (1e-3, 2, total, 4)
    for s in range(total):
        assert tr.step == s
        tr.train_step()
        used = [g["lr"] for g in tr.optimizer.param_groups]
        assert used == [pytest.approx(_closed_lr(s, 1e-3, 2, total, 1e-4), rel=1e-12)], s
        assert tr.lr(s) == used[0]
    assert (tr.step, tr.images_seen) == (total, total * 4)
    train(tiny(tmp_path / "b", total, **COSINE), stop_at_step=4)
    resumed = Trainer(tiny(tmp_path / "b", total, **COSINE))
    assert (resumed.step, resumed.images_seen) == (4, 16)
    resumed.train_step()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [
        pytest.approx(_closed_lr(4, 1e-3, 2, 6, 1e-4))
    ]


def test_ema_is_the_closed_form_and_clipping_holds_every_step(tmp_path):
    """ema_k = d^k theta_0 + (1 - d) sum_j d^(k-j) theta_j; global grad norm at each step = max_norm."""
    decay, k, max_norm = 0.5, 3, 1e-3
    history: list[list[torch.Tensor]] = []
    norms: list[float] = []

    def params(opt):
        return [p.detach().double().clone() for g in opt.param_groups for p in g["params"]]

    def pre_hook(opt, a, kw):
        grads = [p.grad.double().norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))
        if not history:
            history.append(params(opt))

    pre = register_optimizer_step_pre_hook(pre_hook)
    post = register_optimizer_step_post_hook(lambda opt, a, kw: history.append(params(opt)))
    try:
        res = train(tiny(tmp_path / "e", k, **{"optim.ema_decay": decay, "optim.grad_clip": max_norm}))
    finally:
        pre.remove()
        post.remove()
    assert len(history) == k + 1 and len(norms) == k
    assert norms == [pytest.approx(max_norm, rel=1e-4)] * k
    ckpt = load_checkpoint(res.checkpoint)
    names = [n for n in ckpt["model"] if n != "pos_embed"]
    for i, n in enumerate(names):
        assert torch.equal(ckpt["model"][n].double(), history[-1][i]), n
        expected = decay**k * history[0][i]
        for j in range(1, k + 1):
            expected = expected + (1 - decay) * decay ** (k - j) * history[j][i]
        torch.testing.assert_close(ckpt["ema"][n].double(), expected, rtol=1e-5, atol=1e-7, msg=n)


def test_without_clipping_the_gradient_is_left_alone(tmp_path):
    norms: list[float] = []

    def pre_hook(opt, a, kw):
        grads = [p.grad.double().norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))

    h = register_optimizer_step_pre_hook(pre_hook)
    try:
        train(tiny(tmp_path / "n", 2, **{"optim.grad_clip": 0.0}))
        train(tiny(tmp_path / "c", 2, **{"optim.grad_clip": 1e6}))
    finally:
        h.remove()
    assert norms[:2] == norms[2:] and min(norms) > 1e-2


def test_training_depends_on_the_seed_and_step_only_not_on_the_global_rng(tmp_path):
    """Timesteps, noise and dropped labels come from `StepRandom` (seed, step): reseeding torch's
    global generator before each step changes nothing (with labels dropped at rate 0.5)."""
    weights = []
    for i, global_seed in enumerate((123, 456)):
        tr = Trainer(tiny(tmp_path / str(i), 3, **{"model.class_dropout_prob": 0.5}))
        for _ in range(3):
            torch.manual_seed(global_seed + tr.step)
            tr.train_step()
        weights.append([p.detach().clone() for p in tr.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_auto_compile_follows_the_runs_planned_flops(tmp_path):
    """compile=None (auto) on CPU compiles when steps x batch x FLOPs/image is worth it (nothing is
    compiled until the first call, so building the trainer stays cheap)."""
    from dit_core.fast_path import cpu_compile_pays

    decided = []
    for steps in (10, 10_000_000):
        tr = Trainer(tiny(tmp_path / str(steps), steps, compile=None))  # None = auto
        planned = steps * 4 * train_flops_per_image(tr.dit_cfg)
        decided.append(cpu_compile_pays(planned, steps=steps, depth=tr.dit_cfg.depth))
        assert hasattr(tr.train_model, "_orig_mod") == decided[-1], steps
    assert decided == [False, True]


def test_train_set_replaces_the_dataset_and_sets_the_model(tmp_path):
    class Toy(torch.utils.data.Dataset):
        resolution, channels, num_classes = 8, 1, 3

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.full((1, 8, 8), (i % 5) / 5 - 0.5), i % 3

    res = train(tiny(tmp_path / "t", 2), train_set=Toy())
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt["model"]["y_embedder.embedding_table.weight"].shape[0] == 3 + 1  # 3 classes + null
    assert ckpt["config"]["model.num_classes"] == 3


def test_train_uses_the_accelerator_it_is_given(tmp_path):
    from accelerate import Accelerator

    prepared = []

    class Recording(Accelerator):
        def prepare(self, *args, **kwargs):
            prepared.append(len(args))
            return super().prepare(*args, **kwargs)

    res = train(tiny(tmp_path, 2), accelerator=Recording(cpu=True, mixed_precision="no"))
    assert res.status == "finished" and prepared == [2]  # the model and the optimizer


def test_progress_bar_true_draws_a_tqdm_bar(tmp_path, capsys):
    train(tiny(tmp_path / "p", 2), progress_bar=True)
    err = capsys.readouterr().err
    assert "train" in err and "2/2" in err
    train(tiny(tmp_path / "q", 2), progress_bar=False)
    assert "2/2" not in capsys.readouterr().err


def test_resume_never_and_a_changed_config_are_refused_by_train(tmp_path):
    train(tiny(tmp_path, 2))
    with pytest.raises(ConfigError, match="already holds checkpoints and --resume never"):
        train(tiny(tmp_path, 4), resume="never")
    with pytest.raises(ConfigError, match=r"checkpoint .*step_0000002.pt: was written by a different config "
                       r"\(model.hidden_size: '16' -> '32'\)"):  # fmt: skip
        train(tiny(tmp_path, 4, **{"model.hidden_size": 32}))
    res = train(tiny(tmp_path / "new", 2), resume=str(tmp_path))  # from a run folder: continues step 2
    assert (res.status, res.step, res.images_seen) == ("finished", 2, 8)


def test_bad_inputs_have_clear_messages(tmp_path):
    with pytest.raises(ConfigError, match=r"^config: train\(\) takes a TrainConfig, got dict$"):
        Trainer({})
    with pytest.raises(
        ConfigError, match=r"^precision: fp16 needs a CUDA GPU; use --precision bf16 \(or no\) on CPU$"
    ):
        make_accelerator(tiny(tmp_path, precision="fp16"))
    assert make_accelerator(tiny(tmp_path)).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_non_finite_losses_and_weights_name_the_step_and_the_last_checkpoint(tmp_path):
    tr = Trainer(tiny(tmp_path, 20, **COSINE))
    tr.step = 10  # the losses of steps 8, 9, 10; the first bad one is step 9
    with pytest.raises(FloatingPointError) as err:
        tr.check_finite(torch.tensor([1.0, float("nan"), float("inf")]))
    assert str(err.value).startswith(
        f"non-finite training loss (nan) at step 9 (lr {tr.lr(8):.3g}); the run stopped and kept its "
        "last good checkpoint (none yet). Lower --lr, set --grad-clip, or use bf16 instead of fp16"
    )
    tr.check_finite(torch.tensor([1.0, 2.0]))  # finite: nothing raised
    tr.step = 0
    tr.pending = []
    path = tr.save()
    assert path == tmp_path / "checkpoints" / "step_0000000.pt"
    assert load_checkpoint(path)["scheduler"]["lr"] == tr.lr(0) == pytest.approx(1e-3 / 2)  # warmup step 0
    with torch.no_grad():
        next(tr.model.parameters())[0] = float("inf")
    msg = (
        r"^non-finite weights at step 0; .* checkpoint \(.*step_0000000.pt\)\. Lower --lr or set --grad-clip$"
    )
    with pytest.raises(FloatingPointError, match=msg):
        tr.save()
    tr.step = 5
    with pytest.raises(
        FloatingPointError, match=r"non-finite training loss \(inf\) at step 5 .*step_0000000.pt"
    ):
        tr.check_finite(torch.tensor([float("inf")]))


def test_a_diverging_run_raises_and_keeps_its_last_good_checkpoint(tmp_path):
    with pytest.raises(
        FloatingPointError, match=r"^non-finite (training loss .* \(lr 1e\+30\)|weights at step \d+);"
    ):
        train(
            tiny(
                tmp_path,
                20,
                log_every=1,
                **{
                    "optim.lr": 1e30,
                    "optim.warmup_steps": 0,
                    "optim.warmup_frac": 0.0,
                    "checkpoint.every": 1,
                },
            )
        )
    for p in list_checkpoints(tmp_path):
        assert torch.isfinite(
            torch.stack([t.float().norm() for t in load_checkpoint(p)["model"].values()])
        ).all()


def test_bf16_autocasts_the_forward_and_returns_fp32(tmp_path):
    tr = Trainer(tiny(tmp_path / "bf", 2, precision="bf16"))
    assert tr.amp_dtype == torch.bfloat16 and tr.scaler is None
    with tr.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    seen = []
    h = tr.model.x_embedder.proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = tr.model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    h.remove()
    assert out.dtype == torch.float32 and seen == [torch.bfloat16]
    plain = Trainer(tiny(tmp_path / "no", 2))
    assert plain.amp_dtype is None
    with plain.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_preempt_requested_reads_the_guard_on_one_process(tmp_path):
    tr = Trainer(tiny(tmp_path, 2))
    guard = PreemptionGuard()
    assert tr.preempt_requested(guard) is False
    guard.received = signal.SIGTERM
    assert tr.preempt_requested(guard) is True


def test_process_start_time_is_this_process_start():
    import psutil

    started = process_start_time()
    assert started == psutil.Process().create_time() and started <= time.time()


# ------------------------------------------------------------------------------------- signals


def test_a_signal_mid_run_checkpoints_that_step_then_calls_the_previous_handler(
    tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="dit_core.train")
    calls = []

    def previous(signum, frame):
        calls.append((signum, [p.name for p in list_checkpoints(tmp_path)]))

    signal_after_step(monkeypatch, 2, signal.SIGUSR1)
    with signal_handlers({signal.SIGUSR1: previous}):
        res = train(tiny(tmp_path, 6))
        assert signal.getsignal(signal.SIGUSR1) is previous
    assert (res.status, res.signal, res.step, res.images_seen) == ("preempted", "SIGUSR1", 2, 8)
    assert calls == [(signal.SIGUSR1, ["step_0000002.pt"])]
    assert load_checkpoint(res.checkpoint)["step"] == 2
    text = [r.getMessage() for r in caplog.records]
    assert f"stopped at step 2/6 (SIGUSR1); checkpoint {res.checkpoint}; resume with the same --out" in text
    assert "handing SIGUSR1 on to the previously installed handler" in text


def test_sigterm_with_no_previous_python_handler_stops_without_handing_on(tmp_path, monkeypatch):
    """SIG_IGN before the run: not a Python handler, so nothing is handed on after the checkpoint."""
    signal_after_step(monkeypatch, 1, signal.SIGTERM)
    with signal_handlers({signal.SIGTERM: signal.SIG_IGN}):
        res = train(tiny(tmp_path, 4))
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert (res.status, res.signal, res.step) == ("preempted", "SIGTERM", 1)


def test_guard_records_each_preemption_signal_and_restores_the_handlers(caplog):
    assert set(PREEMPTION_SIGNALS) == {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
    outside = []
    caplog.set_level(logging.INFO, logger="dit_core.trainer.signals")
    with signal_handlers({s: lambda signum, f: outside.append(signum) for s in PREEMPTION_SIGNALS}):
        before = {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS}
        for s in PREEMPTION_SIGNALS:
            with PreemptionGuard() as guard:
                assert guard.received is None
                os.kill(os.getpid(), s)
                assert guard.received == s
            assert {t: signal.getsignal(t) for t in PREEMPTION_SIGNALS} == before
        guard = PreemptionGuard()
        caplog.clear()
        with guard:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
    assert outside == []  # every one was intercepted
    assert guard.received == signal.SIGUSR2  # the latest one
    assert [r.getMessage() for r in caplog.records] == [
        "received SIGUSR1: checkpointing at the next step boundary"
    ]
    assert caplog.records[0].levelno == logging.WARNING


def test_guard_only_takes_its_signals_and_can_be_entered_again():
    mine = []
    record = lambda s, f: mine.append(s)  # noqa: E731
    with signal_handlers({signal.SIGUSR1: record, signal.SIGUSR2: record}):
        guard = PreemptionGuard((signal.SIGUSR1,))
        with guard:
            assert guard.previous_handler(signal.SIGUSR2) is None  # not one of its signals
            os.kill(os.getpid(), signal.SIGUSR2)
            assert guard.received is None and mine == [signal.SIGUSR2]
        with guard:  # a second time
            assert guard.previous_handler(signal.SIGUSR1) is record
            os.kill(os.getpid(), signal.SIGUSR1)
        assert guard.received == signal.SIGUSR1 and mine == [signal.SIGUSR2]
        assert guard.previous_handler(signal.SIGUSR1) is None  # forgotten after exit
        assert signal.getsignal(signal.SIGUSR1) is record


def test_previous_handler_is_the_python_handler_only():
    def mine(s, f):
        pass

    old1 = signal.signal(signal.SIGUSR1, mine)
    old2 = signal.signal(signal.SIGUSR2, signal.default_int_handler)
    try:
        with PreemptionGuard() as guard:
            assert guard.previous_handler(signal.SIGUSR1) is mine
            assert guard.previous_handler(signal.SIGUSR2) is None  # KeyboardInterrupt's, not handed on
            assert guard.previous_handler(signal.SIGTERM) is None  # SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, old1)
        signal.signal(signal.SIGUSR2, old2)


def test_guard_off_the_main_thread_installs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="dit_core.trainer.signals")
    before = {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS}
    seen = {}

    def body():
        with PreemptionGuard() as g:
            seen["handlers"] = {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS}
            seen["prev"] = g.previous_handler(signal.SIGTERM)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"handlers": before, "prev": None}
    assert [r.getMessage() for r in caplog.records] == [
        "not in the main thread: preemption signals are not intercepted"
    ]


# -------------------------------------------------------------------------------------- resume


def test_config_changes_lists_only_the_non_resumable_differences():
    saved = {"model.depth": 2, "optim.lr": 1e-3, "budget.max_steps": 10, "eval.val_every": 5, "seed": 0}
    new = {"model.depth": "2", "optim.lr": 3e-4, "budget.max_steps": 20, "eval.val_every": 1, "extra": True}
    assert config_changes(saved, new) == [
        "optim.lr: '0.001' -> '0.0003'",
        "seed: '0' -> ''",
        "extra: '' -> 'True'",
    ]
    assert config_changes(saved, dict(saved)) == []
    check_resumable(saved, {**saved, "budget.max_steps": 99, "checkpoint.every": 3})  # allowed


def test_check_resumable_names_at_most_eight_differences():
    saved = {f"k{i}": i for i in range(10)}
    new = {f"k{i}": i + 1 for i in range(10)}
    with pytest.raises(ConfigError) as err:
        check_resumable(saved, new)
    msg = str(err.value)
    assert msg == (
        "checkpoint: was written by a different config ("
        + "; ".join(f"k{i}: '{i}' -> '{i + 1}'" for i in range(8))
        + "); use a new --out for a new run, or, to start over in this folder, delete its checkpoints/ "
        "and run with --resume never"
    )
    with pytest.raises(ConfigError, match=r"^mlflow run 7: was written"):
        check_resumable(saved, new, "mlflow run 7")


def test_find_checkpoint_for_each_kind_of_resume(tmp_path):
    run, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()
    assert find_checkpoint(run, "auto") is None and find_checkpoint(run, "never") is None
    first = save_checkpoint(run, {"step": 3})
    newest = save_checkpoint(run, {"step": 5})
    assert find_checkpoint(run, "auto") == newest
    assert find_checkpoint(tmp_path / "x", str(run)) == newest  # a run folder
    assert find_checkpoint(tmp_path / "x", str(first)) == first  # a file
    with pytest.raises(ConfigError) as err:
        find_checkpoint(run, "never")
    assert str(err.value) == (
        f"--resume: {run} already holds checkpoints and --resume never was given; "
        "use a new --out, or --resume auto to continue that run"
    )
    with pytest.raises(ConfigError) as err:
        find_checkpoint(run, str(empty))
    assert str(err.value) == f"--resume: no checkpoint in {empty}; give a folder with checkpoints/"
    with pytest.raises(ConfigError) as err:
        find_checkpoint(run, str(tmp_path / "nope.pt"))
    assert str(err.value) == (
        "--resume: must be 'auto', 'never' or a checkpoint file/run folder; "
        f"{tmp_path / 'nope.pt'} does not exist"
    )
