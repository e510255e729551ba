"""Small image folders and tiny-VAE latents for the data tests (`vae_dir` is in conftest.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dit_core.extract_latents import ExtractConfig, extract_latents


def image_folder(root, classes=("a", "b", "c"), per_class=2, size=(12, 16)):
    """``root/<class>/<i>.png``: seeded random RGB images of ``size`` (H, W); returns ``root``."""
    rng = np.random.default_rng(len(classes))
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def extract_tiny(images, out, vae_dir, size=16, **kw):
    """`extract_latents` of ``images`` into ``out`` with the tiny VAE, on one process and the CPU."""
    cfg = dict(image_size=size, batch_size=4, posterior="mean", num_workers=0, device="cpu", **kw)
    return extract_latents(ExtractConfig(data_path=str(images), output=str(out), vae=str(vae_dir), **cfg))
