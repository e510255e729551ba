"""Bad input to the model's guidance and (un)patchify entry points is refused with a message that
names the problem; the boundaries of the accepted ranges are accepted (found by mutation testing)."""

from __future__ import annotations

import pytest
import torch

from dit_core.models import DiT, unpatchify

TINY = dict(input_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=1, num_heads=2, num_classes=5)


def _batch(model: DiT, n: int):
    x = torch.randn(n, model.in_channels, 8, 8)
    return x, torch.full((n,), 10.0), torch.arange(n) % (model.num_classes + 1)


def test_guidance_needs_an_even_batch():
    model = DiT(**TINY).eval()
    with pytest.raises(ValueError, match=r"^forward_with_cfg needs an even batch \[cond; uncond\], got 3$"):
        model.forward_with_cfg(*_batch(model, 3), cfg_scale=2.0)


def test_guidance_needs_the_null_class():
    model = DiT(**TINY, class_dropout_prob=0.0).eval()
    with pytest.raises(ValueError, match="^classifier-free guidance needs the null class: build with "):
        model.forward_with_cfg(*_batch(model, 2), cfg_scale=2.0)


@pytest.mark.parametrize("g", [0, -1, 5])
def test_guide_channels_outside_1_to_out_channels_are_refused(g):
    model = DiT(**TINY).eval()  # out_channels = 4 (learn_sigma)
    with pytest.raises(ValueError, match=rf"^guide_channels must be in 1\.\.4, got {g}$"):
        model.forward_with_cfg(*_batch(model, 2), cfg_scale=2.0, guide_channels=g)


@pytest.mark.parametrize("g", [1, 4])
def test_guide_channels_at_the_boundaries_are_accepted(g):
    model = DiT(**TINY).eval()
    with torch.no_grad():
        out = model.forward_with_cfg(*_batch(model, 2), cfg_scale=2.0, guide_channels=g)
    assert out.shape == (2, 4, 8, 8)


def test_unpatchify_refuses_a_non_square_token_count_without_hw():
    with pytest.raises(ValueError, match=r"^6 tokens do not form a square grid; pass hw=\(grid_h, grid_w\)$"):
        unpatchify(torch.zeros(1, 6, 4), 2, 1)
    assert unpatchify(torch.zeros(1, 6, 4), 2, 1, hw=(2, 3)).shape == (1, 1, 4, 6)


def test_a_latent_with_one_side_not_divisible_by_the_patch_is_refused():
    model = DiT(**{**TINY, "patch_size": 4}, pos_embed="rope").eval()
    with pytest.raises(ValueError, match=r"^latent size 8x6 is not divisible by patch_size=4$"):
        model(torch.randn(1, 2, 8, 6), torch.ones(1), torch.zeros(1, dtype=torch.long))


def test_a_sincos_model_refuses_another_width():
    model = DiT(**TINY).eval()
    with pytest.raises(
        ValueError, match=r"^latent size 8x16 differs from input_size=8; .* or use pos_embed='rope'$"
    ):
        model(torch.randn(1, 2, 8, 16), torch.ones(1), torch.zeros(1, dtype=torch.long))


def test_a_wrong_channel_count_is_refused():
    model = DiT(**TINY).eval()
    with pytest.raises(ValueError, match=r"^x has 3 channels, the model expects in_channels=2$"):
        model(torch.randn(1, 3, 8, 8), torch.ones(1), torch.zeros(1, dtype=torch.long))
