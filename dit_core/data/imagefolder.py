"""A folder of class subfolders (ImageNet layout) as a pixel-space dataset.

``root/<class>/<image>``: classes are the sorted subfolder names -> labels 0..K-1. Unreadable
files are dropped at build time (each named in a warning, then a count); a file that still fails
while training is named in a warning, recorded in ``dataset.skipped`` and replaced by the next
readable item, so a run never crashes and batch sizes never change. The image preprocessing here
(`center_crop_arr`, `load_rgb`, `to_tensor`) is also what ``extract_latents`` and folder references use.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .flip import EpochFlipMixin

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".jp2", ".gif")


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM-style center crop: uint8 array ``(size, size, C)``.

    Halve with a BOX filter while the smaller side is at least ``2 * size`` (cheap, alias-free),
    then resize with BICUBIC so the smaller side is exactly ``size``, then crop the center square.
    Same idea as guided-diffusion's ``center_crop_arr`` (Dhariwal & Nichol 2021), written anew.
    """
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    new_w, new_h = (max(size, round(s * scale)) for s in image.size)
    image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return arr[top : top + size, left : left + size]


def load_rgb(path: str) -> Image.Image:
    """Open ``path`` fully decoded as RGB (raises on unreadable or truncated files). 16-bit grey
    (modes ``I;16*``, ``I``) is scaled to 8 bits (v / 257), not clipped at 255 as PIL's convert does."""
    with Image.open(path) as im:
        im.load()
        if im.mode == "I" or im.mode.startswith("I;16"):
            grey = np.rint(np.asarray(im.convert("I"), dtype=np.float64) / 257.0)
            return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
        return im.convert("RGB")


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, C)`` -> float32 ``(C, H, W)`` in [-1, 1] (x / 127.5 - 1).

    Done in numpy: small torch ops pay intra-op thread overhead in the main process.
    """
    x = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    x /= 127.5
    x -= 1.0
    return torch.from_numpy(x)


@dataclass
class FolderScan:
    """Result of scanning an image folder: class names, ``(path, label)`` samples, dropped files."""

    root: str
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)


def _verify(path: str) -> str | None:
    """None if PIL can identify and verify ``path``, else the error text."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for bad files
        return f"{type(e).__name__}: {e}"
    return None


def class_folders(root: str) -> list[str]:
    """Sorted names of the class subfolders of ``root`` (hidden ones skipped); ValueError if no folder."""
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} does not exist or is not a directory")
    return sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))


def _image_files(folder: str, seen: set[str], others: tuple[str, ...] = ()) -> list[str]:
    """Image files under ``folder`` (recursive, sorted, links followed, hidden names skipped). Folders
    whose real path is in ``seen`` (the root, a class folder, one listed already) are not entered again,
    so a link to a parent or to another class adds no duplicates; each folder entered is added. Nor
    are links into ``others`` (the other class folders' real paths): their images keep the label of
    the class they live in, whichever class is listed first. A file link into any class folder is
    skipped (its image is listed where it lives), and a file reached by two links is listed once."""
    files = []
    inside = lambda r, fs=others: any(r == o or r.startswith(o + os.sep) for o in fs)  # noqa: E731
    classes = (*others, os.path.realpath(folder))
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = {d: os.path.realpath(os.path.join(dirpath, d)) for d in dirnames if not d.startswith(".")}
        keep = []
        for d in sorted(real):  # two links to one folder: the first by name is entered
            if real[d] not in seen and not inside(real[d]):
                keep.append(d)
                seen.add(real[d])
        dirnames[:] = keep
        names = (f for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith("."))
        for path in (os.path.join(dirpath, f) for f in names):
            if os.path.islink(path):  # one lstat; a plain file's real path is its folder's, entered once
                target = os.path.realpath(path)
                if target in seen or inside(target, classes):
                    continue
                seen.add(target)
            files.append(path)
    return files


