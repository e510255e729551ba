"""``photos``: an unbounded, seeded, class-conditional stream of crops of the photographs scikit-image
ships inside its wheel (never fetched); class = photograph. Sample ``g`` of a split is a pure function
of ``(seed, split, g)`` (`PhotoCrops.boxes`), area-averaged to ``R x R`` (`PhotoCrops.render`); the
right-most ``holdout`` of each photo's columns is held out for validation and FID, so training and
validation crops never share a pixel. The full account: docs/data.md, "Datasets".
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .flip import EpochFlipMixin, item_hash, splitmix64
from .photo_options import PHOTOS, PhotoOptions

#: luma weights of scikit-image's ``rgb2gray`` (ITU-R BT.709)
_LUMA = (0.2125, 0.7154, 0.0721)
_TRAIN_STREAM, _VAL_STREAM = 0x7EA1, 0x7A11
_VAL_SEED = 0  # validation crops are the same whatever the data seed


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """The photograph ``name`` (see `PHOTOS`) as uint8 ``(H, W, 3)`` or ``(H, W, 1)``; cached."""
    from PIL import Image

    photo = {p.name: p for p in PHOTOS}.get(name)
    if photo is None:
        raise ValueError(f"unknown photo {name!r}; valid: {[p.name for p in PHOTOS]}")
    skimage = importlib.util.find_spec("skimage")
    if skimage is None or skimage.origin is None:
        raise ImportError(
            "the `photos` dataset reads the photographs bundled with scikit-image; "
            "install it with `pip install scikit-image`"
        )
    path = Path(skimage.origin).parent / "data" / photo.file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall scikit-image (`pip install scikit-image`)")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB" if photo.colour else "L"))
    return arr if arr.ndim == 3 else arr[:, :, None]


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8/float ``(H, W, c)`` -> float64 ``(channels, H, W)`` (BT.709 luma or grey replicated)."""
    x = np.asarray(img, dtype=np.float64).transpose(2, 0, 1)
    if channels == x.shape[0]:
        return x
    if channels == 1:
        return np.tensordot(np.asarray(_LUMA), x, axes=1)[None]
    return np.repeat(x, channels, axis=0)


