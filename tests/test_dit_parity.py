"""DiT against diffusers' `DiTTransformer2DModel` as a numerical reference, on random weights.

The adaLN-Zero init makes a fresh DiT output exactly 0 (and hides most bugs), so every parameter is
re-drawn at random first. Models run in float64 and agree to round-off. Also: position information
is really used (a DiT without it would be permutation-equivariant over patches).
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.dit_transformer_2d import DiTTransformer2DModel

from dit_core.convert import (
    diffusers_kwargs,
    diffusers_to_dit,
    dit_to_diffusers,
    use_official_timestep_frequencies,
)
from dit_core.models import DiT, patchify, unpatchify

#: two shapes: patch 2 / patch 4, different depth, width, heads, channels, classes; learn_sigma on
CONFIGS = {
    "p2-d2-w64": dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                      num_classes=10, learn_sigma=True),
    "p4-d3-w96": dict(input_size=16, patch_size=4, in_channels=3, hidden_size=96, depth=3, num_heads=3,
                      num_classes=7, learn_sigma=True),
}  # fmt: skip
#: max |difference| / max |output|: float64 round-off. The float32 timestep features agree bitwise
#: (the two implementations' frequencies differ only by a power-of-two division); measured ~1e-15.
TOL = 1e-12


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every trainable parameter ~ N(0, 0.15^2) (embedding rows N(0, 1)); frozen ones (pos_embed) kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                std = 1.0 if "embedding_table" in name else 0.15
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
    return model


def dit(name: str, seed: int = 0, **kw) -> DiT:
    torch.manual_seed(seed)
    return randomize_(DiT(**{**CONFIGS[name], **kw}), seed).double().eval()


def hf_from(model: DiT) -> DiTTransformer2DModel:
    hf = DiTTransformer2DModel(**diffusers_kwargs(model.config)).double().eval()
    hf.load_state_dict(dit_to_diffusers(model.state_dict()), strict=True)
    use_official_timestep_frequencies(hf)
    return hf


def inputs(model: DiT, n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    s, c = model.input_size, model.in_channels
    x = torch.randn(n, c, s, s, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 999
    y = torch.randint(0, model.num_classes + 1, (n,), generator=g)  # the null label included
    y[-1] = model.num_classes
    return x, t, y


def hf_out(hf: DiTTransformer2DModel, x, t, y) -> torch.Tensor:
    return hf(x, timestep=t, class_labels=y).sample


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", CONFIGS)
def test_dit_weights_in_diffusers_give_the_same_output(name):
    model = dit(name)
    hf = hf_from(model)
    x, t, y = inputs(model)
    with torch.no_grad():
        ours, ref = model(x, t, y), hf_out(hf, x, t, y)
    assert ours.shape == ref.shape == (4, 2 * model.in_channels, model.input_size, model.input_size)
    assert ref.abs().max() > 0.1  # random weights: a non-trivial output
    assert rel_err(ours, ref) < TOL


@pytest.mark.parametrize("name", CONFIGS)
def test_diffusers_weights_in_dit_give_the_same_output(name):
    """Start from a random diffusers model (its per-block embedder copies tied, as DiT has one)."""
    cfg = DiT(**CONFIGS[name]).config
    torch.manual_seed(5)
    hf = randomize_(DiTTransformer2DModel(**diffusers_kwargs(cfg)), seed=7).double().eval()
    blocks = hf.transformer_blocks
    for b in blocks[1:]:
        b.norm1.emb.load_state_dict(blocks[0].norm1.emb.state_dict())
    use_official_timestep_frequencies(hf)
    model = DiT(**CONFIGS[name]).double().eval()
    model.load_state_dict(diffusers_to_dit(hf.state_dict(), cfg), strict=True)
    x, t, y = inputs(model, seed=3)
    with torch.no_grad():
        ours, ref = model(x, t, y), hf_out(hf, x, t, y)
    assert ref.abs().max() > 0.1
    assert rel_err(ours, ref) < TOL


@pytest.mark.parametrize("name", CONFIGS)
def test_round_trip_is_exact(name):
    model = dit(name)
    cfg = model.config
    back = diffusers_to_dit(dit_to_diffusers(model.state_dict()), cfg)
    state = model.state_dict()
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(back[k].to(v.dtype), v), k


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_classifier_free_guidance_matches_diffusers_combined_by_the_formula(name, scale):
    model = dit(name, seed=2)
    hf = hf_from(model)
    x, t, y = inputs(model, n=3, seed=4)
    xx = torch.cat([x, torch.randn_like(x)])  # the second half is ignored by forward_with_cfg
    tt, yy = torch.cat([t, t]), torch.cat([y, torch.full_like(y, model.num_classes)])
    c = model.in_channels
    with torch.no_grad():
        ours = model.forward_with_cfg(xx, tt, yy, cfg_scale=scale)
        ref = hf_out(hf, torch.cat([x, x]), tt, yy)
    cond, uncond = ref[:, :c].chunk(2)
    guided = uncond + scale * (cond - uncond)
    expected = torch.cat([torch.cat([guided, guided]), ref[:, c:]], dim=1)  # variance unguided
    assert rel_err(ours, expected) < TOL
    if scale != 1.0:  # guidance is not a no-op here
        assert rel_err(cond, guided) > 1e-2


def test_diffusers_own_timestep_frequencies_differ_from_the_official_ones():
    """Why `use_official_timestep_frequencies` exists: diffusers' DiT divides by 127, not 128."""
    model = dit("p2-d2-w64")
    hf = hf_from(model)
    for b in hf.transformer_blocks:
        b.norm1.emb.time_proj.downscale_freq_shift = 1  # diffusers' default for DiT
    x, t, y = inputs(model)
    with torch.no_grad():
        assert rel_err(model(x, t, y), hf_out(hf, x, t, y)) > 1e-3


