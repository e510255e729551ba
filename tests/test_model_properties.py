"""Properties every DiT block design must have, on random weights: samples are processed
independently, the output depends on the timestep and the label, a scalar timestep is broadcast,
and `force_drop_ids` really selects the null label."""

from __future__ import annotations

import pytest
import torch

from dit_core.models import DiT

BLOCKS = ["adaln_zero", "adaln", "cross_attention", "in_context"]


def random_dit(block_type: str = "adaln_zero", **kw) -> DiT:
    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=2,
                num_classes=5, block_type=block_type, **kw)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.3)
    return model.double().eval()


def inputs(n: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.tensor([10.0, 500.0, 900.0][:n], dtype=torch.float64), torch.tensor([0, 3, 5][:n])


@pytest.fixture(params=BLOCKS)
def model(request) -> DiT:
    """`random_dit` of each block design in turn."""
    return random_dit(request.param)


def test_each_sample_is_processed_on_its_own(model):
    x, t, y = inputs()
    with torch.no_grad():
        together = model(x, t, y)
        alone = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


def test_the_output_depends_on_timestep_and_label(model):
    x, t, y = inputs()
    with torch.no_grad():
        out = model(x, t, y)
        other_t = model(x, t + 37.0, y)
        other_y = model(x, t, (y + 1) % 6)
    scale = out.abs().max()
    assert (out - other_t).abs().max() > 1e-3 * scale
    assert (out - other_y).abs().max() > 1e-3 * scale


def test_a_scalar_timestep_is_broadcast_over_the_batch():
    model = random_dit()
    x, _, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(250.0), y), model(x, torch.full((3,), 250.0), y))
        torch.testing.assert_close(model(x, 250.0, y), model(x, torch.full((3,), 250.0), y))


def test_force_drop_ids_select_the_null_label():
    model = random_dit()
    x, t, y = inputs()
    drop = torch.tensor([1, 0, 1])
    with torch.no_grad():
        forced = model(x, t, y, force_drop_ids=drop)
        expected = model(x, t, torch.where(drop == 1, torch.full_like(y, 5), y))
        plain = model(x, t, y)
    torch.testing.assert_close(forced, expected)
    assert not torch.allclose(forced[0], plain[0])


@pytest.mark.parametrize("block_type", BLOCKS)
def test_only_in_context_conditioning_adds_two_tokens_to_the_sequence(block_type):
    model = random_dit(block_type)
    lengths = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    x, t, y = inputs()
    with torch.no_grad():
        out = model(x, t, y)
    tokens = (8 // 2) ** 2
    assert lengths == [tokens + 2 if block_type == "in_context" else tokens]
    assert out.shape == (3, 4, 8, 8)  # the two conditioning tokens are removed again


def test_the_models_patchify_and_unpatchify_are_inverse_and_row_major():
    model = DiT(
        input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2, learn_sigma=False
    )
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).reshape(2, 3, 8, 8)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 16, 2 * 2 * 3)
    # token 1 is the patch at grid row 0, column 1; its features are laid out (p_row, p_col, C)
    torch.testing.assert_close(tokens[0, 1], x[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(model.unpatchify(tokens), x)
    torch.testing.assert_close(model.unpatchify(tokens[:, :8], hw=(2, 4)), x[:, :, :4, :])