def uniforms(key: int, index: np.ndarray, k: int) -> np.ndarray:
    """``k`` uniforms in [0, 1) per sample: float64 ``(len(index), k)``, a pure function of (key, index)."""
    with np.errstate(over="ignore"):
        base = splitmix64(np.uint64(key) ^ np.asarray(index, dtype=np.int64).astype(np.uint64))
        h = splitmix64(base[:, None] + np.arange(1, k + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


class PhotoCrops:
    """Crops of a list of images; ``sample(index, split)`` draws them, ``render(...)`` resamples.

    images: uint8 or float arrays ``(H, W, c)`` in 0..255 (class k = images[k]); channels: 1 or 3.
    crop_scale: (min, max) crop side as a fraction of the image's short side (log-uniform).
    holdout: fraction of each image's columns (right-most) reserved for validation.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        channels: int,
        crop_scale: tuple[float, float],
        holdout: float,
    ):
        self.channels, self.crop_scale, self.holdout = channels, tuple(crop_scale), float(holdout)
        self.heights = np.array([im.shape[0] for im in images], dtype=np.int64)
        self.widths = np.array([im.shape[1] for im in images], dtype=np.int64)
        self.val_cols = np.ceil(self.holdout * self.widths).astype(np.int64)
        self.train_cols = self.widths - self.val_cols
        tables, offsets, start = [], [], 0
        for im in images:
            x = torch.from_numpy(_to_channels(im, channels))  # (C, H, W) float64
            sat = torch.zeros(channels, x.shape[1] + 1, x.shape[2] + 1, dtype=torch.float64)
            sat[:, 1:, 1:] = x.cumsum(1).cumsum(2)
            tables.append(sat.reshape(channels, -1).t())  # (cells, C): a cell's channels side by side
            offsets.append(start)
            start += sat.shape[1] * sat.shape[2]
        self.table = torch.cat(tables).contiguous()  # (sum_p (H_p+1)(W_p+1), C)
        self.offsets = torch.tensor(offsets, dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        return len(self.heights)

    def boxes(self, index: np.ndarray, split: str, seed: int = 0) -> dict[str, np.ndarray]:
        """Crops of samples ``index`` (int ``(B,)``) of ``split``: ``label``, ``x0``, ``y0``, ``side``
        (float64 pixel coordinates, box ``[x0, x0+side) x [y0, y0+side)``), ``flip`` (bool) and the
        split's column range ``[x_lo, x_hi)`` of each crop's photo (int)."""
        if split not in ("train", "val"):
            raise ValueError(f"photos split must be 'train' or 'val', got {split!r}")
        index = np.asarray(index, dtype=np.int64)
        val = split == "val"
        key = item_hash(_VAL_SEED if val else seed, _VAL_STREAM if val else _TRAIN_STREAM, 0)
        u = uniforms(key, index, 4)
        label = index % self.num_classes
        h, w = self.heights[label], self.widths[label]
        lo_s, hi_s = np.log(self.crop_scale[0]), np.log(self.crop_scale[1])
        side = np.minimum(h, w) * np.exp(lo_s + u[:, 0] * (hi_s - lo_s))
        x_lo, x_hi = (self.train_cols[label], w) if val else (np.zeros_like(w), self.train_cols[label])
        side = np.minimum(side, x_hi - x_lo)  # holdout near 0.5: a crop as wide as the region, not past it
        x0 = x_lo + u[:, 1] * (x_hi - x_lo - side)
        y0 = u[:, 2] * (h - side)
        return dict(label=label, x0=x0, y0=y0, side=side, flip=u[:, 3] < 0.5, x_lo=x_lo, x_hi=x_hi)

    def render(self, label, x0, y0, side, resolution: int, x_lo=None, x_hi=None) -> torch.Tensor:
        """Area-averaged crops: uint8 ``(B, C, R, R)``; box b covers ``[x0, x0+side) x [y0, y0+side)``.

        ``x_lo``/``x_hi`` (optional, ``(B,)``) clamp the box's columns, so float rounding can never
        reach a pixel outside the split's region."""
        label = torch.as_tensor(np.asarray(label), dtype=torch.int64)
        col = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))[:, None]  # (B,) -> float64 (B, 1)
        r = torch.arange(resolution + 1, dtype=torch.float64) / resolution
        side_t = torch.as_tensor(np.asarray(side, dtype=np.float64))
        xs, ys = col(x0) + side_t[:, None] * r, col(y0) + side_t[:, None] * r  # (B, R+1)
        if x_lo is not None:
            xs = torch.maximum(torch.minimum(xs, col(x_hi)), col(x_lo))
        h = torch.as_tensor(self.heights)[label][:, None]
        w = torch.as_tensor(self.widths)[label][:, None]
        ix = torch.minimum(xs.floor().long().clamp_min(0), w - 1)  # cell of each lattice point
        iy = torch.minimum(ys.floor().long().clamp_min(0), h - 1)
        fx, fy = (xs - ix)[:, None, :], (ys - iy)[:, :, None]  # (B, 1, R+1), (B, R+1, 1)
        stride = (w + 1)[:, :, None]
        base = self.offsets[label][:, None, None] + iy[:, :, None] * stride + ix[:, None, :]  # (B, R+1, R+1)

        def at(offset):  # SAT values at base + offset: (C, B, R+1, R+1); index_select is the fast gather
            rows = self.table.index_select(0, (base + offset).reshape(-1))
            return rows.t().reshape(self.channels, *base.shape)

        # the integral image of a piecewise-constant image is exactly bilinear inside each cell
        integ = (
            at(0) * (1 - fy) * (1 - fx)
            + at(1) * (1 - fy) * fx
            + at(stride) * fy * (1 - fx)
            + at(stride + 1) * fy * fx
        )
        box = integ[..., 1:, 1:] - integ[..., :-1, 1:] - integ[..., 1:, :-1] + integ[..., :-1, :-1]
        area = (side_t / resolution) ** 2
        mean = box / area[None, :, None, None]
        return mean.clamp_(0, 255).round_().to(torch.uint8).permute(1, 0, 2, 3).contiguous()

    def sample(self, index: np.ndarray, split: str, resolution: int, seed: int = 0, flip: bool = True):
        """Samples ``index`` of ``split``: uint8 ``(B, C, R, R)`` and int64 labels ``(B,)``."""
        b = self.boxes(index, split, seed)
        x = self.render(b["label"], b["x0"], b["y0"], b["side"], resolution, b["x_lo"], b["x_hi"])
        if flip and split == "train":
            f = torch.from_numpy(b["flip"])
            x[f] = x[f].flip(-1)
        return x, torch.from_numpy(b["label"])


@functools.lru_cache(maxsize=8)
def photo_crops(options: PhotoOptions = PhotoOptions()) -> PhotoCrops:
    """`PhotoCrops` of ``options``' photographs; decoded once per process (cached)."""
    o = options
    return PhotoCrops(
        [load_photo(p.name) for p in PHOTOS[: o.num_photos]], o.channels, o.crop_scale, o.holdout
    )


