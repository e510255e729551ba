"""`build_dataset`: the dataset a `DataConfig` names, and the data-reuse accounting of a run."""

from __future__ import annotations

import logging
import os

from torch.utils.data import Dataset

from ..tracking import EPOCHS, UNIQUE_IMAGES
from .config import DATASET_NAMES, SPLITS, DataConfig
from .digits import DigitsDataset
from .imagefolder import ImageFolderDataset, class_folders
from .latents import LatentsDataset
from .photos import PhotoCropsDataset, photos_reference

log = logging.getLogger(__name__)


def build_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """The dataset ``cfg`` names, for ``split`` in {"train", "val", "all"} (what each reads: docs/data.md).
    The "val" split never flips, so validation items are fixed."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid; choose one of {list(SPLITS)}")
    flip = cfg.random_flip and split != "val"
    if cfg.name == "digits":
        digits_split = cfg.digits_split if split == "train" else split
        return DigitsDataset(digits_split, cfg.image_size, random_flip=flip, seed=cfg.seed)
    if cfg.name == "photos":
        return PhotoCropsDataset(
            "train" if split == "train" else "val", cfg.image_size, cfg.photo_options(),
            random_flip=flip, seed=cfg.seed, epoch_size=cfg.epoch_size,
        )  # fmt: skip
    own = split == "val" and cfg.val_root  # a folder of its own, labelled by the training folder's classes
    root = cfg.val_root if own else cfg.root
    if split == "val" and not cfg.val_root:
        log.info("no data.val_root set: the %s val split reads the training folder %s", cfg.name, root)
    if cfg.name == "imagefolder":
        return ImageFolderDataset(
            root, cfg.image_size, random_flip=flip, seed=cfg.seed, validate=cfg.validate_images,
            classes=class_folders(os.path.abspath(os.path.expanduser(cfg.root))) if own else None,
        )  # fmt: skip
    if cfg.name == "latents":
        return LatentsDataset(root, random_flip=flip, seed=cfg.seed, like=cfg.root if own else None)
    raise ValueError(f"unknown dataset {cfg.name!r}; valid names: {list(DATASET_NAMES)}")


def unique_images(dataset: Dataset) -> int | None:
    """Distinct images ``dataset`` holds: its ``unique_images`` attribute if it has one (None =
    an unbounded stream), else ``len(dataset)``."""
    return getattr(dataset, "unique_images", len(dataset))


def data_accounting(dataset: Dataset, images_seen: int) -> dict[str, float]:
    """Metrics of data reuse: ``data/unique_images`` (finite datasets only) and ``data/epochs`` =
    images seen / unique images (0.0 for an unbounded stream, where no image repeats)."""
    n = unique_images(dataset)
    if n is None:
        return {EPOCHS: 0.0}
    return {UNIQUE_IMAGES: float(n), EPOCHS: images_seen / n}


def default_reference(cfg: DataConfig) -> str | None:
    """The FID reference a run on ``cfg`` uses when ``eval.reference`` is unset: ``"digits"``, the
    held-out photos crops (``photos_reference``), or None (other data must name one)."""
    if cfg.name == "digits":
        return "digits"
    if cfg.name == "photos":
        return photos_reference(cfg.photo_options())
    return None
