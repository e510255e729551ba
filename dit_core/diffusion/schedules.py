"""Beta schedules of the discrete Gaussian diffusion, as float64 numpy arrays of shape (T,)."""

from __future__ import annotations

import math

import numpy as np

MAX_BETA = 0.999


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule; endpoints are for T = 1000 and scale by 1000 / T (improved DDPM)."""
    scale = 1000.0 / num_timesteps
    betas = np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)
    return np.minimum(betas, MAX_BETA)


def quadratic_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Betas linear in sqrt(beta) between the (1000 / T scaled) endpoints, then squared."""
    scale = 1000.0 / num_timesteps
    roots = np.linspace(math.sqrt(scale * beta_start), math.sqrt(scale * beta_end), num_timesteps)
    return np.minimum(roots.astype(np.float64) ** 2, MAX_BETA)


def cosine_alpha_bar(t: np.ndarray, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal (2021) eq. 17, unnormalised: cos^2((t + s) / (1 + s) * pi / 2), t in [0, 1]."""
    return np.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008) -> np.ndarray:
    """beta_t = 1 - abar((t+1)/T) / abar(t/T), capped at 0.999 (Nichol & Dhariwal 2021)."""
    grid = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = cosine_alpha_bar(grid, s)
    return np.minimum(1.0 - abar[1:] / abar[:-1], MAX_BETA)


def make_betas(
    schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Named schedule -> betas (T,) float64."""
    if schedule == "linear":
        return linear_betas(num_timesteps, beta_start, beta_end)
    if schedule == "quadratic":
        return quadratic_betas(num_timesteps, beta_start, beta_end)
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown beta schedule {schedule!r}; valid choices: ['linear', 'cosine', 'quadratic']")
