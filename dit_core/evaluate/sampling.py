"""Class-conditional sample sets that are the same for any batch size and process count.

Sample ``i`` (global index 0..N-1) has label ``i % num_classes`` (balanced classes) and starting
noise drawn from a generator seeded by ``(seed, i)``, so with a deterministic sampler (DDIM eta=0,
Euler, Heun) the set does not depend on how indices are batched or spread over processes. For
stochastic samplers (DDPM, DDIM eta>0) the per-step noise comes from one generator per batch,
seeded by ``(seed, first index)``: reproducible for a fixed batch size and process count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..diffusion.validation import example_noise, example_seed
from .images import to_uint8

log = logging.getLogger(__name__)

LATENT_SCALE = 0.18215


def shard(num_samples: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(num_samples)`` (sizes differ by at most 1)."""
    base, extra = divmod(num_samples, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def vae_decoder(vae, scale: float = LATENT_SCALE) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents (N, 4, h, w) already times ``scale`` -> pixels (N, 3, 8h, 8w) in [-1, 1]."""

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z / scale).sample

    return decode


@torch.no_grad()
def generate_images(
    model: torch.nn.Module,
    diffusion,
    indices: range,
    *,
    batch_size: int,
    sampler: str = "ddim",
    steps: int = 50,
    cfg_scale: float = 1.0,
    seed: int = 0,
    num_classes: int,
    image_size: int,
    channels: int,
    eta: float = 0.0,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """uint8 images (len(indices), C, H, W) for the given global sample indices, in ``batch_size`` batches.

    ``decode`` maps model outputs (latents) to pixels in [-1, 1]; None = the model works in pixels.
    """
    from dit_core.diffusion import sample

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        noise = example_noise(seed, torch.tensor(idx), (channels, image_size, image_size)).to(device)
        y = torch.tensor([i % num_classes for i in idx], device=device, dtype=torch.long)
        g = torch.Generator(device=device).manual_seed(example_seed(seed, idx[0], 1))
        x = sample(
            model, diffusion, noise.shape, y,
            sampler=sampler, steps=steps, cfg_scale=cfg_scale, eta=eta, generator=g, noise=noise,
            clip_denoised=clip_denoised,
        )  # fmt: skip
        if decode is not None:
            x = decode(x)
        out.append(to_uint8(x).cpu())
    if not out:
        return torch.empty((0, channels, image_size, image_size), dtype=torch.uint8)
    return torch.cat(out)


def gather_samples(local: torch.Tensor, num_samples: int, accelerator) -> torch.Tensor | None:
    """Rank 0: all ranks' shards (from ``shard``) concatenated in index order, (N, ...); others: None."""
    world = accelerator.num_processes
    if world == 1:
        return local
    sizes = [len(shard(num_samples, r, world)) for r in range(world)]
    pad = max(sizes)
    buf = torch.zeros((pad, *local.shape[1:]), dtype=local.dtype)
    buf[: len(local)] = local
    gathered = accelerator.gather(buf.to(accelerator.device)).cpu()  # (world * pad, ...)
    if not accelerator.is_main_process:
        return None
    return torch.cat([gathered[r * pad : r * pad + sizes[r]] for r in range(world)])
