"""What the training options really do, read from the tensors rather than from a finished run:
EMA by its closed form, the label-dropout rate, gradient clipping, activation checkpointing and
bf16 autocast, each through the same call the trainer makes."""

from __future__ import annotations

import math

import pytest
import torch
from _train_helpers import tiny_config

from dit_core.ema import EMA
from dit_core.models import DiT
from dit_core.trainer.loop import Trainer, make_accelerator
from dit_core.trainer.rng import StepRandom

TINY = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10)


def random_dit(seed: int = 0, **kw) -> DiT:
    """A tiny DiT with every trainable parameter random (adaLN-Zero would make the output 0)."""
    torch.manual_seed(seed)
    model = DiT(**{**TINY, **kw})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.2)
    return model


def batch(model: DiT, n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    s, c = model.input_size, model.in_channels
    x = torch.randn(n, c, s, s, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    return x, t, y, torch.zeros(n, dtype=torch.long)  # force_drop_ids: none dropped, no global RNG


# ------------------------------------------------------------------ EMA
@pytest.mark.parametrize("decay", [0.9, 0.5, 0.0])
def test_ema_after_k_steps_is_the_closed_form(decay):
    """ema_k = d^k theta_0 + (1 - d) sum_j d^(k-j) theta_j; the frozen pos_embed stays as copied."""
    model = random_dit().double()
    ema = EMA(model, decay)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    history = [{n: params[n].detach().clone() for n in names}]
    g = torch.Generator().manual_seed(3)
    k = 7
    for _ in range(k):
        with torch.no_grad():
            for n in names:
                params[n].copy_(torch.randn(params[n].shape, generator=g, dtype=torch.float64))
        history.append({n: params[n].detach().clone() for n in names})
        ema.update()
    ema_params = dict(ema.model.named_parameters())
    for n in names:
        expected = decay**k * history[0][n]
        for j in range(1, k + 1):
            expected = expected + (1 - decay) * decay ** (k - j) * history[j][n]
        torch.testing.assert_close(ema_params[n], expected, rtol=1e-12, atol=1e-12, msg=n)
    assert torch.equal(ema.model.pos_embed, model.pos_embed) and not ema.model.pos_embed.requires_grad
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())


# ------------------------------------------------------------------ label dropout
def _binomial_ok(k: int, n: int, p: float, z: float = 5.0) -> bool:
    """k ~ Binomial(n, p) within z standard deviations (a false alarm at z=5: ~6e-7)."""
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_label_dropout_rate_in_the_model(p):
    """In training mode the DiT replaces a Binomial(n, p) share of labels by the null class."""
    model = DiT(**{**TINY, "depth": 1}, class_dropout_prob=p).train()
    seen = []
    model.y_embedder.embedding_table.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    n = 4000
    torch.manual_seed(0)
    x = torch.zeros(n, 1, 8, 8)
    y = torch.randint(0, 10, (n,))
    with torch.no_grad():
        model(x, torch.zeros(n), y)
        model.eval()(x, torch.zeros(n), y)
    train_labels, eval_labels = seen
    dropped = train_labels == model.num_classes
    assert _binomial_ok(int(dropped.sum()), n, p), int(dropped.sum())
    assert torch.equal(train_labels[~dropped], y[~dropped])  # the others are untouched
    assert torch.equal(eval_labels, y)  # no dropout in eval mode


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_label_dropout_rate_drawn_by_the_trainer(p):
    """The trainer draws the drops per step (StepRandom) and passes them as force_drop_ids: over
    many steps the rate is p, and the model nulls exactly those labels."""
    rng = StepRandom(seed=0, device=torch.device("cpu"), dropout_prob=p)
    x = torch.zeros(64, 1, 8, 8)
    drops = torch.cat([rng.draw(step, x)[2] for step in range(200)])
    assert _binomial_ok(int(drops.sum()), drops.numel(), p), int(drops.sum())
    model = DiT(**{**TINY, "depth": 1}, class_dropout_prob=p).train()
    seen = []
    model.y_embedder.embedding_table.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    y = torch.randint(0, 10, (64,))
    drop = rng.draw(0, x)[2]
    with torch.no_grad():
        model(x, torch.zeros(64), y, force_drop_ids=drop)
    assert torch.equal(seen[0], torch.where(drop == 1, torch.full_like(y, 10), y))


# ------------------------------------------------------------------ gradient clipping
@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_grad_clipping_bounds_the_global_norm(max_norm, tmp_path):
    """The trainer's call, `accelerator.clip_grad_norm_(model.parameters(), max)`, on a prepared model:
    the global norm after it is min(norm, max) and the direction is kept."""
    acc = make_accelerator(tiny_config(tmp_path, **{"optim.grad_clip": max_norm}))
    model = random_dit()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt = acc.prepare(model, opt)
    x, t, y, drop = batch(model)
    acc.backward(model(x, t, y, force_drop_ids=drop).square().mean())
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    before = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    assert before > 0.05  # the small max really clips
    returned = acc.clip_grad_norm_(model.parameters(), max_norm)
    after_grads = [p.grad for p in model.parameters() if p.grad is not None]
    after = torch.linalg.vector_norm(torch.stack([g.norm() for g in after_grads]))
    torch.testing.assert_close(torch.as_tensor(returned), before)  # it reports the norm before
    assert after <= max_norm * (1 + 1e-5)
    torch.testing.assert_close(after, torch.minimum(before, torch.tensor(max_norm)), rtol=1e-5, atol=0)
    scale = after / before
    for g0, g1 in zip(grads, after_grads):
        torch.testing.assert_close(g1, g0 * scale, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------ activation checkpointing
def _saved_activation_bytes(model: DiT, x, t, y, drop) -> tuple[int, torch.Tensor]:
    """Bytes of distinct non-parameter tensors autograd keeps for backward, and the loss."""
    params = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x, t, y, force_drop_ids=drop).square().mean()
    return sum(storages.values()), loss


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_activation_checkpointing_same_gradients_less_saved_memory(pos_embed):
    plain = random_dit(depth=4, pos_embed=pos_embed).train()
    ckpt = random_dit(depth=4, pos_embed=pos_embed, grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t, y, drop = batch(plain, n=8)
    saved = {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        saved[name], loss = _saved_activation_bytes(model, x, t, y, drop)
        loss.backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.requires_grad:
            assert torch.equal(p.grad, q.grad), n  # recomputation is the same arithmetic
    # 4 blocks: checkpointing keeps only each block's input instead of all its activations
    assert saved["ckpt"] < 0.3 * saved["plain"], saved


# ------------------------------------------------------------------ bf16 autocast
@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_bf16_autocast_computes_matmuls_in_bf16_on_cpu(precision, tmp_path):
    """The trainer's own autocast (Accelerate runs with mixed precision "no"): under bf16 the model
    it trains runs its linear layers in bfloat16 while LayerNorm, the weights and the returned
    prediction stay float32; with "no", all float32."""
    tr = Trainer(tiny_config(tmp_path, precision=precision, **{"tracking.enabled": False}))
    dtypes: dict[str, set[torch.dtype]] = {"linear": set(), "layernorm": set()}
    for m in tr.model.modules():
        kind = (
            "linear"
            if isinstance(m, torch.nn.Linear)
            else "layernorm"
            if isinstance(m, torch.nn.LayerNorm)
            else None
        )
        if kind:
            m.register_forward_hook(lambda mod, inp, out, kind=kind: dtypes[kind].add(out.dtype))
    with torch.no_grad():
        for p in tr.model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.2)
    model = tr.train_model
    x, t, y, drop = batch(tr.model)
    out = model(x, t, y, force_drop_ids=drop)
    low = torch.bfloat16 if precision == "bf16" else torch.float32
    assert dtypes["linear"] == {low}
    assert dtypes["layernorm"] == {torch.float32}
    assert out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    out.square().mean().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
