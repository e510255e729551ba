"""Approach 3 of Hoffmann et al. (arXiv:2203.15556): the parametric law L(N, D) = E + A/N^alpha + B/D^beta,
fitted as Besiroglu et al. (Epoch AI, arXiv:2404.10102) do; the method, its bounds, starts and
convergence check, and what `ParametricFit.status` says: docs/analysis.md ("Methods", "Status").
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import huber
from threadpoolctl import threadpool_limits

from analysis.bootstrap import BOUND_PREFIX, BootstrapResult, bootstrap_points, min_resamples
from analysis.status import NOT_IDENTIFIED, Status, too_few_refits

log = logging.getLogger(__name__)

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
PROFILE_FRACTIONS = (1e-3, 3e-3, 0.01, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_N_PARAMS = 5


class ConvergenceError(RuntimeError):
    """No start of the optimiser reached a stationary point of the objective."""


@dataclass(frozen=True)
class ParametricConfig:
    """How to fit L(N, D) = E + A/N^alpha + B/D^beta. The default grid is Hoffmann et al.'s (4,500
    starts) plus e = ln(f * min loss) for f in `e_fractions`; all are scored and L-BFGS-B runs from
    the best `n_starts` (Hoffmann/Epoch ran all of them; on the Chinchilla data the best 8 reach the
    same minimum as all 4,500)."""

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
    # Bootstrap refits rescore the grid on each resample and run L-BFGS-B from its best
    # `bootstrap_n_starts` points and best `bootstrap_n_varpro_starts` NNLS starts, with `ftol` and
    # `gtol` and without the polish; they never start from the full-data optimum.
    bootstrap_n_starts: int = 4
    bootstrap_n_varpro_starts: int = 2
    # alpha and beta are bounded to this range (0: no dependence on N or D)
    exponent_bounds: tuple[float, float] = (0.0, 3.0)
    # E >= e_floor_frac * min(loss) while fitting; E below e_at_floor_frac * min(loss) counts as
    # "at its floor" (E contributes < 0.1% of every predicted loss): refitted with E = 0.
    e_floor_frac: float = 1e-6
    e_at_floor_frac: float = 1e-3
    # one-sided 95% bound on E from the profile: n ln(f(E) / f_min) <= chi2_1(0.90) = 2.706
    profile_threshold: float = 2.706
    # a start counts as converged when `stationarity` is below this (docs/analysis.md has the measured range)
    stationarity_tol: float = 1e-3

    def __post_init__(self) -> None:
        if not self.delta > 0:  # NaN too
            raise ValueError(f"delta must be > 0, got {self.delta}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if self.n_starts < 1:
            raise ValueError(f"n_starts must be >= 1, got {self.n_starts}")
        lo, hi = self.exponent_bounds
        if not 0 <= lo < hi:
            raise ValueError(f"exponent_bounds must be 0 <= lo < hi, got {self.exponent_bounds}")
        if not 0 < self.e_floor_frac < self.e_at_floor_frac < 1:
            raise ValueError("need 0 < e_floor_frac < e_at_floor_frac < 1")


# ----------------------------------------------------------------------------------------------
# objective


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss (scipy.special.huber) and its derivative (r clamped to +-delta), elementwise."""
    return huber(delta, r), np.clip(r, -delta, delta)


def _log_loss_and_shares(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray):
    """Predicted log L (..., n) and each term's share of L (..., 3, n) (the softmax weights, which are
    d log L / d term) of the log-terms (a - alpha log N, b - beta log D, e); theta (..., 5)."""
    e, a, b, alpha, beta = (theta[..., i, None] for i in range(_N_PARAMS))
    t1 = a - alpha * log_n
    t = np.stack([t1, b - beta * log_d, np.broadcast_to(e, t1.shape)], axis=-2)
    m = t.max(axis=-2, keepdims=True)
    ex = np.exp(t - m)
    s = ex.sum(axis=-2, keepdims=True)
    return (m + np.log(s))[..., 0, :], ex / s


