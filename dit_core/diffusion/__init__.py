"""Diffusion processes, losses and samplers for DiT training; docs/diffusion.md shows their use.

Names are imported from their modules on first use (`dit_core.lazy`): `DiffusionConfig` without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports
from .config import DiffusionConfig

if TYPE_CHECKING:
    from .base import Diffusion

#: exported name -> the module that defines it
_EXPORTS = {
    "Diffusion": ".base",
    "OBJECTIVES": ".config",
    "SCHEDULES": ".config",
    "TIMESTEP_SAMPLINGS": ".config",
    "DiffusionConfig": ".config",
    "FlowMatching": ".flow",
    "GaussianDiffusion": ".gaussian",
    "space_timesteps": ".respace",
    "SAMPLERS": ".samplers",
    "invert": ".samplers",
    "sample": ".samplers",
    "make_betas": ".schedules",
    "validation_loss": ".validation",
    "validation_losses": ".validation",
}


def create_diffusion(cfg: DiffusionConfig | None = None) -> Diffusion:
    """The diffusion for a config: `GaussianDiffusion` (eps/v/x0) or `FlowMatching` (flow)."""
    from .flow import FlowMatching
    from .gaussian import GaussianDiffusion

    cfg = cfg if cfg is not None else DiffusionConfig()
    if not isinstance(cfg, DiffusionConfig):
        raise ValueError(f"create_diffusion takes a DiffusionConfig, got {type(cfg).__name__}")
    return FlowMatching(cfg) if cfg.objective == "flow" else GaussianDiffusion(cfg)


__all__ = sorted([*_EXPORTS, "create_diffusion"])
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
