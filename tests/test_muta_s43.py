"""Session 43 (muta): tests that kill the hand-placed mutants of spec, models, blocks, layers, rope,
pos_embed and the Gaussian diffusion (tests/hand_mutants.txt), each against a closed form, a published
number, torch's own FLOP counter or a reference written out here (docs/testing.md, "Session 43")."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dit_core import blocks as blocks_mod
from dit_core.diffusion.config import DiffusionConfig
from dit_core.diffusion.gaussian import (
    GaussianDiffusion,
    decoder_nll_bits,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from dit_core.layers import LabelEmbedder, PatchEmbed, TimestepEmbedder, modulate
from dit_core.models import DiT, patchify, unpatchify
from dit_core.pos_embed import sincos_2d, timestep_embedding
from dit_core.rope import apply_rope, rope_angles
from dit_core.spec import (
    DiTConfig,
    budget_steps,
    flop_breakdown,
    forward_macs,
    non_embedding_param_count,
    param_count,
    resolve_budget_steps,
    train_flops_per_image,
)

SMALL = dict(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=8, in_channels=3, num_classes=5)
SHAPES = [
    {},
    {"block_type": "adaln"},
    {"block_type": "cross_attention"},
    {"block_type": "in_context"},
    {"pos_embed": "rope", "hidden_size": 48, "num_heads": 3},
    {"class_dropout_prob": 0.0, "learn_sigma": False},
    {"frequency_embedding_size": 16, "mlp_ratio": 2.5, "patch_size": 4},
    {"block_type": "in_context", "pos_embed": "rope", "depth": 3},
]


def _cfg(**kw) -> DiTConfig:
    return DiTConfig(**{**SMALL, **kw})


def _randomised(model: DiT, seed: int = 0) -> DiT:
    """All weights random (the official init zeroes the modulation and output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


# ----------------------------------------------------------------------------- spec: parameter counts
@pytest.mark.parametrize("kw", SHAPES)
def test_param_count_equals_a_real_models_numel(kw):
    cfg = _cfg(**kw)
    model = DiT(cfg)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())
    embeddings = ("pos_embed", "t_embedder.", "y_embedder.")
    rest = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(embeddings))
    assert non_embedding_param_count(cfg) == rest


# ----------------------------------------------------------------------------- spec: FLOP counts
def _modulate_macs(model: DiT, x, t, y, monkeypatch) -> int:
    """Multiply-adds of every adaLN `modulate` call (one per element of its `x`) on a real forward."""
    seen = []

    def counting(x, shift, scale):
        seen.append(x[0].numel())
        return modulate(x, shift, scale)

    monkeypatch.setattr(blocks_mod, "modulate", counting)
    with torch.no_grad():
        model(x, t, y)
    monkeypatch.undo()
    return sum(seen)


@pytest.mark.parametrize("kw", SHAPES)
def test_forward_macs_equal_torchs_flop_counter(kw, monkeypatch):
    """Matmul/conv/attention MACs from `FlopCounterMode` (2 FLOPs each; on the meta device, where it
    sees the attention kernel) plus the multiply-adds of every modulate call counted on the same
    forward equal `forward_macs`, for every block type, on a square and a rectangular latent."""
    cfg = _cfg(**kw)
    sizes = [(8, 8)] + ([(8, 12)] if cfg.pos_embed == "rope" else [])
    for h, w in sizes:
        with torch.device("meta"):
            model = DiT(cfg).eval()
            x, t, y = torch.randn(1, cfg.in_channels, h, w), torch.ones(1), torch.ones(1, dtype=torch.long)
            counter = FlopCounterMode(display=False)
            with counter:
                modulate_macs = _modulate_macs(model, x, t, y, monkeypatch)
        counted = counter.get_total_flops() // 2 + modulate_macs
        assert counted == forward_macs(cfg, (h, w)), (kw, h, w, flop_breakdown(cfg, (h, w)))


def test_train_flops_are_three_forward_passes_of_true_flops():
    """Forward + backward true FLOPs counted by torch are ~3x the forward's (the 6N rule of thumb);
    `train_flops_per_image` matches them to the terms torch does not count (< 3%)."""
    cfg = _cfg(hidden_size=64, num_heads=4, input_size=16)
    with torch.device("meta"):
        model = DiT(cfg).train()
        x, t, y = torch.randn(1, 3, 16, 16), torch.ones(1), torch.ones(1, dtype=torch.long)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x, t, y, force_drop_ids=torch.tensor([0])).sum().backward()
    assert train_flops_per_image(cfg) == pytest.approx(counter.get_total_flops(), rel=0.03)


