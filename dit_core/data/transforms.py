"""Image preprocessing shared by the ``imagefolder`` dataset and ``extract_latents``."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM-style center crop: uint8 array ``(size, size, C)``.

    Halve with a BOX filter while the smaller side is at least ``2 * size`` (cheap, alias-free),
    then resize with BICUBIC so the smaller side is exactly ``size``, then crop the center square.
    Same idea as guided-diffusion's ``center_crop_arr`` (Dhariwal & Nichol 2021), written anew.
    """
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    new_w, new_h = (max(size, round(s * scale)) for s in image.size)
    image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return arr[top : top + size, left : left + size]


def load_rgb(path: str) -> Image.Image:
    """Open ``path`` fully decoded as RGB (raises on unreadable or truncated files)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, C)`` -> float32 ``(C, H, W)`` in [-1, 1] (x / 127.5 - 1).

    Done in numpy: small torch ops pay intra-op thread overhead in the main process.
    """
    x = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    x /= 127.5
    x -= 1.0
    return torch.from_numpy(x)
