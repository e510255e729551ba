"""Nonparametric bootstrap over points (or over groups of points, e.g. whole runs).

Nothing is dropped silently: a resample whose refit fails is counted (`n_failed`), and a refit that
ends on a parameter bound is kept in the intervals and counted per parameter (`at_bound`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

BOUND_PREFIX = "_bound_"  # keys of fit_one's dict that flag a parameter at its bound (1.0 / 0.0)


def min_resamples(level: float = 0.95) -> int:
    """Fewest successful refits for a percentile interval at `level`: one refit beyond each end,
    ceil(2 / (1 - level)) (40 at 95%). With fewer, both ends are interpolated between the extreme
    refits, so the interval covers less than `level`."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return math.ceil(round(2 / (1 - level), 9))  # round: 2 / (1 - 0.95) is 39.99999999999996


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `values` (NaN ignored; +-inf kept, so an unbounded side stays unbounded)."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return math.nan, math.nan
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    method = "linear" if np.all(np.isfinite(v)) else "inverted_cdf"  # no inf - inf interpolation
    lo, hi = np.quantile(v, q, method=method)
    return float(lo), float(hi)


@dataclass
class BootstrapResult:
    """Refitted values per resample: samples[name] is (n_ok,); at_bound[name] is (n_ok,) bool."""

    samples: dict[str, np.ndarray]
    n_requested: int
    unit: str = "points"
    n_failed: int = 0
    at_bound: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_ok(self) -> int:
        return len(next(iter(self.samples.values()))) if self.samples else 0

    @property
    def share_failed(self) -> float:
        """Share of the requested resamples whose refit failed (no values; not in the intervals)."""
        return self.n_failed / self.n_requested if self.n_requested else 0.0

    def too_few(self, level: float = 0.95) -> bool:
        """True when 2 or more refits succeeded, but fewer than `min_resamples(level)`: there is an
        interval, but not one at `level`."""
        return 2 <= self.n_ok < min_resamples(level)

    def share_at_bound(self) -> dict[str, float]:
        """Per parameter, the share of successful resamples that ended on a bound (kept in intervals)."""
        return {k: float(np.mean(v)) if len(v) else 0.0 for k, v in self.at_bound.items()}

    def se(self) -> dict[str, float]:
        """Standard deviation of each quantity across resamples (ddof=1)."""
        with np.errstate(over="ignore", invalid="ignore"):  # a divergent resample gives inf, not a warning
            return {k: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for k, v in self.samples.items()}

    def conf_int(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile intervals."""
        return {k: percentile_interval(v, level) for k, v in self.samples.items()}

    def draws(self) -> list[dict[str, float]]:
        """Each successful refit's values, one dict per resample."""
        return [{k: v[i] for k, v in self.samples.items()} for i in range(self.n_ok)]

    def interval_of(self, fn: Callable[[dict[str, float]], np.ndarray], level: float = 0.95):
        """Percentile band of a derived prediction fn(params) -> array, over resamples: (lo, hi)."""
        vals = np.array([fn(p) for p in self.draws()])
        q = [(1 - level) / 2, 1 - (1 - level) / 2]
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanquantile(vals, q, axis=0)
        return lo, hi

    def correlation(self, keys) -> np.ndarray:
        """Correlation matrix (len(keys), len(keys)) of the named quantities over resamples."""
        x = np.array([self.samples[k] for k in keys], float)
        ok = np.all(np.isfinite(x), axis=0)
        if ok.sum() < 3:
            return np.full((len(keys), len(keys)), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.corrcoef(x[:, ok])

    def to_dict(self, level: float = 0.95) -> dict:
        return {
            "unit": self.unit,
            "n_requested": self.n_requested,
            "n_ok": self.n_ok,
            "n_failed": self.n_failed,
            "share_failed": self.share_failed,
            "share_at_bound": self.share_at_bound(),
            "interval": f"{100 * level:g}% percentile",
        }


_TASK: Callable | None = None  # the function a forked worker applies (inherited, never pickled)
_WORKERS: int | None = None  # set by `fit_workers` (the CLI's --workers)
_IN_WORKER = False  # True in a forked worker: a nested parallel_map runs in it, not in more forks


def _apply(item):
    global _IN_WORKER
    assert _TASK is not None
    _IN_WORKER = True
    return _TASK(item)


@contextlib.contextmanager
def fit_workers(n: int | None):
    """Within the block, resamples are refitted in ``n`` processes (None: as `workers_available`)."""
    global _WORKERS
    if n is not None and n < 1:
        raise ValueError(f"--workers must be >= 1 (1 refits in this process), got {n}")
    old, _WORKERS = _WORKERS, n
    try:
        yield
    finally:
        _WORKERS = old


def workers_available() -> int:
    """Worker processes for resamples: `fit_workers`'s number, else DITSCALE_FIT_WORKERS, else the CPUs
    this process may use."""
    if _WORKERS is not None:
        return _WORKERS
    env = os.environ.get("DITSCALE_FIT_WORKERS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"DITSCALE_FIT_WORKERS must be an integer >= 1, got {env!r}")
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_map(fn: Callable, items: Sequence, workers: int | None = None, desc: str | None = None) -> list:
    """[fn(x) for x in items], split over forked worker processes where that is possible.

    The result (order included) does not depend on the number of workers: each item carries all its
    randomness (e.g. a resample's indices, drawn in the parent). Forking (Linux) lets `fn` be a
    closure; elsewhere, in a worker or a daemon process, or for few items it runs in this process.
    desc: a progress bar of that name on stderr when stderr is a terminal (it vanishes when done).
    """
    global _TASK
    from tqdm.auto import tqdm

    n = min(workers_available() if workers is None else workers, len(items) // 4)
    forkable = sys.platform.startswith("linux") and not (_IN_WORKER or mp.current_process().daemon)
    show = desc is not None and not _IN_WORKER and bool(getattr(sys.stderr, "isatty", lambda: False)())
    bar = tqdm(total=len(items), desc=desc, unit="fit", leave=False, disable=not show, dynamic_ncols=True)
    parallel = n >= 2 and forkable
    if parallel:
        _TASK = fn
    out: list = []
    try:  # an executor, not a Pool: a worker that dies (e.g. out of memory) raises instead of hanging
        with (
            ProcessPoolExecutor(n, mp_context=mp.get_context("fork"))
            if parallel
            else contextlib.nullcontext() as pool
        ):
            results = (
                pool.map(_apply, items, chunksize=max(1, len(items) // (4 * n)))
                if parallel
                else map(fn, items)
            )
            for r in results:
                out.append(r)
                bar.update()
        return out
    except BrokenProcessPool as e:
        raise RuntimeError(
            f"a worker process refitting resamples died ({e}); rerun with --workers 1 "
            "(or DITSCALE_FIT_WORKERS=1) to refit them in this process"
        ) from e
    finally:
        if parallel:
            _TASK = None
        bar.close()


def resample_indices(n: int, rng: np.random.Generator, groups=None) -> np.ndarray:
    """Indices of one resample: n points with replacement, or whole groups with replacement."""
    if groups is None:
        return rng.integers(0, n, size=n)
    groups = np.asarray(groups)
    labels = np.unique(groups)
    pick = rng.choice(labels, size=len(labels), replace=True)
    return np.concatenate([np.flatnonzero(groups == g) for g in pick])


def draw_resamples(n: int, n_resamples: int, seed: int = 0, groups=None, redraw=None) -> list:
    """`n_resamples` resamples' indices (`resample_indices`, from ``default_rng(seed)``); with redraw,
    (indices, redraw(rng)) pairs, the redraws from a generator of their own (seeded by ``[seed, 1]``),
    so the indices are those drawn without it."""
    rng = np.random.default_rng(seed)
    resamples = [resample_indices(n, rng, groups) for _ in range(n_resamples)]
    if redraw is None:
        return resamples
    rng_redraw = np.random.default_rng([seed, 1])
    return [(idx, redraw(rng_redraw)) for idx in resamples]


def bootstrap_points(
    fit_one: Callable[[np.ndarray], dict[str, float] | None],
    n: int,
    n_resamples: int,
    *,
    seed: int = 0,
    groups=None,
    workers: int | None = None,
    desc: str | None = None,
    redraw: Callable[[np.random.Generator], object] | None = None,
) -> BootstrapResult:
    """Call fit_one(indices) on `n_resamples` resamples, over `workers` processes (see parallel_map).

    redraw: with it, fit_one(indices, redraw(rng)), each resample's redraw drawn in this process
    (`draw_resamples`).

    fit_one returns a dict of values (keys starting with `BOUND_PREFIX` flag a parameter that ended on
    its bound) or None when the refit failed; failures are counted in `n_failed`, never hidden.
    """
    resamples = draw_resamples(n, n_resamples, seed, groups, redraw)

    def safe(item) -> dict[str, float] | None:
        try:
            return fit_one(*item) if redraw is not None else fit_one(item)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError, OverflowError) as e:
            log.debug("bootstrap refit failed: %s", e)
            return None

    results = parallel_map(safe, resamples, workers, desc)
    rows = [r for r in results if r is not None]
    n_failed = n_resamples - len(rows)
    if not rows and n_resamples:
        log.info("bootstrap: no refit of the %d resamples succeeded: no interval", n_resamples)
    elif n_failed:
        log.info("bootstrap: %d of %d resamples failed (reported as share_failed)", n_failed, n_resamples)
    keys = list(rows[0]) if rows else []
    samples = {k: np.array([r[k] for r in rows], dtype=float) for k in keys if not k.startswith(BOUND_PREFIX)}
    at_bound = {
        k[len(BOUND_PREFIX) :]: np.array([bool(r[k]) for r in rows])
        for k in keys
        if k.startswith(BOUND_PREFIX)
    }
    unit = "groups" if groups is not None else "points"
    return BootstrapResult(samples, n_resamples, unit=unit, n_failed=n_failed, at_bound=at_bound)
