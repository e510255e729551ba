"""A small CNN trained on the digits training split: the domain feature extractor for the default data.

Inception features mean little for 16 px greyscale digits, so ``fid_digits`` / ``is_digits`` use this
classifier instead: penultimate activations (64-d) for FID and precision/recall, softmax for IS.
Training is deterministic (fixed seed, one thread, deterministic algorithms), takes seconds, and the
weights are cached under ``cache_dir("digits_classifier")`` keyed by resolution and recipe hash.
Inputs of any resolution >= 8 are resampled to 16 px (the digits hold 8x8 of information).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cache import cache_dir, save_torch_atomic, stable_hash
from .features import FeatureExtractor
from .images import as_image_array

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the architecture or training loop changes (invalidates caches)


@dataclass(frozen=True)
class DigitsClassifierRecipe:
    """Everything that determines the trained weights (hashed into the cache key)."""

    resolution: int = 16
    width: int = 16
    feature_dim: int = 64
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift: int = 1  # random translation in pixels at 16 px (augmentation)
    seed: int = 0
    version: int = RECIPE_VERSION


class DigitsNet(nn.Module):
    """(N, 1, 16, 16) in [-1, 1] -> logits (N, 10); ``features`` gives the (N, feature_dim) penultimate."""

    def __init__(self, width: int = 16, feature_dim: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(4 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_net_input(x: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 255] (C=1 or 3, H >= 8) -> (N, 1, 16, 16) in [-1, 1]."""
    x = x.float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (16, 16):
        x = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    return x / 127.5 - 1.0


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """One thread and deterministic kernels inside; the caller's settings restored after."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


def _shift(x: torch.Tensor, g: torch.Generator, m: int) -> torch.Tensor:
    """Random integer translation by up to ``m`` px per image (zero = background -1 padding)."""
    if m == 0:
        return x
    padded = F.pad(x, (m, m, m, m), value=-1.0)
    dx, dy = torch.randint(0, 2 * m + 1, (2, len(x)), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 16, dx[i] : dx[i] + 16] for i in range(len(x))])


def train_digits_classifier(recipe: DigitsClassifierRecipe) -> tuple[DigitsNet, float]:
    """Train on the digits "train" split, deterministically; returns (net, accuracy on "val")."""
    from dit_core.data import digits_images

    xtr, ytr = digits_images("train", recipe.resolution)
    xva, yva = digits_images("val", recipe.resolution)
    xtr, xva = to_net_input(xtr), to_net_input(xva)
    g = torch.Generator().manual_seed(recipe.seed)
    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = DigitsNet(recipe.width, recipe.feature_dim)
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps = recipe.epochs * ((len(xtr) + recipe.batch_size - 1) // recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
        net.train()
        for _ in range(recipe.epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                loss = F.cross_entropy(net(_shift(xtr[idx], g, recipe.max_shift)), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(xva).argmax(1) == yva).float().mean())
    return net, acc


def load_or_train(recipe: DigitsClassifierRecipe) -> tuple[DigitsNet, float, Path]:
    """The cached classifier for ``recipe`` (trained and cached on first use): (net, val acc, path)."""
    key = stable_hash({**asdict(recipe), "torch": torch.__version__.split("+")[0]})
    path = cache_dir("digits_classifier") / f"digits{recipe.resolution}-{key}.pt"
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = DigitsNet(recipe.width, recipe.feature_dim)
        net.load_state_dict(blob["state_dict"])
        return net.eval(), float(blob["val_accuracy"]), path
    net, acc = train_digits_classifier(recipe)
    log.info("trained digits classifier (%s px): val accuracy %.4f -> %s", recipe.resolution, acc, path)
    if acc < 0.95:
        log.warning("digits classifier val accuracy %.3f is below 0.95; fid_digits is less meaningful", acc)
    save_torch_atomic(path, {"state_dict": net.state_dict(), "val_accuracy": acc, "recipe": asdict(recipe)})
    return net, acc, path


class DigitsExtractor(FeatureExtractor):
    """Domain features for the digits: ``pool`` (N, 64) penultimate activations, ``probs`` (N, 10)."""

    outputs = ("pool", "probs")

    def __init__(self, resolution: int = 16, recipe: DigitsClassifierRecipe | None = None) -> None:
        self.recipe = recipe or DigitsClassifierRecipe(resolution=resolution)
        self.net, self.val_accuracy, self.path = load_or_train(self.recipe)
        self.batch_size = 512
        self.name = f"digitscnn-{self.path.stem}"

    @torch.no_grad()
    def _extract_batch(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        t = to_net_input(torch.from_numpy(as_image_array(x).astype(np.float32)))
        f = self.net.features(t)
        return {"pool": f.double().numpy(), "probs": torch.softmax(self.net.head(f), 1).double().numpy()}
