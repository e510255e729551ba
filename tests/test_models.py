"""DiT model family: official structure, checkpoint compatibility, conditioning, RoPE, block types."""

from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
import pytest
import torch

from dit_core.blocks import BLOCK_CLASSES
from dit_core.config import ModelConfig
from dit_core.models import (
    DiT,
    DiT_models,
    DiTConfig,
    load_official_checkpoint,
    model_config,
    official_names,
    patchify,
    unpatchify,
)
from dit_core.pos_embed import sincos_2d, timestep_embedding
from dit_core.rope import apply_rope, rope_angles
from dit_core.spec import BLOCK_TYPES, FAMILIES, PATCH_SIZES, non_embedding_param_count, param_count

TINY = dict(depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8, in_channels=4, num_classes=10)


def tiny(**kw) -> DiT:
    return DiT.from_config(model_config(**{**TINY, **kw}))


def randomize(model: DiT, seed: int = 0) -> DiT:
    """Give every trainable tensor non-zero random values (zero-init layers would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def inputs(n=2, c=4, h=8, w=None, seed=0, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w or h, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, t, y


# ----------------------------------------------------------------------------- structure / init


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_zero_output_at_init(block_type, pos_embed):
    model = tiny(block_type=block_type, pos_embed=pos_embed)
    x, t, y = inputs()
    out = model(x, t, y)
    assert out.shape == (2, 8, 8, 8)
    assert torch.count_nonzero(out) == 0


def test_official_names_and_shapes():
    assert len(DiT_models) == 12 and set(DiT_models) == set(official_names())
    expected = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    for name in DiT_models:
        size, patch = name[4:].split("/")
        cfg = model_config(name)
        assert (cfg.depth, cfg.hidden_size, cfg.num_heads) == expected[size]
        assert cfg.patch_size == int(patch)


def test_a_runs_logged_shape_is_named_as_the_sweep_names_it():
    """MLflow keeps params as strings ("12", "3.0", "None"): the paper's name for its shapes, the
    d/w label for others (or when the heads were not logged), None without a whole shape."""
    from dit_core.spec import model_label_of_params

    p = {"model.depth": "12", "model.hidden_size": "768", "model.num_heads": "12", "model.patch_size": "4"}
    assert model_label_of_params(p) == "DiT-B/4"
    assert model_label_of_params({**p, "model.num_heads": "None"}) == "DiT-d12-w768/4"
    assert model_label_of_params({**p, "model.depth": "3.0"}) == "DiT-d3-w768/4"
    for key in ("model.depth", "model.hidden_size", "model.patch_size"):
        assert model_label_of_params({k: v for k, v in p.items() if k != key}) is None
        assert (
            model_label_of_params({**p, key: None}) is None and model_label_of_params({**p, key: "x"}) is None
        )


def test_factory_builds_with_overrides():
    model = DiT_models["DiT-S/8"](input_size=16, num_classes=10)
    assert model.config == model_config("DiT-S/8", input_size=16, num_classes=10)
    assert model.pos_embed.shape == (1, 4, 384)
    assert (model.in_channels, model.out_channels, model.patch_size) == (4, 8, 8)


def test_xl2_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = DiT()  # official defaults = DiT-XL/2, 32x32x4 latents
    assert sum(p.numel() for p in model.parameters()) == 675_129_632


@pytest.mark.parametrize(
    "cfg",
    [
        dict(depth=3, hidden_size=96, num_heads=3, patch_size=4, input_size=16, in_channels=1, num_classes=7),
        dict(depth=2, hidden_size=64, num_heads=2, patch_size=2, input_size=8, learn_sigma=False),
        dict(depth=1, hidden_size=32, num_heads=2, patch_size=1, input_size=4, class_dropout_prob=0.0),
        dict(depth=2, hidden_size=48, num_heads=4, patch_size=2, input_size=8, mlp_ratio=2.5),
        dict(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=8, frequency_embedding_size=16),
        dict(depth=1, hidden_size=16, num_heads=1, patch_size=4, input_size=8, frequency_embedding_size=7),
    ],
)
@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_param_count_matches_numel(cfg, block_type):
    config = model_config(**cfg, block_type=block_type)
    model = DiT.from_config(config)
    assert param_count(config) == sum(p.numel() for p in model.parameters())
    assert param_count(config, include_pos_embed=False) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    embeddings = ("pos_embed", "t_embedder.", "y_embedder.")  # what Kaplan et al. leave out of N
    assert non_embedding_param_count(config) == sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith(embeddings)
    )


def test_frequency_embedding_size_sets_the_timestep_mlp():
    model = tiny(frequency_embedding_size=32)
    assert model.t_embedder.mlp[0].weight.shape == (64, 32)
    x, t, y = inputs()
    assert model(x, t, y).shape == (2, 8, 8, 8)
    default = tiny()
    assert default.t_embedder.mlp[0].weight.shape == (64, 256)  # the paper's 256 stays the default
    assert param_count(default.config) - param_count(model.config) == (256 - 32) * 64
    with pytest.raises(ValueError, match="frequency_embedding_size"):
        model_config(**TINY, frequency_embedding_size=1)


def expected_official_shapes(depth, d, c, p, t, num_classes, mlp_hidden, out_c):
    """The official DiT state_dict layout, written out from the checkpoint's key list."""
    shapes = {
        "pos_embed": (1, t, d),
        "x_embedder.proj.weight": (d, c, p, p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (num_classes + 1, d),
        "final_layer.linear.weight": (p * p * out_c, d),
        "final_layer.linear.bias": (p * p * out_c,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes |= {
            b + "attn.qkv.weight": (3 * d, d),
            b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d),
            b + "attn.proj.bias": (d,),
            b + "mlp.fc1.weight": (mlp_hidden, d),
            b + "mlp.fc1.bias": (mlp_hidden,),
            b + "mlp.fc2.weight": (d, mlp_hidden),
            b + "mlp.fc2.bias": (d,),
            b + "adaLN_modulation.1.weight": (6 * d, d),
            b + "adaLN_modulation.1.bias": (6 * d,),
        }
    return shapes


def test_state_dict_matches_official_layout_xl2():
    with torch.device("meta"):
        model = DiT_models["DiT-XL/2"]()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_official_shapes(28, 1152, 4, 2, 256, 1000, 4608, 8)
    assert not model.pos_embed.requires_grad


def test_state_dict_matches_official_layout_custom():
    model = tiny(depth=3, hidden_size=32, num_heads=2, patch_size=4, input_size=16, in_channels=1)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_official_shapes(3, 32, 1, 4, 16, 10, 128, 2)


@pytest.mark.parametrize("layout", ["plain", "training"])
def test_checkpoint_round_trip_exact(tmp_path, layout):
    src = randomize(tiny())
    state = src.state_dict()
    path = tmp_path / "ckpt.pt"
    if layout == "plain":  # released files: the EMA state dict itself
        torch.save(state, path)
    else:  # official train.py checkpoints: EMA is what sampling uses
        junk = {k: torch.zeros_like(v) for k, v in state.items()}
        torch.save({"model": junk, "ema": state, "opt": {}, "args": argparse.Namespace(lr=1e-4)}, path)
    dst = tiny()
    dst.load_state_dict(load_official_checkpoint(path), strict=True)
    x, t, y = inputs()
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(src(x, t, y), dst(x, t, y))
    assert torch.count_nonzero(dst(x, t, y)) > 0


def test_load_checkpoint_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="state dict"):
        load_official_checkpoint(path)


# ----------------------------------------------------------------------------- reference formulas


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    emb = timestep_embedding(t, 256).numpy()
    freqs = np.exp(-math.log(10000) * np.arange(128) / 128)
    args = t.numpy()[:, None].astype(np.float64) * freqs[None]
    np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], 1), atol=2e-4)
    assert torch.equal(timestep_embedding(t), timestep_embedding(t, 256))  # the paper's 256 by default
    # an odd width: dim // 2 = 3 frequencies exp(-ln(10^4) i / 3), then one zero column
    odd = timestep_embedding(t, 7).numpy()
    args = t.numpy()[:, None].astype(np.float64) * np.exp(-math.log(10000) * np.arange(3) / 3)[None]
    np.testing.assert_allclose(odd[:, :6], np.concatenate([np.cos(args), np.sin(args)], 1), atol=2e-4)
    assert odd.shape == (4, 7) and not odd[:, 6].any()


