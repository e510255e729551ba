"""Exponential moving average of model weights (DiT keeps one with decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


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
