"""Approach 3 of Hoffmann et al. (arXiv:2203.15556): the parametric law L(N, D) = E + A/N^alpha + B/D^beta.

The fit follows Besiroglu et al. (Epoch AI, arXiv:2404.10102): parameterise E = exp(e), A = exp(a),
B = exp(b); predict log L with a log-sum-exp of the three terms; minimise the Huber loss (delta 1e-3)
of the log residuals *summed* over points with L-BFGS-B, started from the best points of a grid of
initialisations. Averaging instead of summing shrinks the objective below L-BFGS-B's absolute
tolerances so the optimiser stops next to its start; `check_convergence` catches that.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, nnls

from analysis.bootstrap import BootstrapResult, bootstrap_points

log = logging.getLogger(__name__)

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
_N_PARAMS = 5


class ConvergenceError(RuntimeError):
    """No start of the optimiser reached a stationary point of the objective."""


@dataclass(frozen=True)
class ParametricConfig:
    """How to fit L(N, D) = E + A/N^alpha + B/D^beta.

    The default grid is Hoffmann et al.'s: e in {-1, -0.5, ..., 1}, a and b in {0, 5, ..., 25},
    alpha and beta in {0, 0.5, ..., 2} (4,500 starts), plus e = ln(f * min loss) for f in
    `e_fractions`, since diffusion losses (~0.1) sit far below the LM range the grid was made for.
    All are scored; L-BFGS-B runs from the best `n_starts` (Hoffmann/Epoch ran all of them; on the
    Chinchilla data the best 8 reach the same minimum as all 4,500).
    """

    delta: float = 1e-3
    reduction: str = "sum"  # "sum" (correct) or "mean" (the known failure, kept to test the check)
    e_grid: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    e_fractions: tuple[float, ...] = (0.05, 0.3, 0.7, 0.95)
    a_grid: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    b_grid: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    alpha_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    beta_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    n_starts: int = 8
    # Extra starts from variable projection: for each (alpha, beta) on this grid, (E, A, B) >= 0 by
    # non-negative least squares on L / L_obs; the best `n_varpro_starts` are added.
    varpro_exponents: tuple[float, ...] = tuple(np.round(np.linspace(0.05, 1.2, 24), 3))
    n_varpro_starts: int = 4
    # L-BFGS-B options; None keeps scipy's defaults (ftol 2.2e-9 absolute below |f| = 1, gtol 1e-5).
    ftol: float | None = 1e-12
    gtol: float | None = 1e-10
    maxiter: int = 2000
    # The best start is polished with these (None: no polish); they cost ~10x more per start.
    polish_ftol: float | None = 1e-15
    polish_gtol: float | None = 1e-12
    check_convergence: bool = True
    # Bootstrap refits start next to the optimum and use these, without the polish (~10x cheaper).
    bootstrap_ftol: float = 1e-12
    bootstrap_gtol: float = 1e-10
    # A start counts as converged when `stationarity` (how far the points' gradient pulls are from
    # cancelling, 0..1) is below this. On the Chinchilla data: converged starts 1e-10 .. 2e-5,
    # scipy-default tolerances on the summed loss 1e-5 .. 6e-3, the averaged loss 0.015 .. 0.9.
    stationarity_tol: float = 1e-3

    def __post_init__(self) -> None:
        if self.delta <= 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if self.n_starts < 1:
            raise ValueError(f"n_starts must be >= 1, got {self.n_starts}")


# ----------------------------------------------------------------------------------------------
# objective


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative, elementwise (same convention as scipy.special.huber)."""
    small = np.abs(r) <= delta
    val = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return val, grad


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """The three log-terms (a - alpha log N, b - beta log D, e); theta (..., 5) -> (..., 3, n)."""
    e, a, b, alpha, beta = (theta[..., i, None] for i in range(_N_PARAMS))
    t1 = a - alpha * log_n
    t2 = b - beta * log_d
    t3 = np.broadcast_to(e, t1.shape)
    return np.stack([t1, t2, t3], axis=-2)