def scan_image_folder(root: str, validate: bool = True, classes: list[str] | None = None) -> FolderScan:
    """List ``root/<class>/*.<image ext>`` (sorted) and, if ``validate``, drop unreadable files.

    ``classes``: label by these names (a validation folder read with the training folder's classes;
    it may lack some, but a folder not among them is an error); None = ``root``'s sorted subfolders.
    Raises ValueError naming ``root`` if it is missing, has no class subfolders, no images, or (classes
    None) a class folder without readable images (its label would never be trained).
    """
    root = os.path.abspath(os.path.expanduser(root))
    found = class_folders(root)
    if not found:
        raise ValueError(
            f"image folder {root!r} has no class subfolders; expected the ImageNet layout "
            "root/<class_name>/<image files>"
        )
    names = found if classes is None else list(classes)
    label = {c: i for i, c in enumerate(names)}
    if unknown := [c for c in found if c not in label]:
        raise ValueError(
            f"image folder {root!r} has class folders {unknown[:5]} that the training data does not have "
            f"(its classes: {names[:5]}{'...' if len(names) > 5 else ''}); remove or rename them"
        )
    real = {c: os.path.realpath(os.path.join(root, c)) for c in found}
    link_first = sorted(found, key=lambda c: not os.path.islink(os.path.join(root, c)))
    for c, k in ((c, k) for c in link_first for k in found if c != k):  # a class folder linked to another
        if real[c] == real[k] or real[c].startswith(real[k] + os.sep):
            how = "the same folder as" if real[c] == real[k] else "inside"
            raise ValueError(
                f"image folder {root!r}: class folder {c!r} is {how} class {k!r} ({real[c]}), so its "
                f"images would carry two labels; remove {os.path.join(root, c)} or give it images of its own"
            )
    seen = {os.path.realpath(root), *real.values()}
    others = lambda c: tuple(r for k, r in real.items() if k != c)  # noqa: E731
    samples = [(p, label[c]) for c in found for p in _image_files(os.path.join(root, c), seen, others(c))]
    if not samples:
        raise ValueError(
            f"image folder {root!r} has class subfolders {found[:5]}{'...' if len(found) > 5 else ''} "
            f"but no image files with extensions {list(IMG_EXTENSIONS)}"
        )
    skipped: list[str] = []
    if validate:
        with ThreadPoolExecutor(max_workers=8) as pool:
            errors = list(pool.map(_verify, (p for p, _ in samples)))
        for (path, _), err in zip(samples, errors):
            if err is not None:
                log.warning("skipping unreadable image %s (%s)", path, err)
                skipped.append(path)
        if skipped:
            log.warning("skipped %d unreadable image(s) of %d in %s", len(skipped), len(samples), root)
        samples = [s for s, err in zip(samples, errors) if err is None]
        if not samples:
            raise ValueError(f"image folder {root!r}: none of its {len(skipped)} image files could be read")
    empty = sorted(set(names) - {names[y] for _, y in samples})
    if classes is None and empty:
        raise ValueError(
            f"image folder {root!r}: class folder(s) {empty[:5]} hold no readable image files (extensions "
            f"{list(IMG_EXTENSIONS)}); add images or remove the folder (its label would never be trained)"
        )
    return FolderScan(root=root, classes=names, samples=samples, skipped=skipped)


class ImageFolderDataset(EpochFlipMixin, Dataset):
    """Items ``(x, y)``: x float32 ``(3, S, S)`` in [-1, 1] (ADM center crop), y int64 label.

    ``classes``: label by these names (see `scan_image_folder`). Attributes: ``classes``, ``samples``,
    ``skipped`` (files dropped at scan time plus files that failed at load time in *this* process;
    DataLoader workers keep their own copies).
    """

    name = "imagefolder"
    sorted_by_class = True  # items are in class order: validation spreads its subset over them
    channels = 3

    def __init__(
        self, root: str, resolution: int = 256, random_flip: bool = True, seed: int = 0,
        validate: bool = True, classes: list[str] | None = None,
    ):  # fmt: skip
        scan = scan_image_folder(root, validate=validate, classes=classes)
        self.root, self.classes, self.samples = scan.root, scan.classes, scan.samples
        self.skipped: list[str] = list(scan.skipped)
        self.load_failures = 0
        self.num_classes = len(self.classes)
        self.resolution = self.image_size = resolution
        self.random_flip, self.seed = random_flip, seed  # epoch: EpochFlipMixin's 0 until set_epoch

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int, flip: bool = False) -> torch.Tensor:
        """Image of item ``index``: float32 ``(3, S, S)`` in [-1, 1] (raises if unreadable)."""
        arr = center_crop_arr(load_rgb(self.samples[index][0]), self.resolution)
        return to_tensor(arr[:, ::-1] if flip else arr)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.samples)
        for k in range(n):
            j = (index + k) % n
            path, label = self.samples[j]
            try:
                x = self.load(j, flip=self.is_flipped(index))
            except Exception as e:
                self.load_failures += 1
                if path not in self.skipped:
                    self.skipped.append(path)
                log.warning("could not load image %s (%s: %s); using the next item instead (%d load failures "
                            "so far)", path, type(e).__name__, e, self.load_failures)  # fmt: skip
                continue
            return x, torch.tensor(label, dtype=torch.int64)
        raise RuntimeError(f"no image in {self.root!r} could be loaded")
