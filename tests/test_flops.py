"""`dit_core.spec`: the paper's Table 4, torch's own FLOP counter, parameter counts, budget -> steps."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dit_core.config import BudgetConfig
from dit_core.models import DiT
from dit_core.spec import (
    BLOCK_TYPES,
    budget_steps,
    flop_breakdown,
    forward_gflops,
    forward_macs,
    model_config,
    non_embedding_param_count,
    official_name,
    param_count,
    resolve_budget_steps,
    train_flops_per_image,
)
from sweeps.grid import SweepSpec, expand, load_spec

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
    d, t = 1152, 256  # the final layer: adaLN (shift, scale), modulation, the linear to 2 x 4 x 2 x 2
    assert (b["final_adaLN"], b["final_modulate"], b["final_linear"]) == (2 * d * d, t * d, t * d * 32)
    assert forward_gflops("DiT-XL/2") - b["blocks.attn_quadratic"] / 1e9 < 115  # would miss Table 4


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("pos_embed,hw", [("sincos", (8, 8)), ("rope", (8, 8)), ("rope", (12, 8))])
def test_matmul_terms_match_torch_flop_counter(block_type, pos_embed, hw):
    """torch's FlopCounterMode (2 flops per MAC, matmuls incl. attention) on a meta-device model."""
    cfg = model_config(
        depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8, num_classes=10,
        block_type=block_type, pos_embed=pos_embed, mlp_ratio=3.0, frequency_embedding_size=40,
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


def test_non_embedding_params_leave_out_positions_timesteps_and_labels():
    d, f = 1152, 256
    embeddings = 256 * d + (f * d + d + d * d + d) + 1001 * d  # pos table, t MLP, labels + null
    assert non_embedding_param_count("DiT-XL/2") == 675_129_632 - embeddings
    tiny = model_config(depth=1, hidden_size=16, num_heads=2, patch_size=2, input_size=8, num_classes=10)
    small_f = tiny.replace(frequency_embedding_size=8)
    assert param_count(tiny) - param_count(small_f) == (256 - 8) * 16
    assert non_embedding_param_count(tiny) == non_embedding_param_count(small_f)


def test_spec_imports_without_torch():
    code = "import sys, dit_core.spec, sweeps.grid; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_budget_steps_closed_form():
    assert budget_steps(1e12, 1e9, 32) == math.floor(1e12 / (1e9 * 32)) == 31
    assert 0.3 // 0.1 == 2.0 and budget_steps(0.3, 0.1, 1) == 3  # exactly 3 steps fit: float slack
    assert budget_steps(31e9, 1e9, 32) == 0
    b = BudgetConfig(max_steps=10, train_flops=1e12, global_batch_size=32)
    assert resolve_budget_steps(b, 1e9) == 10
    with pytest.raises(ValueError, match="smaller than one step"):
        resolve_budget_steps(BudgetConfig(train_flops=31e9, global_batch_size=32), 1e9)


@pytest.mark.parametrize("batch", [16, 48])
def test_sweep_and_trainer_plan_the_same_steps(batch):
    """A cell's step count (sweeps.grid) is what the trainer resolves from the same budget."""
    spec = load_spec("digits").replace(batch_size=batch, budgets=[1.5e11, 4e11, 1e12, 3.3e12])
    cells = expand(spec)
    for c in cells:
        budget = BudgetConfig(train_flops=c.budget, global_batch_size=c.batch_size)
        assert c.steps == resolve_budget_steps(budget, c.train_flops_per_image) >= 1
        assert c.steps == math.floor(c.budget / (c.batch_size * c.train_flops_per_image))
    assert len({c.steps for c in cells}) > len(spec.budgets)  # the sizes differ in steps


def test_sweep_cells_use_the_models_config():
    spec = SweepSpec(
        families=["S"], budgets=[1e12], batch_size=16, train={"model.frequency_embedding_size": 32}
    )
    (cell,) = expand(spec)
    cfg = model_config("DiT-S/2", input_size=16, in_channels=1, num_classes=10, frequency_embedding_size=32)
    assert (cell.params, cell.train_flops_per_image) == (param_count(cfg), train_flops_per_image(cfg))


def test_xl2_forward_macs_summed_from_first_principles():
    """DiT-XL/2 at 256 px, every term written out: matmuls, attention's T^2 terms, and one multiply-add
    per element for each adaLN modulation (two per block, one in the final layer)."""
    t, d, p, c, f, depth, hm = 256, 1152, 2, 4, 256, 28, 4 * 1152
    per_block = 4 * t * d * d + 2 * t * t * d + 2 * t * d * hm + d * 6 * d + 2 * t * d
    total = (
        t * p * p * c * d + (f * d + d * d) + depth * per_block + d * 2 * d + t * d + t * d * p * p * 2 * c
    )
    assert forward_macs("DiT-XL/2") == total
    assert total / 1e9 == pytest.approx(118.64, abs=0.005)  # Table 4


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_modulation_terms_are_one_multiply_add_per_element(block_type):
    """x * (1 + scale) + shift on every token and channel: twice per adaLN block, once in the final layer."""
    cfg = model_config(
        depth=3, hidden_size=32, num_heads=2, patch_size=2, input_size=8, block_type=block_type
    )
    t, d = 16, 32
    per_block = 2 if block_type in ("adaln_zero", "adaln") else 0
    elementwise = sum(v for k, v in flop_breakdown(cfg).items() if k.endswith("modulate"))
    assert elementwise == (3 * per_block + 1) * t * d


def test_learn_sigma_false_outputs_in_channels():
    """Without the learned variance the final layer outputs C channels, not 2C: a (D + 1) p^2 C
    smaller linear and T D p^2 C fewer multiply-adds."""
    kw = dict(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=8, in_channels=3)
    eps, both = model_config(**kw, learn_sigma=False), model_config(**kw, learn_sigma=True)
    assert (eps.out_channels, both.out_channels) == (3, 6)
    assert param_count(both) - param_count(eps) == (32 + 1) * 2 * 2 * 3
    assert forward_macs(both) - forward_macs(eps) == 16 * 32 * 2 * 2 * 3


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_param_count_matches_the_model_for_a_fractional_mlp_width_and_rope(pos_embed):
    """mlp_ratio 2.51 at width 64: the MLP is int(160.64) = 160 wide (as in the DiT reference code);
    a RoPE model has no position table, so it has T D fewer parameters than a sin-cos one."""
    cfg = model_config(
        depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8, mlp_ratio=2.51, pos_embed=pos_embed
    )
    assert cfg.mlp_hidden == 160
    with torch.device("meta"):
        model = DiT.from_config(cfg)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())
    other = cfg.replace(pos_embed="rope" if pos_embed == "sincos" else "sincos")
    assert abs(param_count(cfg) - param_count(other)) == 16 * 64


def test_official_name_only_for_the_papers_shapes_and_patches():
    assert official_name(12, 384, 6, 2) == "DiT-S/2" and official_name(28, 1152, 16, 8) == "DiT-XL/8"
    assert official_name(24, 1024, 16, 4) == "DiT-L/4" and official_name(12, 768, 12, 2) == "DiT-B/2"
    assert official_name(12, 384, 6, 1) is None  # patch 1 is not in the paper
    assert official_name(12, 384, 12, 2) is None  # S's depth and width, B's heads
    assert official_name(12, 384, 6, 16) is None


def test_config_validation_boundaries():
    """F = 2 is one sin-cos pair (allowed); a sin-cos table needs D % 4 == 0 (D = 18 has D % 2 == 0)."""
    assert model_config("DiT-S/2", frequency_embedding_size=2).frequency_embedding_size == 2
    with pytest.raises(ValueError, match="sin-cos position embedding needs hidden_size % 4 == 0, got 18"):
        model_config(depth=1, hidden_size=18, num_heads=3, patch_size=2, input_size=8)


def test_a_budget_of_exactly_one_step_resolves_to_one_step():
    assert resolve_budget_steps(BudgetConfig(train_flops=32e9, global_batch_size=32), 1e9) == 1
