"""Approach 2 fitted jointly: every budget's IsoFLOP parabola at once, minima on one power law.

Per budget j and model i (one final point per run):

    ln L_ij = ln L*_j + k (ln N_i - ln G - a (ln C_j - c0))^2          (c0 = mean ln C_j)

so the profiles share one curvature k (in log loss) and their minima lie on N_opt = G' C^a. A
parabola per budget (`analysis.isoflop._profile`) spends 3 parameters on every 3-4 points and keeps
only budgets whose vertex falls inside the sizes trained; this fit spends J + 3 on all points,
uses budgets with 2 sizes, and its exponent `a` gets a t-interval from the Jacobian (n - J - 3
degrees of freedom). Log loss, because relative curvature is what stays similar across budgets:
on the demo's three seeds a curvature free to vary as C^gamma moves `a` by 0.00-0.12
(docs/analysis.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from scipy.stats import t as student_t

from analysis.laws import PowerLawFit, fit_power_law, saturating_exp, t_intervals


@dataclass(frozen=True)
class JointIsoFlop:
    """The joint fit: `n_opt` (pure law, 95% t-interval), `d_opt` (pure law through D at each
    budget's vertex), curvature k, per-budget minima, degrees of freedom and rmse of ln L."""

    n_opt: PowerLawFit
    d_opt: PowerLawFit
    curvature: float
    budgets: tuple[float, ...]
    loss_opt: tuple[float, ...]
    dof: int

    @property
    def n_points(self) -> int:
        return self.n_opt.n_points

    @property
    def rmse_log(self) -> float:
        """Root mean square of the fit's ln L residuals."""
        return self.n_opt.rmse_log

    def profile(self, compute: float, n) -> np.ndarray:
        """The fitted loss at budget `compute` (one of `budgets`) for sizes n: (len(n),)."""
        q = int(np.argmin(np.abs(np.log(np.asarray(self.budgets) / compute))))
        ln_vertex = math.log(float(self.n_opt.predict(self.budgets[q])))
        return self.loss_opt[q] * np.exp(self.curvature * (np.log(np.asarray(n, float)) - ln_vertex) ** 2)

    @property
    def a(self) -> float:
        return -self.n_opt.params["alpha"]

    @property
    def a_interval(self) -> tuple[float, float]:
        lo, hi = self.n_opt.t_interval["alpha"]
        return -hi, -lo

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "a_ci95": list(self.a_interval),
            "interval": self.n_opt.t_interval_kind,
            "N_opt": self.n_opt.to_dict(),
            "D_opt": self.d_opt.to_dict(),
            "curvature_log_loss": self.curvature,
            "budgets": list(self.budgets),
            "loss_opt": list(self.loss_opt),
            "n_points": self.n_points,
            "rmse_log": self.rmse_log,
        }


#: the column of a point's weight in the slices' frames (`analysis.isoflop.fit_isoflop`'s weights)
WEIGHT = "_weight"


def d_at(g: pd.DataFrame, ln_n: float) -> float:
    """D at ln N = ``ln_n`` within one slice: ln D is linear in ln N at a fixed budget (exactly
    ln(C / kN) for C = kND), so a line through the slice's points."""
    coef = np.polyfit(np.log(g["N"].to_numpy(float)), np.log(g["D"].to_numpy(float)), 1)
    return math.exp(np.polyval(coef, ln_n))


