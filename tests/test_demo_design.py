"""The default demo's design (`sweeps/configs/demo.yaml`, issue 11, docs/study.md): scaled families
that bracket the measured optimum, heads from a head dim, and a protocol every cell of which the
analysis can use."""

from __future__ import annotations

from pathlib import Path

import pytest

from dit_core.spec import model_config, param_count
from sweeps.families import FAMILIES, Scale, family_shape
from sweeps.grid import expand, left_out, load_spec
from sweeps.task import cell_overrides

DEMO_MIN_STEPS = 50  # analysis/fit_scaling.py --min-steps default: shorter cells are dropped


def test_head_dim_sets_heads_from_the_width():
    scale = Scale(width_div=32, depth_div=4, head_dim=4)
    shapes = {n: family_shape(n, scale) for n in FAMILIES}
    for name, shape in shapes.items():
        paper = FAMILIES[name]
        assert shape.depth * 4 == paper.depth and shape.hidden_size * 32 == paper.hidden_size
        assert shape.num_heads * 4 == shape.hidden_size  # heads = width / head_dim
    assert [shapes[n].num_heads for n in ("S", "B", "L", "XL")] == [3, 6, 8, 9]
    # without head_dim the paper's head counts are kept, as before
    assert family_shape("B", Scale(8, 4)).num_heads == FAMILIES["B"].num_heads


def test_scale_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"16 heads; use a smaller width_div or set scale.head_dim"):
        family_shape("XL", Scale(width_div=32))  # 1152 / 32 = 36 channels for 16 heads
    with pytest.raises(ValueError, match="not divisible by head_dim 5"):
        family_shape("S", Scale(width_div=32, head_dim=5))
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="scale.head_dim must be a positive integer"):
            Scale(head_dim=bad)


def test_demo_families_increase_and_bracket_the_measured_optimum():
    """docs/study.md measured the optimum between 10K and 30K parameters at 1e11-1e12 FLOPs on 16 px
    grey crops (lr 3e-2); the demo's sizes must lie on both sides of it and keep the paper's ratios."""
    demo = load_spec()
    models = demo.models()
    assert [m.name for m in models] == ["S", "B", "L", "XL"]
    params = []
    for m in models:
        cfg = model_config(
            depth=m.depth, hidden_size=m.hidden_size, num_heads=m.num_heads, patch_size=2,
            input_size=demo.data.input_size, in_channels=demo.data.in_channels,
            num_classes=demo.data.num_classes,
            frequency_embedding_size=int(demo.train["model.frequency_embedding_size"]),
        )  # fmt: skip
        assert m.hidden_size % m.num_heads == 0
        params.append(param_count(cfg))
    assert params == sorted(params) and len(set(params)) == 4
    assert 8e3 <= params[0] < 12e3 and 20e3 < params[1] < 30e3 < params[2] and params[-1] <= 300e3
    # the cells agree with the count above (the sweep passes frequency_embedding_size to the model)
    by_name = {c.model.name: c.params for c in expand(demo) if c.budget == max(demo.budgets)}
    assert [by_name[m.name] for m in models] == params


def test_demo_is_photos_with_tokens_narrower_than_every_width():
    """A patch token holds p^2 C pixel values; a family whose width is not larger cannot carry the
    noisy input and the denoising context (measured: S at width 12 on colour, 12 values per token,
    stays at val loss 0.22-0.25 while B reaches 0.05-0.08; docs/study.md)."""
    demo = load_spec()
    assert (demo.data.name, demo.data.input_size, demo.data.in_channels) == ("photos", 16, 1)
    assert int(demo.train["data.channels"]) == demo.data.in_channels
    assert int(demo.train["model.frequency_embedding_size"]) < 256
    for p in demo.patch_sizes:
        assert min(m.hidden_size for m in demo.models()) >= 2 * p * p * demo.data.in_channels


def test_every_demo_cell_is_a_finished_cosine_run_the_analysis_keeps():
    demo = load_spec()
    cells = expand(demo)
    assert demo.min_steps == DEMO_MIN_STEPS and len(demo.budgets) >= 3
    assert len(cells) + len(left_out(demo)) == 4 * len(demo.budgets)
    assert min(c.steps for c in cells) >= DEMO_MIN_STEPS
    # every budget but the smallest runs all four families (an IsoFLOP profile needs 3 sizes)
    for b in sorted(demo.budgets)[1:]:
        assert len([c for c in cells if c.budget == b]) == 4
    for c in cells:
        o = cell_overrides(demo, c, Path("/tmp/x"), "sqlite:///x.db")
        assert o["optim.schedule"] == "cosine" and float(o["optim.min_lr_ratio"]) > 0
        assert int(o["eval.val_every"]) == c.steps  # one validation point, at the last step


def test_round_width_opens_factors_between_powers_of_two():
    """width / 48 does not divide L's 1024: with round_width it becomes the nearest multiple of the
    head dim (1024 / 48 = 21.3 -> 20), the others are exact (8, 16, 24); depths / 4 as before."""
    scale = Scale(width_div=48, depth_div=4, head_dim=4, round_width=True)
    got = {f: family_shape(f, scale) for f in ("S", "B", "L", "XL")}
    assert [(s.depth, s.hidden_size, s.num_heads) for s in got.values()] == [
        (3, 8, 2),
        (3, 16, 4),
        (6, 20, 5),
        (7, 24, 6),
    ]
    for f, s in got.items():  # within half a head of the exact scaled width
        assert abs(s.hidden_size - FAMILIES[f].hidden_size / 48) <= 2
    # the demo's factor: 10.7 -> 12 and 21.3 -> 20 round to the nearest head, up and down
    demo = Scale(width_div=36, depth_div=4, head_dim=4, round_width=True)
    assert [family_shape(f, demo).hidden_size for f in ("S", "B", "L", "XL")] == [12, 20, 28, 32]
    with pytest.raises(ValueError, match="round_width"):
        family_shape("L", Scale(width_div=48, depth_div=4, head_dim=4))
    with pytest.raises(ValueError, match="set scale.head_dim"):
        Scale(width_div=48, round_width=True)
