"""Small image folders and tiny-VAE latents for the data tests (`vae_dir` is in conftest.py), and a
cheap feature extractor for the evaluation tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dit_core.evaluate.features import FeatureExtractor, to_rgb
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


class RandomConvExtractor(FeatureExtractor):
    """A fixed random conv net (seeded): cheap, smooth features for unit tests. pool: (N, dim)."""

    outputs = ("pool", "spatial")

    def __init__(self, dim: int = 16, seed: int = 0, size: int = 16) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(8, 3, 3, 3, generator=g) / 3.0
        self.w2 = torch.randn(dim, 8, 3, 3, generator=g) / 8.0
        self.size = size
        self.batch_size = 256
        self.name = f"randconv-{dim}-{seed}-{size}"

    @torch.no_grad()
    def _extract_batch(self, x: np.ndarray, outputs) -> dict[str, np.ndarray]:
        t = torch.from_numpy(to_rgb(x).astype(np.float32)) / 127.5 - 1.0
        t = torch.nn.functional.interpolate(t, size=(self.size, self.size), mode="bilinear", antialias=True)
        h = torch.tanh(torch.nn.functional.conv2d(t, self.w1, padding=1))
        h = torch.tanh(torch.nn.functional.conv2d(h, self.w2, padding=1, stride=2))
        return {"pool": h.mean(dim=(2, 3)).double().numpy(), "spatial": h[:, :2].flatten(1).double().numpy()}
