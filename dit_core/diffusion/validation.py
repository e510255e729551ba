"""Validation loss with common random numbers (docs/diffusion.md): example i always gets the same
noise and timestep for a seed, the timesteps a golden-ratio sequence u_i = frac(u_0 + i * 0.618...)
mapped through the training timestep distribution, which stratifies t over the set."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Diffusion, eval_mode

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
TIMESTEP_MODES = ("stratified", "random")


def example_seed(seed: int, index: int, *stream: int) -> int:
    """A well-mixed 63-bit seed for example `index` under seed `seed` (SeedSequence mixing); a
    `stream` number separates independent uses (the sampling noise of `dit_core.evaluate.sampling`)."""
    state = np.random.SeedSequence([seed, index, *stream]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def example_uniforms(seed: int, indices: torch.Tensor, mode: str = "stratified") -> torch.Tensor:
    """u_i in [0, 1) (N,) float64 for example indices (N,): golden-ratio sequence or iid per example."""
    idx = indices.cpu().to(torch.float64)
    if mode == "stratified":
        u0 = np.random.default_rng([seed, 0x5EED]).random()
        return torch.frac(u0 + idx * GOLDEN)
    if mode == "random":
        return torch.tensor([np.random.default_rng([seed, int(i), 1]).random() for i in indices.tolist()])
    raise ValueError(f"unknown timestep mode {mode!r}; valid choices: {list(TIMESTEP_MODES)}")


def example_noise(seed: int, indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise (N, *shape) on CPU, row i drawn from a generator seeded by (seed, i)."""
    gens = (torch.Generator().manual_seed(example_seed(seed, i)) for i in indices.tolist())
    rows = [torch.randn(shape, generator=g) for g in gens]
    return torch.stack(rows) if rows else torch.empty((0, *shape))


@torch.no_grad()
def validation_losses(
    diffusion: Diffusion,
    model: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor | None,
    *,
    seed: int = 0,
    index_offset: int = 0,
    batch_size: int | None = None,
    term: str = "loss",
    timesteps: str = "stratified",
) -> torch.Tensor:
    """Per-example validation loss (N,) float64 on CPU for data x0 (N, C, H, W) and labels y (N,).

    Example x0[k] has index index_offset + k; its timestep and noise depend only on (seed, index).
    term: which entry of `training_losses` to report ("loss", "mse" or "vb").
    timesteps: "stratified" (golden-ratio quasi-random, default) or "random" (iid per example).
    The model runs in eval mode under no_grad; its training flag is restored afterwards.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x0.shape[0]
    if y is not None and tuple(y.shape) != (n,):
        raise ValueError(f"y must have shape ({n},) to match x0, got {tuple(y.shape)}")
    indices = torch.arange(index_offset, index_offset + n)
    t = diffusion.timesteps_from_uniform(example_uniforms(seed, indices, timesteps)).to(x0.device)
    noise = example_noise(seed, indices, tuple(x0.shape[1:])).to(device=x0.device, dtype=x0.dtype)
    step = batch_size or max(n, 1)
    out = []
    with eval_mode(model):
        for lo in range(0, n, step):
            sl = slice(lo, lo + step)
            kwargs = {} if y is None else {"y": y[sl]}
            terms = diffusion.training_losses(model, x0[sl], t[sl], kwargs, noise=noise[sl])
            if term not in terms:
                raise ValueError(
                    f"term {term!r} is not computed by this diffusion; valid choices: {sorted(terms)}"
                )
            out.append(terms[term].detach().to("cpu", torch.float64))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def validation_loss(
    diffusion: Diffusion, model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None, **options: Any
) -> float:
    """Mean validation loss over x0 (N, C, H, W) with common random numbers; `options` are
    `validation_losses`'s keywords (seed, index_offset, batch_size, term, timesteps).

    For a validation set split over several calls (a data loader), give each call the index_offset
    of its first example, or concatenate `validation_losses` results and average them yourself."""
    losses = validation_losses(diffusion, model, x0, y, **options)
    if losses.numel() == 0:
        raise ValueError("validation_loss needs at least one example")
    return float(losses.mean())
