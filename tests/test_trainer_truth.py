"""The trainer's options observed inside real `dit_core.train.train` runs, through torch's global
hooks (optimizer step hooks, module forward hooks, saved-tensor hooks): nothing is mocked and nothing
reads the trainer's private state. Tracking is off, so each run costs a few seconds."""

from __future__ import annotations

import torch
from _train_helpers import one_thread, tiny_config
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from dit_core.checkpoint import load_checkpoint
from dit_core.train import train

QUIET = {"tracking.enabled": False, "checkpoint.every": 0}


def _run(tmp_path, name: str, steps: int, batch: int = 8, **overrides):
    with one_thread():
        cfg = tiny_config(tmp_path / name, steps=steps, batch=batch, **QUIET, **overrides)
        return train(cfg, progress_bar=False)


def _grad_norm(optimizer) -> float:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))


def test_every_optimizer_step_sees_gradients_clipped_to_the_max(tmp_path):
    """With grad_clip = 1e-3 (far below the raw norm) the global norm at each optimizer step is the max."""
    max_norm = 1e-3
    norms: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: norms.append(_grad_norm(opt)))
    try:
        _run(tmp_path, "clip", steps=4, **{"optim.grad_clip": max_norm})
        clipped, norms[:] = list(norms), []
        _run(tmp_path, "raw", steps=4)
    finally:
        handle.remove()
    raw = norms
    assert len(clipped) == len(raw) == 4
    assert min(raw) > 10 * max_norm  # without clipping the norm is far above the max
    for n in clipped:
        assert abs(n - max_norm) <= 1e-4 * max_norm, clipped


def test_final_ema_is_the_closed_form_of_the_weights_after_each_step(tmp_path):
    """ema_k = d^k theta_0 + (1 - d) sum_j d^(k-j) theta_j, theta_j the weights after optimizer step j."""
    decay, k = 0.8, 5
    history: list[list[torch.Tensor]] = []

    def params(opt) -> list[torch.Tensor]:
        return [p.detach().double().clone() for g in opt.param_groups for p in g["params"]]

    pre = register_optimizer_step_pre_hook(
        lambda opt, a, kw: history.append(params(opt)) if not history else None
    )
    post = register_optimizer_step_post_hook(lambda opt, a, kw: history.append(params(opt)))
    try:
        res = _run(tmp_path, "ema", steps=k, **{"optim.ema_decay": decay})
    finally:
        pre.remove()
        post.remove()
    assert len(history) == k + 1
    ckpt = load_checkpoint(res.checkpoint)
    names = [n for n in ckpt["model"] if n != "pos_embed"]  # the trainable ones, in parameter order
    assert len(names) == len(history[-1])
    for i, n in enumerate(names):
        assert torch.equal(ckpt["model"][n].double(), history[-1][i]), n  # hook order == names
        expected = decay**k * history[0][i]
        for j in range(1, k + 1):
            expected = expected + (1 - decay) * decay ** (k - j) * history[j][i]
        torch.testing.assert_close(ckpt["ema"][n].double(), expected, rtol=1e-5, atol=1e-7, msg=n)
    assert not torch.equal(ckpt["ema"][names[-1]], ckpt["model"][names[-1]])


def test_bf16_training_runs_its_linear_layers_in_bf16(tmp_path):
    """precision=bf16 on CPU: every nn.Linear output during training and validation is bfloat16, while
    the weights the run ends with are float32; precision=no keeps float32 throughout."""
    seen: dict[str, set[torch.dtype]] = {"bf16": set(), "no": set()}
    current = ["bf16"]

    def hook(module, args, out):
        if isinstance(module, torch.nn.Linear):
            seen[current[0]].add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        res = _run(tmp_path, "bf16", steps=2, precision="bf16")
        current[0] = "no"
        _run(tmp_path, "fp32", steps=2, precision="no")
    finally:
        handle.remove()
    assert seen == {"bf16": {torch.bfloat16}, "no": {torch.float32}}
    ckpt = load_checkpoint(res.checkpoint)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())


def test_grad_checkpointing_same_weights_less_saved_activation_memory(tmp_path):
    """Two 2-step runs, with and without activation checkpointing: bitwise-equal weights, and autograd
    keeps far fewer activation bytes for backward (counted by a saved-tensors hook)."""
    saved: dict[str, int] = {}
    final = {}
    for name, flag in (("plain", False), ("ckpt", True)):
        total = [0]

        def pack(t, total=total):
            if not (t.is_leaf and t.requires_grad):  # parameters are not activations
                total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            res = _run(tmp_path, name, steps=2, grad_checkpointing=flag, **{"model.depth": 4})
        saved[name] = total[0]
        final[name] = load_checkpoint(res.checkpoint)["model"]
    for k, v in final["plain"].items():
        assert torch.equal(v, final["ckpt"][k]), k
    assert saved["ckpt"] < 0.5 * saved["plain"], saved


def test_training_drops_about_class_dropout_prob_of_the_labels(tmp_path):
    """model.class_dropout_prob = 0.25: the labels reaching the label embedding in training mode are the
    null class (10 for digits) a Binomial(n, 0.25) share of the time (within 5 standard deviations)."""
    p, steps, batch = 0.25, 20, 64
    labels: list[torch.Tensor] = []

    def hook(module, args, out):
        if isinstance(module, torch.nn.Embedding) and module.training:
            labels.append(args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        _run(tmp_path, "drop", steps=steps, batch=batch, **{"model.class_dropout_prob": p})
    finally:
        handle.remove()
    y = torch.cat(labels)
    n = y.numel()
    assert n == steps * batch
    k = int((y == 10).sum())
    assert abs(k - n * p) <= 5 * (n * p * (1 - p)) ** 0.5, (k, n)