def test_sincos_2d_matches_mae_formula():
    d, g = 16, 3
    table = sincos_2d(d, g).numpy()
    omega = 1.0 / 10000 ** (np.arange(d // 4) / (d / 4))
    for r in range(g):
        for c in range(g):
            col = np.concatenate([np.sin(c * omega), np.cos(c * omega)])
            row = np.concatenate([np.sin(r * omega), np.cos(r * omega)])
            np.testing.assert_allclose(table[r * g + c], np.concatenate([col, row]), atol=1e-6)


def test_pos_embed_is_the_fixed_table():
    model = tiny()
    assert torch.equal(model.pos_embed[0], sincos_2d(64, 4))


# ----------------------------------------------------------------------------- (un)patchify


@pytest.mark.parametrize("hw,p", [((8, 8), 2), ((12, 8), 4), ((6, 10), 1)])
def test_unpatchify_inverts_patchify(hw, p):
    x = torch.randn(2, 3, *hw)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (hw[0] // p) * (hw[1] // p), p * p * 3)
    assert torch.equal(unpatchify(tokens, p, 3, (hw[0] // p, hw[1] // p)), x)


def test_patch_layout_agrees_with_conv_embedding():
    """The conv patch embedding is a linear map on patchify's (row, col, channel) layout."""
    model = randomize(tiny())
    x = torch.randn(2, 4, 8, 8)
    w = model.x_embedder.proj.weight  # (D, C, p, p)
    as_linear = patchify(x, 2) @ w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).T + model.x_embedder.proj.bias
    torch.testing.assert_close(model.x_embedder(x), as_linear, rtol=1e-5, atol=1e-5)


def test_batch_permutation_equivariance():
    model = randomize(tiny()).eval()
    x, t, y = inputs(n=4)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y)[perm], model(x[perm], t[perm], y[perm]))


# ----------------------------------------------------------------------------- conditioning


def test_cfg_scale_one_is_the_conditional_output():
    model = randomize(tiny()).eval()
    x, t, y = inputs(n=2)
    xx = torch.cat([x, x])
    yy = torch.cat([y, torch.full_like(y, 10)])
    tt = torch.cat([t, t])
    with torch.no_grad():
        cond = model(x, t, y)
        for g in (None, 3):
            out = model.forward_with_cfg(xx, tt, yy, cfg_scale=1.0, guide_channels=g)
            torch.testing.assert_close(out[:2], cond, rtol=1e-5, atol=1e-6)
            g = 4 if g is None else g  # the uncond half carries the guided channels too
            torch.testing.assert_close(out[2:, :g], cond[:, :g], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("guide_channels", [None, 3])
def test_cfg_mixes_only_the_guided_channels(guide_channels):
    model = randomize(tiny()).eval()
    x, t, y = inputs(n=2)
    s = 4.0
    with torch.no_grad():
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, 10))
        out = model.forward_with_cfg(
            torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y * 0 + 10]), s, guide_channels
        )
    g = 4 if guide_channels is None else guide_channels
    torch.testing.assert_close(
        out[:2, :g], uncond[:, :g] + s * (cond[:, :g] - uncond[:, :g]), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(out[:2, g:], cond[:, g:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[2:, :g], out[:2, :g])
    torch.testing.assert_close(out[2:, g:], uncond[:, g:], rtol=1e-5, atol=1e-6)


def test_label_dropout_uses_global_rng_and_force_drop():
    model = tiny(class_dropout_prob=0.5)
    emb = model.y_embedder
    labels = torch.arange(10).repeat(100)
    torch.manual_seed(0)
    a = emb.token_drop(labels)
    torch.manual_seed(0)
    b = emb.token_drop(labels)
    assert torch.equal(a, b)
    frac = (a == 10).float().mean().item()
    assert 0.45 < frac < 0.55
    assert torch.equal(a[a != 10], labels[a != 10])
    forced = emb(labels[:4], train=False, force_drop_ids=torch.tensor([1, 0, 1, 0]))
    torch.testing.assert_close(forced[0], emb.embedding_table.weight[10])
    torch.testing.assert_close(forced[1], emb.embedding_table.weight[1])
    model.eval()  # eval mode: no dropout
    assert torch.equal(emb(labels, train=model.training), emb.embedding_table(labels))


# ----------------------------------------------------------------------------- RoPE


def test_rope_model_trains_at_16_and_samples_at_other_sizes():
    torch.manual_seed(0)
    model = tiny(pos_embed="rope", input_size=16)
    assert model.pos_embed is None and "pos_embed" not in model.state_dict()
    randomize(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, y = inputs(n=2, h=16)
    model(x, t, y).square().mean().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        for hw in [(32, 32), (24, 16)]:
            x2, t2, y2 = inputs(n=2, h=hw[0], w=hw[1])
            out = model(x2, t2, y2)
            assert out.shape == (2, 8, *hw) and torch.isfinite(out).all()


def test_rope_attention_depends_only_on_relative_offsets():
    hd = 8
    cos, sin = rope_angles(hd, 6, 6)
    q, k = torch.randn(hd), torch.randn(hd)

    def score(i, j):  # token index = row * 6 + col
        qi = apply_rope(q.expand(36, hd), cos, sin)[i]
        kj = apply_rope(k.expand(36, hd), cos, sin)[j]
        return (qi * kj).sum()

    # same (d_row, d_col) = (1, 2) at different absolute places
    torch.testing.assert_close(score(0 * 6 + 0, 1 * 6 + 2), score(3 * 6 + 1, 4 * 6 + 3), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(0, 1 * 6 + 2), score(0, 2 * 6 + 1))  # row and column axes differ


def test_rope_tables_and_rotation_are_the_closed_form():
    """Token (r, c) of a row-major grid: pair j < d/4 turns by r f_j, pair d/4 + j by c f_j, with
    f_j = 10000^(-j / (d/4)), both halves of a pair sharing the angle; prefix tokens do not turn.
    Angles in float64: float32 ones are off by up to 7e-7 at column 63. `apply_rope` turns each
    (first-half, second-half) channel pair counter-clockwise: (a, b) -> (a cos - b sin, b cos + a sin)."""
    hd, gh, gw, prefix = 32, 3, 64, 2
    cos, sin = rope_angles(hd, gh, gw, num_prefix=prefix)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (prefix + gh * gw, hd)
    f = 10000.0 ** (-np.arange(hd // 4) / (hd // 4))
    r, c = np.divmod(np.arange(gh * gw), gw)
    ang = np.concatenate([r[:, None] * f, c[:, None] * f], axis=1)
    ang = np.concatenate([np.zeros((prefix, hd // 2)), ang])  # (T, d/2)
    ang = np.concatenate([ang, ang], axis=1)  # (T, d)
    np.testing.assert_allclose(cos.numpy(), np.cos(ang), rtol=0, atol=1e-7)
    np.testing.assert_allclose(sin.numpy(), np.sin(ang), rtol=0, atol=1e-7)
    x = torch.randn(2, prefix + gh * gw, hd, dtype=torch.float64)
    a, b = x[..., : hd // 2], x[..., hd // 2 :]
    ch, sh = torch.from_numpy(np.cos(ang[:, : hd // 2])), torch.from_numpy(np.sin(ang[:, : hd // 2]))
    expected = torch.cat([a * ch - b * sh, b * ch + a * sh], dim=-1)
    torch.testing.assert_close(apply_rope(x, cos, sin), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="head dim divisible by 4 .*got 6"):
        rope_angles(6, 2, 2)


def test_sincos_model_rejects_other_sizes():
    model = tiny()
    x, t, y = inputs(h=16)
    with pytest.raises(ValueError, match="pos_embed='rope'"):
        model(x, t, y)


# ----------------------------------------------------------------------------- training paths


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_checkpointed_blocks_give_equal_gradients(block_type):
    torch.manual_seed(0)
    plain = randomize(tiny(block_type=block_type, class_dropout_prob=0.0))
    ckpt = tiny(block_type=block_type, class_dropout_prob=0.0, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = inputs()
    for m in (plain, ckpt):
        m.train()
        m(x, t, y).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        if a.grad is None:
            assert b.grad is None, name
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert ckpt.config == plain.config  # checkpointing is not part of the model identity


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_all_block_types_learn(block_type):
    """Every parameter receives gradient once the zero-initialised gates have moved (3rd step)."""
    torch.manual_seed(0)
    model = tiny(block_type=block_type)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t, y = inputs()
    for _ in range(3):
        opt.zero_grad()
        (model(x, t, y) - 1).square().mean().backward()
        opt.step()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(hidden_size=65, num_heads=4), "divisible by num_heads"),
        (dict(input_size=9), "does not divide input_size"),
        (dict(pos_embed="rope", hidden_size=24, num_heads=4), "divisible by 4"),
        (dict(block_type="bogus"), "block_type"),
        (dict(pos_embed="learned"), "pos_embed"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        model_config(**{**TINY, **kw})


def test_unknown_names_and_fields_list_valid_ones():
    with pytest.raises(ValueError, match="DiT-XL/2"):
        model_config("DiT-M/2")
    with pytest.raises(ValueError, match="hidden_size"):
        model_config("DiT-S/2", width=3)


def test_config_round_trip():
    cfg = model_config("DiT-B/4", input_size=16, block_type="adaln", pos_embed="rope")
    assert DiTConfig(**dataclasses.asdict(cfg)) == cfg
    assert DiT.from_config(model_config(**TINY)).config == model_config(**TINY)


def test_dit_from_config_official_keywords_and_factories_agree():
    cfg = model_config(**TINY, block_type="adaln")
    torch.manual_seed(0)
    a = DiT(cfg)
    torch.manual_seed(0)
    b = DiT(**dataclasses.asdict(cfg))  # the official keyword signature
    torch.manual_seed(0)
    c = DiT(model_config(**TINY), block_type="adaln")  # keywords override the config
    assert a.config == b.config == c.config == cfg
    for other in (b, c):
        assert all(torch.equal(a.state_dict()[k], v) for k, v in other.state_dict().items())
    assert (a.in_channels, a.out_channels, a.num_classes, a.patch_size, a.input_size) == (4, 8, 10, 2, 8)
    from dit_core import models

    assert models.DiT_S_8(input_size=16).config == model_config("DiT-S/8", input_size=16)
    for size in FAMILIES:
        for p in PATCH_SIZES:
            assert callable(getattr(models, f"DiT_{size}_{p}"))
    with pytest.raises(TypeError, match="DiTConfig"):
        DiT(32)
    with pytest.raises(ValueError, match=r"DiTConfig: unknown key\(s\) \['widht'\]"):
        DiT(widht=3)


def test_grad_checkpointing_is_a_switch_on_the_built_model():
    model = tiny()
    model.grad_checkpointing = True
    assert model.config.grad_checkpointing and model.config == model_config(**TINY)


def test_block_classes_cover_the_spec_and_model_config_mirrors_dit_config():
    assert set(BLOCK_CLASSES) == set(BLOCK_TYPES)
    dit = {f.name for f in dataclasses.fields(DiTConfig)} - {"grad_checkpointing"}
    assert {f.name for f in dataclasses.fields(ModelConfig)} - {"name"} == dit
    m = ModelConfig(name="DiT-S/2", frequency_embedding_size=64, mlp_ratio=2.0)
    resolved = m.resolve(input_size=16, in_channels=1, num_classes=10, learn_sigma=False)
    assert resolved.to_dit_config() == model_config(
        "DiT-S/2", input_size=16, in_channels=1, num_classes=10, learn_sigma=False,
        frequency_embedding_size=64, mlp_ratio=2.0,
    )  # fmt: skip


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_runs_under_bf16_autocast(pos_embed):
    model = randomize(tiny(pos_embed=pos_embed)).eval()
    x, t, y = inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    ref = model(x, t, y).detach()
    assert out.shape == ref.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