def test_num_tokens_of_a_rectangular_latent():
    assert _cfg(pos_embed="rope").num_tokens((8, 16)) == 4 * 8


# ----------------------------------------------------------------------------- spec: budget -> steps
def test_budget_of_exactly_k_steps_despite_float_rounding():
    # 10 steps of 3 images at 0.1 FLOPs: 3.0 / (0.1 * 3) = 9.999999999999998 in floats
    assert budget_steps(10 * 3 * 0.1, 0.1, 3) == 10
    assert budget_steps(10.5 * 3 * 0.1, 0.1, 3) == 10
    assert budget_steps(0.99 * 3 * 0.1, 0.1, 3) == 0


def test_resolve_budget_takes_the_smaller_and_refuses_less_than_one_step():
    both = SimpleNamespace(max_steps=5, train_flops=100.0, global_batch_size=2)
    assert resolve_budget_steps(both, 1.0) == 5
    flops_only = SimpleNamespace(max_steps=None, train_flops=100.0, global_batch_size=2)
    assert resolve_budget_steps(flops_only, 1.0) == 50
    with pytest.raises(ValueError, match="smaller than one step"):
        resolve_budget_steps(SimpleNamespace(max_steps=None, train_flops=1.0, global_batch_size=2), 1.0)


# ----------------------------------------------------------------------------- models
def _official_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """Token (i, j) = feature (r * p + s) * C + c of pixel (c, i*p + r, j*p + s): loops, no reshapes."""
    n, c, h, w = x.shape
    out = torch.empty(n, (h // p) * (w // p), p * p * c)
    for i in range(h // p):
        for j in range(w // p):
            for r in range(p):
                for s in range(p):
                    for ch in range(c):
                        out[:, i * (w // p) + j, (r * p + s) * c + ch] = x[:, ch, i * p + r, j * p + s]
    return out


def test_patchify_unpatchify_against_an_explicit_layout():
    x = torch.randn(2, 3, 4, 6)
    tokens = patchify(x, 2)
    assert torch.equal(tokens, _official_patches(x, 2))
    assert torch.equal(unpatchify(tokens, 2, 3, (2, 3)), x)
    square = torch.randn(1, 2, 6, 6)
    assert torch.equal(unpatchify(_official_patches(square, 3), 3, 2), square)


def test_patch_embed_is_the_conv_of_the_patch_layout():
    """PatchEmbed's tokens are row-major patches times the conv weight in (p_row, p_col, C) order."""
    torch.manual_seed(0)
    emb, x = PatchEmbed(2, 3, 8), torch.randn(2, 3, 4, 6)
    w = emb.proj.weight.permute(0, 2, 3, 1).reshape(8, -1)
    torch.testing.assert_close(emb(x), _official_patches(x, 2) @ w.T + emb.proj.bias)


def _capture_inputs(model: DiT, x, t, y, **kw):
    seen = {}
    hooks = [
        model.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("block0", a)),
        model.blocks[-1].register_forward_hook(lambda m, a, o: seen.setdefault("last", o)),
        model.final_layer.register_forward_pre_hook(lambda m, a: seen.setdefault("final", a)),
    ]
    with torch.no_grad():
        out = model(x, t, y, **kw)
    for hk in hooks:
        hk.remove()
    return seen, out


def test_tokens_and_conditioning_entering_the_blocks():
    model = _randomised(DiT(_cfg()))
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 4])
    seen, _ = _capture_inputs(model, x, t, y)
    tokens, c = seen["block0"][:2]
    want = model.x_embedder(x) + torch.from_numpy(_mae_sincos_2d(32, 4)).float()
    torch.testing.assert_close(tokens, want)
    torch.testing.assert_close(c, model.t_embedder(t) + model.y_embedder.embedding_table(y))


def test_in_context_drops_the_two_prefix_tokens_before_the_final_layer():
    model = _randomised(DiT(_cfg(block_type="in_context")))
    seen, _ = _capture_inputs(model, torch.randn(1, 3, 8, 8), torch.tensor([5.0]), torch.tensor([2]))
    assert seen["last"].shape[1] == 2 + 16
    torch.testing.assert_close(seen["final"][0], seen["last"][:, 2:])


def test_official_init_output_is_zero_and_embedder_stds():
    model = DiT(_cfg(hidden_size=256, num_heads=4, num_classes=400))
    out = model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 3]))
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(model.x_embedder.proj.bias) == 0
    for w in (model.y_embedder.embedding_table.weight, model.t_embedder.mlp[0].weight):
        assert w.std().item() == pytest.approx(0.02, rel=0.1)


