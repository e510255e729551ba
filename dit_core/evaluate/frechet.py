"""Gaussian feature statistics and the Frechet distance between two Gaussians (FID, sFID)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GaussianStats:
    """Mean ``mu`` (D,) and covariance ``sigma`` (D, D) of features, float64, ``n`` samples."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, feats: np.ndarray) -> GaussianStats:
        """Stats of ``feats`` (N, D); unbiased covariance (N - 1), as clean-fid and ADM use."""
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"features must be (N, D) with N >= 2, got shape {feats.shape}")
        return cls(feats.mean(axis=0), np.cov(feats, rowvar=False), feats.shape[0])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues from round-off -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr(sqrtm(sigma1 @ sigma2))`` for PSD matrices: the nuclear norm of ``sqrt(sigma1) sqrt(sigma2)``.

    sigma1 @ sigma2 is similar to ``A A^T`` with ``A = sqrt(sigma1) sqrt(sigma2)``, so the square
    roots of its eigenvalues are A's singular values. Symmetric eigendecompositions and an SVD stay
    accurate for singular covariances (fewer samples than dimensions, dead ReLU units), where
    ``scipy.linalg.sqrtm`` is slow and squaring-then-rooting loses half the digits near zero.
    """
    a = _psd_sqrt(sigma1) @ _psd_sqrt(sigma2)
    return float(np.linalg.svd(a, compute_uv=False).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), float64.

    d = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2)).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, "
            f"sigma2 {sigma2.shape}; both sides must come from the same feature extractor"
        )
    diff = mu1 - mu2
    tr = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + tr)


def fid_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """Frechet distance between two ``GaussianStats``."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to ``feats1`` (N1, D) and ``feats2`` (N2, D)."""
    return fid_from_stats(GaussianStats.from_features(feats1), GaussianStats.from_features(feats2))


def fid_bootstrap_se(feats: np.ndarray, ref: GaussianStats, resamples: int = 50, seed: int = 0) -> float:
    """Standard error of ``FID(feats, ref)`` from the sample side: the sd of the FID over
    ``resamples`` bootstrap resamples of ``feats`` (N, D) against the fixed reference stats.

    It estimates how much the FID would move under another sampling seed (measured: docs/evaluation.md).
    Each resample costs one D x D covariance and two eigendecompositions, so keep D small.
    """
    feats = np.asarray(feats, dtype=np.float64)
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2 for a standard deviation, got {resamples}")
    rng = np.random.default_rng(seed)
    n = len(feats)
    vals = [
        fid_from_stats(GaussianStats.from_features(feats[rng.integers(0, n, n)]), ref)
        for _ in range(resamples)
    ]
    return float(np.std(vals, ddof=1))
