"""Metrics of a set of samples against a reference: FID, sFID, IS, precision/recall (+ domain variants);
`METRICS` maps each to its extractor family and output (the table: docs/evaluation.md, "Metrics").

A domain FID also comes with ``fid_<domain>_se``: its bootstrap standard error over the samples
(`frechet.fid_bootstrap_se`, 50 resamples, ~0.1 s for 64-d features), the FID's noise under another
sampling seed. Not for Inception's 2048-d features, where each resample would take seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .domain_classifier import DOMAINS, DomainExtractor, recipe_for_reference
from .features import FeatureExtractor, InceptionExtractor, as_image_array, no_logits_message
from .frechet import GaussianStats, fid_bootstrap_se, fid_from_stats
from .reference import ReferenceSource, reference_stats, resolve_reference

log = logging.getLogger(__name__)


def domain_metrics(domain: str) -> tuple[str, ...]:
    """The four metrics of a domain classifier: ``fid_<d>``, ``is_<d>``, ``precision_<d>``, ``recall_<d>``."""
    return tuple(f"{m}_{domain}" for m in ("fid", "is", "precision", "recall"))


# metric -> (extractor family, extractor output)
METRICS: dict[str, tuple[str, str]] = {
    "fid": ("inception", "pool"),
    "sfid": ("inception", "spatial"),
    "is": ("inception", "probs"),
    "precision": ("inception", "pool"),
    "recall": ("inception", "pool"),
}
for _d in DOMAINS:
    METRICS |= {m: (_d, "probs" if m.startswith("is_") else "pool") for m in domain_metrics(_d)}
DIGITS_METRICS = domain_metrics("digits")
PHOTOS_METRICS = domain_metrics("photos")
INCEPTION_METRICS = ("fid", "sfid", "precision", "recall")
FID_SE_RESAMPLES = 50  # bootstrap resamples behind fid_<domain>_se
PR_K = 3  # nearest neighbours of precision/recall (ADM, the DiT paper)
IS_SPLIT_SIZE = 5000  # Inception Score chunks (ADM's evaluator, compute_inception_score: split_size=5000)


def inception_score(
    probs: np.ndarray, splits: int = 1, eps: float = 1e-12, split_size: int | None = None
) -> float:
    """Inception Score (Salimans et al. 2016) from any classifier's class probabilities:
    IS = exp(E_x KL(p(y|x) || p(y))), the mean over ``splits`` near-equal chunks, or with
    ``split_size`` over consecutive chunks of that many rows, the last one shorter (ADM's evaluator:
    5,000, so the 50K-sample protocol averages ten; `evaluate_samples` uses `IS_SPLIT_SIZE`).

    probs: (N, K) rows of class probabilities (softmax outputs). Uniform predictions give 1;
    confident one-hot predictions spread evenly over K classes give K.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be (N, K) with N >= 1, got shape {p.shape}")
    if np.any(p < -1e-6) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs rows must be probability vectors (softmax outputs), not logits")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be in 1..N={p.shape[0]}, got {splits}")
    if split_size is not None and split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}")
    chunks = (
        np.array_split(p, splits)
        if split_size is None
        else np.split(p, range(split_size, len(p), split_size))
    )
    scores = []
    for chunk in chunks:
        py = chunk.mean(axis=0, keepdims=True)
        kl = np.sum(chunk * (np.log(chunk + eps) - np.log(py + eps)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


# improved precision and recall (Kynkaanniemi et al. 2019), k-NN manifolds as in ADM's evaluator
def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (A, B) = |a|^2 - 2 a.b + |b|^2, clamped at 0."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return d.clamp_(min=0.0)


def knn_radii(feats: np.ndarray, k: int = 3, block: int = 4096) -> np.ndarray:
    """Squared distance of each row of ``feats`` (N, D) to its k-th nearest other row: (N,)."""
    x = torch.as_tensor(np.ascontiguousarray(feats, np.float64))  # a reversed view has negative strides
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k={k} needs at least k+1={k + 1} points, got {x.shape[0]}")
    out = []
    for i in range(0, x.shape[0], block):
        d = _sq_dists(x[i : i + block], x)
        out.append(torch.kthvalue(d, k + 1, dim=1).values)  # index 0 is the point itself
    return torch.cat(out).numpy()


def _coverage(query: np.ndarray, manifold: np.ndarray, radii: np.ndarray, block: int) -> float:
    """Fraction of ``query`` rows inside some ball (manifold_j, radii_j)."""
    q = torch.as_tensor(np.ascontiguousarray(query, np.float64))
    m = torch.as_tensor(np.ascontiguousarray(manifold, np.float64))
    r = torch.as_tensor(radii)
    inside = [(_sq_dists(q[i : i + block], m) <= r[None, :]).any(dim=1) for i in range(0, len(q), block)]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 4096
) -> tuple[float, float]:
    """(precision, recall) of ``fake`` (M, D) against ``real`` (N, D) features.

    Precision: fraction of fake points inside the real manifold (union of balls around each real
    point reaching its k-th nearest real neighbour). Recall: fraction of real points inside the
    fake manifold. k=3 as in ADM / the DiT paper.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {real.shape} and {fake.shape}")
    precision = _coverage(fake, real, knn_radii(real, k, block), block)
    recall = _coverage(real, fake, knn_radii(fake, k, block), block)
    return precision, recall


def reference_domain(reference: str) -> str | None:
    """The domain of a reference name (``"digits"``, ``"photos"``), None for folders and ``.npz`` files."""
    head = reference.split(":")[0]
    return head if head in DOMAINS else None


def default_metrics(reference: str, inception: bool = True) -> tuple[str, ...]:
    """The domain metrics of a digits / photos reference, plus the Inception ones when ``inception``
    (always for other references)."""
    domain = reference_domain(reference)
    own = domain_metrics(domain) if domain else ()
    return own + (INCEPTION_METRICS if inception or not own else ())


def check_reference_size(metrics: Sequence[str], source: ReferenceSource) -> None:
    """ValueError where precision or recall is asked of a reference too small for them: each real
    image's radius is the distance to its ``PR_K``-th nearest real neighbour, so ``PR_K + 1`` images at
    least (the generated side is checked against ``num_samples``); told before any sampling."""
    n = source.size()
    if n is not None and n < PR_K + 1 and any(m.startswith(("precision", "recall")) for m in metrics):
        raise ValueError(
            f"reference {source.spec}: {n} images are too few for precision and recall ({PR_K} nearest "
            f"neighbours of each real image need {PR_K + 1}); give a reference of {PR_K + 1} images or "
            "more, or metrics without them"
        )


def check_metrics(metrics: Sequence[str], reference: str) -> None:
    """ValueError for unknown names or domain metrics on a reference of another domain."""
    if unknown := [m for m in metrics if m not in METRICS]:
        raise ValueError(f"unknown metrics {unknown}; valid: {sorted(METRICS)}")
    domain = reference_domain(reference)
    for d in DOMAINS:
        if d != domain and any(METRICS[m][0] == d for m in metrics):
            raise ValueError(f"*_{d} metrics need reference='{d}' (or '{d}:...'), got {reference!r}")


def evaluate_samples(
    images: torch.Tensor | np.ndarray,
    reference: str | ReferenceSource = "digits",
    *,
    metrics: Sequence[str] = DIGITS_METRICS,
    extractors: Mapping[str, FeatureExtractor] | None = None,
    inception_weights: str | None = None,
    device: str | torch.device = "cpu",
    feature_spaces: dict[str, str] | None = None,
) -> dict[str, float]:
    """Metrics of ``images`` (N, C, H, W), uint8 (or float in [0, 255]), against ``reference``.

    extractors: optional ``{"inception": ..., "digits": ..., "photos": ...}`` overrides (tests pass
    tiny ones). The reference stats are computed at the samples' resolution and cached. A domain
    family also reports its classifier's held-out accuracy as ``<domain>_classifier_acc``.
    feature_spaces: when given, filled with ``{family: extractor name}`` (the name changes with the
    weights), so a caller can record which features its FIDs were computed in.
    """
    given = reference if isinstance(reference, ReferenceSource) else None  # resolved by the caller
    spec = given.spec if given else str(reference)
    check_metrics(metrics, spec)
    x = as_image_array(images)
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"images must be square, got {x.shape[2]}x{x.shape[3]}")
    resolution = x.shape[-1]
    if given and given.resolution == resolution:  # a folder is listed once, not again here
        source = given
    else:
        source = resolve_reference(spec, resolution, channels=x.shape[1])
    extractors = dict(extractors or {})
    out: dict[str, float] = {}
    for family in dict.fromkeys(METRICS[m][0] for m in metrics):
        names = [m for m in metrics if METRICS[m][0] == family]
        if family not in extractors:  # clean-fid Inception, or the classifier of the reference's domain
            extractors[family] = (
                InceptionExtractor(inception_weights, device=device)
                if family == "inception"
                else DomainExtractor(recipe_for_reference(family, source.resolution, source.options))
            )
        ext = extractors[family]
        if feature_spaces is not None:
            feature_spaces[family] = ext.name
        needed = list(dict.fromkeys(METRICS[m][1] for m in names))
        if "probs" in needed and "probs" not in ext.outputs:
            raise ValueError(no_logits_message(ext.name))
        fake = ext.extract(x, needed)
        ref = reference_stats(source, ext, [o for o in needed if o != "probs"])
        suffix = f"_{family}" if family in DOMAINS else ""
        for m in names:
            base, out_name = m.removesuffix(suffix), METRICS[m][1]
            if base in ("fid", "sfid"):
                out[m] = fid_from_stats(GaussianStats.from_features(fake[out_name]), ref.stats[out_name])
                if family in DOMAINS and base == "fid":
                    out[f"{m}_se"] = fid_bootstrap_se(fake[out_name], ref.stats[out_name], FID_SE_RESAMPLES)
            elif base == "is":
                out[m] = inception_score(fake["probs"], split_size=IS_SPLIT_SIZE)
        if {f"precision{suffix}", f"recall{suffix}"} & set(names):  # the return keeps the ones asked for
            pr = precision_recall(ref.feats["pool"], fake["pool"], k=PR_K)
            out[f"precision{suffix}"], out[f"recall{suffix}"] = pr
        if family in DOMAINS and getattr(ext, "val_accuracy", None) is not None:
            out[f"{family}_classifier_acc"] = float(ext.val_accuracy)
    extra = [f"{m}_se" for m in metrics] + [f"{d}_classifier_acc" for d in DOMAINS]
    return {m: out[m] for m in (*metrics, *extra) if m in out}