def test_forward_with_cfg_against_two_plain_passes():
    cfg = _cfg()
    model = _randomised(DiT(cfg))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([9.0, 9.0])
    y = torch.tensor([1, cfg.num_classes])
    with torch.no_grad():
        got = model.forward_with_cfg(x, t, y, 4.0)
        both = model(torch.cat([x[:1], x[:1]]), t, y)
    cond, uncond = both[:1], both[1:]
    c = cfg.in_channels
    mixed = uncond[:, :c] + 4.0 * (cond[:, :c] - uncond[:, :c])
    torch.testing.assert_close(got[:, :c], torch.cat([mixed, mixed]))
    torch.testing.assert_close(got[:, c:], both[:, c:])  # the learned variance is not guided


# ----------------------------------------------------------------------------- blocks (written out)
def _ln(x, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def _mod(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def _attn(attn, x):
    n, t, d = x.shape
    h = attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).view(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1) @ v
    return a.transpose(1, 2).reshape(n, t, d) @ attn.proj.weight.T + attn.proj.bias


def _mlp(mlp, x):
    return mlp.fc2(F.gelu(mlp.fc1(x), approximate="tanh"))


def _rand_block(cls, seed=0):
    torch.manual_seed(seed)
    block = cls(16, 2, 2.0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return block.eval()


def test_adaln_zero_and_adaln_blocks_against_the_papers_equations():
    # a small-variance input: the LayerNorm eps (1e-6, the official one) shows
    x, c = torch.randn(2, 5, 16) * 3e-3, torch.randn(2, 16)
    b = _rand_block(blocks_mod.DiTBlock)
    s1, k1, g1, s2, k2, g2 = (F.silu(c) @ b.adaLN_modulation[1].weight.T + b.adaLN_modulation[1].bias).chunk(
        6, 1
    )
    h = x + g1[:, None] * _attn(b.attn, _mod(_ln(x), s1, k1))
    want = h + g2[:, None] * _mlp(b.mlp, _mod(_ln(h), s2, k2))
    torch.testing.assert_close(b(x, c), want, rtol=1e-4, atol=1e-5)
    a = _rand_block(blocks_mod.AdaLNBlock, 1)
    s1, k1, s2, k2 = (F.silu(c) @ a.adaLN_modulation[1].weight.T + a.adaLN_modulation[1].bias).chunk(4, 1)
    h = x + _attn(a.attn, _mod(_ln(x), s1, k1))
    torch.testing.assert_close(a(x, c), h + _mlp(a.mlp, _mod(_ln(h), s2, k2)), rtol=1e-4, atol=1e-5)


def test_in_context_and_cross_attention_blocks_against_pre_ln_equations():
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 2, 16)

    def ln(norm, v):
        return F.layer_norm(v, (16,), norm.weight, norm.bias, eps=1e-6)

    ic = _rand_block(blocks_mod.InContextBlock)
    h = x + _attn(ic.attn, ln(ic.norm1, x))
    torch.testing.assert_close(ic(x), h + _mlp(ic.mlp, ln(ic.norm2, h)), rtol=1e-4, atol=1e-5)
    ca = _rand_block(blocks_mod.CrossAttentionBlock, 2)
    h = x + _attn(ca.attn, ln(ca.norm1, x))
    q = ln(ca.norm_cross, h) @ ca.cross_attn.q.weight.T + ca.cross_attn.q.bias
    k, v = (ctx @ ca.cross_attn.kv.weight.T + ca.cross_attn.kv.bias).chunk(2, -1)
    heads = lambda z: z.view(2, z.shape[1], 2, 8).transpose(1, 2)  # noqa: E731
    a = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8), -1) @ heads(v)
    h = h + a.transpose(1, 2).reshape(2, 5, 16) @ ca.cross_attn.proj.weight.T + ca.cross_attn.proj.bias
    torch.testing.assert_close(ca(x, ctx), h + _mlp(ca.mlp, ln(ca.norm2, h)), rtol=1e-4, atol=1e-5)


