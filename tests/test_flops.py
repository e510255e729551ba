"""Compute accounting: the paper's Table 4, torch's own FLOP counter, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dit_core.flops import flop_breakdown, forward_gflops, forward_macs, param_count, train_flops_per_image
from dit_core.models import DiT, model_config

# DiT paper (arXiv:2212.09748), Table 4: forward Gflops at 256x256 (32x32x4 latents).
TABLE4 = {
    "DiT-S/8": 0.36, "DiT-S/4": 1.41, "DiT-S/2": 6.06,
    "DiT-B/8": 1.42, "DiT-B/4": 5.56, "DiT-B/2": 23.01,
    "DiT-L/8": 5.44, "DiT-L/4": 19.70, "DiT-L/2": 80.71,
    "DiT-XL/8": 7.39, "DiT-XL/4": 29.05, "DiT-XL/2": 118.64,
}  # fmt: skip
# The printed DiT-L/8 value does not follow from its shape under any counting convention that
# reproduces the other eleven (5.01 here, +0.43 G would need ~2 extra layers); see docs/models.md.
TABLE4_INCONSISTENT = {"DiT-L/8"}
BLOCK_TYPES = ("adaln_zero", "adaln", "cross_attention", "in_context")


@pytest.mark.parametrize("name", sorted(TABLE4))
def test_table4_gflops(name):
    ours, paper = forward_gflops(name), TABLE4[name]
    if name in TABLE4_INCONSISTENT:
        assert abs(ours - 5.012) < 1e-3  # pinned: a change in convention must be looked at
        return
    # 0.5%, or the half unit of the printed 2 decimals where that is coarser (DiT-S/8: 0.36 +- 1.4%).
    assert abs(ours - paper) <= max(0.005 * paper, 0.005 + 1e-9), (ours, paper)
    assert round(ours, 2) == pytest.approx(paper, abs=0.011)


def test_xl2_exact_values_256_and_512():
    assert round(forward_gflops("DiT-XL/2"), 2) == 118.64
    assert round(forward_gflops(model_config("DiT-XL/2"), input_size=64), 1) == 524.6  # paper: 524.60


def test_attention_quadratic_terms_are_counted():
    b = flop_breakdown("DiT-XL/2")
    assert b["blocks.attn_quadratic"] == 28 * 2 * 256**2 * 1152
    assert forward_gflops("DiT-XL/2") - b["blocks.attn_quadratic"] / 1e9 < 115  # would miss Table 4


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("pos_embed,hw", [("sincos", (8, 8)), ("rope", (8, 8)), ("rope", (12, 8))])
def test_matmul_terms_match_torch_flop_counter(block_type, pos_embed, hw):
    """torch's FlopCounterMode (2 flops per MAC, matmuls incl. attention) on a meta-device model."""
    cfg = model_config(
        depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8, num_classes=10,
        block_type=block_type, pos_embed=pos_embed, mlp_ratio=3.0,
    )  # fmt: skip
    with torch.device("meta"):
        model = DiT.from_config(cfg)
        x, t, y = torch.randn(1, 4, *hw), torch.ones(1), torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t, y)
    elementwise = sum(v for k, v in flop_breakdown(cfg, hw).items() if k.endswith("modulate"))
    assert counter.get_total_flops() == 2 * (forward_macs(cfg, hw) - elementwise)


def test_accepts_model_config_or_name_without_allocation():
    cfg = model_config("DiT-B/4")
    with torch.device("meta"):
        model = DiT.from_config(cfg)
    assert forward_gflops(model) == forward_gflops(cfg) == forward_gflops("DiT-B/4")
    with pytest.raises(ValueError, match="DiTConfig"):
        forward_gflops(42)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        forward_gflops(cfg, input_size=30)


def test_gflops_scale_with_tokens_and_depth():
    small, big = model_config("DiT-S/4"), model_config("DiT-S/4", depth=24)
    body = lambda c: sum(v for k, v in flop_breakdown(c).items() if k.startswith("blocks."))  # noqa: E731
    assert body(big) == 2 * body(small)


def test_train_flops_are_six_times_forward_macs():
    cfg = model_config("DiT-XL/2")
    assert train_flops_per_image(cfg) == 6 * forward_macs(cfg)
    assert train_flops_per_image(cfg) == pytest.approx(2 * 3 * 118.64e9, rel=5e-4)


def test_param_count_xl2_analytic():
    assert param_count(model_config("DiT-XL/2")) == 675_129_632
    assert param_count("DiT-XL/2", include_pos_embed=False) == 675_129_632 - 256 * 1152


@pytest.mark.parametrize("name", ["DiT-S/2", "DiT-B/8"])
def test_param_count_official_configs_on_meta(name):
    with torch.device("meta"):
        model = DiT.from_config(model_config(name))
    assert param_count(name) == sum(p.numel() for p in model.parameters())
