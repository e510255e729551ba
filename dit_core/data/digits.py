"""scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes), resized in memory to uint8
pixels that both training (mapped to [-1, 1]) and the FID reference (``digits_images``) use; the
resize and the split are described in docs/data.md."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import MAX_RESOLUTION, SPLITS
from .flip import EpochFlipMixin

VAL_FRACTION = 0.1
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """The raw digits: images ``(1797, 8, 8)`` float64 in 0..16, labels ``(1797,)`` int64.

    Read from scikit-learn's bundled ``datasets/data/digits.csv.gz`` (64 pixels then the label per
    row, what ``load_digits`` parses) without importing scikit-learn: that import costs every
    training job 1-2 s. Falls back to ``load_digits`` where the file is not found."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8).astype(np.float64), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float64), d.target.astype(np.int64)


def digits_split_indices(split: str) -> np.ndarray:
    """Sorted indices into the 1797 digits for ``split`` in {"train", "val", "all"}.

    "val" holds ``round(0.1 * n_c)`` images of each class c, chosen with a fixed seed.
    """
    if split not in SPLITS:
        raise ValueError(f"digits split {split!r} is not valid; choose one of {list(SPLITS)}")
    _, labels = _load_raw()
    if split == "all":
        return np.arange(len(labels))
    rs = np.random.RandomState(SPLIT_SEED)  # legacy: its stream is stable across NumPy versions
    val = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        n_val = int(round(VAL_FRACTION * len(idx)))
        val.append(rs.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val))
    return val_idx if split == "val" else np.setdiff1d(np.arange(len(labels)), val_idx)


@functools.lru_cache(maxsize=8)
def _resized_uint8(resolution: int) -> torch.Tensor:
    """All 1797 digits resized to ``resolution``: uint8 ``(1797, 1, R, R)``."""
    images, _ = _load_raw()
    x = torch.from_numpy(images / 16.0).float().unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    if resolution != 8:
        x = F.interpolate(
            x, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=True
        )
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def digits_images(split: str = "all", resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits of ``split`` as images: uint8 ``(N, 1, R, R)`` in 0..255 and int64 labels ``(N,)``.

    These are exactly the pixels the ``digits`` dataset trains on (before the [-1, 1] mapping and
    flips); use them as the FID reference set.
    """
    if not 8 <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"digits resolution must be >= 8 (native size) and <= {MAX_RESOLUTION}, got {resolution}"
        )
    idx = torch.from_numpy(digits_split_indices(split))
    _, labels = _load_raw()
    return _resized_uint8(resolution)[idx].clone(), torch.from_numpy(labels)[idx].clone()


class DigitsDataset(EpochFlipMixin, Dataset):
    """Items ``(x, y)``: x float32 ``(1, R, R)`` in [-1, 1], y int64 class 0..9; all in memory."""

    name = "digits"
    num_classes = 10
    channels = 1

    def __init__(self, split: str = "train", resolution: int = 16, random_flip: bool = True, seed: int = 0):
        images, labels = digits_images(split, resolution)
        self.images = images.float().div_(127.5).sub_(1.0)  # (N, 1, R, R)
        self.labels, self.split = labels, split
        self.resolution = self.image_size = resolution
        self.random_flip, self.seed = random_flip, seed  # epoch: EpochFlipMixin's 0 until set_epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        x = x.flip(-1) if self.is_flipped(index) else x.clone()
        return x, self.labels[index]
