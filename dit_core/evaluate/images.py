"""Conversions between model outputs and the uint8 images every metric sees."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model pixels in [-1, 1] (N, C, H, W) -> uint8 (N, C, H, W), as if saved to PNG.

    Same rounding as DiT's ``sample_ddp.py``: clamp(127.5 x + 128, 0, 255) truncated to uint8.
    """
    return (x.float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)


def as_image_array(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) with C in {1, 3}, uint8 or float in [0, 255] -> numpy, validated."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C in {{1, 3}}, got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"images must be uint8 or float in [0, 255], got dtype {x.dtype}")
        if x.size and (x.min() < -1e-3 or x.max() > 255.001):
            raise ValueError(
                f"float images must lie in [0, 255], got [{x.min():.3g}, {x.max():.3g}]; "
                "map model outputs in [-1, 1] with dit_core.evaluate.to_uint8 first"
            )
    return x


def to_rgb(x: np.ndarray) -> np.ndarray:
    """(N, 1|3, H, W) -> (N, 3, H, W) (grey repeated, like PIL's ``convert("RGB")``)."""
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x
