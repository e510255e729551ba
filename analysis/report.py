"""Markdown report + JSON + plots of an Analysis, optionally logged to MLflow as an analysis run."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.bootstrap import min_resamples
from analysis.parametric import LOG_SE_KEYS
from analysis.pipeline import Analysis, HoldoutResult, Prediction, budget_labels, residual_summary
from analysis.plots import FIGURES, plot_all
from analysis.runs import count_runs
from analysis.status import worst

log = logging.getLogger(__name__)

#: the points as loaded, one row per run and logged step: ``fit_scaling.py --csv`` reads them back
POINTS_FILE = "points.csv"
#: the files `write_report` writes in its folder besides results.json
REPORT_FILES = ("report.md", POINTS_FILE, *(file for _, file in FIGURES.values()))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.generic):  # numpy ints and bools as Python's
        return x.item()
    return x


def results_dict(an: Analysis, predictions=(), holdout: HoldoutResult | None = None) -> dict:
    """Everything as one JSON-ready dict: status and reasons first, then the parametric law's E, A, B,
    alpha, beta at the top level, then everything else."""
    out = an.to_dict()
    st = worst(an.status, *(p.status for p in predictions))  # the fits' and every prediction's
    out["status"], out["reasons"] = st.status, list(st.reasons)
    out["predictions"] = [p.to_dict() for p in predictions]
    out["holdout"] = holdout.to_dict() if holdout else None
    return _jsonable(out)


def write_json(path, an: Analysis, predictions=(), holdout: HoldoutResult | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_dict(an, predictions, holdout), indent=2))
    return path


def fid_frontier_note(an: Analysis) -> str:
    """Why no FID(C) law: the best FID of each budget, and how many of them make the frontier (a
    budget whose best FID is not below every smaller budget's best is off it; a law needs 3)."""
    pts = an.points.dropna(subset=["fid"])
    pts = pts.assign(_budget=budget_labels(pts))
    best = pts.loc[pts.groupby("_budget")["fid"].idxmin()].sort_values("_budget")
    per = ", ".join(f"{b:.3g}: {m} {f:.4g}" for b, m, f in zip(best["_budget"], best["model"], best["fid"]))
    k = len(an.fid_frontier.frontier)
    return (
        f"best FID per budget ({per}); {k} of {len(best)} budgets improve on every smaller budget's best, "
        f"so the FID frontier has {k} point(s) and no FID(C) law (it needs 3): more compute does not "
        "lower the best FID here (FID noise, or FID and loss ranking the models differently)"
    )


def fid_resolution_note(an: Analysis) -> str | None:
    """Whether the FIDs at the largest budget resolve its models: the best and worst FID with their
    standard errors (``fid_se``: bootstrap over the samples, the noise under another sampling seed)
    and their gap in standard errors; None without FIDs or (nonzero) standard errors there."""
    pts = an.points.dropna(subset=["fid"])
    if pts.empty:
        return None
    pts = pts.assign(_budget=budget_labels(pts))
    top = pts[pts["_budget"] == pts["_budget"].max()].sort_values("C").groupby("N").tail(1)
    best, worst = top.loc[top["fid"].idxmin()], top.loc[top["fid"].idxmax()]
    se = math.hypot(best["fid_se"], worst["fid_se"])
    if len(top) < 2 or not 0 < se < math.inf:  # 0: a CSV's explicit fid_se 0, no noise estimate
        return None
    z = (worst["fid"] - best["fid"]) / se
    return (
        f"FID at the largest budget ({top['_budget'].iloc[0]:.3g}): best {best['model']} "
        f"{best['fid']:.4g} +- {best['fid_se']:.2g}, worst {worst['model']} {worst['fid']:.4g} +- "
        f"{worst['fid_se']:.2g} (standard errors over the samples); the gap is {z:.1f} standard errors"
        + ("" if z >= 2 else ", so sampling noise alone could reorder them: score more samples")
    )


def _fmt_law(law) -> str:
    """The law's formula, with its exponent's 95% interval when it has one."""
    if law is None:
        return "not fitted"
    lo, hi = law.conf_int().get("alpha", (math.nan, math.nan))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"`{law.formula()}`"
    how = "bootstrap" if law.bootstrap is not None else f"t, {law.n_points} points"
    zero = "includes 0" if lo <= 0 <= hi else "excludes 0"
    return f"`{law.formula()}`; exponent 95% [{-hi:.3g}, {-lo:.3g}] ({how}; {zero})"


def _corr_table(an: Analysis) -> list[str]:
    corr = an.parametric.correlation() if an.parametric is not None else None
    if corr is None:
        return []
    lines = ["", "Bootstrap correlation of the parameters (E, A, B in log space):", ""]
    lines.append("| | " + " | ".join(LOG_SE_KEYS) + " |")
    lines.append("|---" * (len(LOG_SE_KEYS) + 1) + "|")
    for k, row in zip(LOG_SE_KEYS, corr):
        lines.append(f"| {k} | " + " | ".join(f"{v:+.2f}" if np.isfinite(v) else "n/a" for v in row) + " |")
    if not np.isfinite(corr).all():
        lines += ["", "n/a: a parameter that did not vary over the bootstrap refits has no correlation."]
    return lines


def markdown(
    an: Analysis,
    plots: dict[str, Path],
    predictions=(),
    holdout: HoldoutResult | None = None,
    source: str = "",
    points_file: str | None = None,
) -> str:
    """The report text; plot paths are written relative to the report's folder. ``points_file``: the
    points' CSV beside it, named under "Points used"."""
    pts, u = an.points, an.units
    st = worst(an.status, *(p.status for p in predictions))
    lines = [
        "# DiT scaling-law analysis",
        "",
        f"**Status: {st.status}**" + ("" if st.reasons else " (the data identify every reported result)"),
        "",
        *[f"- {r}" for r in st.reasons],
        "",
        f"Data: {source} - {len(pts)} points from {count_runs(pts['run_id'])} runs, "
        f"N {pts['N'].min():.3g}..{pts['N'].max():.3g} {u['N']}, "
        f"D {pts['D'].min():.3g}..{pts['D'].max():.3g} "
        f"{u['D']}, C {pts['C'].min():.3g}..{pts['C'].max():.3g} {u['C']}; loss is {u['loss']}.",
        f"Bootstrap: {an.config.n_bootstrap} resamples, seed {an.config.seed}; intervals are "
        f"{100 * an.config.level:g}% percentile intervals.",
        "",
        "## Points used",
        "",
    ]
    if points_file:
        lines += [
            f"The points as loaded are in `{points_file}` (one row per run and logged step; runs that were "
            f"not finished or diverged are not in it): `python analysis/fit_scaling.py --csv {points_file}` "
            "with the same options refits them without the store (all but --flops-per-param-datum: the "
            "file holds the C it gave), except where a cell's lr had a seed that diverged: the best-lr "
            "choice puts such an lr last, and the file, without that seed, cannot tell.",
            "",
        ]
    lines += [f"- {n}" for n in an.selection_notes] or ["- every point of every run (one point per run)"]
    lines += ["", "## Removed points", ""]
    if len(an.removed):
        lines += ["| run | model | N | D | C (FLOPs) | loss | reason |", "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {r.run_id} | {r.model} | {r.N:.4g} | {r.D:.4g} | {r.C:.4g} | {r.loss:.4g} | {r.reason} |"
            for r in an.removed.itertuples()
        ]
    else:
        lines.append(
            "None (outlier removal is off unless `--drop-highest-loss` or `--outlier-sigma` is given; "
            f"no run ended below --min-steps {an.config.min_steps})."
        )
    lines += ["", "## Approach 3: parametric law L(N, D) = E + A/N^alpha + B/D^beta", ""]
    if an.parametric is not None:
        lines += ["```", an.parametric.summary(), "```"]
        lines.append(f"Units: N in {u['N']}, D in {u['D']}, E and L in {u['loss']}.")
        if an.parametric.allocation_identified:
            lines.append(
                f"Compute-optimal allocation with C = {an.flops_per_param_datum:.4g} N D "
                f"({u['N']}, {u['D']}): "
                f"N_opt ~ C^{an.parametric.a:.4f}, D_opt ~ C^{an.parametric.b:.4f}."
            )
        else:
            lines.append("Compute-optimal allocation withheld (see the status).")
        lines += _corr_table(an)
    lines += ["", "## Approach 1: compute-efficient frontier", ""]
    fr = an.frontier
    lines.append(f"- {fr.status.text()}")
    lines.append(f"- loss frontier (saturating): {_fmt_law(fr.y_law)}")
    lines.append(f"- loss frontier (pure power law): {_fmt_law(an.loss_vs_compute_pure)}")
    ab = fr.exponents_dict()  # withheld (None) unless approach 1 is ok, as in results.json
    for q, e, law, tail in (("N", "a", fr.n_opt, ", C in FLOPs"), ("D", "b", fr.d_opt, "")):
        txt = "" if law is None else f"{e} withheld; " if ab[e] is None else f"{e} = {ab[e]:.4f}; "
        lines.append(f"- {q}_opt(C): {_fmt_law(law)} ({txt}{q} in {u[q]}{tail})")
    if fr.n_opt is not None and (bs := fr.n_opt.bootstrap) is not None:
        how = f"{bs.n_failed} without an N_opt law"
        if bs.n_ok == 0:
            how = "none with an N_opt law: no refit succeeded, so no interval"
        elif bs.too_few(an.config.level):
            need, pct = min_resamples(an.config.level), f"{100 * an.config.level:g}%"
            how += f"; {bs.n_ok} refits, too few for a {pct} interval (needs {need})"
        lines.append(f"- bootstrap over runs: {bs.n_requested} resamples, {how}")
    lines += ["", "## Approach 2: IsoFLOP profiles", "", "```", an.isoflop.summary(), "```"]
    lines += ["", "## FID", ""]
    if an.fid_protocol:
        lines.append(f"- scored as: {an.fid_protocol} (FIDs compare only under one protocol)")
    lines.append(f"- FID vs validation loss: {_fmt_law(an.fid_vs_loss)}")
    fid_sat = an.fid_frontier.y_law if an.fid_frontier else None
    lines.append(f"- FID frontier vs compute (saturating): {_fmt_law(fid_sat)}")
    lines.append(f"- FID frontier vs compute (pure power law): {_fmt_law(an.fid_vs_compute_pure)}")
    if an.fid_frontier is not None and an.fid_vs_compute_pure is None:
        lines.append(f"- {fid_frontier_note(an)}")
    if note := fid_resolution_note(an):
        lines.append(f"- {note}")
    if predictions:
        lines += ["", "## Predictions", ""]
        for p in predictions:
            lines += ["```", p.text(), "```"]
    if holdout is not None:
        lines += ["", "## Holdout: fit without the largest-compute runs", "", "```", holdout.text(), "```"]
    lines += ["", "## Diagnostics", ""]
    if an.ranking:
        bad = [r for r in an.ranking if not r["agrees"]]
        lines.append(
            f"- ranking: the fitted law orders the models as observed at {len(an.ranking) - len(bad)} of "
            f"{len(an.ranking)} budget(s)"
        )
        for r in bad:
            lines.append(f"  - {r['C']:.3g} FLOPs: observed {r['observed']}, fitted law {r['predicted']}")
    if an.residuals is not None:
        summ = residual_summary(an.residuals)
        lines.append(f"- residuals ln(L_obs / L_fit): rms {summ['rmse']:.3g}; by budget (FLOPs) and model:")
        for row in summ["by_budget"] + summ["by_model"]:
            where = f"{row['budget']:.3g} FLOPs" if "budget" in row else row["model"]
            lines.append(f"  - {where}: mean {row['mean']:+.3g}, max |r| {row['max_abs']:.3g}")
    if an.influence is not None:
        lines += ["- influence of each run (`--influence`):", "", "```", an.influence.text(top=10), "```"]
    if an.messages:
        lines += ["", "## Notes", ""] + [f"- {m}" for m in an.messages]
    lines += ["", "## Figures", ""]
    for name, p in plots.items():
        lines += [f"![{name}]({Path(p).name})", ""]
    return "\n".join(lines)


def write_report(
    an: Analysis,
    out_dir,
    predictions: list[Prediction] | tuple = (),
    holdout: HoldoutResult | None = None,
    source: str = "",
    points: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write report.md, results.json and the PNGs into out_dir, and ``points`` (the frame `load_runs` or
    `load_csv` returned, before any selection) as points.csv; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = dict(plot_all(an, out))
    md = out / "report.md"
    md.write_text(
        markdown(an, paths, predictions, holdout, source, POINTS_FILE if points is not None else None)
    )
    if points is not None:
        paths["points"] = out / POINTS_FILE
        points.to_csv(paths["points"], index=False)
    paths["report"] = md
    paths["json"] = write_json(out / "results.json", an, predictions, holdout)
    return paths


def log_to_mlflow(paths: dict[str, Path], experiment: str, tracking_uri: str | None, summary: dict) -> str:
    """Log the report files as artifacts of a new run tagged analysis=true; returns the run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"MLflow experiment {experiment!r} not found")
    run = client.create_run(exp.experiment_id, run_name="scaling-analysis", tags={"analysis": "true"})
    rid = run.info.run_id
    try:
        client.set_tag(rid, "analysis_status", str(summary.get("status")))
        for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
            v = summary.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                client.log_metric(rid, f"fit/{k}", float(v))
        for p in paths.values():
            client.log_artifact(rid, str(p), artifact_path="analysis")
        client.set_terminated(rid, "FINISHED")
    except Exception:
        client.set_terminated(rid, "FAILED")
        raise
    return rid
