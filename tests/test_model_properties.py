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


@pytest.mark.parametrize("block_type", BLOCKS)
def test_each_sample_is_processed_on_its_own(block_type):
    model = random_dit(block_type)
    x, t, y = inputs()
    with torch.no_grad():
        together = model(x, t, y)
        alone = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block_type", BLOCKS)
def test_the_output_depends_on_timestep_and_label(block_type):
    model = random_dit(block_type)
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
