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
import tempfile
from dataclasses import fields
from pathlib import Path

from analysis.bootstrap import fit_workers, min_resamples
from analysis.influence import run_influence
from analysis.pipeline import (
    Analysis,
    AnalysisConfig,
    HoldoutResult,
    Prediction,
    analyze,
    holdout_largest,
    predict,
)
from analysis.report import POINTS_FILE, REPORT_FILES, log_to_mlflow, results_dict, write_json, write_report
from analysis.runs import DATA_AXES, PARAM_AXES, load_csv, load_runs
from analysis.status import EXIT_BAD_INPUT, EXIT_CENSORED, EXIT_CODES, EXIT_NOT_IDENTIFIED
from dit_core.configio import EXIT_PIPE_CLOSED, add_flags, join_negative_values, stdout_closed
from dit_core.tracking import DEFAULT_EXPERIMENT, check_tracking_server

log = logging.getLogger("analysis.fit_scaling")


EPILOG = f"""\
status and exit codes (status is also in results.json, with its reasons):
  {EXIT_CODES["ok"]}  ok, or extrapolating (a budget > 10x the largest measured: the holdout error is shown;
     or < 1/10 of the smallest)
  1  crash (a bug: please report it)
  {EXIT_BAD_INPUT}  bad input (missing column, unknown experiment, too few points, ...)
  {EXIT_NOT_IDENTIFIED}  not_identified: the data leave part of the answer open (the reasons say which;
     N_opt is withheld when they bear on the allocation)
  {EXIT_CENSORED}  censored: the grid does not bracket the optimum ("N_opt below X at every budget")
  {EXIT_PIPE_CLOSED}  the reader of its output left (`| head`); the report and --json are written
See docs/analysis.md for what to add to the sweep in each case.
"""


