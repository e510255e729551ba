"""The calls of a step's weight update: backward, gradient clipping, optimizer step and zero_grad.

On one process Accelerate's wrappers only add Python per step (~0.5-1 ms of a tiny model's CPU
step, docs/training.md "Step cost of tiny models"): `update_ops` returns the plain calls there (the
"direct" path, the same float operations, so bitwise the same weights) and Accelerate's calls
everywhere else (several processes, gradient accumulation, Accelerate's own grad scaler,
DeepSpeed/FSDP/XLA, or the trainer's fp16 GradScaler).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["UpdateOps", "update_ops"]


@dataclass(frozen=True)
class UpdateOps:
    """What a training step calls: ``backward(loss)``, ``clip_grad_norm_(max_norm) -> norm`` (over
    the model's parameters), ``optimizer.step()`` / ``optimizer.zero_grad(set_to_none=True)``.
    ``direct``: True when these bypass Accelerate (see the module docstring)."""

    backward: Callable[[torch.Tensor], None]
    clip_grad_norm_: Callable[[float], torch.Tensor]
    optimizer: torch.optim.Optimizer
    direct: bool


def can_bypass_accelerate(acc, optimizer, scaler=None) -> bool:
    """Whether Accelerate's backward, clipping and optimizer wrappers are plain calls for ``acc``:
    one process (`DistributedType.NO`), no gradient accumulation, no Accelerate or trainer grad
    scaler, and ``optimizer`` an `AcceleratedOptimizer` (it has ``.optimizer``)."""
    from accelerate.utils import DistributedType

    return (
        acc.distributed_type == DistributedType.NO
        and acc.gradient_accumulation_steps == 1
        and getattr(acc, "scaler", None) is None
        and scaler is None
        and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer)
    )


def update_ops(acc, optimizer, model: nn.Module, *, scaler=None, direct: bool | None = None) -> UpdateOps:
    """The update calls for a prepared ``optimizer`` of ``model`` (`can_bypass_accelerate` decides
    the path when ``direct`` is None; ``direct=False`` forces Accelerate's calls)."""
    if direct is None:
        direct = can_bypass_accelerate(acc, optimizer, scaler)
    if not direct:
        return UpdateOps(
            backward=acc.backward,
            clip_grad_norm_=lambda max_norm: acc.clip_grad_norm_(model.parameters(), max_norm),
            optimizer=optimizer,
            direct=False,
        )
    params = list(model.parameters())  # the model's parameters cannot change during a run
    return UpdateOps(
        backward=torch.Tensor.backward,
        clip_grad_norm_=lambda max_norm: torch.nn.utils.clip_grad_norm_(params, max_norm),
        optimizer=optimizer.optimizer,
        direct=True,
    )
