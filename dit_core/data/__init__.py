"""Datasets for DiT training: ``digits``, ``photos`` (bundled), ``imagefolder`` (pixels), ``latents`` (VAE).

Items ``(x, y)``: x float32 ``(C, H, W)`` (pixels in [-1, 1], or latents already times the scale factor),
y int64, deterministic functions of ``(seed, epoch, index)``; the API is in docs/data.md.

Names are imported from their modules on first use (PEP 562): `DataConfig` (``.config``) without torch,
so that configs and the sweep launcher stay light; the datasets bring torch in when first touched.
"""

from __future__ import annotations

from ..lazy import lazy_exports

#: exported name -> the module that defines it
_EXPORTS = {
    "DATASET_NAMES": ".config",
    "DataConfig": ".config",
    "MAX_RESOLUTION": ".config",
    "SPLITS": ".config",
    "PHOTOS": ".photo_options",
    "PhotoOptions": ".photo_options",
    "build_dataset": ".build",
    "data_accounting": ".build",
    "default_reference": ".build",
    "unique_images": ".build",
    "DigitsDataset": ".digits",
    "digits_images": ".digits",
    "digits_split_indices": ".digits",
    "flip_decision": ".flip",
    "ImageFolderDataset": ".imagefolder",
    "center_crop_arr": ".imagefolder",
    "class_folders": ".imagefolder",
    "scan_image_folder": ".imagefolder",
    "LatentsDataset": ".latents",
    "read_manifest": ".latents",
    "PhotoCropsDataset": ".photos",
    "photos_images": ".photos",
    "photos_reference": ".photos",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
