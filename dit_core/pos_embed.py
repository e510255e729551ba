"""Fixed sinusoidal embeddings: diffusion timesteps (1-D) and the 2-D patch grid (DiT's sin-cos)."""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps.

    Args:
        t: `(N,)` timesteps, float or integer.
        dim: number of output features; `dim // 2` frequencies
            `exp(-ln(max_period) * i / (dim // 2))`, i = 0 .. dim//2 - 1.
    Returns:
        `(N, dim)` float32 features laid out as `[cos(t * f), sin(t * f)]` (zero-padded if `dim` is odd).
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / half)
    angles = t.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """`(M,)` positions -> `(M, dim)` as `[sin(pos * w), cos(pos * w)]`, `w_i = 1 / 10000^(i / (dim/2))`."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    i = torch.arange(dim // 2, dtype=torch.float64)
    omega = 1.0 / 10000.0 ** (i / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """DiT/MAE 2-D sin-cos table for a `grid x grid` patch grid, tokens in row-major order.

    The first `dim/2` channels encode the column (x) index and the last `dim/2` the row (y) index,
    each with `sincos_1d`. Computed in float64 and returned as float32 `(grid * grid, dim)`.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    return emb.float()
