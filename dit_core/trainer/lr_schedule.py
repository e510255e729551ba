"""Learning-rate schedules as a pure function of the step (so resuming needs only the step).

The peak lr follows the rules across model sizes and budgets (`peak_lr`), the warmup scales with the run
(`warmup_steps`), and "cosine" and "constant_cooldown" end exactly at the run's last step, so a
run of 2 steps or more ends at ``min_lr_ratio`` x its peak (`check_schedule` refuses a warmup that
runs into the cooldown).
"""

from __future__ import annotations

import math

from ..config import OptimConfig
from ..configio import ConfigError

__all__ = ["check_schedule", "cooldown_steps", "first_lr_change", "lr_at", "peak_lr", "warmup_steps"]


def peak_lr(cfg: OptimConfig, hidden_size: int, train_flops: float = 0.0) -> float:
    """The peak lr of a model of width ``hidden_size`` trained for ``train_flops`` (planned):
    ``lr`` ("none") or ``lr * lr_base_width / hidden_size`` ("inverse_width"), times
    ``(train_flops / lr_flops_ref) ** -lr_flops_exponent`` when ``train_flops > lr_flops_ref > 0``."""
    lr = cfg.lr * cfg.lr_base_width / hidden_size if cfg.lr_scaling == "inverse_width" else cfg.lr
    if 0 < cfg.lr_flops_ref < train_flops:
        lr *= (train_flops / cfg.lr_flops_ref) ** -cfg.lr_flops_exponent
    return lr


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """``max(warmup_steps, round(warmup_frac * total_steps))``, at most ``total_steps - 2`` (0 below 3
    steps): a warmup into the last two steps would leave "cosine" and "constant_cooldown" no step at
    the peak before their last, so a short run ended above ``min_lr_ratio`` x its peak (e.g. at the
    peak: 11 steps with a floor of 10)."""
    return max(0, min(max(cfg.warmup_steps, round(cfg.warmup_frac * total_steps)), total_steps - 2))


def cooldown_steps(cooldown_frac: float, total_steps: int) -> int:
    """The last ``ceil(cooldown_frac x total_steps)`` steps of a run are its cooldown, the product
    rounded to 9 decimals first: in floats 0.07 x 100 is 7.000000000000001, whose ceil would add a
    step. One rule for the trainer's schedule and the ladder's fork step (`sweeps.ladder.fork_step`)."""
    return math.ceil(round(cooldown_frac * total_steps, 9))


def check_schedule(cfg: OptimConfig, total_steps: int) -> None:
    """ConfigError where a "constant_cooldown" run's warmup reaches into its cooldown: the lr would
    jump from the warmup's peak down into the cooldown's line (10 steps, warmup_frac 0.5, cooldown_frac
    0.8: 0.2, ..., 1.0, 0.5, ...)."""
    if cfg.schedule != "constant_cooldown":
        return
    warm, cool = warmup_steps(cfg, total_steps), cooldown_steps(cfg.cooldown_frac, total_steps)
    if warm + cool > total_steps:
        raise ConfigError(
            f"optim.cooldown_frac: the cooldown's last {cool} of the run's {total_steps} steps begin "
            f"before its {warm}-step warmup ends (optim.warmup_steps={cfg.warmup_steps}, "
            f"optim.warmup_frac={cfg.warmup_frac}); lower the warmup or the cooldown so that they add up "
            f"to {total_steps} or less"
        )


def lr_at(step: int, total_steps: int, cfg: OptimConfig, peak: float | None = None) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``; ``peak`` defaults
    to ``cfg.lr``.

    Linear warmup ``peak * (step + 1) / W`` for ``step < W`` (W = `warmup_steps`); then
    "constant": ``peak``; "cosine": from ``peak`` down to ``min_lr_ratio * peak`` at the last step;
    "constant_cooldown": ``peak`` until the last ``ceil(cooldown_frac * total_steps)`` steps, then
    linear down to ``min_lr_ratio * peak`` at the last step.
    """
    lr = cfg.lr if peak is None else peak
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return lr * (step + 1) / warm
    floor = cfg.min_lr_ratio * lr
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "cosine":
        span = max(total_steps - 1 - warm, 1)
        progress = min(max(step - warm, 0) / span, 1.0)
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "constant_cooldown":
        cooldown = cooldown_steps(cfg.cooldown_frac, total_steps)
        start = total_steps - cooldown
        if cooldown == 0 or step < start:
            return lr
        progress = min((step - start + 1) / cooldown, 1.0)
        return lr + (floor - lr) * progress
    raise ValueError(f"optim.schedule: {cfg.schedule!r} is unknown")


def first_lr_change(
    old: OptimConfig,
    old_total: int,
    new: OptimConfig,
    new_total: int,
    steps: int,
    *,
    hidden_size: int,
    flops_per_step: float,
) -> tuple[int, float, float] | None:
    """The first optimizer step of ``0 .. steps - 1`` whose lr differs (relative 1e-12) between the
    schedule ``old`` of a run of ``old_total`` steps and ``new`` of ``new_total``, as ``(step, old lr,
    new lr)``; None where every one agrees. Peaks by `peak_lr` at each run's planned FLOPs (``total x
    flops_per_step``). A fork may change the schedule only where this is None: e.g. a cooldown
    ("constant_cooldown" to step T) branched from a constant-lr trunk's checkpoint at step
    ``T - ceil(cooldown_frac * T)`` or earlier (Hagele et al. 2024, arXiv:2405.18392)."""
    p_old = peak_lr(old, hidden_size, old_total * flops_per_step)
    p_new = peak_lr(new, hidden_size, new_total * flops_per_step)
    for step in range(steps):
        a, b = lr_at(step, old_total, old, p_old), lr_at(step, new_total, new, p_new)
        if not math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0):
            return step, a, b
    return None