def objective(
    theta: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_loss: np.ndarray,
    delta: float,
    reduction: str = "sum",
) -> tuple[float, np.ndarray]:
    """Huber objective on log residuals and its analytic gradient.

    theta: (5,) = (e, a, b, alpha, beta); log_n, log_d, log_loss: (n,). Returns (value, grad (5,)).
    """
    t = _terms(theta, log_n, log_d)  # (3, n)
    m = t.max(axis=0)
    ex = np.exp(t - m)
    s = ex.sum(axis=0)
    pred = m + np.log(s)
    w = ex / s  # softmax weights, d pred / d term
    val, dh = _huber(pred - log_loss, delta)
    scale = 1.0 / len(log_loss) if reduction == "mean" else 1.0
    g = np.array(
        [
            np.dot(dh, w[2]),
            np.dot(dh, w[0]),
            np.dot(dh, w[1]),
            -np.dot(dh, w[0] * log_n),
            -np.dot(dh, w[1] * log_d),
        ]
    )
    return float(val.sum() * scale), g * scale


def grid_objective(
    thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float
) -> np.ndarray:
    """Summed Huber objective for many parameter vectors at once: thetas (G, 5) -> (G,)."""
    out = np.empty(len(thetas))
    for i in range(0, len(thetas), 512):  # chunks keep memory at 512 x 3 x n floats
        t = _terms(thetas[i : i + 512], log_n, log_d)
        m = t.max(axis=-2)
        pred = m + np.log(np.exp(t - m[..., None, :]).sum(axis=-2))
        out[i : i + 512] = _huber(pred - log_loss, delta)[0].sum(axis=-1)
    return out


def stationarity(theta: np.ndarray, log_n, log_d, log_loss, delta: float) -> float:
    """Scale-free stationarity: max_j |sum_i c_ij| / sum_i |c_ij|, c_ij = point i's gradient share.

    At a stationary point the points' pulls cancel (-> 0); at a start the optimiser never left they
    do not (~ 1). Unlike |grad| it does not depend on the scale (sum vs mean) or on the residual size.
    """
    t = _terms(theta, log_n, log_d)
    m = t.max(axis=0)
    ex = np.exp(t - m)
    s = ex.sum(axis=0)
    w = ex / s
    _, dh = _huber(m + np.log(s) - log_loss, delta)
    jac = np.stack([w[2], w[0], w[1], -w[0] * log_n, -w[1] * log_d], axis=1)  # (n, 5)
    c = dh[:, None] * jac
    return float(np.max(np.abs(c.sum(axis=0)) / np.maximum(np.abs(c).sum(axis=0), 1e-300)))


# ----------------------------------------------------------------------------------------------
# result


