"""Rectified flow as in SD3 (Esser et al. 2024): x_t = (1 - t) x0 + t noise, t = 1 pure noise ("large
t = noisy", as in DDPM); the model predicts the velocity noise - x0 (docs/diffusion.md)."""

from __future__ import annotations

import torch

from .base import Diffusion, broadcast_to, mean_flat
from .config import DiffusionConfig


class FlowMatching(Diffusion):
    """Linear-interpolant flow matching with a velocity-predicting model (C output channels)."""

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        if config.objective != "flow":
            raise ValueError(f"FlowMatching needs objective='flow', got {config.objective!r}")

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * self.num_timesteps

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t noise, (N, ...)."""
        tt = broadcast_to(t, x0)
        return (1.0 - tt) * x0 + tt * noise

    def predict_x0_eps(
        self, velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, noise_hat) implied by a velocity (N, C, ...) at x_t and time t (N,)."""
        tt = broadcast_to(t, x_t)
        return x_t - tt * velocity, x_t + (1.0 - tt) * velocity

    def losses_from_output(
        self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """{"loss", "mse"} (N,): mean squared error of the predicted velocity at t in [0, 1] (N,)."""
        mse = mean_flat((noise - x0 - out.float()) ** 2)  # the target: d x_t / d t = noise - x0
        return {"loss": mse, "mse": mse}
