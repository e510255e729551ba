"""The cheap training step (docs/training.md "Step cost of tiny models") against plain references.

- the trainer's step (direct calls instead of Accelerate's wrappers, fused AdamW, foreach EMA,
  photo batches rendered several at a time) against a hand-written loop: per-item data fetches,
  ``torch.optim.AdamW(foreach=False)``, per-tensor clipping and the closed-form EMA;
- the direct path against Accelerate's calls: bitwise the same weights, EMA and AdamW state;
- chunked photo batches against one fetch per item, across epochs and a resume.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _train_helpers import one_thread, tiny_config

from dit_core.data import build_dataset
from dit_core.data.config import DataConfig
from dit_core.train import Trainer
from dit_core.trainer.data_stream import DataStream, _collate
from dit_core.trainer.lr_schedule import lr_at
from dit_core.trainer.rng import StepRandom
from dit_core.trainer.update import can_bypass_accelerate, update_ops

STEPS = 6
# the default demo's settings (sweeps/configs/demo.yaml) at a 5K shape, plus clipping and decay
STUDY = {
    "model.depth": 3, "model.hidden_size": 8, "model.num_heads": 2, "model.frequency_embedding_size": 32,
    "data.name": "photos", "data.channels": 1, "data.epoch_size": 64,
    "optim.lr": 1e-3, "optim.schedule": "cosine", "optim.min_lr_ratio": 0.1, "optim.warmup_steps": 2,
    "optim.ema_decay": 0.9, "optim.grad_clip": 0.05, "optim.weight_decay": 0.01,
    "tracking.enabled": False, "checkpoint.every": 0, "compile": False,
}  # fmt: skip


def _trainer(tmp_path, name: str, **overrides) -> Trainer:
    cfg = tiny_config(tmp_path / name, steps=STEPS, batch=8, **{**STUDY, **overrides})
    return Trainer(cfg, resume="never")


def _reference_run(tr: Trainer, model: torch.nn.Module) -> tuple[list[float], list[torch.Tensor]]:
    """STEPS plain steps of ``model`` (a copy of the trainer's initial weights) on the trainer's
    config: per-step losses and the closed-form EMA ``e <- d e + (1 - d) theta`` per parameter."""
    cfg, o = tr.cfg, tr.cfg.optim
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        params, lr=tr.peak_lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay, foreach=False
    )
    ema = [p.detach().double().clone() for p in params]
    data = build_dataset(cfg.data, "train")  # its own dataset object: item by item, no chunks
    perm = DataStream(data, 8, seed=cfg.seed).permutation(0)
    random = StepRandom(cfg.seed, torch.device("cpu"), cfg.model.class_dropout_prob)
    losses, raw_norms = [], []
    for step in range(STEPS):
        x, y = _collate([data[int(i)] for i in perm[8 * step : 8 * step + 8]])
        u, noise, drop = random.draw(step, x)
        t = tr.diffusion.timesteps_from_uniform(u)
        kwargs = {"y": y} if drop is None else {"y": y, "force_drop_ids": drop}
        loss = tr.diffusion.training_losses(model, x, t, kwargs, noise=noise)["loss"].mean()
        loss.backward()
        raw_norms.append(float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip, foreach=False)))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, STEPS, o, tr.peak_lr)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for e, p in zip(ema, params):
            e.mul_(o.ema_decay).add_(p.detach().double(), alpha=1 - o.ema_decay)
        losses.append(float(loss.detach()))
    assert min(raw_norms) > 2 * o.grad_clip  # clipping acts at every step, so a missing clip would show
    return losses, ema


def test_trainer_step_matches_a_plain_adamw_loop_with_closed_form_ema(tmp_path):
    with one_thread():
        tr = _trainer(tmp_path, "fast")
        assert tr.update.direct  # one process: the trainer takes the direct path by default
        ref_model = copy.deepcopy(tr.model)
        initial = [p.detach().clone() for p in tr.model.parameters()]
        for _ in range(STEPS):
            tr.train_step()
        losses, ema = _reference_run(tr, ref_model)
    got = [float(v) for v in tr.pending]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(losses), rtol=1e-5, atol=1e-7)
    moved = 0.0
    for (name, p), q in zip(tr.model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
        moved = max(moved, float((p - q).detach().abs().max()))
    for (name, p), e in zip(tr.ema.model.named_parameters(), ema):
        torch.testing.assert_close(p.double(), e, rtol=1e-4, atol=1e-6, msg=name)
    # training moved the weights far more than the two paths differ, so the comparison has teeth
    delta = max(float((p.detach() - q).abs().max()) for p, q in zip(tr.model.parameters(), initial))
    assert delta > 100 * max(moved, 1e-7), (delta, moved)


def test_direct_path_gives_bitwise_the_accelerate_path(tmp_path):
    with one_thread():
        fast, plain = _trainer(tmp_path, "fast"), _trainer(tmp_path, "plain")
        plain.update = update_ops(plain.acc, plain.optimizer, plain.model, direct=False)
        assert fast.update.direct and not plain.update.direct
        assert fast.update.optimizer is fast.optimizer.optimizer  # the wrapped torch AdamW itself
        for _ in range(STEPS):
            fast.train_step()
            plain.train_step()
    assert torch.equal(torch.stack(fast.pending), torch.stack(plain.pending))
    for a, b in zip(fast.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(fast.ema.state_dict().values(), plain.ema.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = fast.optimizer.state_dict()["state"], plain.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"])


def test_accelerate_calls_are_kept_where_they_do_more(tmp_path):
    """A grad scaler (fp16) or an optimizer Accelerate did not wrap keeps Accelerate's calls."""
    tr = _trainer(tmp_path, "t")
    assert can_bypass_accelerate(tr.acc, tr.optimizer)
    assert not can_bypass_accelerate(tr.acc, tr.optimizer, scaler=torch.amp.GradScaler("cpu"))
    assert not can_bypass_accelerate(tr.acc, tr.optimizer.optimizer)
    ops = update_ops(tr.acc, tr.optimizer, tr.model, scaler=torch.amp.GradScaler("cpu"))
    assert not ops.direct and ops.optimizer is tr.optimizer and ops.backward == tr.acc.backward


@pytest.mark.parametrize("batch", [8, 48])
def test_chunked_photo_batches_equal_one_fetch_per_item(batch):
    """Photo batches rendered CHUNK_IMAGES at a time are bitwise the per-item fetches, across epoch
    ends (epoch_size 200: 25 or 4 batches per epoch) and after a resume mid-chunk."""
    cfg = DataConfig(name="photos", channels=1, epoch_size=200, seed=3)
    stream = DataStream(build_dataset(cfg, "train"), batch, seed=7)
    ref_data = build_dataset(cfg, "train")
    n_batches = 200 // batch

    def expected(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, b = divmod(k, n_batches)
        ref_data.set_epoch(epoch)
        perm = stream.permutation(epoch)
        return _collate([ref_data[int(i)] for i in perm[b * batch : (b + 1) * batch]])

    got = [stream.next_batch() for _ in range(2 * n_batches + 3)]
    for k, (x, y) in enumerate(got):
        ex, ey = expected(k)
        assert torch.equal(x, ex) and torch.equal(y, ey), k
    resumed = DataStream(build_dataset(cfg, "train"), batch, seed=7)
    probe = DataStream(build_dataset(cfg, "train"), batch, seed=7)
    for _ in range(n_batches + 2):
        probe.next_batch()
    resumed.load_state_dict(probe.state_dict())
    for k in range(n_batches + 2, 2 * n_batches + 3):
        x, y = resumed.next_batch()
        assert torch.equal(x, got[k][0]) and torch.equal(y, got[k][1]), k
