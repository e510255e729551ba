"""Improved precision and recall (Kynkaanniemi et al. 2019), k-NN manifolds as in ADM's evaluator."""

from __future__ import annotations

import numpy as np
import torch


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (A, B) = |a|^2 - 2 a.b + |b|^2, clamped at 0."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return d.clamp_(min=0.0)


def knn_radii(feats: np.ndarray, k: int = 3, block: int = 4096) -> np.ndarray:
    """Squared distance of each row of ``feats`` (N, D) to its k-th nearest other row: (N,)."""
    x = torch.as_tensor(np.asarray(feats, np.float64))
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k={k} needs at least k+1={k + 1} points, got {x.shape[0]}")
    out = []
    for i in range(0, x.shape[0], block):
        d = _sq_dists(x[i : i + block], x)
        out.append(torch.kthvalue(d, k + 1, dim=1).values)  # index 0 is the point itself
    return torch.cat(out).numpy()


def _coverage(query: np.ndarray, manifold: np.ndarray, radii: np.ndarray, block: int) -> float:
    """Fraction of ``query`` rows inside some ball (manifold_j, radii_j)."""
    q = torch.as_tensor(np.asarray(query, np.float64))
    m = torch.as_tensor(np.asarray(manifold, np.float64))
    r = torch.as_tensor(radii)
    inside = []
    for i in range(0, q.shape[0], block):
        inside.append((_sq_dists(q[i : i + block], m) <= r[None, :]).any(dim=1))
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
