"""Nonparametric bootstrap over points (or over groups of points, e.g. whole runs)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class BootstrapResult:
    """Refitted values per resample: samples[name] is (n_ok,)."""

    samples: dict[str, np.ndarray]
    n_requested: int
    unit: str = "points"

    @property
    def n_ok(self) -> int:
        return len(next(iter(self.samples.values()))) if self.samples else 0

    def se(self) -> dict[str, float]:
        """Standard deviation of each quantity across resamples (ddof=1)."""
        with np.errstate(over="ignore", invalid="ignore"):  # a divergent resample gives inf, not a warning
            return {k: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for k, v in self.samples.items()}

    def conf_int(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile intervals."""
        q = 100 * (1 - level) / 2
        return {
            k: (float(np.percentile(v, q)), float(np.percentile(v, 100 - q))) if len(v) else (np.nan, np.nan)
            for k, v in self.samples.items()
        }

    def interval_of(self, fn: Callable[[dict[str, float]], np.ndarray], level: float = 0.95):
        """Percentile band of a derived prediction fn(params) -> array, over resamples: (lo, hi)."""
        keys = list(self.samples)
        vals = np.array([fn({k: self.samples[k][i] for k in keys}) for i in range(self.n_ok)])
        q = 100 * (1 - level) / 2
        return np.percentile(vals, q, axis=0), np.percentile(vals, 100 - q, axis=0)


def resample_indices(n: int, rng: np.random.Generator, groups=None) -> np.ndarray:
    """Indices of one resample: n points with replacement, or whole groups with replacement."""
    if groups is None:
        return rng.integers(0, n, size=n)
    groups = np.asarray(groups)
    labels = np.unique(groups)
    pick = rng.choice(labels, size=len(labels), replace=True)
    return np.concatenate([np.flatnonzero(groups == g) for g in pick])


def bootstrap_points(
    fit_one: Callable[[np.ndarray], dict[str, float] | None],
    n: int,
    n_resamples: int,
    *,
    seed: int = 0,
    groups=None,
) -> BootstrapResult:
    """Call fit_one(indices) on `n_resamples` resamples; None results (failed fits) are dropped."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float]] = []
    for _ in range(n_resamples):
        idx = resample_indices(n, rng, groups)
        try:
            r = fit_one(idx)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError, OverflowError) as e:
            log.debug("bootstrap refit failed: %s", e)
            r = None
        if r is not None:
            rows.append(r)
    if len(rows) < n_resamples:
        log.info(
            "bootstrap: %d of %d resamples failed and were dropped", n_resamples - len(rows), n_resamples
        )
    keys = list(rows[0]) if rows else []
    samples = {k: np.array([r[k] for r in rows], dtype=float) for k in keys}
    return BootstrapResult(samples, n_resamples, unit="groups" if groups is not None else "points")
