"""Diffusion processes, losses and samplers for DiT training; docs/diffusion.md shows their use."""

from .base import Diffusion
from .config import OBJECTIVES, SCHEDULES, TIMESTEP_SAMPLINGS, DiffusionConfig
from .flow import FlowMatching
from .gaussian import GaussianDiffusion
from .respace import space_timesteps
from .samplers import SAMPLERS, invert, sample
from .schedules import make_betas
from .validation import validation_loss, validation_losses


def create_diffusion(cfg: DiffusionConfig | None = None) -> Diffusion:
    """The diffusion for a config: `GaussianDiffusion` (eps/v/x0) or `FlowMatching` (flow)."""
    cfg = cfg if cfg is not None else DiffusionConfig()
    if not isinstance(cfg, DiffusionConfig):
        raise ValueError(f"create_diffusion takes a DiffusionConfig, got {type(cfg).__name__}")
    return FlowMatching(cfg) if cfg.objective == "flow" else GaussianDiffusion(cfg)


__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULES",
    "TIMESTEP_SAMPLINGS",
    "Diffusion",
    "DiffusionConfig",
    "FlowMatching",
    "GaussianDiffusion",
    "create_diffusion",
    "invert",
    "make_betas",
    "sample",
    "space_timesteps",
    "validation_loss",
    "validation_losses",
]
