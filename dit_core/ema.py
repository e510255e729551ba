"""Exponential moving average of model weights (DiT keeps one with decay 0.9999)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["EMA", "ema_init_share", "stale_ema_warning"]

#: `stale_ema_warning` speaks when the EMA still holds more than this share of the initial weights.
STALE_EMA_SHARE = 0.5


def ema_init_share(decay: float, steps: int) -> float:
    """The share of the initial weights left in the EMA after `steps` updates: ``decay ** steps``."""
    return float(decay) ** max(0, int(steps))


def stale_ema_warning(decay: float, steps: int, *, raw_weights: bool = False) -> str | None:
    """A warning when EMA weights after `steps` updates at `decay` are still mostly the initial
    (random) weights, so that samples from them are noise whatever the model learnt; else None.
    (DiT's 0.9999 needs ~6,900 steps to halve the initial share.) `raw_weights`: the command
    has ``--raw-weights``, and the warning offers it."""
    share = ema_init_share(decay, steps)
    if share <= STALE_EMA_SHARE:
        return None
    return (
        f"the EMA weights (optim.ema_decay {decay:g}) after {steps} steps are still {100 * share:.0f}% the "
        f"random initial weights, so samples from them are noise: a run of {steps} steps needs --ema-decay "
        f"below {math.floor(STALE_EMA_SHARE ** (1 / max(1, steps)) * 1e4) / 1e4:g}"
        + ("; or sample the raw weights (--raw-weights)" if raw_weights else "")
    )


class EMA:
    """``ema = decay * ema + (1 - decay) * param`` for every trainable parameter, in one fused
    ``torch._foreach_lerp_`` over flat lists; frozen parameters and buffers are copied as they are.

    ``ema.model`` is a frozen deep copy (eval mode) that samplers and evaluation use directly.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        ema_params = dict(self.model.named_parameters())
        self._ema = [ema_params[n] for n in names]
        self._src = [p for p in model.parameters() if p.requires_grad]  # in the order of `names`

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step towards the current weights of the tracked model."""
        if self.decay == 0:
            torch._foreach_copy_(self._ema, self._src)
        else:
            torch._foreach_lerp_(self._ema, self._src, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA model's ``state_dict`` (loads into a plain ``DiT``)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
