"""Reference (real-data) feature statistics, computed once per dataset x resolution x extractor and cached.

A reference is named by a string:
- ``"digits"`` (all 1797 images), ``"digits:train"`` / ``"digits:val"``: scikit-learn's digits at the
  run's resolution, exactly the pixels the ``digits`` dataset trains on (``dit_core.data.digits_images``);
- ``"photos"`` or ``"photos:channels=3,num_photos=10,crop_scale=0.08-0.2,holdout=0.25,n=2000"``: the
  first ``n`` validation crops of the ``photos`` dataset (held-out strips of the photographs, never
  overlapping the training region; ``dit_core.data.photos_images``); a ``photos`` run's default;
- a folder of images (searched recursively), each ADM-center-cropped to the run's resolution;
- an ``.npz`` whose ``arr_0`` holds uint8 NHWC images (the format of ADM / DiT sample and
  reference batches). Precomputed ``mu``/``sigma`` in ADM batches are *not* used: they come from the
  TF Inception with a different resize; features are recomputed with the extractor in use.
The stats are cached per source, resolution and extractor (`reference_stats`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..configio import stable_hash
from ..data import digits_images, photos_images
from ..data.digits import SPLITS as DIGITS_SPLITS
from ..data.imagefolder import IMG_EXTENSIONS, center_crop_arr, load_rgb
from ..data.photos import PhotoOptions, parse_photos_reference
from .features import FeatureExtractor
from .frechet import GaussianStats

log = logging.getLogger(__name__)

CACHE_ENV = "DITSCALE_CACHE"


def cache_dir(sub: str = "") -> Path:
    """``$DITSCALE_CACHE`` (default ``~/.cache/ditscale``) / ``sub``, created if missing."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ditscale")
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ReferenceSource:
    """Where the real images come from; ``chunks()`` yields uint8 (n, C, R, R) arrays."""

    spec: str
    resolution: int
    kind: str  # "digits" | "photos" | "folder" | "npz"
    files: list[Path] = field(default_factory=list)
    split: str = "all"
    options: dict = field(default_factory=dict)  # photos: `PhotoOptions`' fields and n

    def key(self) -> dict:
        info: dict = {"kind": self.kind, "resolution": self.resolution}
        if self.kind == "digits":
            info["split"] = self.split
        elif self.kind == "photos":
            info["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
        else:
            info["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files]
        return info

    def size(self) -> int | None:
        """How many real images: an .npz's (from its header), a folder's, the photos' n; None for the
        digits (a split of the 1797)."""
        if self.kind == "npz":
            return int(_npz_images(self.files[0])[0][0])
        if self.kind == "folder":
            return len(self.files)
        return int(self.options["n"]) if self.kind == "photos" else None

    @property
    def label(self) -> str:
        if self.kind == "photos":
            o = self.options
            base = f"photos-{o['num_photos']}x{o['channels']}ch-n{o['n']}"
        else:
            base = f"digits-{self.split}" if self.kind == "digits" else Path(self.spec).name or "ref"
        return f"{base}-{self.resolution}px"

    def chunks(self, size: int = 256) -> Iterator[np.ndarray]:
        if self.kind in ("digits", "photos"):
            if self.kind == "digits":
                x = digits_images(self.split, self.resolution)[0].numpy()
            else:
                opts = dict(self.options)
                x = photos_images(opts.pop("n"), self.resolution, PhotoOptions(**opts))[0].numpy()
            for i in range(0, len(x), size):
                yield x[i : i + size]
        elif self.kind == "npz":
            arr = np.load(self.files[0], mmap_mode="r")["arr_0"]
            for i in range(0, len(arr), size):
                yield np.ascontiguousarray(np.asarray(arr[i : i + size]).transpose(0, 3, 1, 2))
        else:
            yield from self._folder_chunks(size)

    def _folder_chunks(self, size: int) -> Iterator[np.ndarray]:
        """A folder's images as uint8 (n, 3, R, R) chunks; an unreadable file is skipped with a warning
        naming it, as the imagefolder dataset drops it from training (`data.validate_images`), so the
        folder a run trained on is its reference too. ValueError when fewer than 2 images are readable."""
        read, skipped = 0, []
        for i in range(0, len(self.files), size):
            batch = []
            for path in self.files[i : i + size]:
                try:
                    img = load_rgb(str(path))
                except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError: an OSError
                    log.warning("skipping unreadable reference image %s (%s: %s)", path, type(e).__name__, e)
                    skipped.append(path)
                    continue
                batch.append(center_crop_arr(img, self.resolution))
            read += len(batch)
            if batch:
                yield np.stack(batch).transpose(0, 3, 1, 2)
        if skipped:
            log.warning("skipped %d unreadable image(s) of %d in reference %s", len(skipped), len(self.files),
                        self.spec)  # fmt: skip
        if read < 2:
            raise ValueError(
                f"reference folder {self.spec} holds {read} readable image(s) ({len(skipped)} cannot be "
                f"read: {', '.join(map(str, skipped[:3]))}); FID needs at least 2: remove or replace them"
            )


def _check_channels(spec: str, have: int, channels: int | None) -> None:
    """ValueError when the samples' ``channels`` are not the reference's ``have`` (grey against colour:
    a FID of the colour alone, whatever the model learned)."""
    if channels is None or channels == have:
        return
    kind = {1: "grey", 3: "colour"}
    fix = f"'photos:channels={channels}'" if spec.startswith("photos") and channels in kind else "one"
    raise ValueError(
        f"reference {spec!r} holds {kind.get(have, have)} images ({have} channel(s)), but the samples have "
        f"{channels} channel(s); score against a reference of the model's own kind of images: {fix} "
        f"(or a folder / .npz of {channels}-channel images)"
    )


def resolve_reference(spec: str, resolution: int, channels: int | None = None) -> ReferenceSource:
    """Parse a reference name (see module doc); ValueError naming the problem otherwise, also when
    ``channels`` (the samples') differ from the reference's (known for digits, photos and .npz; a folder's
    images are read as RGB, grey ones included)."""
    if spec == "digits" or spec.startswith("digits:"):
        split = spec.partition(":")[2] or "all"
        if split not in DIGITS_SPLITS:
            raise ValueError(f"reference {spec!r}: digits split must be one of {sorted(DIGITS_SPLITS)}")
        _check_channels(spec, 1, channels)
        return ReferenceSource(spec, resolution, "digits", split=split)
    if spec == "photos" or spec.startswith("photos:"):
        options, n = parse_photos_reference(spec)
        _check_channels(spec, options.channels, channels)
        return ReferenceSource(spec, resolution, "photos", options={**dataclasses.asdict(options), "n": n})
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".npz":
        shape, dtype = _npz_images(p)
        if len(shape) != 4 or shape[1] != shape[2] or shape[1] != resolution:
            raise ValueError(
                f"reference {p}: arr_0 has shape {shape}, expected (N, {resolution}, {resolution}, C)"
            )
        if shape[3] not in (1, 3):
            raise ValueError(f"reference {p}: arr_0 has {shape[3]} channels, expected 1 (grey) or 3 (RGB)")
        if dtype != np.uint8:
            raise ValueError(f"reference {p}: arr_0 is {dtype}, expected uint8 images (0..255)")
        if shape[0] < 2:
            raise ValueError(f"reference {p}: arr_0 holds {shape[0]} image(s); FID needs at least 2")
        _check_channels(spec, shape[3], channels)
        return ReferenceSource(spec, resolution, "npz", files=[p])
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise ValueError(f"reference folder {p} holds no images ({list(IMG_EXTENSIONS)})")
        if len(files) < 2:
            raise ValueError(f"reference folder {p} holds 1 image ({files[0].name}); FID needs at least 2")
        return ReferenceSource(spec, resolution, "folder", files=files)
    raise ValueError(
        f"reference {spec!r} is neither 'digits[:split]', 'photos[:options]', an existing image folder, "
        "nor an .npz with arr_0"
    )


def _npz_images(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of ``path``'s ``arr_0``, read from its header (not the images); ValueError when
    the file is not a readable ``.npz`` holding it."""
    fix = "give an .npz whose arr_0 holds uint8 NHWC images"
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.removesuffix(".npy") for n in zf.namelist()]
            if "arr_0" in names:
                with zf.open("arr_0.npy") as f:
                    fmt = np.lib.format
                    major, _ = fmt.read_magic(f)
                    read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                    shape, _, dtype = read(f)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"reference {path} is not a readable .npz ({type(e).__name__}: {e}): it is truncated, corrupt "
            f"or another kind of file; {fix}"
        ) from None
    if "arr_0" not in names:
        raise ValueError(f"reference {path} has no `arr_0` (uint8 NHWC images); keys: {names}; {fix}")
    return shape, dtype


@dataclass
class ReferenceStats:
    """Per extractor output: Gaussian stats and up to ``max_feats`` raw features (for precision/recall)."""

    stats: dict[str, GaussianStats]
    feats: dict[str, np.ndarray]
    path: Path  # the cache file


def reference_stats(
    source: ReferenceSource,
    extractor: FeatureExtractor,
    outputs: Sequence[str] = ("pool",),
    max_feats: int = 10_000,
) -> ReferenceStats:
    """Stats of the reference images in ``extractor``'s feature space, from the cache when present.

    All of the extractor's non-``probs`` outputs are computed and cached together (one pass).
    """
    wanted = [o for o in extractor.outputs if o != "probs"]
    if any(o not in wanted for o in outputs):
        raise ValueError(f"reference stats cover {wanted}; asked for {list(outputs)}")
    key = stable_hash({"ref": source.key(), "extractor": extractor.name, "outputs": wanted, "max": max_feats})
    path = cache_dir("ref_stats") / f"{source.label}-{extractor.name}-{key}.npz"
    if path.is_file():
        z = np.load(path)
        stats = {o: GaussianStats(z[f"{o}_mu"], z[f"{o}_sigma"], int(z[f"{o}_n"])) for o in wanted}
        return ReferenceStats(stats, {o: z[f"{o}_feats"] for o in wanted}, path)
    outs = [extractor.extract(chunk, wanted) for chunk in source.chunks()]
    feats = {o: np.concatenate([out[o] for out in outs]) for o in wanted}
    stats = {o: GaussianStats.from_features(f) for o, f in feats.items()}
    rng = np.random.default_rng(0)
    kept, arrays = {}, {}
    for o, f in feats.items():
        kept[o] = f if len(f) <= max_feats else f[np.sort(rng.choice(len(f), max_feats, replace=False))]
        arrays |= {f"{o}_mu": stats[o].mu, f"{o}_sigma": stats[o].sigma, f"{o}_n": np.array(stats[o].n)}
        arrays[f"{o}_feats"] = kept[o]
    atomic_write(path, lambda f: np.savez(f, **arrays))
    log.info("cached reference stats (%d images, %s) -> %s", stats[wanted[0]].n, extractor.name, path)
    return ReferenceStats(stats, kept, path)