def _dlogl_dtheta(w: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> tuple[np.ndarray, ...]:
    """d log L / d (e, a, b, alpha, beta) per point: five (n,) arrays, from the term shares w (3, n)."""
    return w[2], w[0], w[1], -w[0] * log_n, -w[1] * log_d


def objective(
    theta: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_loss: np.ndarray,
    delta: float,
    reduction: str = "sum",
    w: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Huber objective on log residuals and its analytic gradient.

    theta: (5,) = (e, a, b, alpha, beta); log_n, log_d, log_loss: (n,); w: (n,) weights of the points'
    terms (None: 1 each). Returns (value, grad (5,)).
    The same numbers as `_log_loss_and_shares` + `_huber` + `_dlogl_dtheta`, written out for one
    theta: L-BFGS-B calls it ~200 times per start, and the generic form costs ~1.7x as much
    (benchmarks/fit_speed.py).
    """
    e, a, b, alpha, beta = theta
    t1 = a - alpha * log_n
    t2 = b - beta * log_d
    m = np.maximum(np.maximum(t1, t2), e)  # log-sum-exp of the three terms, shifted by their max
    x1, x2, x3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
    s = x1 + x2 + x3
    r = m + np.log(s) - log_loss
    ar = np.abs(r)
    h = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))
    dh = np.clip(r, -delta, delta) / s  # Huber derivative over the normaliser: share_k = x_k / s
    if w is not None:
        h, dh = h * w, dh * w
    val = h.sum()
    scale = 1.0 / len(log_loss) if reduction == "mean" else 1.0
    g = np.array([dh @ x3, dh @ x1, dh @ x2, -(dh * x1) @ log_n, -(dh * x2) @ log_d])
    return float(val) * scale, g * scale


def grid_objective(
    thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float, w=None
) -> np.ndarray:
    """Summed (w: (n,) weighted) Huber objective for many parameter vectors at once: thetas (G, 5) -> (G,)."""
    out = np.empty(len(thetas))
    for i in range(0, len(thetas), 512):  # chunks keep memory at 512 x 3 x n floats
        pred = _log_loss_and_shares(thetas[i : i + 512], log_n, log_d)[0]
        h = _huber(pred - log_loss, delta)[0]
        out[i : i + 512] = (h if w is None else h * w).sum(axis=-1)
    return out


def stationarity(theta: np.ndarray, log_n, log_d, log_loss, delta: float, free=None, w=None) -> float:
    """Scale-free stationarity: max_j |sum_i c_ij| / sum_i |c_ij|, c_ij = point i's gradient share.

    At a stationary point the points' pulls cancel (-> 0); at a start the optimiser never left they
    do not (~ 1). Unlike |grad| it does not depend on the scale (sum vs mean) or on the residual size.
    free: (5,) bool, the parameters to check (one held on a bound or fixed is not stationary there).
    w: (n,) weights of the points (None: 1 each).
    """
    pred, shares = _log_loss_and_shares(theta, log_n, log_d)
    _, dh = _huber(pred - log_loss, delta)
    if w is not None:
        dh = dh * w
    jac = np.stack(_dlogl_dtheta(shares, log_n, log_d), axis=1)  # (n, 5)
    c = dh[:, None] * jac
    r = np.abs(c.sum(axis=0)) / np.maximum(np.abs(c).sum(axis=0), 1e-300)
    if free is not None:
        r = r[np.asarray(free, bool)]
    return float(np.max(r)) if len(r) else 0.0


def term_shares(theta: np.ndarray, log_n, log_d) -> dict[str, float]:
    """Largest share of the predicted loss over the points of each term: E, "N" (A/N^alpha), "D" (B/D^beta).

    A share below ~1e-3 everywhere means the term vanished: its parameters are not determined."""
    w = _log_loss_and_shares(theta, log_n, log_d)[1]
    return {"N": float(w[0].max()), "D": float(w[1].max()), "E": float(w[2].max())}


# ----------------------------------------------------------------------------------------------
# result

LOG_SE_KEYS = ("ln_E", "ln_A", "ln_B", "alpha", "beta")  # the bootstrap correlation's order


@dataclass
class ParametricFit:
    """Result of fitting L(N, D) = E + A/N^alpha + B/D^beta (statsmodels-style result object).

    `status` says what the data identify (see `assess`); when alpha's or beta's interval includes 0
    the compute-optimal allocation (N_opt, a, b) is withheld (`allocation_identified` is False).
    E is 0 exactly when it ran to its floor; then `e_upper` is its one-sided 95% bound.
    """

    params: dict[str, float]
    objective: float
    converged: bool
    n_points: int
    n_starts: int
    n_converged_starts: int
    stationarity: float
    config: ParametricConfig
    bootstrap: BootstrapResult | None = None
    at_bound: dict[str, bool] = field(default_factory=dict)
    e_at_floor: bool = False
    e_upper: float | None = None
    e_profile: list[tuple[float, float]] = field(default_factory=list)  # (E, objective) with E fixed
    level: float = 0.95
    status: Status = field(default_factory=Status)
    vanished: dict[str, bool] = field(default_factory=dict)  # "N" / "D": that term < 0.1% of every loss
    allocation_identified: bool = True  # set by assess(): False withholds N_opt, a and b

    @property
    def theta(self) -> np.ndarray:
        """Internal parameters (e, a, b, alpha, beta); e = -inf when E = 0."""
        p = self.params
        with np.errstate(divide="ignore"):
            return np.array([np.log(p["E"]), math.log(p["A"]), math.log(p["B"]), p["alpha"], p["beta"]])

    @property
    def a(self) -> float:
        """Exponent of N_opt ~ C^a: beta / (alpha + beta)."""
        return allocation_exponents(self.params)[0]

    @property
    def b(self) -> float:
        """Exponent of D_opt ~ C^b: alpha / (alpha + beta)."""
        return allocation_exponents(self.params)[1]

    def predict(self, n, d) -> np.ndarray:
        """Expected loss at N parameters and D data (arrays broadcast)."""
        return parametric_loss(self.params, n, d)

    @property
    def se(self) -> dict[str, float]:
        """Bootstrap standard errors: of ln E, ln A, ln B (log space), alpha, beta, a, b ({} without)."""
        if self.bootstrap is None:
            return {}
        se = self.bootstrap.se()
        return {k: se[k] for k in (*LOG_SE_KEYS, "a", "b") if k in se}

    def conf_int(self, level: float | None = None) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals for E, A, B, alpha, beta, a, b."""
        if self.bootstrap is None:
            return {}
        ci = self.bootstrap.conf_int(level or self.level)
        out = {k: ci[k] for k in ("E", "A", "B", "alpha", "beta", "a", "b") if k in ci}
        if self.e_at_floor and "E" in out:  # refits at E's floor (a bound that stands for 0) hold E = 0
            out["E"] = (0.0, out["E"][1])
        return out

    def correlation(self) -> np.ndarray | None:
        """Bootstrap correlation matrix of (ln E, ln A, ln B, alpha, beta), (5, 5); None without."""
        if self.bootstrap is None or self.bootstrap.n_ok < 3:
            return None
        return self.bootstrap.correlation(LOG_SE_KEYS)

    def assess(self) -> Status:
        """What the data identify: convergence, E at its floor, exponents resolved and not at bounds."""
        st = Status()
        pct = f"{100 * self.level:g}%"
        if not self.converged:
            st.add(
                NOT_IDENTIFIED,
                f"the fit did not reach a stationary point (imbalance {self.stationarity:.3g})",
            )
        if self.e_at_floor:
            st.add(
                NOT_IDENTIFIED,
                "E ran to its floor (E -> 0 fits best): refitted with E = 0; "
                f"E < {self.e_upper:.3g} (loss units; 95% one-sided bound from the profile of the objective "
                "over E). The irreducible loss is not identified: add larger budgets (longer runs) so the "
                "losses bend towards their floor",
            )
        lo_b, hi_b = self.config.exponent_bounds
        ci = self.conf_int()
        what = {
            "alpha": (
                "N",
                "model size N",
                "add model sizes that bracket the best one at each budget (the IsoFLOP status says on which "
                "side), spanning at least 10x in N",
            ),
            "beta": ("D", "data D", "add budgets spanning at least 10x in D (longer runs of each model)"),
        }
        shares = self.bootstrap.share_at_bound() if self.bootstrap is not None else {}
        tail, withheld = (1 - self.level) / 2, []  # the reasons that withhold the allocation
        for k, (term, dep, fix) in what.items():
            v = self.params[k]
            lo, hi = ci.get(k, (v, v))
            share, gone = shares.get(f"{term}_term_vanished", 0.0), self.vanished.get(term)
            if gone or share > tail:
                where = "in the fit" if gone else f"in {100 * share:.0f}% of the bootstrap refits"
                withheld.append(
                    f"the {term} term ({'A/N^alpha' if term == 'N' else 'B/D^beta'}) vanished {where} "
                    f"(< 0.1% of every predicted loss): the loss's dependence on {dep} is not resolved, so "
                    f"N_opt, a and b are withheld; {fix}"
                )
            if min(v, lo) <= lo_b + 1e-6:
                withheld.append(
                    f"{k}'s {pct} interval [{lo:.3g}, {hi:.3g}] includes 0 (estimate {v:.3g}): the loss's "
                    f"dependence on {dep} is not resolved, so N_opt, a and b are withheld; {fix}"
                )
            elif max(v, hi) >= hi_b - 1e-6 and not gone:
                withheld.append(
                    f"{k} reached its upper bound {hi_b:g} ({pct} interval [{lo:.3g}, {hi:.3g}]): "
                    f"the {dep} term is not identified, so N_opt, a and b are withheld; {fix}"
                )
        for reason in withheld:
            st.add(NOT_IDENTIFIED, reason)
        self.allocation_identified = self.converged and not withheld
        bs = self.bootstrap
        if bs is not None and bs.n_ok < 2:  # no interval at all: not a share of one
            got = (
                f"no bootstrap refit succeeded (all {bs.n_requested} failed"
                if bs.n_ok == 0
                else f"only 1 of the {bs.n_requested} bootstrap refits succeeded (the others failed"
            )
            st.add(
                NOT_IDENTIFIED,
                f"{got} to converge, or drew one model size or one D), so there is no interval: whether the "
                "data identify the exponents was not checked (the point estimates are shown without "
                "intervals); add runs (more model sizes and budgets) so that resamples can be refitted",
            )
        elif bs is not None and bs.too_few(self.level):
            shown = ", ".join(f"{k} [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" for k in ("alpha", "beta"))
            st.add(
                NOT_IDENTIFIED,
                f"the exponents' intervals ({shown}) come from "
                + too_few_refits(
                    bs,
                    self.level,
                    failed="failed to converge, or drew one model size or one D",
                    unchecked="whether the data identify the exponents",
                ),
            )
        if bs is not None and bs.n_ok >= 2 and bs.share_failed > 0.2:
            st.add(
                NOT_IDENTIFIED,
                f"{100 * bs.share_failed:.0f}% of the bootstrap refits failed to converge: the intervals "
                "describe only the rest",
            )
        return st

    def summary(self) -> str:
        """A plain-text table of estimates, standard errors and intervals, with the status."""
        pct = f"{100 * self.level:g}%"
        lo_q, hi_q = f"{50 * (1 - self.level):g}%", f"{100 - 50 * (1 - self.level):g}%"
        lines = [
            "Parametric law L(N, D) = E + A/N^alpha + B/D^beta "
            f"(Huber delta={self.config.delta:g} on log L, {self.config.reduction}; "
            f"alpha, beta in [{self.config.exponent_bounds[0]:g}, {self.config.exponent_bounds[1]:g}])",
            f"points: {self.n_points}   objective: {self.objective:.6g}   converged: {self.converged} "
            f"({self.n_converged_starts}/{self.n_starts} starts)",
            f"{'param':>8} {'estimate':>12} {'std.err':>16} {lo_q:>12} {hi_q:>12}",
        ]
        se, ci = self.se, self.conf_int()
        alloc = self.allocation_identified
        for k, v in dict(self.params, a=self.a, b=self.b).items():
            if k in ("a", "b") and not alloc:
                lines.append(f"{k:>8} {'withheld':>12}")
                continue
            lo, hi = ci.get(k, (math.nan, math.nan))
            s = se.get(f"ln_{k}" if k in ("E", "A", "B") else k, math.nan)
            s_txt = f"{s:.4g}" + (" (ln)" if k in ("E", "A", "B") else "     ")
            lines.append(f"{k:>8} {v:12.5g} {s_txt:>16} {lo:12.5g} {hi:12.5g}")
        if self.e_at_floor:
            lines.append(f"E = 0 (at its floor); E < {self.e_upper:.4g} at 95% (one-sided, profile)")
        bs = self.bootstrap
        if bs is not None and bs.n_ok < 2:
            got = "no refit succeeded" if bs.n_ok == 0 else "only 1 refit succeeded"
            lines.append(
                f"bootstrap: {bs.n_requested} resamples of {bs.unit}, {got}: no intervals and no std.err"
            )
        elif bs is not None:
            at = ", ".join(f"{k} {100 * v:.0f}%" for k, v in bs.share_at_bound().items() if v > 0) or "none"
            few = (
                f" (too few for {pct}: {bs.n_ok} refits, a {pct} interval needs {min_resamples(self.level)})"
                if bs.too_few(self.level)
                else ""
            )
            lines.append(
                f"bootstrap: {bs.n_requested} resamples of {bs.unit}, {bs.n_failed} failed "
                f"({100 * bs.share_failed:.0f}%, not in the intervals); at a bound: {at} (kept); "
                f"{pct} percentile intervals{few}; std.err of E, A, B in ln units"
            )
        lines.append(self.status.text())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready: the five parameters at the top level, then exponents, errors, diagnostics."""
        out: dict = dict(self.params)
        alloc = self.allocation_identified
        out.update(a=self.a if alloc else None, b=self.b if alloc else None)
        out.update(objective=self.objective, converged=self.converged, n_points=self.n_points)
        out.update(self.status.to_dict())
        out.update(exponent_bounds=list(self.config.exponent_bounds), at_bound=dict(self.at_bound))
        out.update(E_at_floor=self.e_at_floor, E_upper95=self.e_upper, term_vanished=dict(self.vanished))
        if self.bootstrap is not None:
            out["se"] = {k: (v if (alloc or k not in ("a", "b")) else None) for k, v in self.se.items()}
            ci = self.conf_int()
            out["ci95"] = {k: (list(v) if (alloc or k not in ("a", "b")) else None) for k, v in ci.items()}
            out["bootstrap"] = self.bootstrap.to_dict(self.level)
            corr = self.correlation()
            out["correlation"] = {
                "keys": list(LOG_SE_KEYS),
                "matrix": None if corr is None else corr.tolist(),
            }
        return out


def allocation_exponents(params: dict[str, float]) -> tuple[float, float]:
    """(a, b) of N_opt ~ C^a and D_opt ~ C^b: beta and alpha over alpha + beta (NaN when that is 0)."""
    s = params["alpha"] + params["beta"]
    return (params["beta"] / s, params["alpha"] / s) if s > 0 else (math.nan, math.nan)


def parametric_loss(params: dict[str, float], n, d) -> np.ndarray:
    """E + A/N^alpha + B/D^beta."""
    n, d = np.asarray(n, float), np.asarray(d, float)
    return params["E"] + params["A"] / n ** params["alpha"] + params["B"] / d ** params["beta"]


def optimal_allocation(params: dict[str, float], compute, flops_per_param_datum: float = 6.0):
    """(N_opt, D_opt, L_opt) minimising L subject to C = k N D (k = 6 for LMs).

    Closed form (Hoffmann et al. eq. 4): G = (alpha A / (beta B))^(1/(alpha+beta)),
    N_opt = G (C/k)^a, D_opt = (C/k) / N_opt. alpha = 0 gives N_opt = 0 and beta = 0 gives
    N_opt = inf (no optimum inside (0, inf)).
    """
    alpha, beta = np.float64(params["alpha"]), np.float64(params["beta"])  # numpy: 1/0 gives inf
    c = np.asarray(compute, float) / flops_per_param_datum
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g = (alpha * params["A"] / (beta * params["B"])) ** (1.0 / (alpha + beta))
        n = g * c ** (beta / (alpha + beta))
        d = c / n
        loss = parametric_loss(params, n, d)
    return n, d, loss


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
    for name, a, term, fix in (
        ("N", arrs[0], "A/N^alpha", "train other model sizes (spanning at least 10x in N)"),
        ("D", arrs[1], "B/D^beta", "train each model for other budgets (spanning at least 10x in D)"),
    ):
        if np.ptp(a) == 0:
            raise ValueError(
                f"every point has {name} = {a[0]:.4g}: the {name} term {term} is a constant that cannot be "
                f"told apart from E, so the law (and N_opt) is not identified; {fix}"
            )
    return tuple(np.log(a) for a in arrs)  # type: ignore[return-value]


def point_weights(weights, n: int) -> np.ndarray | None:
    """(n,) weights scaled to mean 1, or None when none are given or all are equal (so an unweighted fit
    is computed exactly as before). ValueError unless each is a finite number > 0."""
    if weights is None:
        return None
    w = np.asarray(weights, float).ravel()
    if len(w) != n or not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError(f"weights must be {n} finite numbers > 0 (one per point), got {w[:5]}...")
    return None if np.all(w == w[0]) else w / w.mean()


def _bounds(cfg: ParametricConfig, log_loss: np.ndarray) -> list[tuple[float | None, float | None]]:
    """L-BFGS-B bounds of (e, a, b, alpha, beta): E >= its floor, exponents in `exponent_bounds`."""
    e_floor = float(log_loss.min()) + math.log(cfg.e_floor_frac)
    return [(e_floor, None), (None, None), (None, None), cfg.exponent_bounds, cfg.exponent_bounds]


def _limits(bounds) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper bounds as arrays (None: -inf, inf)."""
    lo, hi = np.array(bounds, float).T  # None -> NaN
    return np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)


def _clip(theta: np.ndarray, bounds) -> np.ndarray:
    return np.clip(theta, *_limits(bounds))


def _at_bound(theta: np.ndarray, bounds) -> np.ndarray:
    """(5,) bool: each parameter on (within 1e-6 of) one of its bounds."""
    lo, hi = _limits(bounds)
    return (theta <= lo + 1e-6) | (theta >= hi - 1e-6)


def _grid(cfg: ParametricConfig, log_loss: np.ndarray) -> np.ndarray:
    e_vals = [*cfg.e_grid, *(float(log_loss.min()) + math.log(f) for f in cfg.e_fractions)]
    return np.array(
        list(itertools.product(e_vals, cfg.a_grid, cfg.b_grid, cfg.alpha_grid, cfg.beta_grid)), float
    )


#: Decorator: the function with BLAS limited to one thread. scipy 1.17's L-BFGS-B calls BLAS on 5-vectors;
#: with OpenBLAS threads on a busy 2-core machine that made each fit ~20x slower (10 s instead of 0.5 s).
single_threaded_blas = threadpool_limits.wrap(limits=1, user_api="blas")  # threadpoolctl: with scikit-learn


def _minimize(
    theta0, log_n, log_d, log_loss, cfg: ParametricConfig, bounds, polish=False, fix_e=None, w=None
):
    """L-BFGS-B from theta0 within `bounds`; fix_e (e.g. -inf for E = 0) holds e fixed; w: (n,) weights.

    Returns (theta, objective, stationarity over the free parameters off their bounds, iterations).
    """
    ftol, gtol = (cfg.polish_ftol, cfg.polish_gtol) if polish else (cfg.ftol, cfg.gtol)
    opts = {k: v for k, v in (("maxiter", cfg.maxiter), ("ftol", ftol), ("gtol", gtol)) if v is not None}
    args = (log_n, log_d, log_loss, cfg.delta, cfg.reduction, w)
    x0 = _clip(np.asarray(theta0, float), bounds)
    if fix_e is None:
        res = minimize(objective, x0, args=args, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
        theta = res.x
    else:

        def fun(x):
            f, g = objective(np.r_[fix_e, x], *args)
            return f, g[1:]

        res = minimize(fun, x0[1:], jac=True, method="L-BFGS-B", bounds=bounds[1:], options=opts)
        theta = np.r_[fix_e, res.x]
    f, _ = objective(theta, *args)
    free = ~_at_bound(theta, bounds)
    if fix_e is not None:
        free[0] = False
    shares = term_shares(theta, log_n, log_d)  # a vanished term's parameters lie on a flat direction
    for term, idx in (("E", [0]), ("N", [1, 3]), ("D", [2, 4])):
        if shares[term] < cfg.e_at_floor_frac:
            free[idx] = False
    return theta, f, stationarity(theta, log_n, log_d, log_loss, cfg.delta, free, w), int(res.nit)


def _varpro_starts(log_n, log_d, log_loss, cfg: ParametricConfig, w=None) -> list[np.ndarray]:
    """Starts from linear least squares (rows weighted by w, (n,)): at fixed exponents L is linear in
    (E, A, B) >= 0."""
    if cfg.n_varpro_starts <= 0:
        return []
    plain = np.exp(log_loss)
    loss = plain if w is None else plain / np.sqrt(w)  # each row of the system scaled by sqrt(w)
    cands = []
    for alpha in cfg.varpro_exponents:
        xa = np.exp(-alpha * log_n) / loss
        for beta in cfg.varpro_exponents:
            design = np.stack([1.0 / loss, xa, np.exp(-beta * log_d) / loss], axis=1)
            coef, rnorm = nnls(design, np.ones_like(loss) if w is None else np.sqrt(w))
            cands.append((rnorm, coef, alpha, beta))
    cands.sort(key=lambda c: c[0])
    floor = cfg.e_floor_frac * plain.min()  # an NNLS zero becomes the floor (a bound, not a start value)
    return [
        np.array([*(math.log(max(v, floor)) for v in coef), alpha, beta])
        for _, coef, alpha, beta in cands[: cfg.n_varpro_starts]
    ]


def _converged(f: float, stat: float, n: int, cfg: ParametricConfig) -> bool:
    """Stationary, or an exact fit (every log residual ~< 1e-6, where the imbalance is just rounding)."""
    scale = n if cfg.reduction == "sum" else 1.0
    return stat < cfg.stationarity_tol or f < scale * 0.5e-12


def _grid_starts(log_n, log_d, log_loss, cfg: ParametricConfig, w=None) -> list[np.ndarray]:
    """The `cfg.n_starts` grid points with the lowest objective, then the variable-projection starts."""
    grid = _grid(cfg, log_loss)
    scores = grid_objective(grid, log_n, log_d, log_loss, cfg.delta, w)
    best = [grid[i] for i in np.argsort(scores)[: cfg.n_starts]]
    return best + _varpro_starts(log_n, log_d, log_loss, cfg, w)


def _fit_theta(log_n, log_d, log_loss, cfg: ParametricConfig, starts, bounds, fix_e=None, w=None):
    """Best (theta, f, stationarity, n_converged) over the starts; converged starts win."""
    ends = []  # (not converged, f, theta, stationarity) per start
    for s in starts:
        theta, f, stat, nit = _minimize(s, log_n, log_d, log_loss, cfg, bounds, fix_e=fix_e, w=w)
        ok = _converged(f, stat, len(log_loss), cfg) and np.all(np.isfinite(theta[1:]))
        log.debug("start %s -> f=%.6g stationarity=%.2g nit=%d", s, f, stat, nit)
        ends.append((not ok, f, theta, stat))
    _, f, theta, stat = min(ends, key=lambda end: end[:2])  # the first of equal ones, as the starts' order
    return theta, f, stat, sum(not end[0] for end in ends)


def _polished(theta, f: float, stat: float, logs, cfg: ParametricConfig, bounds, fix_e=None, w=None):
    """(theta, f, stat) after a run with the polish tolerances, if that lowered the objective."""
    t2, f2, s2, _ = _minimize(theta, *logs, cfg, bounds, polish=True, fix_e=fix_e, w=w)
    return (t2, f2, s2) if f2 <= f else (theta, f, stat)


def _theta_to_params(theta: np.ndarray) -> dict[str, float]:
    e, a, b, alpha, beta = (float(x) for x in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def profile_e(theta0, log_n, log_d, log_loss, cfg: ParametricConfig, w=None):
    """Profile of the objective over E: for E at `PROFILE_FRACTIONS` of min(loss), the objective
    minimised over (A, B, alpha, beta) with E held there. Returns [(E, objective)] (E increasing)."""
    bounds = _bounds(cfg, log_loss)
    lmin = float(np.exp(log_loss.min()))
    out, prev = [], np.asarray(theta0, float)
    for frac in PROFILE_FRACTIONS:
        e = math.log(frac * lmin)
        theta, f, _, _ = _minimize(np.r_[e, prev[1:]], log_n, log_d, log_loss, cfg, bounds, fix_e=e, w=w)
        out.append((frac * lmin, f))
        prev = theta
    return out


def e_upper_bound(
    profile: list[tuple[float, float]], f0: float, n: int, threshold: float, e_max: float
) -> float:
    """Largest E with n ln(f(E) / f0) <= threshold, interpolated between profile points (E = 0 at f0).

    `e_max` (min loss) when every profiled E stays within the threshold."""
    f0 = max(f0, 1e-300)
    es = np.r_[0.0, [e for e, _ in profile]]
    stat = np.r_[0.0, [n * math.log(max(f, f0) / f0) for _, f in profile]]
    inside = np.flatnonzero(stat <= threshold)
    j = int(inside.max())
    if j == len(es) - 1:
        return float(e_max)
    # linear interpolation of the statistic between E_j (inside) and E_{j+1} (outside)
    t = (threshold - stat[j]) / (stat[j + 1] - stat[j])
    return float(es[j] + t * (es[j + 1] - es[j]))


@single_threaded_blas
def fit_parametric(
    n,
    d,
    loss,
    config: ParametricConfig | None = None,
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
    groups=None,
    level: float = 0.95,
    weights=None,
    redraw=None,
) -> ParametricFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to points (n,) arrays; optional bootstrap.

    groups: optional (n,) labels (e.g. run ids) to resample whole groups instead of points.
    weights: optional (n,) weights of the points' Huber terms, e.g. a cell mean's number of seeds (its
    variance is sigma^2 / k); scaled to mean 1 (`point_weights`), and equal ones are no weights at all.
    redraw: rng -> (n,) losses for each bootstrap resample (see `bootstrap_parametric`).
    Raises ConvergenceError when `config.check_convergence` and no start reached a stationary point.
    The returned fit carries `status` (see ParametricFit.assess).
    """
    cfg = config or ParametricConfig()
    log_n, log_d, log_loss = check_points(n, d, loss)
    logs = (log_n, log_d, log_loss)
    w = point_weights(weights, len(log_n))
    bounds = _bounds(cfg, log_loss)
    starts = _grid_starts(*logs, cfg, w)
    theta, f, stat, n_conv = _fit_theta(*logs, cfg, starts, bounds, w=w)
    converged = _converged(f, stat, len(log_n), cfg)
    polish = cfg.polish_ftol is not None or cfg.polish_gtol is not None
    if converged and polish:
        theta, f, stat = _polished(theta, f, stat, logs, cfg, bounds, w=w)
    lmin = float(np.exp(log_loss.min()))
    e_at_floor = bool(converged and math.exp(theta[0]) < cfg.e_at_floor_frac * lmin)
    e_up, profile = None, []
    if e_at_floor:  # the best fit wants E -> 0: fit E = 0 exactly, then bound E by its profile
        theta, f, stat, _ = _fit_theta(*logs, cfg, [theta, *starts], bounds, fix_e=-np.inf, w=w)
        if polish:
            theta, f, stat = _polished(theta, f, stat, logs, cfg, bounds, fix_e=-np.inf, w=w)
        converged = _converged(f, stat, len(log_n), cfg)
        profile = profile_e(theta, *logs, cfg, w=w)
        e_up = e_upper_bound(profile, f, len(log_n), cfg.profile_threshold, lmin)
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
    flags = _at_bound(theta, bounds)
    fit = ParametricFit(
        params=_theta_to_params(theta),
        objective=f,
        converged=bool(converged),
        n_points=len(log_n),
        n_starts=len(starts),
        n_converged_starts=n_conv,
        stationarity=stat,
        config=cfg,
        at_bound={k: bool(flags[i]) or (k == "E" and e_at_floor) for i, k in enumerate(PARAM_NAMES)},
        e_at_floor=e_at_floor,
        e_upper=e_up,
        e_profile=profile,
        level=level,
        vanished={
            k: v < cfg.e_at_floor_frac for k, v in term_shares(theta, log_n, log_d).items() if k != "E"
        },
    )
    if n_bootstrap > 0:
        fit.bootstrap = bootstrap_parametric(
            fit, n, d, loss, n_bootstrap, seed=seed, groups=groups, weights=w, redraw=redraw
        )
    fit.status = fit.assess()
    return fit


@single_threaded_blas
def bootstrap_parametric(
    fit: ParametricFit,
    n,
    d,
    loss,
    n_resamples: int,
    *,
    seed: int = 0,
    groups=None,
    weights=None,
    redraw=None,
) -> BootstrapResult:
    """Refit on resampled points (or groups), each from its own grid and NNLS starts.

    Never from the full-data optimum: a start there would inherit a stuck parameter. A refit that
    does not converge counts as failed (`n_failed`); one that ends on a bound is kept and flagged.
    weights: (n,) of the points (`point_weights`; those drawn are scaled to mean 1 again). redraw:
    rng -> (n,) losses each resample fits instead of ``loss`` (`analysis.runs.LrRedraw`: the best lr
    chosen again on resampled seeds).
    """
    base = fit.config
    cfg = replace(
        base,
        check_convergence=False,
        polish_ftol=None,
        polish_gtol=None,
        n_starts=base.bootstrap_n_starts,
        n_varpro_starts=base.bootstrap_n_varpro_starts,
    )
    logs = [np.log(np.asarray(x, float).ravel()) for x in (n, d, loss)]

    def one(idx: np.ndarray, losses: np.ndarray | None = None) -> dict[str, float] | None:
        ln, ld, ll = (x[idx] for x in logs)
        if losses is not None:
            ll = np.log(losses[idx])
        if np.ptp(ln) == 0 or np.ptp(ld) == 0:
            return None  # a resample with one model size (or one D) cannot determine the law
        w = None if weights is None else point_weights(weights[idx], len(idx))
        bounds = _bounds(cfg, ll)
        theta, f, stat, _ = _fit_theta(ln, ld, ll, cfg, _grid_starts(ln, ld, ll, cfg, w), bounds, w=w)
        if not _converged(f, stat, len(ll), cfg):
            return None
        p = _theta_to_params(theta)
        p["a"], p["b"] = allocation_exponents(p)
        p.update(ln_E=float(theta[0]), ln_A=float(theta[1]), ln_B=float(theta[2]))
        flags = _at_bound(theta, bounds)
        flags[0] = flags[0] or p["E"] < cfg.e_at_floor_frac * float(np.exp(ll.min()))
        p.update({BOUND_PREFIX + k: float(flags[i]) for i, k in enumerate(PARAM_NAMES)})
        for term, v in term_shares(theta, ln, ld).items():
            if term != "E":
                p[f"{BOUND_PREFIX}{term}_term_vanished"] = float(v < cfg.e_at_floor_frac)
        return p

    return bootstrap_points(
        one, len(logs[0]), n_resamples, seed=seed, groups=groups, desc="bootstrap L(N, D)", redraw=redraw
    )