def fit_joint_isoflop(slices: list[tuple[float, pd.DataFrame]]) -> JointIsoFlop | None:
    """Fit the joint model to [(budget C, points of that slice)], each slice with >= 2 sizes.

    None when there are fewer than 3 slices or fewer than 2 degrees of freedom. Points need N, D,
    loss (> 0); a `WEIGHT` column, where there is one, weighs each point's squared residual (weighted
    least squares; the 95% t-interval is then that of the weighted fit)."""
    slices = [(c, g) for c, g in slices if g["N"].nunique() >= 2]
    if len(slices) < 3:
        return None
    budgets = np.array([c for c, _ in slices], float)
    j = np.concatenate([np.full(len(g), q) for q, (_, g) in enumerate(slices)])
    pts = pd.concat([g for _, g in slices], ignore_index=True)
    ln_n, ln_l = np.log(pts["N"].to_numpy(float)), np.log(pts["loss"].to_numpy(float))
    sw = np.sqrt(pts[WEIGHT].to_numpy(float)) if WEIGHT in pts.columns else 1.0  # of the residuals
    lc = np.log(budgets)
    c0 = float(lc.mean())
    u = (lc - c0)[j]
    n_budgets = len(budgets)
    dof = len(pts) - n_budgets - 3
    if dof < 2:
        return None

    def res(th):  # th = (a, ln G, ln k, ln L*_1..J)
        return sw * (th[3:][j] + np.exp(th[2]) * (ln_n - th[1] - th[0] * u) ** 2 - ln_l)

    # bounds keep flat or upside-down profiles finite: |a| <= 3, the vertex at the centre budget
    # within e^8 of the sizes trained, ln k in [-20, 10]; a fit on a bound gets an infinite interval
    lo = np.r_[-3.0, ln_n.min() - 8, -20.0, np.full(n_budgets, -np.inf)]
    hi = np.r_[3.0, ln_n.max() + 8, 10.0, np.full(n_budgets, np.inf)]

    def start(a0: float):  # a few starts for the exponent
        x0 = np.r_[a0, ln_n.mean(), math.log(0.05), [ln_l[j == q].min() for q in range(n_budgets)]]
        return least_squares(res, x0, bounds=(lo, hi), method="trf", xtol=1e-12, ftol=1e-12, gtol=1e-12)

    best = min(map(start, (0.2, 0.5, 0.8)), key=lambda r: r.cost)  # the first of equal costs
    th, jac = best.x, best.jac
    s2 = 2 * best.cost / dof
    q = float(student_t.ppf(0.975, dof))
    on_bound = np.any(np.isclose(th[:3], lo[:3], atol=1e-6) | np.isclose(th[:3], hi[:3], atol=1e-6))
    try:
        cov = s2 * np.linalg.inv(jac.T @ jac)
        var_ln_a = cov[1, 1] + c0**2 * cov[0, 0] - 2 * c0 * cov[0, 1]  # ln A of N_opt = A C^a: ln G - a c0
        se_a, se_ln_a = math.sqrt(max(cov[0, 0], 0.0)), math.sqrt(max(var_ln_a, 0.0))
    except np.linalg.LinAlgError:
        se_a = se_ln_a = math.inf
    # on a bound, or nan: unresolved
    se_a, se_ln_a = (v if math.isfinite(v) and not on_bound else math.inf for v in (se_a, se_ln_a))
    a, ln_amp = float(th[0]), float(th[1] - th[0] * c0)
    n_opt = PowerLawFit(
        "pure",
        {"A": saturating_exp(ln_amp), "alpha": -a},
        rmse_log=float(np.sqrt(np.mean((best.fun / sw) ** 2))),
        n_points=len(pts),
        x_name="C",
        y_name="N_opt",
        t_interval=t_intervals(ln_amp, -a, q * se_ln_a, q * se_a),
        t_interval_kind=f"t ({dof} degrees of freedom, Jacobian)",
    )
    ln_vertex = th[1] + th[0] * (lc - c0)
    d_vertex = [d_at(g, v) for (_, g), v in zip(slices, ln_vertex)]
    d_opt = fit_power_law(budgets, d_vertex, saturating=False, x_name="C", y_name="D_opt")
    return JointIsoFlop(
        n_opt=n_opt,
        d_opt=d_opt,
        curvature=float(math.exp(th[2])),
        budgets=tuple(float(c) for c in budgets),
        loss_opt=tuple(float(v) for v in np.exp(th[3:])),
        dof=dof,
    )
