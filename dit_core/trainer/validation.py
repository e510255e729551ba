"""The validation loss during training: common random numbers on a fixed subset of the "val" split.

The subset is ``eval.val_examples`` images: the first ones, or, for data sorted by class (image
folders, latents: a dataset's ``sorted_by_class``), ones evenly spaced over the whole split (the first
would be the first class only). Each rank scores its share with fixed timesteps and noise per
example (`dit_core.diffusion.validation_losses`); the ranks' sums are all-reduced, so the loss is the
same whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from ..config import TrainConfig
from ..data import build_dataset
from .data_stream import fetch_batch
from .ranklog import warnings_muted

__all__ = ["Validator", "check_validation"]


def check_validation(cfg: TrainConfig) -> None:
    """ConfigError, before training, for validation settings that would fail or log a NaN loss once
    the run has started: ``eval.val_examples`` 0 (nothing to average) or a negative ``eval.val_seed``."""
    from ..configio import ConfigError

    e = cfg.eval
    if not e.val_every:
        return
    off = "; or set eval.val_every=0 to train without a validation loss"
    if e.val_examples < 1:
        raise ConfigError(
            f"eval.val_examples: must be >= 1 when eval.val_every > 0 (the loss is a mean over them), "
            f"got {e.val_examples}{off}"
        )
    if e.val_seed < 0:
        raise ConfigError(f"eval.val_seed: must be >= 0, got {e.val_seed}{off}")


class Validator:
    """``validator({"val/loss": model, ...}) -> {"val/loss": mean loss, ...}`` (a collective).

    The val split is read with the data's warnings (a folder's unreadable files) on rank 0 only, and
    on none with ``quiet`` (the training folder, whose scan named them already)."""

    def __init__(
        self,
        cfg: TrainConfig,
        diffusion,
        accelerator,
        autocast: Callable[[], AbstractContextManager],
        quiet: bool = False,
    ):
        self.cfg, self.diffusion, self.acc, self.autocast = cfg, diffusion, accelerator, autocast
        self.quiet = quiet
        self._data: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def data(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's images ``(n, C, H, W)``, labels ``(n,)`` and the index of its first example."""
        if self._data is None:
            rank, world = self.acc.process_index, self.acc.num_processes
            with warnings_muted(self.quiet or self.acc.process_index != 0):
                val = build_dataset(self.cfg.data, "val")
            n = min(self.cfg.eval.val_examples, len(val))
            lo, hi = rank * n // world, (rank + 1) * n // world
            spread = getattr(val, "sorted_by_class", False)  # photos' first n cycle its classes already
            idx = [j * len(val) // n if spread else j for j in range(lo, hi)]
            # photos renders a whole batch at once, ~100x faster
            xs, ys = fetch_batch(val, idx) if idx else (torch.empty(0), torch.empty(0))
            self._data = (xs.to(self.acc.device), ys.to(self.acc.device), lo)
        return self._data

    def __call__(self, models: dict[str, nn.Module]) -> dict[str, float]:
        from ..diffusion import validation_losses

        x, y, lo = self.data()
        e = self.cfg.eval
        out = {}
        for key, model in models.items():
            sums = torch.zeros(2, dtype=torch.float64)
            if len(x):
                with self.autocast():
                    losses = validation_losses(
                        self.diffusion, model, x, y, seed=e.val_seed, index_offset=lo,
                        batch_size=e.batch_size or None,
                    )  # fmt: skip
                sums = torch.tensor([losses.sum().item(), float(len(losses))], dtype=torch.float64)
            if self.acc.num_processes > 1:
                sums = self.acc.reduce(sums.to(self.acc.device), reduction="sum").cpu()
            out[key] = float(sums[0] / sums[1])
        return out
