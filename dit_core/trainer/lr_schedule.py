"""Learning-rate schedules as a pure function of the step (so resuming needs only the step)."""

from __future__ import annotations

import math

from ..config import OptimConfig

__all__ = ["lr_at"]


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Linear warmup: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``; then
    "constant": ``lr``; "cosine": from ``lr`` down to ``min_lr_ratio * lr`` at the last step;
    "constant_cooldown": ``lr`` until the last ``ceil(cooldown_frac * total_steps)`` steps, then
    linear down to ``min_lr_ratio * lr`` at the last step.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio * cfg.lr
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(total_steps - 1 - cfg.warmup_steps, 1)
        progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
        return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "constant_cooldown":
        cooldown = math.ceil(cfg.cooldown_frac * total_steps)
        start = total_steps - cooldown
        if cooldown == 0 or step < start:
            return cfg.lr
        progress = min((step - start + 1) / cooldown, 1.0)
        return cfg.lr + (floor - cfg.lr) * progress
    raise ValueError(f"unknown schedule {cfg.schedule!r}")