@dataclass
class ParametricFit:
    """Result of fitting L(N, D) = E + A/N^alpha + B/D^beta (statsmodels-style result object)."""

    params: dict[str, float]
    objective: float
    converged: bool
    n_points: int
    n_starts: int
    n_converged_starts: int
    stationarity: float
    config: ParametricConfig
    bootstrap: BootstrapResult | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def theta(self) -> np.ndarray:
        """Internal parameters (e, a, b, alpha, beta)."""
        p = self.params
        return np.array([math.log(p["E"]), math.log(p["A"]), math.log(p["B"]), p["alpha"], p["beta"]])

    @property
    def a(self) -> float:
        """Exponent of N_opt ~ C^a: beta / (alpha + beta)."""
        return self.params["beta"] / (self.params["alpha"] + self.params["beta"])

    @property
    def b(self) -> float:
        """Exponent of D_opt ~ C^b: alpha / (alpha + beta)."""
        return self.params["alpha"] / (self.params["alpha"] + self.params["beta"])

    def predict(self, n, d) -> np.ndarray:
        """Expected loss at N parameters and D data (arrays broadcast)."""
        return parametric_loss(self.params, n, d)

    def optimal_allocation(self, compute, flops_per_param_datum: float = 6.0):
        """(N_opt, D_opt, L_opt) minimising L subject to C = k N D (k = 6 for LMs).

        Closed form (Hoffmann et al. eq. 4): G = (alpha A / (beta B))^(1/(alpha+beta)),
        N_opt = G (C/k)^a, D_opt = (C/k) / N_opt.
        """
        return optimal_allocation(self.params, compute, flops_per_param_datum)

    @property
    def se(self) -> dict[str, float]:
        """Bootstrap standard errors ({} without a bootstrap)."""
        return self.bootstrap.se() if self.bootstrap is not None else {}

    def conf_int(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals for each parameter and for a, b."""
        return self.bootstrap.conf_int(level) if self.bootstrap is not None else {}

    def summary(self) -> str:
        """A plain-text table of estimates, standard errors and 95% intervals."""
        lines = [
            "Parametric law L(N, D) = E + A/N^alpha + B/D^beta "
            f"(Huber delta={self.config.delta:g} on log L, {self.config.reduction})",
            f"points: {self.n_points}   objective: {self.objective:.6g}   converged: {self.converged} "
            f"({self.n_converged_starts}/{self.n_starts} starts)",
            f"{'param':>8} {'estimate':>12} {'std.err':>10} {'2.5%':>12} {'97.5%':>12}",
        ]
        se, ci = self.se, self.conf_int()
        values = dict(self.params, a=self.a, b=self.b)
        for k, v in values.items():
            lo, hi = ci.get(k, (float("nan"), float("nan")))
            lines.append(f"{k:>8} {v:12.5g} {se.get(k, float('nan')):10.4g} {lo:12.5g} {hi:12.5g}")
        if self.bootstrap is not None:
            lines.append(f"bootstrap: {self.bootstrap.n_ok} resamples ({self.bootstrap.unit})")
        lines.extend(self.messages)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready: the five parameters at the top level, then exponents, errors, diagnostics."""
        out: dict = dict(self.params)
        out.update(a=self.a, b=self.b, objective=self.objective, converged=self.converged)
        out["n_points"] = self.n_points
        if self.bootstrap is not None:
            out["se"] = self.se
            out["ci95"] = {k: list(v) for k, v in self.conf_int().items()}
        return out


def parametric_loss(params: dict[str, float], n, d) -> np.ndarray:
    """E + A/N^alpha + B/D^beta."""
    n, d = np.asarray(n, float), np.asarray(d, float)
    return params["E"] + params["A"] / n ** params["alpha"] + params["B"] / d ** params["beta"]


def optimal_allocation(params: dict[str, float], compute, flops_per_param_datum: float = 6.0):
    """(N_opt, D_opt, L_opt) for C = k N D; see ParametricFit.optimal_allocation."""
    alpha, beta = params["alpha"], params["beta"]
    c = np.asarray(compute, float) / flops_per_param_datum
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # alpha <= 0: no optimum, NaN
        g = (alpha * params["A"] / (beta * params["B"])) ** (1.0 / (alpha + beta))
        n = g * c ** (beta / (alpha + beta))
    d = c / n
    return n, d, parametric_loss(params, n, d)


# ----------------------------------------------------------------------------------------------
# fitting


def check_points(n, d, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate (N, D, loss) arrays and return their logs; ValueError names what is wrong."""
    arrs = [np.asarray(x, dtype=float).ravel() for x in (n, d, loss)]
    if len({len(a) for a in arrs}) != 1:
        raise ValueError(f"N, D and loss must have the same length, got {[len(a) for a in arrs]}")
    for name, a in zip(("N", "D", "loss"), arrs):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite values; drop or fix those rows")
        if np.any(a <= 0):
            raise ValueError(f"{name} must be > 0 everywhere ({int((a <= 0).sum())} rows are not)")
    if len(arrs[0]) <= _N_PARAMS:
        raise ValueError(
            f"the parametric law has {_N_PARAMS} parameters but only {len(arrs[0])} points were given; "
            "need more points than parameters"
        )
    return tuple(np.log(a) for a in arrs)  # type: ignore[return-value]


def _grid(cfg: ParametricConfig, log_loss: np.ndarray | None = None) -> np.ndarray:
    e_vals = list(cfg.e_grid)
    if log_loss is not None:
        e_vals += [float(log_loss.min()) + math.log(f) for f in cfg.e_fractions]
    return np.array(
        list(itertools.product(e_vals, cfg.a_grid, cfg.b_grid, cfg.alpha_grid, cfg.beta_grid)),
        dtype=float,
    )


def single_threaded_blas():
    """Context limiting BLAS to one thread. scipy 1.17's L-BFGS-B calls BLAS on 5-vectors; with
    OpenBLAS threads on a busy 2-core machine that made each fit ~20x slower (10 s instead of 0.5 s)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _minimize(theta0, log_n, log_d, log_loss, cfg: ParametricConfig, polish: bool = False):
    opts: dict = {"maxiter": cfg.maxiter}
    ftol, gtol = (cfg.polish_ftol, cfg.polish_gtol) if polish else (cfg.ftol, cfg.gtol)
    if ftol is not None:
        opts["ftol"] = ftol
    if gtol is not None:
        opts["gtol"] = gtol
    res = minimize(
        objective,
        theta0,
        args=(log_n, log_d, log_loss, cfg.delta, cfg.reduction),
        jac=True,
        method="L-BFGS-B",
        options=opts,
    )
    f, _ = objective(res.x, log_n, log_d, log_loss, cfg.delta, cfg.reduction)
    return res.x, f, stationarity(res.x, log_n, log_d, log_loss, cfg.delta), int(res.nit)


def _varpro_starts(log_n, log_d, log_loss, cfg: ParametricConfig) -> list[np.ndarray]:
    """Starts from linear least squares: at fixed exponents L is linear in (E, A, B) >= 0."""
    if cfg.n_varpro_starts <= 0:
        return []
    loss = np.exp(log_loss)
    cands = []
    for alpha in cfg.varpro_exponents:
        xa = np.exp(-alpha * log_n) / loss
        for beta in cfg.varpro_exponents:
            design = np.stack([1.0 / loss, xa, np.exp(-beta * log_d) / loss], axis=1)
            coef, rnorm = nnls(design, np.ones_like(loss))
            cands.append((rnorm, coef, alpha, beta))
    cands.sort(key=lambda c: c[0])
    out = []
    floor = 1e-8 * loss.min()
    for _, (e, a, b), alpha, beta in cands[: cfg.n_varpro_starts]:
        out.append(
            np.array([math.log(max(e, floor)), math.log(max(a, floor)), math.log(max(b, floor)), alpha, beta])
        )
    return out


def _converged(f: float, stat: float, n: int, cfg: ParametricConfig) -> bool:
    """Stationary, or an exact fit (every log residual ~< 1e-6, where the imbalance is just rounding)."""
    scale = n if cfg.reduction == "sum" else 1.0
    return stat < cfg.stationarity_tol or f < scale * 0.5e-12


def _grid_starts(log_n, log_d, log_loss, cfg: ParametricConfig) -> list[np.ndarray]:
    """The `cfg.n_starts` grid points with the lowest objective, then the variable-projection starts."""
    grid = _grid(cfg, log_loss)
    scores = grid_objective(grid, log_n, log_d, log_loss, cfg.delta)
    return [grid[i] for i in np.argsort(scores)[: cfg.n_starts]] + _varpro_starts(log_n, log_d, log_loss, cfg)


def _fit_theta(log_n, log_d, log_loss, cfg: ParametricConfig, starts):
    """Best (theta, f, stationarity, n_converged) over the starts; converged starts win."""
    best = None
    n_conv = 0
    for s in starts:
        theta, f, stat, nit = _minimize(s, log_n, log_d, log_loss, cfg)
        ok = _converged(f, stat, len(log_loss), cfg) and np.all(np.isfinite(theta))
        n_conv += ok
        log.debug("start %s -> f=%.6g stationarity=%.2g nit=%d", s, f, stat, nit)
        key = (not ok, f)
        if best is None or key < best[0]:
            best = (key, theta, f, stat)
    assert best is not None
    return best[1], best[2], best[3], n_conv


def _theta_to_params(theta: np.ndarray) -> dict[str, float]:
    e, a, b, alpha, beta = (float(x) for x in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def fit_parametric(
    n,
    d,
    loss,
    config: ParametricConfig | None = None,
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
    groups=None,
) -> ParametricFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to points (n,) arrays; optional bootstrap.

    groups: optional (n,) labels (e.g. run ids) to resample whole groups instead of points.
    Raises ConvergenceError when `config.check_convergence` and no start reached a stationary point.
    """
    with single_threaded_blas():
        return _fit_parametric(n, d, loss, config or ParametricConfig(), n_bootstrap, seed, groups)


def _fit_parametric(n, d, loss, cfg: ParametricConfig, n_bootstrap: int, seed: int, groups) -> ParametricFit:
    log_n, log_d, log_loss = check_points(n, d, loss)
    starts = _grid_starts(log_n, log_d, log_loss, cfg)
    theta, f, stat, n_conv = _fit_theta(log_n, log_d, log_loss, cfg, starts)
    n_starts = len(starts)
    converged = _converged(f, stat, len(log_n), cfg)
    if converged and (cfg.polish_ftol is not None or cfg.polish_gtol is not None):
        t2, f2, s2, _ = _minimize(theta, log_n, log_d, log_loss, cfg, polish=True)
        if f2 <= f:
            theta, f, stat = t2, f2, s2
    if not converged:
        msg = (
            f"L-BFGS-B stopped before a stationary point (gradient imbalance {stat:.3g} > "
            f"{cfg.stationarity_tol:g}; reduction={cfg.reduction!r}, ftol={cfg.ftol}, gtol={cfg.gtol}). "
            "A mean-reduced Huber objective with a small delta is below scipy's absolute tolerances; "
            "use reduction='sum' and tighter ftol/gtol."
        )
        if cfg.check_convergence:
            raise ConvergenceError(msg)
        log.warning(msg)
    fit = ParametricFit(
        params=_theta_to_params(theta),
        objective=f,
        converged=bool(converged),
        n_points=len(log_n),
        n_starts=n_starts,
        n_converged_starts=n_conv,
        stationarity=stat,
        config=cfg,
    )
    if n_bootstrap > 0:
        fit.bootstrap = bootstrap_parametric(fit, n, d, loss, n_bootstrap, seed=seed, groups=groups)
    return fit


def bootstrap_parametric(
    fit: ParametricFit, n, d, loss, n_resamples: int, *, seed: int = 0, groups=None
) -> BootstrapResult:
    """Refit on resampled points, starting from the full-data optimum and the best grid point.

    The grid is scored once on the full data (scoring it per resample costs more than the fits).
    Resamples whose fit does not converge are dropped (their count is in the result).
    """
    with single_threaded_blas():
        return _bootstrap_parametric(fit, n, d, loss, n_resamples, seed, groups)


def _bootstrap_parametric(
    fit: ParametricFit, n, d, loss, n_resamples: int, seed: int, groups
) -> BootstrapResult:
    base = fit.config
    cfg = ParametricConfig(
        **{
            **base.__dict__,
            "check_convergence": False,
            "ftol": base.bootstrap_ftol,
            "gtol": base.bootstrap_gtol,
            "polish_ftol": None,
            "polish_gtol": None,
        }
    )
    logs = [np.log(np.asarray(x, float).ravel()) for x in (n, d, loss)]
    starts = [
        fit.theta,
        *_grid_starts(*logs, ParametricConfig(**{**cfg.__dict__, "n_starts": 1, "n_varpro_starts": 1})),
    ]

    def one(idx: np.ndarray) -> dict[str, float] | None:
        ln, ld, ll = (x[idx] for x in logs)
        theta, f, stat, _ = _fit_theta(ln, ld, ll, cfg, starts)
        if not _converged(f, stat, len(ll), cfg):
            return None
        p = _theta_to_params(theta)
        p["a"] = p["beta"] / (p["alpha"] + p["beta"])
        p["b"] = p["alpha"] / (p["alpha"] + p["beta"])
        return p

    return bootstrap_points(one, len(logs[0]), n_resamples, seed=seed, groups=groups)
