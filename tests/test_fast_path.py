"""The CPU fast path (padded attention for narrow heads, torch.compile) trains like the plain path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dit_core.diffusion import DiffusionConfig, create_diffusion
from dit_core.fast_path import compile_for_training, cpu_compile_pays, resolve_compile
from dit_core.layers import attention, fast_cpu_attention, padded_attention
from dit_core.models import DiT
from dit_core.spec import model_config

# A demo-shaped model (16 px, 1 channel, patch 2 -> 64 tokens, 10 classes) with head_dim 8, like the
# demo's S/B/L (XL has 9), so the padded attention is what the fast path runs.
DEMO = dict(depth=2, hidden_size=32, num_heads=4, patch_size=2, input_size=16, in_channels=1, num_classes=10)


def qkv(n: int, heads: int, t: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, heads, t, d, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("head_dim", [1, 8, 9, 16, 24])
def test_padded_attention_matches_sdpa_values_and_grads(head_dim):
    q, k, v = qkv(3, 2, 17, head_dim)
    g = torch.randn(3, 2, 17, head_dim)
    ref = F.scaled_dot_product_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    out = padded_attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), g)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_padded_attention_against_explicit_softmax():
    """Reference written out per head: softmax(q k^T / sqrt(d)) v."""
    q, k, v = (x.detach() for x in qkv(2, 3, 5, 9, seed=1))
    want = torch.empty_like(q)
    for n in range(2):
        for h in range(3):
            s = q[n, h] @ k[n, h].T / 3.0  # sqrt(9)
            want[n, h] = torch.softmax(s, dim=-1) @ v[n, h]
    torch.testing.assert_close(padded_attention(q, k, v), want, rtol=1e-5, atol=1e-6)


def test_attention_dispatch_cpu(monkeypatch):
    """Narrow heads on CPU go to padded_attention unless fast_cpu_attention(False); wide heads to SDPA."""
    calls = []
    monkeypatch.setattr("dit_core.layers.padded_attention", lambda *a: calls.append("padded") or a[2])
    narrow, wide = qkv(1, 1, 4, 8), qkv(1, 1, 4, 16)
    attention(*narrow)
    with fast_cpu_attention(False):
        attention(*narrow)
    attention(*wide)
    assert calls == ["padded"]


def run_steps(fast: bool, compile_model: bool, steps: int = 3):
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
        with fast_cpu_attention(fast):
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


def test_fast_eager_path_trains_like_plain_path():
    plain = run_steps(fast=False, compile_model=False)
    fast = run_steps(fast=True, compile_model=False)
    assert plain[0][0] != plain[0][-1]
    assert_same_training(fast, plain)


@pytest.mark.slow
def test_compiled_fast_path_trains_like_plain_path():
    """torch.compile (inductor C++ on CPU) + padded attention vs eager SDPA: same losses and weights."""
    plain = run_steps(fast=False, compile_model=False)
    compiled = run_steps(fast=True, compile_model=True)
    assert_same_training(compiled, plain)


def test_resolve_compile_modes():
    assert resolve_compile("off", "cpu") is False
    assert resolve_compile(False, "cuda") is False
    assert resolve_compile("on", "cpu") is True
    assert resolve_compile(True, "cuda") is True
    assert resolve_compile("auto", "cuda") is False  # the GPU default is unchanged: no compile
    assert resolve_compile(None, "cpu") is False  # unknown length: eager
    assert resolve_compile("auto", "cpu", train_flops=1e12) is False  # a demo cell: eager
    assert resolve_compile("auto", "cpu", train_flops=1e15) is True  # hours of CPU: compile
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("fast", "cpu")


def test_cpu_compile_pays_threshold_is_monotone():
    flops = [1e10 * 2**i for i in range(20)]
    decisions = [cpu_compile_pays(f, threads=1) for f in flops]
    assert decisions == sorted(decisions) and decisions[0] is False and decisions[-1] is True
    assert cpu_compile_pays(None) is False


def test_compile_for_training_off_returns_the_model():
    model = DiT(model_config(**DEMO))
    assert compile_for_training(model, "off") is model
    assert compile_for_training(model, "auto", train_flops=1e9) is model
    compiled = compile_for_training(model, "on")
    assert compiled is not model and compiled._orig_mod is model