class PhotoCropsDataset(EpochFlipMixin, Dataset):
    """Items ``(x, y)``: x float32 ``(C, R, R)`` in [-1, 1] (uint8 levels), y int64 photo index.

    train: ``len`` is ``epoch_size`` and item ``i`` of epoch ``e`` is sample ``e * epoch_size + i``,
    so no sample repeats (``unique_images`` is None: unbounded). val: item ``i`` is validation
    sample ``i`` (fixed, never flipped), ``len`` is ``val_size``.
    ``__getitems__`` renders a whole batch at once (used by DataStream and DataLoader).
    """

    name = "photos"

    def __init__(
        self,
        split: str = "train",
        resolution: int = 16,
        options: PhotoOptions = PhotoOptions(),
        random_flip: bool = True,
        seed: int = 0,
        epoch_size: int = 1 << 18,
        val_size: int = 10_000,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"photos split must be 'train' or 'val', got {split!r}")
        self.crops = photo_crops(options)
        self.split, self.resolution, self.image_size = split, resolution, resolution
        self.channels, self.num_classes = options.channels, options.num_photos
        self.classes = [p.name for p in PHOTOS[: options.num_photos]]
        self.random_flip, self.seed, self.epoch = random_flip and split == "train", seed, 0
        self.size = epoch_size if split == "train" else val_size
        self.unique_images: int | None = None if split == "train" else self.size

    def __len__(self) -> int:
        return self.size

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """x float32 ``(B, C, R, R)`` in [-1, 1], y int64 ``(B,)``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise IndexError(f"photos {self.split}: index out of range 0..{self.size - 1}")
        if self.split == "train":  # stream positions in the current epoch
            idx = idx + self.epoch * self.size
        u8, y = self.crops.sample(idx, self.split, self.resolution, self.seed, self.random_flip)
        return u8.float().div_(127.5).sub_(1.0), y

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.get_batch(indices)
        return list(zip(x.unbind(0), y.unbind(0)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch([index])
        return x[0], y[0]


def photos_images(
    n: int, resolution: int = 16, options: PhotoOptions = PhotoOptions()
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` validation crops (held-out strips): uint8 ``(n, C, R, R)``, int64 ``(n,)``.

    Exactly the pixels of the ``val`` split (before the [-1, 1] mapping); the FID reference set.
    """
    return photo_crops(options).sample(np.arange(n), "val", resolution, flip=False)


def _scale_range(text: str) -> tuple[float, float]:
    """``"0.08-0.2"`` -> (0.08, 0.2); ``"1e-05-0.2"`` -> (1e-05, 0.2) (an exponent's minus is kept)."""
    lo, hi = re.split(r"(?<![eE])-", text, maxsplit=1)
    return float(lo), float(hi)


_REF_KEYS = {"channels": int, "num_photos": int, "crop_scale": _scale_range, "holdout": float, "n": int}
REFERENCE_SIZE = 2000  # held-out crops in a photos FID reference unless its name says n=...


def photos_reference(options: PhotoOptions = PhotoOptions(), n: int = REFERENCE_SIZE) -> str:
    """The FID reference name of these photos options, e.g.
    ``"photos:channels=3,num_photos=10,crop_scale=0.08-0.2,holdout=0.25,n=2000"``."""
    (lo, hi), o = options.crop_scale, options
    crops = f"crop_scale={lo!r}-{hi!r},holdout={o.holdout!r}"  # floats: the shortest exact text, so
    # the name parses back to these options (`:g` wrote 0.2500001 as 0.25, another held-out strip)
    return f"photos:channels={o.channels},num_photos={o.num_photos},{crops},n={n}"


def parse_photos_reference(spec: str) -> tuple[PhotoOptions, int]:
    """The options and the number of crops of a ``photos[:key=value,...]`` reference name (missing
    keys take `PhotoOptions`' defaults and `REFERENCE_SIZE`)."""
    head, _, rest = spec.partition(":")
    if head != "photos":
        raise ValueError(f"not a photos reference: {spec!r}")
    opts: dict = {"n": REFERENCE_SIZE}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in _REF_KEYS:
            raise ValueError(f"reference {spec!r}: {part!r} is not one of {sorted(_REF_KEYS)}=VALUE")
        try:
            opts[key] = _REF_KEYS[key](value)
        except ValueError:
            raise ValueError(f"reference {spec!r}: cannot read {key}={value!r}") from None
    n = opts.pop("n")
    try:
        options = PhotoOptions(**opts)
    except ValueError as e:
        raise ValueError(f"reference {spec!r}: {e}") from None
    if n < 2:
        raise ValueError(f"reference {spec!r}: need n >= 2")
    return options, n
