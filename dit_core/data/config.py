"""`DataConfig`: which dataset to train on and how items are built."""

from __future__ import annotations

from dataclasses import dataclass

from ..configio import check_fields, coerce_fields, require
from ..spec import DATASET_NAMES
from ..spec import FOLDER_DATASETS as FOLDER_DATASETS  # the trainer's loop reads it from here
from .photo_options import PHOTOS, PhotoOptions

#: The digits' splits (`digits_split_indices`), and so `dit_core.data.build_dataset`'s.
SPLITS = ("train", "val", "all")
#: The largest side the 8 px digits are resized to (32x; the training set then takes ~1 GB of memory);
#: also the photos' limit (`DataConfig`), whose crops cover at most a few hundred pixels.
MAX_RESOLUTION = 256


@dataclass
class DataConfig:
    """Data settings; logged whole to MLflow as ``data.<field>``.

    name: ``"digits"`` (scikit-learn's bundled 8x8 digits, no download), ``"photos"`` (unbounded
        crops of scikit-image's bundled photographs, `dit_core.data.photos`), ``"imagefolder"``
        (class subfolders of images, pixel space) or ``"latents"`` (shards written by
        ``python -m dit_core.extract_latents``).
    root: folder for ``imagefolder`` / ``latents`` (unused for ``digits``).
    image_size: pixel resolution of x for ``digits`` and ``imagefolder``; for ``latents`` the
        spatial size comes from the manifest (the trainer refuses a value other than the default and
        the extracted size).
    random_flip: horizontal flip decided by hashing ``(seed, epoch, index)``; for latents it picks
        the stored latent of the flipped image.
    digits_split: which digits images the *train* split uses: ``"train"`` (90 %), ``"val"``
        (the held-out 10 %, stratified by class) or ``"all"`` (1797 images).
    seed: seed of the flip hash (not of any global RNG).
    val_root: optional separate folder for ``split="val"`` (imagefolder / latents), labelled by the
        class names of ``root`` (latents: of the same VAE, scale and size).
    validate_images: imagefolder: open and ``verify()`` every file at build time and drop the
        unreadable ones (with a warning naming each). Turn off for huge folders you trust.
    channels: photos: 1 (grey, BT.709 luma) or 3 (colour); None = 3. Other datasets: must be None
        (their channels are fixed: digits 1, imagefolder 3, latents from the manifest).
    num_photos: photos: how many of the bundled photographs (classes) to use, 1..13.
    crop_scale: photos: (min, max) crop side as a fraction of the photo's short side (log-uniform);
        max must not exceed ``holdout``.
    holdout: photos: fraction of each photo's columns (the right-most) kept for validation and FID.
    epoch_size: photos: items per training "epoch" of the (unbounded) stream; only sets how often
        the data order is reshuffled, never repeats a crop.
    """

    name: str = "digits"
    root: str | None = None
    image_size: int = 16
    random_flip: bool = True
    digits_split: str = "train"
    seed: int = 0
    val_root: str | None = None
    validate_images: bool = True
    channels: int | None = None
    num_photos: int = PhotoOptions.num_photos
    crop_scale: tuple[float, ...] = PhotoOptions.crop_scale
    holdout: float = PhotoOptions.holdout
    epoch_size: int = 1 << 18

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_fields(self, "data.", {"name": DATASET_NAMES, "digits_split": SPLITS, "image_size": ">= 1"})
        size, n = self.image_size, self.num_photos
        if self.name == "digits":
            require(size >= 8, "data.image_size", f"{size} is below the digits' 8 px; use 8, 16 or 32")
            require(
                size <= MAX_RESOLUTION,
                "data.image_size",
                f"{size} px is above the digits' limit of {MAX_RESOLUTION} px (their 8 px upscaled "
                f"{MAX_RESOLUTION // 8}x, all held in memory); give --image-size "
                f"{MAX_RESOLUTION} or less (usually 8, 16 or 32)",
            )
        if self.name == "photos":
            require(1 <= n <= len(PHOTOS), "data.num_photos", f"must be 1..{len(PHOTOS)}, got {n}")
            require(
                size <= MAX_RESOLUTION,
                "data.image_size",
                f"{size} px is above the photos' limit of {MAX_RESOLUTION} px (the default crops cover "
                f"60-282 px of a photograph, so a larger size only upsamples them); give --image-size "
                f"{MAX_RESOLUTION} or less (the demo uses 16)",
            )
            self.photo_options()
            check_fields(self, "data.", {"epoch_size": ">= 1"})
        else:
            require(
                self.channels is None,
                "data.channels",
                f"only an option of the photos dataset; unset it for {self.name!r}",
            )
        roots = {
            "imagefolder": "a folder of class subfolders of images",
            "latents": "the --output folder of python -m dit_core.extract_latents",
        }
        if self.name in roots:
            require(bool(self.root), "data.root", f"{self.name!r} needs root=<folder> ({roots[self.name]})")

    def bundled_shape(self) -> tuple[int, int] | None:
        """``(channels, classes)`` of a bundled dataset, known without reading it (digits: 1 and 10;
        photos: ``channels`` or 3, and ``num_photos``); None for a folder's (imagefolder, latents)."""
        if self.name == "digits":
            return 1, 10
        if self.name == "photos":
            return self.photo_options().channels, self.num_photos
        return None

    def photo_options(self) -> PhotoOptions:
        """The photos stream's `PhotoOptions` (channels None = colour); ValueError naming a bad one."""
        channels = PhotoOptions.channels if self.channels is None else self.channels
        return PhotoOptions(channels, self.num_photos, tuple(self.crop_scale), self.holdout)
