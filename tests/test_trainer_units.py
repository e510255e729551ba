"""The trainer's pure parts against closed forms: the lr schedules, the per-step draws, RNG capture.

Fast (no training run); the mutation-testing selection for dit_core/trainer/lr_schedule.py and
dit_core/trainer/rng.py (docs/testing.md). Real training runs read the same values in
test_trainer_truth.py.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from dit_core.config import OptimConfig
from dit_core.trainer.lr_schedule import cooldown_steps, lr_at, peak_lr, warmup_steps
from dit_core.trainer.rng import StepRandom, get_rng_state, mix_seed, set_rng_state
from sweeps.ladder import fork_step


def test_peak_lr_and_warmup_length():
    assert peak_lr(OptimConfig(lr=3e-4), 768) == 3e-4
    scaled = OptimConfig(lr=3e-4, lr_scaling="inverse_width", lr_base_width=384)
    assert peak_lr(scaled, 768) == pytest.approx(1.5e-4, rel=1e-15)
    assert peak_lr(scaled, 192) == pytest.approx(6e-4, rel=1e-15)
    # the rule across budgets: unchanged up to lr_flops_ref, then (C / ref)^-exponent
    budget = OptimConfig(lr=3e-2, lr_flops_ref=3e11, lr_flops_exponent=0.9)
    assert peak_lr(budget, 12, 1e11) == peak_lr(budget, 12, 3e11) == 3e-2
    assert peak_lr(budget, 12, 1e12) == pytest.approx(3e-2 * (10 / 3) ** -0.9, rel=1e-15)
    assert peak_lr(OptimConfig(lr=3e-2, lr_flops_exponent=0.9), 12, 1e15) == 3e-2  # ref 0: off
    both = OptimConfig(
        lr=3e-4, lr_scaling="inverse_width", lr_base_width=384, lr_flops_ref=1e10, lr_flops_exponent=0.5
    )
    assert peak_lr(both, 768, 4e10) == pytest.approx(3e-4 / 2 / 2, rel=1e-15)
    assert warmup_steps(OptimConfig(warmup_steps=10, warmup_frac=0.05), 100) == 10
    assert warmup_steps(OptimConfig(warmup_steps=10, warmup_frac=0.05), 1000) == 50
    assert warmup_steps(OptimConfig(warmup_frac=0.05), 130) == 6  # round(6.5): to even
    assert warmup_steps(OptimConfig(), 1000) == 0


@pytest.mark.parametrize("schedule", ["constant", "cosine", "constant_cooldown"])
def test_linear_warmup_reaches_the_peak_at_step_w_minus_one(schedule):
    cfg = OptimConfig(lr=1e-3, warmup_steps=4, schedule=schedule, min_lr_ratio=0.1)
    got = [lr_at(s, 100, cfg) for s in range(4)]
    assert got == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3], rel=1e-12)
    assert lr_at(0, 100, cfg, peak=2e-3) == pytest.approx(5e-4, rel=1e-12)  # `peak` overrides cfg.lr


def test_constant_schedule_holds_the_peak():
    cfg = OptimConfig(lr=1e-3, schedule="constant", min_lr_ratio=0.5)
    assert {lr_at(s, 50, cfg) for s in range(50)} == {1e-3}


def test_cosine_schedule_closed_form():
    """After W warmup steps: floor + (peak - floor) (1 + cos(pi (s - W) / (T - 1 - W))) / 2."""
    peak, ratio, T, W = 2e-3, 0.1, 41, 5
    cfg = OptimConfig(lr=peak, warmup_steps=W, schedule="cosine", min_lr_ratio=ratio)
    floor = ratio * peak
    for s in range(W, T):
        want = floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (s - W) / (T - 1 - W)))
        assert lr_at(s, T, cfg) == pytest.approx(want, rel=1e-12), s
    assert lr_at(W, T, cfg) == pytest.approx(peak, rel=1e-12)
    assert lr_at(T - 1, T, cfg) == pytest.approx(floor, rel=1e-12)
    assert lr_at(T + 10, T, cfg) == pytest.approx(floor, rel=1e-12)  # past the end: stays at the floor
    # a warmup into the last two steps (W = T - 1) is cut to T - 2: the peak at step T - 2, the floor
    # at the last (it ended at the peak until session 59)
    short = OptimConfig(lr=1.0, warmup_steps=3, schedule="cosine")
    assert [lr_at(s, 4, short) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.0])
    assert lr_at(0, 1, OptimConfig(lr=1.0, schedule="cosine", min_lr_ratio=0.2)) == pytest.approx(1.0)


def test_constant_cooldown_closed_form():
    """Peak until the last K = ceil(frac T) steps, then peak + (floor - peak) (s - (T - K) + 1) / K."""
    peak, ratio, T, frac = 1e-3, 0.0, 23, 0.2
    cfg = OptimConfig(lr=peak, schedule="constant_cooldown", cooldown_frac=frac, min_lr_ratio=ratio)
    K = math.ceil(frac * T)  # 5
    assert K == 5
    for s in range(T):
        want = peak if s < T - K else peak + (ratio * peak - peak) * (s - (T - K) + 1) / K
        assert lr_at(s, T, cfg) == pytest.approx(want, rel=1e-12, abs=1e-18), s
    assert lr_at(T - 1, T, cfg) == 0.0
    assert lr_at(T + 3, T, cfg) == 0.0
    half = OptimConfig(lr=1.0, schedule="constant_cooldown", cooldown_frac=0.5, min_lr_ratio=0.5)
    assert [lr_at(s, 4, half) for s in range(4)] == pytest.approx([1.0, 1.0, 0.75, 0.5])
    none = OptimConfig(lr=1.0, schedule="constant_cooldown", cooldown_frac=0.0, min_lr_ratio=0.5)
    assert {lr_at(s, 10, none) for s in range(10)} == {1.0}


def test_a_cooldown_of_a_whole_number_of_steps_is_not_lengthened_by_float_rounding():
    """0.07 x 100 is 7.000000000000001 in floats: the cooldown is 7 steps (93-99), not 8, in the
    schedule and at the ladder's fork, which must agree (a fork before the cooldown's start)."""
    assert 0.07 * 100 > 7 and math.ceil(0.07 * 100) == 8  # the float fact this guards against
    assert cooldown_steps(0.07, 100) == 7 and cooldown_steps(0.071, 100) == 8
    cfg = OptimConfig(lr=1.0, schedule="constant_cooldown", cooldown_frac=0.07, min_lr_ratio=0.0)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[:93] == [1.0] * 93
    assert lrs[93:] == pytest.approx([1 - k / 7 for k in range(1, 8)], rel=1e-12, abs=1e-15)
    assert fork_step(100, 0.07) == 93


def test_mix_seed_is_a_deterministic_63_bit_hash():
    a = mix_seed(0, 0x7D17, 5)
    assert a == mix_seed(0, 0x7D17, 5) and 0 <= a < 2**63
    seeds = {mix_seed(0, 0x7D17, s) for s in range(1000)} | {mix_seed(1, 0x7D17, s) for s in range(1000)}
    assert len(seeds) == 2000
    assert max(seeds).bit_length() == 63  # the high word is shifted by 31: 32 + 31 bits


def test_step_draws_depend_only_on_seed_and_step():
    x = torch.zeros(64, 3, 2, 2, dtype=torch.float64)
    r = StepRandom(7, torch.device("cpu"), 0.3)
    u1, n1, d1 = r.draw(5, x)
    r.draw(6, x)
    u2, n2, d2 = StepRandom(7, torch.device("cpu"), 0.3).draw(5, x)  # fresh object, same step
    assert torch.equal(u1, u2) and torch.equal(n1, n2) and torch.equal(d1, d2)
    assert u1.dtype == torch.float64 and u1.shape == (64,) and ((u1 >= 0) & (u1 < 1)).all()
    assert n1.dtype == torch.float64 and n1.shape == x.shape
    assert d1.dtype == torch.int64 and set(d1.unique().tolist()) <= {0, 1}
    u3, _, _ = r.draw(6, x)
    assert not torch.equal(u1, u3)
    assert not torch.equal(u1, StepRandom(8, torch.device("cpu"), 0.3).draw(5, x)[0])
    assert StepRandom(7, torch.device("cpu"), 0.0).draw(5, x)[2] is None


def test_label_drop_rate_is_the_dropout_probability():
    n, p = 20_000, 0.3
    drop = StepRandom(0, torch.device("cpu"), p).draw(0, torch.zeros(n, 1))[2]
    assert abs(drop.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_ranks_take_their_rows_of_the_global_draw():
    x = torch.zeros(4, 2, 2, 2)
    whole = StepRandom(3, torch.device("cpu"), 0.5).draw(9, torch.zeros(8, 2, 2, 2))
    for rank in (0, 1):
        part = StepRandom(3, torch.device("cpu"), 0.5, rank=rank, world_size=2).draw(9, x)
        for got, full in zip(part, whole):
            assert torch.equal(got, full[4 * rank : 4 * rank + 4])


def test_global_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = get_rng_state()
    want = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    torch.manual_seed(10), np.random.seed(20), random.seed(30)
    set_rng_state(state)
    got = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
    assert set(state) >= {"torch", "numpy", "python"} and state["numpy"]["kind"] == "MT19937"


def test_schedule_edges_end_at_the_floor():
    """One step after the warmup: cosine reaches the floor at once; a one-step cooldown ends there too."""
    cos = OptimConfig(lr=1.0, warmup_steps=3, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, 5, cos) for s in (3, 4)] == pytest.approx([1.0, 0.1])
    one = OptimConfig(
        lr=1.0, schedule="constant_cooldown", cooldown_frac=0.05, min_lr_ratio=0.2
    )  # ceil(0.5) = 1
    assert [lr_at(s, 10, one) for s in range(10)] == pytest.approx([1.0] * 9 + [0.2])


def test_unknown_schedule_names_the_field():
    cfg = OptimConfig()
    object.__setattr__(cfg, "schedule", "bogus")  # past OptimConfig's own check
    with pytest.raises(ValueError, match=r"^optim.schedule: 'bogus' is unknown$"):
        lr_at(0, 10, cfg)


def test_peak_lr_without_a_planned_budget_is_not_scaled():
    """The budget rule acts only when train_flops is given and exceeds lr_flops_ref."""
    budget = OptimConfig(lr=3e-2, lr_flops_ref=3e11, lr_flops_exponent=0.9)
    assert peak_lr(budget, 12) == 3e-2


def test_scaled_warmup_rounds_to_the_nearest_step():
    """round(0.05 x 139) = round(6.95) = 7 (not truncated to 6); round(0.1 x 34) = 3."""
    assert warmup_steps(OptimConfig(warmup_frac=0.05), 139) == 7
    assert warmup_steps(OptimConfig(warmup_frac=0.1), 34) == 3


@pytest.mark.parametrize("schedule", ["cosine", "constant_cooldown"])
@pytest.mark.parametrize("total", [2, 3, 9, 11, 12, 40])
def test_a_run_shorter_than_its_warmup_still_ends_at_its_floor(schedule, total):
    """The warmup's floor of 10 steps in a run of 11 or fewer: cosine ended at the peak (11 steps) or
    at 9/10 of it (9), above min_lr_ratio x peak. The warmup is capped at total - 2, so the last step is
    the floor and the one before it the peak; longer runs keep their warmup."""
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1, cooldown_frac=0.2)
    lrs = [lr_at(s, total, cfg) for s in range(total)]
    assert lrs[-1] == pytest.approx(0.1, rel=1e-12) and max(lrs) == pytest.approx(1.0, rel=1e-12)
    w = warmup_steps(cfg, total)
    assert w == min(10, total - 2)
    assert lrs[:w] == pytest.approx([(s + 1) / w for s in range(w)], rel=1e-12)  # the warmup, intact
    # one step: no warmup; cosine's only step is its peak, a cooldown's its floor
    assert warmup_steps(cfg, 1) == 0 and lr_at(0, 1, cfg) == pytest.approx(
        1.0 if schedule == "cosine" else 0.1
    )


def test_constant_cooldown_without_a_cooldown_holds_the_peak_past_the_end():
    none = OptimConfig(lr=1.0, schedule="constant_cooldown", cooldown_frac=0.0, min_lr_ratio=0.5)
    assert [lr_at(s, 10, none) for s in (10, 15)] == [1.0, 1.0]
