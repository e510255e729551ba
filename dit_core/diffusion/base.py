"""`Diffusion`: what the trainer, the samplers and the validation loss need from any process."""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .config import DiffusionConfig


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N,): mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def broadcast_to(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) per-example values -> (N, 1, ..., 1) on x's device, to multiply with x (N, ...): in x's
    dtype, or float32 where that is wider (a bf16 coefficient near 1 loses what 1 - it keeps)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return values.to(device=x.device, dtype=dtype).reshape(-1, *([1] * (x.ndim - 1)))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and restore its previous training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Diffusion(ABC):
    """A forward noising process plus its training objective.

    Timesteps `t` are whatever `sample_timesteps` returns: int64 step indices in [0, T) for the
    Gaussian (eps/v/x0) diffusion, float64-precise floats in [0, 1] for "flow". The model always
    receives `model_timesteps(t)`, on the 0..num_timesteps scale that DiT's embedding expects.
    """

    def __init__(self, config: DiffusionConfig):
        self.config = config
        self.objective = config.objective
        #: True iff the model must output 2*C channels (mean and variance interpolation)
        self.learn_sigma = config.model_learns_sigma
        #: number of discrete steps (Gaussian: its betas', fewer once respaced) or the scale of the model
        #: timestep (flow)
        self.num_timesteps = config.num_timesteps

    def timesteps_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """Map u ~ U[0, 1) (N,) to timesteps (N,) distributed as the training timestep distribution;
        here s in [0, 1] float64 (u itself or the logit-normal inverse CDF), which a discrete-time
        subclass maps onto its steps."""
        u = u.to(torch.float64)
        if self.config.timestep_sampling == "uniform":
            return u
        z = math.sqrt(2.0) * torch.erfinv(2.0 * u.clamp(1e-12, 1 - 1e-12) - 1.0)
        return torch.sigmoid(self.config.logit_normal_mean + self.config.logit_normal_std * z)

    @abstractmethod
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps (N,) -> the values (N,) passed to the model, on the 0..num_timesteps scale."""

    @abstractmethod
    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (N, C, H, W): data x0 (N, C, H, W) noised with `noise` (same shape) to timesteps t (N,)."""

    @abstractmethod
    def losses_from_output(
        self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """{"loss": (N,), ...} from the model output `out` at x_t = noised(x0, noise, t)."""

    def training_losses(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses: {"loss": (N,), ...} for data x0 (N, C, H, W) at timesteps t (N,):
        noise x0 to x_t, run the model there and score its output (`losses_from_output`)."""
        flow = self.objective == "flow"
        if t.is_floating_point() != flow:  # not what sample_timesteps gives
            want = "floats in [0, 1]" if flow else f"integer step indices t in [0, {self.num_timesteps})"
            raise ValueError(
                f"objective {self.objective!r} takes {want}; draw them with diffusion.sample_timesteps"
            )
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.noised(x0, noise, t)
        out = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        self._check_output(out, x_t)
        return self.losses_from_output(out, x0, x_t, t, noise)

    def sample_timesteps(
        self, n: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw n training timesteps (N,) on `device` from the configured distribution."""
        gen_device = generator.device if generator is not None else device
        u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
        return self.timesteps_from_uniform(u).to(device)

    def _check_output(self, out: torch.Tensor, x: torch.Tensor) -> None:
        want = x.shape[1] * (2 if self.learn_sigma else 1)
        if out.shape[0] != x.shape[0] or out.shape[1] != want or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"model output has shape {tuple(out.shape)} but this diffusion expects "
                f"({x.shape[0]}, {want}, {', '.join(map(str, x.shape[2:]))}) "
                f"(learn_sigma={self.learn_sigma}); build the model with learn_sigma=diffusion.learn_sigma"
            )
