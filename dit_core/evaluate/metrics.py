"""Metrics of a set of samples against a reference: FID, sFID, IS, precision/recall (+ digits variants).

``evaluate_samples(images, reference, metrics=...)`` -> ``{name: value}`` (no ``eval/`` prefix).

| metric | features | extractor family |
|---|---|---|
| fid, precision, recall | Inception pool3 (2048) | "inception" |
| sfid | Inception mixed_6/conv[:7] (2023) | "inception" |
| is | Inception 1008-way softmax (needs a weights file with logits) | "inception" |
| fid_digits, precision_digits, recall_digits | digits CNN penultimate (64) | "digits" |
| is_digits | digits CNN 10-way softmax | "digits" |
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .features import FeatureExtractor, InceptionExtractor
from .frechet import GaussianStats, fid_from_stats
from .images import as_image_array
from .inception_score import inception_score
from .precision_recall import precision_recall
from .reference import reference_stats, resolve_reference

log = logging.getLogger(__name__)

# metric -> (extractor family, extractor output)
METRICS: dict[str, tuple[str, str]] = {
    "fid": ("inception", "pool"),
    "sfid": ("inception", "spatial"),
    "is": ("inception", "probs"),
    "precision": ("inception", "pool"),
    "recall": ("inception", "pool"),
    "fid_digits": ("digits", "pool"),
    "is_digits": ("digits", "probs"),
    "precision_digits": ("digits", "pool"),
    "recall_digits": ("digits", "pool"),
}
DIGITS_METRICS = ("fid_digits", "is_digits", "precision_digits", "recall_digits")
INCEPTION_METRICS = ("fid", "sfid", "precision", "recall")


def default_metrics(reference: str, inception: bool = True) -> tuple[str, ...]:
    """Digits metrics for a digits reference, plus the Inception ones when ``inception``."""
    digits = DIGITS_METRICS if reference.split(":")[0] == "digits" else ()
    return digits + (INCEPTION_METRICS if inception or not digits else ())


def check_metrics(metrics: Sequence[str], reference: str) -> None:
    """ValueError for unknown names or digits metrics on a non-digits reference."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: {sorted(METRICS)}")
    if reference.split(":")[0] != "digits" and any(METRICS[m][0] == "digits" for m in metrics):
        raise ValueError(f"*_digits metrics need reference='digits', got {reference!r}")


def build_extractor(
    family: str, resolution: int, inception_weights: str | None = None, device: str | torch.device = "cpu"
) -> FeatureExtractor:
    """The default extractor of a family: clean-fid Inception, or the cached digits classifier."""
    if family == "inception":
        return InceptionExtractor(inception_weights, device=device)
    if family == "digits":
        from .digits_classifier import DigitsExtractor

        return DigitsExtractor(resolution)
    raise ValueError(f"unknown extractor family {family!r}")


def evaluate_samples(
    images: torch.Tensor | np.ndarray,
    reference: str = "digits",
    *,
    metrics: Sequence[str] = DIGITS_METRICS,
    extractors: Mapping[str, FeatureExtractor] | None = None,
    inception_weights: str | None = None,
    device: str | torch.device = "cpu",
    k: int = 3,
    is_splits: int = 1,
    use_cache: bool = True,
) -> dict[str, float]:
    """Metrics of ``images`` (N, C, H, W), uint8 (or float in [0, 255]), against ``reference``.

    extractors: optional ``{"inception": ..., "digits": ...}`` overrides (tests pass tiny ones).
    The reference stats are computed at the samples' resolution and cached.
    """
    check_metrics(metrics, reference)
    x = as_image_array(images)
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"images must be square, got {x.shape[2]}x{x.shape[3]}")
    resolution = x.shape[-1]
    source = resolve_reference(reference, resolution)
    extractors = dict(extractors or {})
    out: dict[str, float] = {}
    for family in dict.fromkeys(METRICS[m][0] for m in metrics):
        names = [m for m in metrics if METRICS[m][0] == family]
        if family not in extractors:
            extractors[family] = build_extractor(family, resolution, inception_weights, device)
        ext = extractors[family]
        needed = list(dict.fromkeys(METRICS[m][1] for m in names))
        if "probs" in needed and "probs" not in ext.outputs:
            raise ValueError(
                f"metric 'is' needs class logits, but {ext.name} has none (fid-helper's default_1.pt "
                "is the pool3 trunk only); pass NVIDIA's inception-2015-12-05.pt via "
                "--inception-weights, or drop 'is'"
            )
        fake = ext.extract(x, needed)
        ref = reference_stats(source, ext, [o for o in needed if o != "probs"], use_cache=use_cache)
        for m in names:
            base, out_name = m.removesuffix("_digits"), METRICS[m][1]
            if base in ("fid", "sfid"):
                out[m] = fid_from_stats(GaussianStats.from_features(fake[out_name]), ref.stats[out_name])
            elif base == "is":
                out[m] = inception_score(fake["probs"], splits=is_splits)
        if any(m.removesuffix("_digits") in ("precision", "recall") for m in names):
            p, r = precision_recall(ref.feats["pool"], fake["pool"], k=k)
            suffix = "_digits" if family == "digits" else ""
            if f"precision{suffix}" in names:
                out[f"precision{suffix}"] = p
            if f"recall{suffix}" in names:
                out[f"recall{suffix}"] = r
        if family == "digits" and getattr(ext, "val_accuracy", None) is not None:
            out["digits_classifier_acc"] = float(ext.val_accuracy)
    return {m: out[m] for m in (*metrics, "digits_classifier_acc") if m in out}
