"""The training fast path (`dit_core.fast_path`: torch.compile where it pays) trains like the plain path."""

from __future__ import annotations

import logging

import pytest
import torch

from dit_core.diffusion import DiffusionConfig, create_diffusion
from dit_core.fast_path import (
    GPU_COMPILE_MIN_STEPS,
    compile_for_training,
    compile_mode,
    cpu_compile_pays,
    resolve_compile,
)
from dit_core.models import DiT
from dit_core.spec import model_config

# A demo-shaped model: 16 px, 1 channel, patch 2 (64 tokens), 10 classes, head_dim 8 like the demo's S/B/L.
DEMO = dict(depth=2, hidden_size=32, num_heads=4, patch_size=2, input_size=16, in_channels=1, num_classes=10)


def run_steps(compile_model: bool, steps: int = 3):
    """`steps` trainer-like steps (DiT loss with learned sigma, label dropout, fused AdamW)."""
    torch.manual_seed(0)
    model = DiT(model_config(**DEMO)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    call = compile_for_training(model, "on" if compile_model else "off")
    diffusion = create_diffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 1, 16, 16, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        t = torch.randint(0, 1000, (8,), generator=g)
        drop = (torch.rand(8, generator=g) < 0.3).long()
        noise = torch.randn(x.shape, generator=g)
        loss = diffusion.training_losses(call, x, t, {"y": y, "force_drop_ids": drop}, noise=noise)
        loss = loss["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_training(a, b):
    (loss_a, params_a), (loss_b, params_b) = a, b
    torch.testing.assert_close(torch.tensor(loss_a), torch.tensor(loss_b), rtol=1e-4, atol=1e-5)
    assert params_a.keys() == params_b.keys()
    moved = 0
    for key in params_a:
        torch.testing.assert_close(params_a[key], params_b[key], rtol=1e-4, atol=1e-5, msg=key)
    for key, p in params_a.items():
        moved += int(not torch.equal(p, DiT(model_config(**DEMO)).state_dict()[key]))
    assert moved > 0  # the steps did train


@pytest.mark.slow
def test_compiled_fast_path_trains_like_plain_path():
    """torch.compile (inductor C++ kernels on CPU) vs plain eager: same losses and weights."""
    plain = run_steps(compile_model=False)
    compiled = run_steps(compile_model=True)
    assert plain[0][0] != plain[0][-1]
    assert_same_training(compiled, plain)


def test_resolve_compile_modes():
    assert resolve_compile("off", "cpu") is False
    assert resolve_compile(False, "cuda") is False
    assert resolve_compile("on", "cpu") is True
    assert resolve_compile(True, "cuda") is True
    assert resolve_compile("auto", "cuda") is False  # unknown length: eager
    assert resolve_compile("auto", "cuda", steps=GPU_COMPILE_MIN_STEPS - 1) is False  # compile not paid back
    assert resolve_compile("auto", "cuda", steps=GPU_COMPILE_MIN_STEPS) is True
    assert GPU_COMPILE_MIN_STEPS >= 650  # the measured break-even (H200, DiT-B/2, 32 px, batch 256)
    assert resolve_compile(None, "cpu") is False  # unknown length: eager
    assert resolve_compile("auto", "cpu", train_flops=1e12) is False  # a demo cell: eager
    assert resolve_compile("auto", "cpu", train_flops=1e15) is True  # hours of CPU: compile
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("fast", "cpu")


def test_compile_mode_normalises_config_values():
    assert [compile_mode(v) for v in (None, "AUTO", True, "true", False, "off", "on", "false", "False")] == [
        "auto", "auto", "on", "on", "off", "off", "on", "off", "off",
    ]  # fmt: skip
    for bad in ("yes", 1, 0.5):
        with pytest.raises(ValueError, match="auto"):
            compile_mode(bad)


def test_cpu_compile_pays_threshold_is_monotone():
    flops = [1e10 * 2**i for i in range(20)]
    decisions = [cpu_compile_pays(f, threads=1) for f in flops]
    assert decisions == sorted(decisions) and decisions[0] is False and decisions[-1] is True
    assert cpu_compile_pays(None) is False


def test_cpu_eager_seconds_counts_steps_and_blocks_beside_flops():
    """A tiny model's many cheap steps: 1e12 FLOPs alone are 50 s at 20 GFLOP/s, but 100,000 steps of
    a 3-block model add 100,000 x 3 x 4 ms = 1,200 s, so auto compiles it."""
    from dit_core.fast_path import cpu_eager_seconds

    assert cpu_eager_seconds(1e12, threads=1) == pytest.approx(50.0)
    assert cpu_eager_seconds(1e12, threads=2) == pytest.approx(25.0)
    assert cpu_eager_seconds(1e12, threads=1, steps=100_000, depth=3) == pytest.approx(1250.0)
    assert cpu_compile_pays(1e12, threads=1) is False
    assert cpu_compile_pays(1e12, threads=1, steps=100_000, depth=3) is True
    assert cpu_compile_pays(1e12, threads=1, steps=10_000, depth=3) is False  # 170 s: eager
    assert resolve_compile("auto", "cpu", train_flops=1e12, steps=100_000, depth=3) is True


def test_compile_for_training_off_returns_the_model(caplog):
    model = DiT(model_config(**DEMO))
    assert compile_for_training(model, "off") is model
    assert compile_for_training(model, "auto", train_flops=1e9) is model
    with caplog.at_level(logging.INFO, logger="dit_core.fast_path"):
        compiled = compile_for_training(model, "on")
    assert compiled is not model and compiled._orig_mod is model
    assert caplog.messages == ["torch.compile of the training model on cpu (compile='on')"]
    # auto on CPU decides from the run's FLOPs, steps and depth, all passed on (compiling is lazy)
    long_run = compile_for_training(model, "auto", device="cpu", train_flops=1e12, steps=100_000, depth=3)
    assert long_run._orig_mod is model
    assert compile_for_training(model, "auto", device="cpu", train_flops=1e12, steps=100_000) is model
    assert compile_for_training(model, "on", device="cuda")._orig_mod is model  # the GPU path


def test_torchdynamo_disable_overrides_compile_on(monkeypatch):
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    assert resolve_compile("on", "cpu") is False and resolve_compile(True, "cuda") is False
    model = DiT(model_config(**DEMO))
    assert compile_for_training(model, "on") is model
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "0")
    assert resolve_compile("on", "cpu") is True


def test_unknown_steps_or_depth_add_no_per_step_cost():
    """steps and depth default to 0: a caller that knows only the FLOPs gets the FLOP time alone."""
    from dit_core.fast_path import cpu_eager_seconds

    assert cpu_eager_seconds(1e12) == pytest.approx(50.0)
    assert (
        cpu_eager_seconds(1e12, 1, steps=100_000)
        == cpu_eager_seconds(1e12, 1, depth=3)
        == pytest.approx(50.0)
    )
    assert cpu_compile_pays(1e12, threads=1, steps=10**9) is False
    assert cpu_compile_pays(1e12, threads=1, depth=10**6) is False
    assert resolve_compile("auto", "cpu", train_flops=1e12, depth=10**6) is False
    assert resolve_compile("auto", "cpu", train_flops=1e12, steps=10**9) is False
