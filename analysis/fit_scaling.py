"""CLI: fit scaling laws to an MLflow sweep or a CSV and write a report.

python analysis/fit_scaling.py                                   # MLflow experiment ditscale-demo
python analysis/fit_scaling.py --experiment my-sweep --predict 1e21 --holdout largest
python -m analysis.fit_scaling --csv points.csv --json fit.json --out report/
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from analysis.pipeline import AnalysisConfig, analyze, holdout_largest, predict
from analysis.report import log_to_mlflow, results_dict, write_json, write_report
from analysis.runs import load_csv, load_runs
from dit_core.tracking import DEFAULT_EXPERIMENT

log = logging.getLogger("analysis.fit_scaling")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fit_scaling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--experiment", help=f"MLflow experiment name (default {DEFAULT_EXPERIMENT})")
    src.add_argument("--csv", type=Path, help="CSV with columns N, D, loss (optional C, fid, run_id, model)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    p.add_argument("--json", type=Path, help="write the fitted parameters and predictions here")
    p.add_argument("--out", type=Path, default=Path("scaling_report"), help="folder for report.md and plots")
    p.add_argument(
        "--predict",
        type=float,
        action="append",
        default=[],
        metavar="FLOPS",
        help="compute budget in true FLOPs to recommend a model for (repeatable; "
        "default: 10x the largest compute in the data)",
    )
    p.add_argument(
        "--holdout", choices=["largest"], help="fit without the largest-compute runs; report the error"
    )
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log loss")
    p.add_argument(
        "--drop-highest-loss", type=int, default=0, metavar="K", help="remove the K highest-loss points"
    )
    p.add_argument("--outlier-sigma", type=float, help="remove points > S robust sigmas from a first fit")
    p.add_argument(
        "--flops-per-param-datum",
        type=float,
        help="for a CSV without C: C = k N D (default 6, the LM convention)",
    )
    p.add_argument("--no-mlflow-log", action="store_true", help="do not log the analysis run back to MLflow")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        if args.csv is not None:
            points, source = (
                load_csv(args.csv, flops_per_param_datum=args.flops_per_param_datum),
                str(args.csv),
            )
            uri = None
        else:
            import mlflow

            uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
            exp = args.experiment or DEFAULT_EXPERIMENT
            points, source = load_runs(exp, uri), f"MLflow experiment {exp!r} ({uri})"
        cfg = AnalysisConfig(
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            drop_highest_loss=args.drop_highest_loss,
            outlier_sigma=args.outlier_sigma,
            delta=args.delta,
        )
        an = analyze(points, cfg)
        budgets = args.predict or [10.0 * float(an.points["C"].max())]  # default: the next budget up
        preds = [predict(an, c) for c in budgets]
        hold = holdout_largest(points, cfg) if args.holdout == "largest" else None
        paths = write_report(an, args.out, preds, hold, source)
        if args.json is not None:
            write_json(args.json, an, preds, hold)
        if args.csv is None and not args.no_mlflow_log:
            rid = log_to_mlflow(paths, args.experiment or DEFAULT_EXPERIMENT, uri, results_dict(an))
            print(f"analysis run: {rid}")
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if an.parametric is not None:
        print(an.parametric.summary())
    for p in preds:
        print(p.text())
    if hold is not None:
        print(hold.text())
    print(f"report: {paths['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
