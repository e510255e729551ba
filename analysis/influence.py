"""Leave-one-run-out influence: which runs a recommendation rests on.

A law fitted to a dozen runs can hinge on one of them. On the demo's seed 0, leaving out one of the
ten runs that the holdout fits moves its error on the held-out budget from +5.9 % to anywhere
between +3.4 % and +7.8 % (docs/study.md, session 19). The bootstrap interval says how uncertain the
fit is; this jackknife also says which run to retrain or add seeds to.

For each run (a cell, its seeds averaged unless ``--per-seed``), the fits are redone without it and
without bootstrap. The table gives, at one compute budget, the parametric law's N_opt and expected
loss, its exponents alpha, beta and a, and, with a holdout, the holdout's best-loss error. The runs
of the held-out budget get no holdout error of their own, since leaving one out changes the
observed value as well as the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from analysis.bootstrap import parallel_map
from analysis.parametric import optimal_allocation
from analysis.pipeline import (
    Analysis,
    AnalysisConfig,
    HoldoutResult,
    analyze_prepared,
    holdout_prepared,
    largest_compute_runs,
    prepare,
)

#: what each refit reports: N_opt and the expected loss (pred_loss) at the budget, the exponents, and
#: the holdout's best-loss error (pred - obs) / obs
QUANTITIES = ("n_opt", "pred_loss", "alpha", "beta", "a", "holdout")


def fit_summary(an: Analysis | None, compute: float, hold: HoldoutResult | None = None) -> dict[str, float]:
    """The quantities of `QUANTITIES` for one analysis (nan where a fit is missing)."""
    out = dict.fromkeys(QUANTITIES, math.nan)
    pf = an.parametric if an is not None else None
    if pf is not None:
        n, _, loss = (float(v) for v in optimal_allocation(pf.params, compute, an.flops_per_param_datum))
        out.update(n_opt=n, pred_loss=loss, alpha=pf.params["alpha"], beta=pf.params["beta"], a=pf.a)
        if not pf.allocation_identified:  # withheld, as the prediction withholds it
            out.update(n_opt=math.nan, a=math.nan)
    if hold is not None:
        out["holdout"] = hold.frontier_error
    return out


@dataclass
class Influence:
    """Each run left out in turn.

    `table` has one row per run: run_id, model, budget (its budget's FLOPs, else its final C), C and
    loss of its final point, then `QUANTITIES` refitted without it; sorted by how far N_opt moved.
    `full` holds the same quantities with every run.
    """

    compute: float
    full: dict[str, float]
    table: pd.DataFrame
    #: run ids the holdout holds out (the largest budget's); the others are the runs it fits
    held_out: tuple[str, ...] = ()
    #: the fit with bootstrap withholds N_opt (its status); the refits, without bootstrap, still give one
    withheld: bool = False

    @property
    def unit(self) -> str:
        """What one row leaves out: a run, or a cell (its seeds' mean; `run_id` joins their ids)."""
        return "cells" if self.table["run_id"].astype(str).str.contains(" + ", regex=False).any() else "runs"

    def ratio(self, key: str) -> np.ndarray:
        """Each row's value of ``key`` over the value with every run."""
        return self.table[key].to_numpy(float) / self.full[key]

    def spread(self, key: str) -> tuple[float, float]:
        """(min, max) of ``key`` over the refits that gave one (nan, nan if none did)."""
        v = self.table[key].to_numpy(float)
        v = v[np.isfinite(v)]
        return (float(v.min()), float(v.max())) if len(v) else (math.nan, math.nan)

    def most_influential(self) -> str | None:
        """The run whose absence moves N_opt the most (by |ln ratio|), or None."""
        r = np.abs(np.log(self.ratio("n_opt")))
        return None if not np.isfinite(r).any() else str(self.table["run_id"].iloc[int(np.nanargmax(r))])

    def to_dict(self) -> dict:
        rows = self.table.replace({np.nan: None}).to_dict(orient="records")
        return {
            "compute": self.compute,
            "full": self.full,
            "runs": rows,
            "most_influential": self.most_influential(),
            "left_out": self.unit,
            "withheld": self.withheld,
        }

    def text(self, top: int = 5) -> str:
        f, n = self.full, len(self.table)
        lines = [
            f"Influence: the fits redone with each of {n} {self.unit} left out (no bootstrap), "
            f"at {self.compute:.3g} FLOPs"
        ]
        if self.unit == "cells":
            lines[0] += " (a cell: the mean of its seeds, left out with all of them; --per-seed: each run)"
        lo, hi = self.spread("n_opt")
        if not math.isfinite(f["n_opt"]):
            lines.append(
                "  N_opt (approach 3): not identified with every run (see the status); '-' in the table"
            )
        elif math.isfinite(lo):
            head = "withheld by the fit (see its status); without bootstrap " if self.withheld else ""
            lines.append(
                f"  N_opt (approach 3): {head}{f['n_opt']:.4g} with every run; {lo:.3g} .. {hi:.3g} "
                f"(x{lo / f['n_opt']:.2f} .. x{hi / f['n_opt']:.2f}) with one left out"
            )
            lo, hi = self.spread("pred_loss")
            lines.append(
                f"  expected loss: {f['pred_loss']:.4g}; {lo:.4g} .. {hi:.4g} "
                f"({100 * (lo / f['pred_loss'] - 1):+.1f}% .. {100 * (hi / f['pred_loss'] - 1):+.1f}%)"
            )
            ranges = (
                f"{k} {f[k]:.3g} [{self.spread(k)[0]:.3g}, {self.spread(k)[1]:.3g}]"
                for k in ("alpha", "beta", "a")
            )
            lines.append("  " + "; ".join(ranges))
        if math.isfinite(f["holdout"]):
            lo, hi = self.spread("holdout")
            k = int(np.isfinite(self.table["holdout"].to_numpy(float)).sum())
            if k:
                lines.append(
                    f"  holdout best-loss error: {100 * f['holdout']:+.2f}%; "
                    f"{100 * lo:+.2f}% .. {100 * hi:+.2f}% "
                    f"with one of the {k} {self.unit} it fits left out"
                )
            else:  # e.g. 6 runs fitted: one left out leaves 5 points, too few for the parametric law
                lines.append(
                    f"  holdout best-loss error: {100 * f['holdout']:+.2f}%; no refit with one of the "
                    f"{n - len(self.held_out)} {self.unit} it fits left out could redo it (the parametric "
                    "law needs more than 5 points; train more runs below the held-out budget)"
                )
        ranked = math.isfinite(f["n_opt"])
        lines.append(
            f"  the {min(top, n)} {self.unit} that move N_opt most:"
            if ranked
            else f"  {min(top, n)} of the {self.unit}:"
        )
        head = ("run", "model", "budget", "its loss", "N_opt", "x all", "E[loss]", "holdout")
        lines.append("    {:<12} {:<14} {:>8} {:>8} {:>9} {:>6} {:>8} {:>8}".format(*head))
        for row, ratio in list(zip(self.table.itertuples(), self.ratio("n_opt")))[:top]:
            hold = f"{100 * row.holdout:+.2f}%" if math.isfinite(row.holdout) else "-"
            n_opt = f"{row.n_opt:>9.3g}" if math.isfinite(row.n_opt) else f"{'-':>9}"
            times = f"{ratio:>6.2f}" if math.isfinite(ratio) else f"{'-':>6}"
            lines.append(
                f"    {_short(row.run_id):<12} {str(row.model)[:14]:<14} {row.budget:>8.2g} "
                f"{row.loss:>8.4f} {n_opt} {times} {row.pred_loss:>8.4f} {hold:>8}"
            )
        return "\n".join(lines)


def _short(run_id) -> str:
    """A row's run id in 12 characters: a cell of seeds (ids joined by ' + ') as its first id and +k."""
    ids = str(run_id).split(" + ")
    return ids[0][:12] if len(ids) == 1 else f"{ids[0][:9]}+{len(ids) - 1}"


def run_influence(
    points: pd.DataFrame, compute: float, config: AnalysisConfig | None = None, holdout: bool = False
) -> Influence:
    """Refit without each run in turn (see the module docstring). ``points`` as for `analyze`.

    The refits run in forked workers like the bootstrap's (`analysis.bootstrap.parallel_map`,
    ``--workers``), with a progress bar on a terminal; they have no randomness, so the table does not
    depend on the number of workers."""
    cfg = replace(config or AnalysisConfig(), n_bootstrap=0)
    prep = prepare(points, cfg)
    pts = prep.points
    held = set(largest_compute_runs(pts)) if holdout else set()

    def summary(p: pd.DataFrame, with_holdout: bool) -> dict[str, float]:
        sub = replace(prep, points=p)
        try:
            an = analyze_prepared(sub, cfg)
        except ValueError:  # too few points left for the parametric law
            an = None
        try:
            hold = holdout_prepared(sub, cfg) if with_holdout else None
        except ValueError:
            hold = None
        return fit_summary(an, compute, hold)

    final = pts.sort_values("C").groupby("run_id").tail(1).set_index("run_id")

    def without(rid) -> dict:
        last = final.loc[rid]
        budget = float(last["budget"] if np.isfinite(last["budget"]) else last["C"])  # `tidy`: a float
        row = {"run_id": rid, "model": last["model"], "budget": budget, "C": last["C"], "loss": last["loss"]}
        return row | summary(pts[pts["run_id"] != rid], holdout and rid not in held)

    full = summary(pts, holdout)
    rows = parallel_map(without, list(final.index), desc="influence: runs left out")
    table = pd.DataFrame(rows)  # the runs that move N_opt most first (NaN last)
    moved = np.abs(np.log(table["n_opt"].to_numpy(float) / full["n_opt"]))
    order = np.argsort(-np.nan_to_num(moved, nan=-1.0), kind="stable")
    return Influence(compute, full, table.iloc[order].reset_index(drop=True), tuple(sorted(held)))