def test_final_layer_against_its_equation():
    torch.manual_seed(3)
    fl = blocks_mod.FinalLayer(16, 2, 6)
    with torch.no_grad():
        for p in fl.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x, c = torch.randn(2, 5, 16) * 3e-3, torch.randn(2, 16)
    shift, scale = (F.silu(c) @ fl.adaLN_modulation[1].weight.T + fl.adaLN_modulation[1].bias).chunk(2, 1)
    want = _mod(_ln(x), shift, scale) @ fl.linear.weight.T + fl.linear.bias
    torch.testing.assert_close(fl(x, c), want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- layers: embedders
def test_timestep_embedder_is_linear_silu_linear_of_the_features():
    torch.manual_seed(0)
    te, t = TimestepEmbedder(8, 16), torch.tensor([0.0, 3.0, 999.0])
    feats = torch.from_numpy(_dit_timestep_features(t.numpy(), 16)).float()
    torch.testing.assert_close(te(t), te.mlp[2](F.silu(te.mlp[0](feats))), rtol=1e-5, atol=1e-5)


def test_label_dropout_rate_forced_drops_and_null_row():
    emb = LabelEmbedder(10, 4, 0.1)
    labels = torch.arange(20000) % 10
    torch.manual_seed(0)
    dropped = emb.token_drop(labels)
    assert (dropped == 10).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(dropped[dropped != 10], labels[dropped != 10])
    forced = emb.token_drop(labels[:4], torch.tensor([1, 0, 1, 0]))
    assert forced.tolist() == [10, 1, 10, 3]
    torch.manual_seed(0)
    train_rows = emb(labels, train=True)
    null = (train_rows == emb.embedding_table.weight[10]).all(1).float().mean().item()
    assert null == pytest.approx(0.1, abs=0.01)
    assert LabelEmbedder(10, 4, 0.0).embedding_table.num_embeddings == 10


# ----------------------------------------------------------------------------- rope (written out)
def _rope_reference(x: np.ndarray, grid_h: int, grid_w: int, prefix: int = 0, theta: float = 10000.0):
    """x (T, d): channel i < d/2 paired with i + d/2 and rotated by pos * theta^(-j/(d/4)), pos the row
    for the first d/4 pairs and the column for the last d/4; the `prefix` leading tokens unrotated."""
    t, d = x.shape
    q = d // 4
    out = x.copy()
    for tok in range(prefix, t):
        row, col = divmod(tok - prefix, grid_w)
        for i in range(d // 2):
            pos, j = (row, i) if i < q else (col, i - q)
            ang = pos * theta ** (-j / q)
            a, b = x[tok, i], x[tok, i + d // 2]
            out[tok, i] = a * math.cos(ang) - b * math.sin(ang)
            out[tok, i + d // 2] = b * math.cos(ang) + a * math.sin(ang)
    return out


@pytest.mark.parametrize("grid,prefix", [((3, 4), 0), ((2, 3), 2)])
def test_rope_against_the_written_out_rotation(grid, prefix):
    x = torch.randn(prefix + grid[0] * grid[1], 16, dtype=torch.float64) * 2
    got = apply_rope(x, *rope_angles(16, *grid, num_prefix=prefix))
    np.testing.assert_allclose(got.numpy(), _rope_reference(x.numpy(), *grid, prefix), atol=1e-5)


def test_rope_scores_depend_only_on_position_differences():
    cos, sin = rope_angles(16, 6, 6)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    rq = apply_rope(q.expand(36, 16), cos.double(), sin.double())
    rk = apply_rope(k.expand(36, 16), cos.double(), sin.double())
    score = lambda a, b: (rq[a[0] * 6 + a[1]] * rk[b[0] * 6 + b[1]]).sum().item()  # noqa: E731
    for (r1, c1), (r2, c2), (dr, dc) in [((0, 0), (1, 2), (3, 1)), ((2, 5), (0, 1), (1, -1))]:
        assert score((r1, c1), (r2, c2)) == pytest.approx(score((r1 + dr, c1 + dc), (r2 + dr, c2 + dc)))
    assert score((0, 0), (1, 0)) != pytest.approx(score((0, 0), (0, 1)))  # rows and columns differ


# ----------------------------------------------------------------------------- pos_embed (written out)
def _dit_timestep_features(t: np.ndarray, dim: int, max_period: float = 10000.0) -> np.ndarray:
    """The DiT/ADM timestep features: [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half), + a 0 column
    for odd dim."""
    half = dim // 2
    f = np.array([max_period ** (-i / half) for i in range(half)])
    out = np.concatenate([np.cos(t[:, None] * f), np.sin(t[:, None] * f)], axis=1)
    return np.concatenate([out, np.zeros((len(t), dim % 2))], axis=1)


@pytest.mark.parametrize("dim", [8, 9, 256])
def test_timestep_embedding_against_the_dit_formula(dim):
    t = np.array([0.0, 1.0, 17.5, 999.0])
    got = timestep_embedding(torch.tensor(t), dim).double().numpy()
    np.testing.assert_allclose(got, _dit_timestep_features(t, dim), atol=2e-4)


def _mae_sincos_2d(dim: int, grid: int) -> np.ndarray:
    """The MAE/DiT numpy table: token (row r, col c) = [emb(c), emb(r)], emb(p) = [sin(p w), cos(p w)],
    w_i = 10000^(-i / (dim/4)), float64."""
    quarter = dim // 4
    w = np.array([10000.0 ** (-i / quarter) for i in range(quarter)])
    rows = []
    for r in range(grid):
        for c in range(grid):
            rows.append(np.concatenate([np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)]))
    return np.array(rows)


@pytest.mark.parametrize("dim,grid", [(16, 4), (64, 64)])
def test_sincos_2d_against_the_mae_formula(dim, grid):
    want = _mae_sincos_2d(dim, grid)
    # float64 angles, one float32 rounding at the end: within float32's half ulp of values <= 1
    np.testing.assert_allclose(sincos_2d(dim, grid).double().numpy(), want, rtol=0, atol=6.1e-8)


# ----------------------------------------------------------------------------- Gaussian diffusion
T = 50


def _diffusion(**kw) -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(num_timesteps=T, **kw))


def _abar() -> np.ndarray:
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    return betas, np.cumprod(1 - betas)


def test_q_sample_mean_and_std_are_the_closed_form():
    d = _diffusion()
    betas, abar = _abar()
    np.testing.assert_allclose(d.betas.numpy(), betas, rtol=1e-12)
    t = torch.tensor([0, 10, 49])
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    a = torch.from_numpy(abar[t.numpy()])[:, None]
    torch.testing.assert_close(d.q_sample(x0, t, torch.zeros_like(eps)), a.sqrt() * x0)
    torch.testing.assert_close(d.q_sample(torch.zeros_like(x0), t, eps), (1 - a).sqrt() * eps)


def test_posterior_is_bayes_rule_for_gaussians():
    """q(x_{t-1} | x_t, x0) from conditioning N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) on
    x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t); t = 0 is x0 exactly (log variance clipped to t=1's)."""
    d = _diffusion()
    betas, abar = _abar()
    x0, xt = torch.randn(T, 3, dtype=torch.float64), torch.randn(T, 3, dtype=torch.float64)
    t = torch.arange(T)
    mean, var, logvar = d.q_posterior_mean_variance(x0, xt, t)
    prev = np.concatenate([[1.0], abar[:-1]])
    prec = np.where(t.numpy() > 0, 1 / np.maximum(1 - prev, 1e-300) + (1 - betas) / betas, np.inf)
    want_var = 1 / prec
    np.testing.assert_allclose(var[:, 0].numpy(), want_var, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(logvar[1:, 0].numpy(), np.log(want_var[1:]), rtol=1e-9)
    assert logvar[0, 0].item() == pytest.approx(math.log(want_var[1]), rel=1e-9)
    c0 = torch.from_numpy(want_var[1:] * np.sqrt(prev[1:]) / (1 - prev[1:]))[:, None]
    ct = torch.from_numpy(want_var[1:] * np.sqrt(1 - betas[1:]) / betas[1:])[:, None]
    torch.testing.assert_close(mean[1:], c0 * x0[1:] + ct * xt[1:])
    torch.testing.assert_close(mean[0], x0[0])


def test_reverse_log_variance_fixed_large_and_learned_ends():
    d = _diffusion(learn_sigma=False)
    betas, _ = _abar()
    x, t = torch.zeros(T, 2, dtype=torch.float64), torch.arange(T)
    post1 = d.posterior_variance[1].item()
    large = d.model_log_variance(None, t, x)[:, 0].numpy()
    np.testing.assert_allclose(large, np.log(np.concatenate([[post1], betas[1:]])), rtol=1e-12)
    small = d.model_log_variance(None, t, x)
    dl = _diffusion()
    ones = torch.ones(T, 2, dtype=torch.float64)
    torch.testing.assert_close(dl.model_log_variance(ones, t, x)[:, 0], torch.from_numpy(np.log(betas)))
    log_small = dl.posterior_log_variance_clipped
    torch.testing.assert_close(dl.model_log_variance(-ones, t, x)[:, 0], log_small)
    mid = dl.model_log_variance(0 * ones, t, x)[:, 0]
    torch.testing.assert_close(mid, (torch.from_numpy(np.log(betas)) + log_small) / 2)
    assert small.shape == (T, 1)


def test_v_target_and_its_inverse():
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022); from the true v both come back."""
    d = _diffusion(objective="v")
    _, abar = _abar()
    t = torch.tensor([0, 25, 49])
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    a = torch.from_numpy(abar[t.numpy()])[:, None]
    v = d.training_target(x0, eps, t)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    x0_hat, eps_hat = d.predict_x0_eps(v, d.q_sample(x0, t, eps), t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_hybrid_loss_weights_and_stop_gradient():
    """loss = mse + lambda * T * L_t (improved DDPM's L_hybrid); L_t's gradient reaches only the variance."""
    d = _diffusion()
    x0, eps = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    t = torch.tensor([0, 3, 20, 49])
    out = torch.randn(4, 4, 3, 3, requires_grad=True)
    terms = d.losses_from_output(out, x0, d.q_sample(x0, t, eps), t, eps)
    torch.testing.assert_close(terms["loss"], terms["mse"] + 1e-3 * T * terms["vb"])
    (grad,) = torch.autograd.grad(terms["vb"].sum(), out)
    assert torch.count_nonzero(grad[:, :2]) == 0 and torch.count_nonzero(grad[:, 2:]) > 0


def test_normal_kl_against_torch_distributions():
    m1, m2, l1, l2 = (torch.randn(10, dtype=torch.float64) for _ in range(4))
    P = torch.distributions.Normal
    want = torch.distributions.kl_divergence(P(m1, (0.5 * l1).exp()), P(m2, (0.5 * l2).exp()))
    torch.testing.assert_close(normal_kl(m1, l1, m2, l2), want)


def test_discretised_likelihood_sums_to_one_over_the_256_bins():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in [(0.3, -2.0), (-0.9, -4.0), (0.0, 0.5)]:
        m, s = torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        lp = discretized_gaussian_log_likelihood(levels, m, s)
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        P = torch.distributions.Normal(mean, math.exp(log_scale))
        k = round((mean + 1) * 127.5)  # the level nearest the mean
        mid = (P.cdf(levels[k] + 1 / 255) - P.cdf(levels[k] - 1 / 255)).log()
        assert lp[k].item() == pytest.approx(mid.item(), rel=1e-6)


def test_decoder_nll_uses_the_standard_deviation_and_vb_picks_it_at_t0():
    x0 = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    mean, logvar = (
        torch.tensor([[0.01, 0.98]], dtype=torch.float64),
        torch.full((1, 2), -6.0, dtype=torch.float64),
    )
    P = torch.distributions.Normal(mean, math.exp(-3.0))
    lp0 = (P.cdf(x0 + 1 / 255) - P.cdf(x0 - 1 / 255)).log()[0, 0]
    lp1 = (1 - P.cdf(x0 - 1 / 255)).log()[0, 1]
    want = -(lp0 + lp1).item() / 2 / math.log(2)
    assert decoder_nll_bits(x0, mean, logvar).item() == pytest.approx(want, rel=1e-9)
    d = _diffusion()
    x0 = torch.rand(3, 2, 2, 2) * 2 - 1
    t, out = torch.tensor([0, 1, 0]), torch.randn(3, 4, 2, 2)
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    vb = d.vb_terms(out, x0, xt, t)
    p = d.p_mean_variance(out, xt, t)
    nll = decoder_nll_bits(x0, p["mean"], p["log_variance"].expand_as(x0))
    torch.testing.assert_close(vb[[0, 2]], nll[[0, 2]])
    true_mean, _, true_logvar = d.q_posterior_mean_variance(x0, xt, t)
    kl = normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"]).mean((1, 2, 3)) / math.log(2)
    torch.testing.assert_close(vb[1], kl[1])
