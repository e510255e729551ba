"""Datasets for DiT training: ``digits`` (bundled), ``imagefolder`` (pixels), ``latents`` (VAE).

``build_dataset(DataConfig(...), split)`` returns a ``torch.utils.data.Dataset`` of ``(x, y)``:
x float32 ``(C, H, W)`` (pixels in [-1, 1], or latents already times the scale factor), y int64.
Every dataset has ``name``, ``num_classes``, ``channels``, ``resolution`` and ``set_epoch(epoch)``;
items are deterministic functions of ``(seed, epoch, index)``.
"""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from .config import DATASET_NAMES, SPLITS, DataConfig
from .digits import DigitsDataset, digits_images, digits_split_indices
from .flip import flip_decision
from .imagefolder import ImageFolderDataset, scan_image_folder
from .latents import LatentsDataset, read_manifest
from .transforms import center_crop_arr

log = logging.getLogger(__name__)

__all__ = [
    "DATASET_NAMES",
    "DataConfig",
    "DigitsDataset",
    "ImageFolderDataset",
    "LatentsDataset",
    "build_dataset",
    "center_crop_arr",
    "digits_images",
    "digits_split_indices",
    "flip_decision",
    "read_manifest",
    "scan_image_folder",
]


def build_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """The dataset ``cfg`` names, for ``split`` in {"train", "val", "all"}.

    - digits: "train" uses ``cfg.digits_split``; "val" the held-out 10 %; "all" all 1797 images.
    - imagefolder / latents: "train" and "all" read ``cfg.root``; "val" reads ``cfg.val_root`` if
      set, else ``cfg.root`` (a log line says so).
    The "val" split never flips, so validation items are fixed.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid; choose one of {list(SPLITS)}")
    flip = cfg.random_flip and split != "val"
    if cfg.name == "digits":
        digits_split = cfg.digits_split if split == "train" else split
        return DigitsDataset(digits_split, cfg.image_size, random_flip=flip, seed=cfg.seed)
    root = cfg.root
    if split == "val":
        if cfg.val_root:
            root = cfg.val_root
        else:
            log.info("no data.val_root set: the %s val split reads the training folder %s", cfg.name, root)
    if cfg.name == "imagefolder":
        return ImageFolderDataset(
            root, cfg.image_size, random_flip=flip, seed=cfg.seed, validate=cfg.validate_images
        )
    if cfg.name == "latents":
        return LatentsDataset(root, random_flip=flip, seed=cfg.seed)
    raise ValueError(f"unknown dataset {cfg.name!r}; valid names: {list(DATASET_NAMES)}")