def test_untied_diffusers_embedders_are_refused():
    cfg = DiT(**CONFIGS["p2-d2-w64"]).config
    hf = randomize_(DiTTransformer2DModel(**diffusers_kwargs(cfg)), seed=1)
    with pytest.raises(ValueError, match="copies of timestep_embedder.linear_1.weight differ"):
        diffusers_to_dit(hf.state_dict(), cfg)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(pos_embed="rope"), "pos_embed='rope' (diffusers' DiT uses fixed sin-cos positions)"),
        (
            dict(block_type="cross_attention"),
            "block_type='cross_attention' (diffusers has only 'adaln_zero')",
        ),
        (dict(mlp_ratio=2.0), "mlp_ratio=2.0 (diffusers' DiT MLP is 4x wide)"),
        (dict(class_dropout_prob=0.0), "class_dropout_prob=0 (diffusers' DiT always has the null class row)"),
    ],
)
def test_models_without_a_diffusers_equivalent_are_refused(kw, msg):
    cfg = DiT(**{**CONFIGS["p2-d2-w64"], **kw}).config
    with pytest.raises(ValueError) as e:
        diffusers_kwargs(cfg)
    assert str(e.value) == f"this DiT has no diffusers equivalent: {msg}"


# ---------------------------------------------------------------- position information
def permute_patches(x: torch.Tensor, p: int, perm: torch.Tensor) -> torch.Tensor:
    """Shuffle the `p x p` patches of `x (N, C, H, W)` (square grid) by the token permutation `perm`."""
    return unpatchify(patchify(x, p)[:, perm], p, x.shape[1])


def shuffle_error(model) -> float:
    """Relative distance between f(shuffle(x)) and shuffle(f(x)) for one fixed patch permutation."""
    x, t, y = inputs(model)
    p = model.patch_size
    perm = torch.randperm(model.config.num_tokens(), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shuffled_out = permute_patches(model(x, t, y), p, perm)
        out_of_shuffled = model(permute_patches(x, p, perm), t, y)
    return rel_err(out_of_shuffled, shuffled_out)


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_the_output_depends_on_where_each_patch_is(pos_embed):
    """Without position information a DiT is permutation-equivariant over patches:
    f(shuffle(x)) == shuffle(f(x)). A DiT that uses positions must break that by far."""
    model = dit("p2-d2-w64", pos_embed=pos_embed)
    assert shuffle_error(model) > 0.05


def test_without_positions_the_dit_is_equivariant():
    """The control for the test above: with the sin-cos table zeroed the same check finds equality,
    so its failure really means "position information is used"."""
    model = dit("p2-d2-w64")
    with torch.no_grad():
        model.pos_embed.zero_()
    assert shuffle_error(model) < 1e-10
