"""Domain classifiers: small CNNs trained on a dataset's own training images (digits: the digit;
photos: the photograph), whose penultimate activations and softmax are the feature space of
``fid_<domain>`` / ``precision_<domain>`` / ``recall_<domain>`` / ``is_<domain>`` (Inception means
little at 16 px and costs ~0.3-1 s per image on a CPU). The recipes: docs/evaluation.md.

A `DomainClassifierRecipe` fixes everything that determines the weights. Training is deterministic
on one machine but not across CPUs, so the package ships the weights of the demo's recipe
(`shipped_path`); any other recipe is trained on first use and cached (`classifier_path`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write
from ..configio import stable_hash
from ..data import digits_images
from ..data.photos import PhotoOptions, photo_crops
from .features import FeatureExtractor, file_digest
from .reference import cache_dir

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the architecture or training loop changes (invalidates caches)
DOMAINS = ("digits", "photos")
SHIPPED_DIR = Path(__file__).with_name("weights")  # trained classifiers that ship with the package
#: a cached classifier below this held-out accuracy is used, with a warning
MIN_ACCURACY = {"digits": 0.95, "photos": 0.7}


@dataclass(frozen=True)
class DomainClassifierRecipe:
    """Everything that determines the trained weights (hashed into the cache key).

    The defaults are the digits recipe; `photos_recipe` gives the photos one.
    domain: "digits" | "photos". resolution: the data's resolution (the training images are drawn
    at it). input_size: the net's input side (images are resampled to it; a multiple of 4).
    channels: the net's input channels. train_size / val_size: photos only, training crops and
    held-out crops scored. max_shift: random translation (px) as augmentation (digits); flip:
    random horizontal flips (photos). num_photos, crop_scale, holdout: the photos data's options.
    """

    domain: str = "digits"
    resolution: int = 16
    input_size: int = 16
    channels: int = 1
    width: int = 16
    feature_dim: int = 64
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift: int = 1
    flip: bool = False
    train_size: int = 0
    val_size: int = 0
    num_photos: int = PhotoOptions.num_photos
    crop_scale: tuple[float, float] = PhotoOptions.crop_scale
    holdout: float = PhotoOptions.holdout
    seed: int = 0
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain classifier: domain must be one of {list(DOMAINS)}, got {self.domain!r}")
        if self.input_size % 4 or self.input_size < 8:
            raise ValueError(
                f"domain classifier: input_size must be a multiple of 4 and >= 8, got {self.input_size}"
            )
        if self.domain == "photos" and (self.train_size < self.batch_size or self.val_size < 1):
            raise ValueError("photos classifier: need train_size >= batch_size and val_size >= 1")

    @property
    def num_classes(self) -> int:
        return 10 if self.domain == "digits" else self.num_photos


def digits_recipe(resolution: int = 16) -> DomainClassifierRecipe:
    """The ``fid_digits`` classifier: 3-conv CNN on 16 px grey digits, 12 epochs, +-1 px shifts."""
    return DomainClassifierRecipe(domain="digits", resolution=resolution)


def photos_recipe(resolution: int = 16, options: PhotoOptions = PhotoOptions()) -> DomainClassifierRecipe:
    """The ``fid_photos`` classifier of these photos options: the same 3-conv CNN on the data's
    resolution and channels, trained with random flips on the stream's first training crops
    (colour: 8 192 crops, 8 epochs; grey, where colour cannot help: 16 384 crops, 12 epochs) and
    scored on the first 2 000 held-out (validation) crops."""
    size = max(8, 4 * round(resolution / 4))
    o = options
    grey = o.channels == 1
    return DomainClassifierRecipe(
        domain="photos", resolution=resolution, input_size=size, channels=o.channels, width=16,
        feature_dim=64, epochs=12 if grey else 8, batch_size=128, lr=5e-3, max_shift=0, flip=True,
        train_size=16_384 if grey else 8192, val_size=2000, num_photos=o.num_photos,
        crop_scale=o.crop_scale, holdout=o.holdout,
    )  # fmt: skip


def recipe_for_reference(domain: str, resolution: int, options: dict | None = None) -> DomainClassifierRecipe:
    """The recipe serving a ``domain`` reference at ``resolution`` (photos: the reference's options)."""
    if domain == "digits":
        return digits_recipe(resolution)
    if domain == "photos":  # the reference's options less its n
        given = {k: v for k, v in (options or {}).items() if k in {f.name for f in fields(PhotoOptions)}}
        return photos_recipe(resolution, PhotoOptions(**given))
    raise ValueError(f"no domain classifier for {domain!r}; domains: {list(DOMAINS)}")


class DomainNet(nn.Module):
    """(N, C, S, S) in [-1, 1] -> logits (N, K); ``features`` gives the (N, feature_dim) penultimate.
    C, S, K, the width and feature_dim are the recipe's."""

    def __init__(self, r: DomainClassifierRecipe) -> None:
        super().__init__()
        width = r.width
        self.conv = nn.Sequential(
            nn.Conv2d(r.channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # S/2
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # S/4
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(4 * width * (r.input_size // 4) ** 2, r.feature_dim)
        self.head = nn.Linear(r.feature_dim, r.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_net_input(x: torch.Tensor, size: int = 16, channels: int = 1) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 255] (C = 1 or 3) -> (N, channels, size, size) in [-1, 1].

    Colour to grey is the channel mean, grey to colour repeats the channel; other sizes are
    resampled (bilinear, antialiased)."""
    x = x.float()
    if x.shape[1] == 3 and channels == 1:
        x = x.mean(dim=1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != channels:
        raise ValueError(f"domain classifier expects 1 or 3 channels, got images with {x.shape[1]}")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
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
    s = x.shape[-1]
    padded = F.pad(x, (m, m, m, m), value=-1.0)
    dx, dy = torch.randint(0, 2 * m + 1, (2, len(x)), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(len(x))])


def _random_hflip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image of (N, C, S, S) flipped left-right with probability 1/2."""
    f = torch.rand(len(x), generator=g) < 0.5
    return torch.where(f[:, None, None, None], x.flip(-1), x)


Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, C, R, R), int64 labels (N,)


def domain_data(recipe: DomainClassifierRecipe) -> tuple[Split, Split]:
    """(training images, held-out images) of the recipe's domain, at its resolution."""
    r = recipe
    if r.domain == "digits":
        return digits_images("train", r.resolution), digits_images("val", r.resolution)
    crops = photo_crops(PhotoOptions(r.channels, r.num_photos, tuple(r.crop_scale), r.holdout))
    # the stream's first crops (each flipped at random), and the first held-out ones
    train = crops.sample(np.arange(r.train_size), "train", r.resolution, seed=r.seed, flip=True)
    return train, crops.sample(np.arange(r.val_size), "val", r.resolution, flip=False)


def train_domain_classifier(recipe: DomainClassifierRecipe) -> tuple[DomainNet, float]:
    """Train on the domain's training images, deterministically; returns (net, held-out accuracy)."""
    (xtr, ytr), (xva, yva) = domain_data(recipe)
    xtr, xva = (to_net_input(x, recipe.input_size, recipe.channels) for x in (xtr, xva))
    g = torch.Generator().manual_seed(recipe.seed)
    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = DomainNet(recipe)
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps = recipe.epochs * ((len(xtr) + recipe.batch_size - 1) // recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
        net.train()
        for _ in range(recipe.epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                xb = _shift(xtr[idx], g, recipe.max_shift)
                xb = _random_hflip(xb, g) if recipe.flip else xb
                loss = F.cross_entropy(net(xb), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(xva).argmax(1) == yva).float().mean())
    return net, acc


def classifier_path(recipe: DomainClassifierRecipe) -> Path:
    """Cache file of ``recipe``'s weights (the key covers the recipe and the torch version)."""
    key = stable_hash({**asdict(recipe), "torch": torch.__version__.split("+")[0]})
    return cache_dir("domain_classifier") / f"{recipe.domain}{recipe.resolution}-{key}.pt"


def shipped_path(recipe: DomainClassifierRecipe) -> Path:
    """Where the package ships ``recipe``'s weights (a file exists for the demo's recipe only)."""
    return SHIPPED_DIR / f"{recipe.domain}{recipe.resolution}-{stable_hash(asdict(recipe))}.pt"


def load_or_train(recipe: DomainClassifierRecipe) -> tuple[DomainNet, float, Path]:
    """The classifier for ``recipe``: shipped, else cached, else trained and cached now:
    (net, held-out acc, path)."""
    for path in (shipped_path(recipe), classifier_path(recipe)):
        if path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            net = DomainNet(recipe)
            net.load_state_dict(blob["state_dict"])
            return net.eval(), float(blob["val_accuracy"]), path
    path = classifier_path(recipe)  # trained here: cached for this machine, never into the package
    net, acc = train_domain_classifier(recipe)
    what = f"{recipe.domain} classifier ({recipe.resolution} px)"
    log.info("trained %s: held-out accuracy %.4f -> %s", what, acc, path)
    floor = MIN_ACCURACY[recipe.domain]
    if acc < floor:
        log.warning("%s classifier held-out accuracy %.3f is below %.2f; fid_%s is less meaningful",
                    recipe.domain, acc, floor, recipe.domain)  # fmt: skip
    _save(path, net, acc, recipe)
    return net, acc, path


def _save(path: Path, net: DomainNet, acc: float, recipe: DomainClassifierRecipe) -> None:
    blob = {"state_dict": net.state_dict(), "val_accuracy": acc, "recipe": asdict(recipe)}
    atomic_write(path, lambda f: torch.save(blob, f))


def ship(recipe: DomainClassifierRecipe) -> Path:
    """Copy ``recipe``'s classifier (cached, or trained now) into the package's shipped weights, so
    every machine scores FIDs in the same feature space (a maintainer's step; docs/evaluation.md)."""
    net, acc, _ = load_or_train(recipe)
    path = shipped_path(recipe)
    _save(path, net, acc, recipe)  # atomic_write creates the folder
    return path


class DomainExtractor(FeatureExtractor):
    """Domain features: ``pool`` (N, feature_dim) penultimate activations, ``probs`` (N, classes)."""

    outputs = ("pool", "probs")

    def __init__(self, recipe: DomainClassifierRecipe) -> None:
        self.recipe, self.domain, self.batch_size = recipe, recipe.domain, 512
        self.net, self.val_accuracy, self.path = load_or_train(recipe)
        # the recipe's hash names the training; the weights' own digest tells two trainings of one
        # recipe apart (a first-use training differs between CPU types, docs/evaluation.md)
        self.name = f"{recipe.domain}cnn-{self.path.stem}-w{file_digest(self.path)}"

    @torch.no_grad()
    def _extract_batch(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        t = to_net_input(torch.from_numpy(x.astype(np.float32)), self.recipe.input_size, self.recipe.channels)
        f = self.net.features(t)
        return {"pool": f.double().numpy(), "probs": torch.softmax(self.net.head(f), 1).double().numpy()}