def _flops(text: str) -> float:
    """An argparse type: a positive, finite compute budget in FLOPs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; write FLOPs like 1e21") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of FLOPs, e.g. 1e21")
    return value


def _seeds(text: str) -> tuple[int, ...]:
    """An argparse type: training seeds as whole numbers >= 0, e.g. ``0,1``."""
    parts = [t.strip() for t in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of seeds; write whole numbers >= 0, e.g. 0,1"
        )
    return tuple(dict.fromkeys(int(p) for p in parts))


#: the flags after --experiment / --csv, in --help's order: (flags, the `AnalysisConfig` field it sets or
#: None, add_argument's keywords); a field's flag takes its default and type (a bool: a switch that sets it)
_FLAGS = (
    ("--tracking-uri", None, dict(
        help="MLflow tracking URI, not with --csv (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")),
    ("--json", None, dict(
        type=Path, help="also write the fitted parameters and predictions here (--out has them too)")),
    ("--out", None, dict(type=Path, default=Path("scaling_report"),
        help="folder for report.md, results.json, the plots and points.csv (the points as loaded: "
        "--csv refits them without the store) (default: %(default)s)")),
    ("--predict", None, dict(type=_flops, action="append", default=[], metavar="FLOPS",
        help="compute budget in true FLOPs to recommend a model for (repeatable; "
        "default: 10x the largest compute in the data)")),
    ("--holdout", None, dict(choices=["largest"], help="fit without the largest-compute runs; report the "
        "error (run anyway when a prediction extrapolates)")),
    ("--influence", None, dict(action="store_true", help="refit without each run in turn and report how "
        "far N_opt, the expected loss, the exponents and the holdout error move, and which run moves them "
        "most (at the first --predict budget)")),
    ("--data-axis", "data_axis", dict(choices=DATA_AXES, help="D in images, or in tokens = images x "
        "(model.input_size / model.patch_size)^2 (default %(default)s)")),
    ("--params", "params", dict(choices=PARAM_AXES, help="N = all trainable parameters, or non-embedding "
        "ones (param model.params_non_embedding; Kaplan et al. 2020) (default %(default)s)")),
    ("--effective-data", "effective_data", dict(help="use Muennighoff et al. 2023's effective data D' for "
        "repeated images (needs data/unique_images)")),
    ("--r-star", None, dict(type=float, help="R* of D' (implies --effective-data; default: fitted)")),
    ("--min-steps", "min_steps", dict(
        help="drop runs that ended below this many optimizer steps (default %(default)s)")),
    ("--all-points", "all_points", dict(help="use every intermediate point, also of cosine / "
        "constant_cooldown runs (default: their final point only)")),
    ("--all-lrs", None, dict(action="store_true", help="keep every learning rate of a cell as its own point "
        "(default: a cell trained at several lrs, e.g. with the sweep's --lrs, keeps the lr with the lowest "
        "final loss, named in the report)")),
    ("--per-seed", None, dict(action="store_true", help="keep each seed's run as its own point (default: "
        "runs that differ only in their seed are averaged into one point per cell, and the report gives the "
        "loss's spread between seeds)")),
    ("--train-seeds", None, dict(type=_seeds, default=(), metavar="SEEDS", help="fit only the runs trained "
        "with these seeds, e.g. 0 or 0,2 (the sweep's --seeds; MLflow param seed, CSV column seed): one fit "
        "per seed shows how far a single seed's answer moves (default: every run, a cell's seeds averaged)")),
    ("--bootstrap", "n_bootstrap", dict(help="bootstrap resamples for the intervals: 0 (none: estimates "
        "without intervals, status not_identified) or >= 2 (default %(default)s); a 95%% percentile interval "
        f"needs at least {min_resamples(0.95)} successful refits (one beyond each end), so with fewer the "
        "intervals are shown but the status is not_identified")),
    ("--seed", "seed", dict(help="seed of the resamples (default %(default)s)")),
    ("--delta", "delta", dict(help="Huber delta on log loss (default %(default)g, Hoffmann et al. 2022)")),
    ("--drop-highest-loss", "drop_highest_loss", dict(metavar="K", help="remove the K highest-loss points")),
    ("--outlier-sigma", None, dict(type=float, help="remove points > S robust sigmas from a first fit")),
    ("--flops-per-param-datum", None, dict(
        type=float, help="for a CSV without C: C = k N D (default 6, the LM convention)")),
    ("--workers", None, dict(type=int, help="processes that refit the bootstrap resamples (default: one per "
        "CPU, or $DITSCALE_FIT_WORKERS; 1 = in this process); the intervals do not depend on it")),
    ("--no-mlflow-log", None, dict(action="store_true", help="do not log the analysis run back to MLflow")),
    ("-v --verbose", None, dict(
        action="store_true", help="log each step of the fits (INFO), not only warnings")),
)  # fmt: skip


def _field_flag(field: str, kw: dict) -> dict:
    """add_argument's keywords ``kw`` of a flag that sets the `AnalysisConfig` ``field``, with the field's
    default and type (a bool field: a switch that sets it)."""
    default = getattr(AnalysisConfig(), field)
    kind = {"action": "store_true"} if isinstance(default, bool) else {"type": type(default)}
    return kw | {"default": default} | kind


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python analysis/fit_scaling.py",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--experiment", help=f"MLflow experiment name (default {DEFAULT_EXPERIMENT})")
    src.add_argument(
        "--csv",
        type=Path,
        help="CSV with columns N, D, loss (optional C, fid, fid_se, run_id, model, step, final, budget, lr, "
        "lr_peak, forward_gflops, schedule, patch_size, tokens_per_image, N_non_embedding, unique; "
        "docs/analysis.md); a numeric cell holds a number, or nothing where the value was not measured (text "
        "such as n/a is an error); a report's points.csv (--out) is one",
    )
    add_flags(p, _FLAGS, _field_flag)
    return p


def _check_writable(flag: str, folder: Path, target: Path) -> None:
    """ValueError when ``target`` cannot be written into ``folder`` (or the folders made for it):
    its nearest existing ancestor is a file or refuses a new entry (read-only, no permission). Tried
    with a temporary folder that is removed at once, so a refused input leaves nothing behind."""
    base = folder.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{flag}: {base} is a file, so {target} cannot be written; give a path in a folder")
    try:
        tempfile.TemporaryDirectory(dir=base, prefix=".fit_scaling-probe-").cleanup()
    except OSError as e:
        raise ValueError(
            f"{flag}: cannot write in {base} ({e.strerror or e}); give a folder you can write to"
        ) from None


def _check_outputs(out: Path, json_path: Path | None) -> None:
    """ValueError, before any fit, when --out or --json cannot be written as asked."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for report.md and the plots")
    if json_path is not None and json_path.is_dir():
        raise ValueError(f"--json {str(json_path)!r} is a folder; give a file name, e.g. --json fit.json")
    j = json_path.resolve() if json_path is not None else None
    # the JSON written onto the folder, or over report.md or a plot (results.json: the same JSON)
    if j is not None and (j == out.resolve() or (j.parent == out.resolve() and j.name in REPORT_FILES)):
        raise ValueError(
            f"--json {json_path} is the --out folder or one of the report's files in it (report.md, "
            "points.csv, the plots); give another file name, e.g. --json fit.json (--out holds results.json "
            "as well)"
        )
    _check_writable("--out", out, out)
    if json_path is not None:
        _check_writable("--json", json_path.parent, json_path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv, parser))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    exp = DEFAULT_EXPERIMENT if args.experiment is None else args.experiment
    try:
        for flag, value in (("--experiment", args.experiment), ("--tracking-uri", args.tracking_uri)):
            if value is not None and not value.strip():  # e.g. --experiment "$UNSET": not the default
                raise ValueError(f"{flag} is empty; give a value, or leave the flag out for the default")
        if args.csv is None and args.flops_per_param_datum is not None:  # the runs log their compute
            raise ValueError(
                "--flops-per-param-datum sets C = k N D for a CSV without a C column; MLflow runs log their "
                "compute (compute/train_flops), so it would not be used: leave it out"
            )
        if args.csv is not None and args.tracking_uri is not None:  # it would be ignored without a word
            raise ValueError(
                "--tracking-uri names an MLflow store, but --csv reads the points from a file and uses no "
                "store; give --csv FILE alone, or --tracking-uri URI (with --experiment NAME) alone"
            )
        # the flags named after AnalysisConfig fields set them
        opts = {f.name: getattr(args, f.name) for f in fields(AnalysisConfig) if hasattr(args, f.name)}
        opts.update(n_bootstrap=args.bootstrap, effective_data=args.effective_data or args.r_star is not None)
        opts |= {
            "average_seeds": not args.per_seed,
            "best_lr": not args.all_lrs,
            "train_seeds": args.train_seeds,
        }
        if args.csv is not None and args.data_axis == "images":  # a CSV's D is in its own units
            opts["data_units"] = "images or tokens (as in the CSV)"
        cfg = AnalysisConfig(**opts)
        _check_outputs(args.out, args.json)
        if args.csv is not None:
            points = load_csv(args.csv, flops_per_param_datum=args.flops_per_param_datum)
            source, uri = str(args.csv), None
        else:
            import mlflow

            uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
            check_tracking_server(uri, "start it, or pass --tracking-uri URI (or --csv FILE)")
            points, source = load_runs(exp, uri), f"MLflow experiment {exp!r} ({uri})"
        with fit_workers(args.workers):
            an = analyze(points, cfg)
            budgets = args.predict or [10.0 * float(an.points["C"].max())]  # default: the next budget up
            preds = [predict(an, c) for c in budgets]
            hold = None
            if args.holdout == "largest" or any(p.extrapolating for p in preds):
                try:
                    hold = holdout_largest(points, cfg)
                except ValueError as e:
                    if args.holdout == "largest":
                        raise
                    an.messages.append(f"holdout for the extrapolated budget not possible: {e}")
            if args.influence:
                an.influence = run_influence(points, budgets[0], cfg, holdout=args.holdout == "largest")
                # its refits have no bootstrap: say so where the fit's own status withholds N_opt
                an.influence.withheld = an.parametric is not None and not an.parametric.allocation_identified
        for p in preds:
            if hold is not None and p.extrapolating:
                p.holdout = hold.to_dict()
        try:
            # the points as loaded, unless they are the --csv being read (a refit of a report's own points)
            own = args.csv is not None and (args.out / POINTS_FILE).resolve() == args.csv.resolve()
            paths = write_report(an, args.out, preds, hold, source, points=None if own else points)
        except OSError as e:  # checked before the fit; a disk that filled up since, ...
            raise ValueError(f"cannot write the report ({e}); the fit was not saved") from None
        if args.json is not None:
            try:
                write_json(args.json, an, preds, hold)
            except OSError as e:
                raise ValueError(
                    f"cannot write --json {args.json} ({e}); the report is in {paths['report']}"
                ) from None
        if args.csv is None and not args.no_mlflow_log:
            from mlflow.exceptions import MlflowException

            try:
                run = log_to_mlflow(paths, exp, uri, results_dict(an, preds, hold))
            except (MlflowException, OSError, ValueError) as e:  # a locked or vanished store: the fit stands
                why = " ".join(str(e).split("[SQL:")[0].split())[:300]  # not the statement and its values
                log.warning(
                    "the analysis run was not logged to MLflow (%s: %s); the results below and the report "
                    "in %s are complete: rerun to log them, or pass --no-mlflow-log",
                    type(e).__name__,
                    why,
                    args.out,
                )
            else:
                print(f"analysis run: {run}")
    except BrokenPipeError:  # the analysis run's line above, printed into a pipe already closed
        return stdout_closed()
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _print_results(an, preds, hold, paths["report"])
    except BrokenPipeError:
        return stdout_closed()


def _print_results(an: Analysis, preds: list[Prediction], hold: HoldoutResult | None, report: Path) -> int:
    """The fit, the predictions and the status on stdout; returns the status's exit code."""
    if an.parametric is not None:
        print(an.parametric.summary())
    for p in preds:
        print(p.text())
    if hold is not None:
        print(hold.text())
    if an.influence is not None:
        print(an.influence.text())
    status = results_dict(an, preds, hold)["status"]
    print(f"status: {status}")
    if n_removed := len(an.removed):  # which and why: the report's table
        print(f'removed: {n_removed} point(s) left out of the fit (see "Removed points" in the report)')
    print(f"report: {report}")
    code = EXIT_CODES[status]
    if code:
        print(
            f"status {status}: exit code {code} (see the reasons above and docs/analysis.md)", file=sys.stderr
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
