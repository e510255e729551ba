"""Pre-extracted VAE latents (written by ``python -m dit_core.extract_latents``; layout in docs/data.md):
shards of "latents" (n, 2, C, h, w) [unflipped, flipped] times the scale factor and "labels" (n,) int64,
opened lazily (memory-mapped), one handle per shard per process."""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
from typing import Any

import torch
from torch.utils.data import Dataset

from .flip import EpochFlipMixin
from .imagefolder import class_folders

#: Stable Diffusion's VAE latent scale: latents are stored times it and decoded as ``vae.decode(z / it)``.
log = logging.getLogger(__name__)

SD_VAE_SCALE = 0.18215


def vae_factor(vae) -> int | None:
    """Pixels per latent pixel of a diffusers ``AutoencoderKL``: 2 per down block after the first (as
    diffusers' pipelines compute it); None without a VAE or that config."""
    blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return 2 ** (len(blocks) - 1) if blocks else None


MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ditscale-latents"
MANIFEST_KEYS = (
    "format",
    "version",
    "vae",
    "scale_factor",
    "image_size",
    "latent_shape",
    "classes",
    "num_items",
    "shards",
    "skipped",
)


def latent_scale(data, checkpoint: dict | None = None) -> float:
    """The scale the latents of a run on ``data`` (its DataConfig) were stored with, which decoding
    divides by: the one its ``checkpoint`` recorded (``latent_scale``, since session 61), else its
    latents' manifest's ``scale_factor`` (``data.root`` as the run gave it: relative to where the run
    was started); `SD_VAE_SCALE` (with a warning) when neither can say, or the data are not latents."""
    if getattr(data, "name", None) != "latents":
        return SD_VAE_SCALE
    if checkpoint is not None and checkpoint.get("latent_scale") is not None:
        return float(checkpoint["latent_scale"])
    try:
        return float(read_manifest(os.path.abspath(os.path.expanduser(data.root)))["scale_factor"])
    except (ValueError, TypeError, KeyError) as e:
        log.warning(
            "latents: the scale factor of %s is unknown (%s); decoding with %g", data.root, e, SD_VAE_SCALE
        )
        return SD_VAE_SCALE


def shard_name(k: int) -> str:
    """File name of shard ``k``."""
    return f"latents_{k:05d}.safetensors"


def read_manifest(root: str) -> dict[str, Any]:
    """Load and check ``root/manifest.json``; ValueError with a fix when missing or malformed."""
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isdir(root):
        raise ValueError(
            f"latents folder {root!r} does not exist; create it with python -m dit_core.extract_latents"
        )
    if not os.path.isfile(path):
        if classes := class_folders(root):  # an image folder: extract_latents refuses --output inside it
            raise ValueError(
                f"no {MANIFEST_NAME} in {root!r}: it holds class folders ({', '.join(classes[:3])}"
                f"{', ...' if len(classes) > 3 else ''}), an image folder, not latents. Train on its images "
                f"with --data imagefolder, or extract their latents into a new folder outside it: python -m "
                f"dit_core.extract_latents --data-path {root} --output <new folder> --vae <vae>, then give "
                "that folder as --data-root"
            )
        raise ValueError(
            f"no {MANIFEST_NAME} in {root!r}: not a finished latents folder. Run (or resume) "
            f"python -m dit_core.extract_latents --data-path <images> --output {root} --vae <vae>"
        )
    with open(path) as f:
        manifest = json.load(f)
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if manifest.get("format") != MANIFEST_FORMAT or missing:
        raise ValueError(f"{path} is not a {MANIFEST_FORMAT} manifest (missing keys: {missing})")
    for shard in manifest["shards"]:
        if not os.path.isfile(os.path.join(root, shard["file"])):
            raise ValueError(f"{path} lists shard {shard['file']} but the file is missing from {root!r}")
    return manifest


class LatentsDataset(EpochFlipMixin, Dataset):
    """Items ``(x, y)``: x float32 ``(C, h, w)`` scaled latent (flipped image's latent when the
    flip hash says so), y int64 label. ``manifest`` holds the VAE id and ``scale_factor`` needed
    to decode samples: ``vae.decode(x / scale_factor)``.
    """

    name = "latents"
    sorted_by_class = True  # items are in class order: validation spreads its subset over them

    def __init__(self, root: str, random_flip: bool = True, seed: int = 0, like: str | None = None):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.manifest = read_manifest(self.root)
        self.classes: list[str] = list(self.manifest["classes"])
        self._label_map = None if like is None else self._labels_like(like)
        self.num_classes = len(self.classes)
        c, h, w = self.manifest["latent_shape"]
        self.channels, self.resolution = int(c), int(h)
        self.image_size = int(self.manifest["image_size"])  # pixel size the latents decode to
        self.scale_factor = float(self.manifest["scale_factor"])
        self.vae = self.manifest["vae"]
        self.shard_files = [os.path.join(self.root, s["file"]) for s in self.manifest["shards"]]
        self._starts = [0, *itertools.accumulate(int(s["count"]) for s in self.manifest["shards"])]
        if self._starts[-1] == 0:
            raise ValueError(f"latents folder {self.root!r} holds no items (manifest lists 0)")
        self.random_flip, self.seed = random_flip, seed  # epoch: EpochFlipMixin's 0 until set_epoch
        self._handles: dict[int, Any] = {}

    def _labels_like(self, like: str) -> torch.Tensor:
        """Map this folder's labels to those of the training latents ``like`` (by class name); ValueError
        when the two differ in VAE, scale or size, or this one has a class ``like`` lacks."""
        train = read_manifest(os.path.abspath(os.path.expanduser(like)))
        keys = ("vae", "vae_subfolder", "scale_factor", "image_size", "latent_shape")
        diff = {k: (train.get(k), self.manifest.get(k)) for k in keys if train.get(k) != self.manifest.get(k)}
        unknown = [c for c in self.classes if c not in train["classes"]]
        if diff or unknown:
            what = f"{diff} (training, this)" if diff else f"class(es) {unknown[:5]} the training data lacks"
            raise ValueError(
                f"latents folder {self.root!r} does not match the training latents {like!r}: {what}; "
                "extract both with the same --vae, --image-size and --scale-factor, from class folders "
                "of the same names"
            )
        index = {c: i for i, c in enumerate(train["classes"])}
        label_map = torch.tensor([index[c] for c in self.classes], dtype=torch.int64)
        self.classes = list(train["classes"])
        return label_map

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not cross process boundaries
        return state

    def _handle(self, k: int) -> Any:
        if k not in self._handles:
            from safetensors import safe_open

            self._handles[k] = safe_open(self.shard_files[k], framework="pt", device="cpu")
        return self._handles[k]

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both stored latents of item ``index`` ``(2, C, h, w)`` [unflipped, flipped] and its label."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        k = bisect.bisect_right(self._starts, index) - 1
        i = index - self._starts[k]
        f = self._handle(k)
        lat = f.get_slice("latents")[i : i + 1][0]
        lab = f.get_slice("labels")[i : i + 1][0].long()
        return lat.float(), lab if self._label_map is None else self._label_map[lab]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        lat, label = self.pair(index)
        return lat[1 if self.is_flipped(index) else 0].contiguous(), label
