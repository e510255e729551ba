"""Load scaling points into one tidy DataFrame, from MLflow run histories or from a CSV.

Columns of the tidy frame (one row per evaluation point):
  N (parameters), D (images or tokens seen), C (true training FLOPs), loss, fid (NaN if not logged),
  run_id, model (shape name), step, final (last point of its run), budget (planned FLOPs or NaN),
  forward_gflops (NaN if unknown), and, NaN / None when unknown: schedule (`optim.schedule`),
  patch_size, tokens_per_image ((model.input_size / model.patch_size)^2), N_non_embedding
  (`model.params_non_embedding`), unique (unique training images: the tag `data.unique_images`, the
  metric `data/unique_images`, or images seen / `data/epochs`; inf for an unbounded stream), status,
  and the token space: data_name (`data.name`), input_size, in_channels (`model.input_size`,
  `model.in_channels`: the model's input side and channels, pixels or latents).

`replicate` (`replicate_key`; CSV: optional) marks runs that are seeds of one cell, `lr` and `lr_group`
(`replicate_key` without `LR_PARAMS`; CSV: optional) runs of one cell at several learning rates.
How points are selected, averaged and put on the N and D axes: docs/analysis.md.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.laws import cluster_budgets
from dit_core.spec import model_label_of_params
from dit_core.tracking import (
    EPOCHS,
    ERROR_TAG,
    FEATURE_SPACE_TAG,
    FID_METRICS,
    IMAGES_SEEN,
    MODEL_FORWARD_GFLOPS,
    MODEL_PARAMS,
    MODEL_PARAMS_NON_EMBEDDING,
    OPTIM_LR_EFFECTIVE,
    SQLITE_MAGIC,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_TAG,
    TRAIN_FLOPS,
    UNBOUNDED,
    UNIQUE_IMAGES,
    UNIQUE_IMAGES_TAG,
    VAL_LOSS,
    check_sqlite_store,
)

log = logging.getLogger(__name__)

COLUMNS = ["N", "D", "C", "loss", "fid", "run_id", "model", "step", "final", "budget", "forward_gflops"]
TEXT_COLUMNS = ("schedule", "fid_protocol", "replicate", "lr_group", "data_name")
OPTIONAL_NUMBERS = ("patch_size", "tokens_per_image", "N_non_embedding", "unique", "fid_se", "lr", "lr_peak")
OPTIONAL_NUMBERS += ("input_size", "in_channels", "seed")
#: the optional columns: their value if unknown
OPTIONAL = dict.fromkeys(TEXT_COLUMNS) | dict.fromkeys(OPTIONAL_NUMBERS, np.nan)
#: the numeric columns: each cell a number, or empty where unknown (`numeric_columns`, one rule for all)
NUMERIC_COLUMNS = ("N", "D", "C", "loss", "fid", "budget", "forward_gflops", "step", *OPTIONAL_NUMBERS)
REQUIRED_NUMBERS = ("N", "D", "C", "loss")  # a number in every row (C only when the column is given)
#: the columns `validate_points` checks, and what each must hold
POSITIVE = dict.fromkeys(REQUIRED_NUMBERS, "a positive number in every row") | {
    "fid": "a finite number > 0 where given (leave the cell empty where not scored, e.g. for an inf FID)",
    "unique": "a number > 0 where given (inf: an unbounded stream; empty where unknown)",
}
FINAL_ONLY_SCHEDULES = ("cosine", "constant_cooldown")  # only the last point is a finished run
#: the params of a run's learning rate: `optim.lr` and the peak the trainer derives from it
LR_PARAMS = ("optim.lr", OPTIM_LR_EFFECTIVE)
FLOAT_MAX = np.finfo(float).max  # MLflow's stores write +-inf as +-FLOAT_MAX


def _at(rows: Sequence[int], lines: Sequence[int] | None) -> str:
    """Where rows are, for a message: their CSV lines when known ("line 5", "lines 5, 9"), else their
    row index ("row index [3, 7]")."""
    if lines is None:
        return f"row index {list(rows)}"
    return f"line{'s' if len(rows) > 1 else ''} {', '.join(str(lines[i]) for i in rows)}"


def _number(cell) -> float | None:
    """A cell as a float: NaN when missing (empty, spaces only, None, NaN); None when it is not a number.
    Text is read as Python's float() reads it, so "nan" and "inf" are numbers (each column's rule in
    `validate_points` says whether it accepts them)."""
    if isinstance(cell, str):
        cell = cell.strip()
        if not cell:
            return float("nan")
    elif cell is None or cell is pd.NA or cell is pd.NaT:
        return float("nan")
    if isinstance(cell, bool | np.bool_):
        return None  # True is no measurement, though float(True) is 1.0
    try:
        return float(cell)
    except (TypeError, ValueError):
        return None


def numeric_columns(
    df: pd.DataFrame, *, source: str = "input", lines: Sequence[int] | None = None
) -> pd.DataFrame:
    """`df` with each of its `NUMERIC_COLUMNS` as floats, by one rule for all of them: a missing cell
    (empty, None, NaN) stays missing (NaN); any other cell must be a number. ValueError naming the
    column, the row (the CSV line when `lines` maps row positions to lines) and the value of each cell
    that is not one ("12.3x", "n/a", "abc"): a typo is never read as "not measured"."""
    out, bad = df.copy(), []
    for col in [c for c in NUMERIC_COLUMNS if c in df.columns]:
        if pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col]):
            continue  # numbers already (NaN where missing)
        values = [_number(x) for x in df[col].to_numpy(object)]
        bad += [(col, i, df[col].iloc[i]) for i, v in enumerate(values) if v is None]
        out[col] = np.array([np.nan if v is None else v for v in values], float)
    if bad:
        bad.sort(key=lambda t: t[1])  # in the file's order
        shown = "; ".join(f"column {c}, {_at([i], lines)}: {str(x)!r}" for c, i, x in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        cols = {c for c, _, _ in bad}
        fix, required = [], [c for c in REQUIRED_NUMBERS if c in cols]
        if cols - set(REQUIRED_NUMBERS):
            fix.append(
                "write the number (e.g. 12.3 or 1e18), or leave the cell empty where the value was not "
                f"measured{' (an empty fid: not scored)' if 'fid' in cols else ''}"
            )
        if required:
            fix.append(
                f"{', '.join(required)} need{'s' if len(required) == 1 else ''} a number in every row: fix "
                "the value or delete the row"
            )
        raise ValueError(
            f"{source}: {len(bad)} cell(s) in numeric column(s) {sorted(cols)} are not numbers ({shown}"
            f"{more}); {'; '.join(fix)}"
        )
    return out


def validate_points(
    df: pd.DataFrame, *, source: str = "input", lines: Sequence[int] | None = None
) -> pd.DataFrame:
    """Check the required columns, that every numeric cell is a number or empty (`numeric_columns`) and
    positivity; raise ValueError naming the problem (rows by their CSV line when `lines` gives them).
    Returns `df` with its numeric columns as floats."""
    missing = [c for c in ("N", "D", "loss") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; need N (parameters), D (training images or tokens) "
            f"and loss (optional: C, fid). Columns found: {list(df.columns)}"
        )
    if len(df) == 0:
        raise ValueError(f"{source}: no rows")
    df = numeric_columns(df, source=source, lines=lines)
    for col, what in POSITIVE.items():
        if col not in df.columns:
            continue
        v = df[col].to_numpy(float)
        bad = ~((v > 0) & (np.isfinite(v) | (col == "unique")))  # unique may be inf (an unbounded stream)
        fix = "; fix or delete those rows (a NaN or inf loss is a diverged run: leave it out)"
        if col not in REQUIRED_NUMBERS:
            bad &= ~np.isnan(v)  # an empty cell: not measured
            fix = ""
        if bad.any():
            rows = [int(i) for i in np.flatnonzero(bad)[:5]]
            values = ", ".join(str(x) for x in df[col].to_numpy()[rows])
            raise ValueError(
                f"{source}: column {col} must be {what}; "
                f"{int(bad.sum())} row(s) are not (first at {_at(rows, lines)}: {values}){fix}"
            )
    df = _final_flags(df, source, lines)
    _refuse_duplicates(df, source, lines)
    _refuse_mixed_runs(df, source, lines)
    return df


_FLAGS = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}


def _final_flags(df: pd.DataFrame, source: str, lines: Sequence[int] | None = None) -> pd.DataFrame:
    """`df` with its `final` column (if any) as booleans: True / False, 1 / 0 (any case); ValueError
    naming the first other cells (an empty one, "yes", "no", ...), which `astype(bool)` read as True."""
    if "final" not in df.columns or df["final"].dtype == bool:
        return df
    flags = [_FLAGS.get(str(v).strip().lower()) for v in df["final"]]
    bad = [i for i, f in enumerate(flags) if f is None]
    if bad:
        cells = ", ".join("(empty)" if pd.isna(v) else repr(v) for v in df["final"].iloc[bad[:5]])
        raise ValueError(
            f"{source}: column final must be True or False (or 1 / 0) in every row; {len(bad)} row(s) are "
            f"not (first at {_at(bad[:5], lines)}: {cells}): write True for a run's last evaluation, False "
            "for the others, or leave the column out (then a run's largest step is its final point)"
        )
    return df.assign(final=np.array(flags, dtype=bool))


def _refuse_mixed_runs(df: pd.DataFrame, source: str, lines: Sequence[int] | None = None) -> None:
    """ValueError when one run_id has rows with different N or budget: a run trains one model at one
    budget, so such rows would be read as one training curve (and held out, bootstrapped and put on the
    frontier together), e.g. a run_id that names the model at every budget."""
    if "run_id" not in df.columns:
        return
    for col, what in (("N", "model sizes N"), ("budget", "budgets")):
        if col not in df.columns:
            continue
        rows = df[df["run_id"].notna() & df[col].notna()]
        counts = rows.groupby("run_id")[col].nunique()
        if (counts > 1).any():
            rid = counts.index[counts > 1][0]
            i = [int(j) for j in np.flatnonzero((df["run_id"] == rid).to_numpy())]
            values = ", ".join(f"{v:g}" for v in sorted(rows.loc[rows["run_id"] == rid, col].unique())[:5])
            raise ValueError(
                f"{source}: {int((counts > 1).sum())} run_id(s) have rows with different {what} (first: "
                f"run_id {rid!r} at {_at(i[:5], lines)}: {col} = {values}); a run trains one model at one "
                f"budget and its rows are its evaluations: give each model and budget its own run_id (e.g. "
                f"{rid}-<budget>)"
            )


def _refuse_duplicates(df: pd.DataFrame, source: str, lines: Sequence[int] | None = None) -> None:
    """ValueError when rows repeat an earlier row exactly, or a run's step (a file concatenated with
    itself would count every point twice as evidence)."""
    dup = df.duplicated()
    what = "repeat an earlier row exactly"
    if not dup.any() and {"run_id", "step"} <= set(df.columns):
        keyed = df["run_id"].notna() & df["step"].notna()
        dup = keyed & df.duplicated(subset=["run_id", "step"])
        what = "repeat an earlier row's (run_id, step)"
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = df.iloc[i]
        example = ", ".join(
            f"{c}={first[c]}" for c in ("run_id", "step", "N", "D", "loss") if c in df.columns
        )
        where = f"row index {i}" if lines is None else f"line {lines[i]}"
        raise ValueError(
            f"{source}: {int(dup.sum())} row(s) {what} (first at {where}: {example}); each point "
            "must appear once, or it counts twice as evidence: remove the duplicates (a file appended to "
            "itself?)"
        )


def tidy(df: pd.DataFrame, flops_per_param_datum: float | None = None) -> pd.DataFrame:
    """Fill optional columns (C = k N D, fid, run_id, model, ...) with defaults and order the columns."""
    df = df.copy()
    if "final" not in df.columns and {"step", "run_id"} <= set(df.columns) and df["step"].notna().all():
        df["final"] = df["step"] == df.groupby("run_id")["step"].transform("max")  # last point of each run
    if "C" not in df.columns:
        k = 6.0 if flops_per_param_datum is None else flops_per_param_datum
        log.info("no C column: using C = %g * N * D", k)
        df["C"] = k * df["N"] * df["D"]
    defaults = {"fid": np.nan, "run_id": None, "model": None, "step": np.nan, "final": True}
    defaults |= {"budget": np.nan, "forward_gflops": np.nan}
    for col, val in {**defaults, **OPTIONAL}.items():
        if col not in df.columns:
            df[col] = val
    if df["run_id"].isna().all():
        df["run_id"] = [f"row{i}" for i in range(len(df))]
    if df["model"].isna().all():  # with its patch size, as DiT-B/4 names it: patch 2 and 4 share one N
        patch = pd.to_numeric(df["patch_size"], errors="coerce")
        df["model"] = [f"N={n:.3g}" + (f"/{p:g}" if p > 0 else "") for n, p in zip(df["N"], patch)]
    for col in NUMERIC_COLUMNS:  # numbers or NaN already where `validate_points` checked them
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in TEXT_COLUMNS:  # a CSV column left empty reads as float NaN: text, none given
        if df[col].dtype.kind == "f":
            df[col] = df[col].astype(object)
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra].reset_index(drop=True)


def load_csv(path: str | os.PathLike, *, flops_per_param_datum: float | None = None) -> pd.DataFrame:
    """Read a CSV with columns N, D, loss (optional C, fid, run_id, model, step, schedule, patch_size,
    tokens_per_image, N_non_embedding, unique, ...) into the tidy frame.

    Without C, C = k N D with k = flops_per_param_datum (default 6, the LM convention).
    """
    if flops_per_param_datum is not None and not 0 < flops_per_param_datum < np.inf:
        raise ValueError(
            "flops_per_param_datum (--flops-per-param-datum) must be a positive number (C = k N D; 6 for "
            f"language models), got {flops_per_param_datum}"
        )
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"CSV {path} is a folder; give the CSV file of points")
    if not path.is_file():
        raise ValueError(f"CSV file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC:
        raise ValueError(
            f"{path} is an SQLite database, not a CSV; an MLflow store is read with "
            f"--tracking-uri sqlite:///{path} (and --experiment NAME)"
        )
    try:
        df = pd.read_csv(path)
        # the cells as written: pandas reads "n/a", "NA", "null", ... as missing, which in a numeric
        # column would turn a typo into "not measured"; only an empty cell is missing there
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path} cannot be read as a CSV of points ({type(e).__name__}: {e})") from None
    if len(raw) == len(df) and list(raw.columns) == list(df.columns):  # the same rows, as both reads are
        for col in [c for c in NUMERIC_COLUMNS if c in df.columns]:
            df[col] = raw[col].to_numpy(object)
    if flops_per_param_datum is not None and "C" in df.columns:  # it would be ignored without a word
        raise ValueError(
            f"{path} has a C column, so --flops-per-param-datum {flops_per_param_datum:g} (C = k N D for a "
            "CSV without C) would not be used; the allocation uses the median C / (N D) of the points: "
            "leave the flag out, or drop the C column to compute C from it"
        )
    df = validate_points(df, source=str(path), lines=_record_lines(path, len(df)))
    return tidy(df, flops_per_param_datum)


def _record_lines(path: Path, n_rows: int) -> list[int] | None:
    """The line on which each of a CSV's `n_rows` data rows starts (the header is the first record),
    skipping blank lines as pandas does; None when the file cannot be mapped (messages then give row
    indices)."""
    lines, end = [], 0
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            for record in reader:
                start, end = end + 1, reader.line_num
                if record and not (len(record) == 1 and not record[0].strip()):
                    lines.append(start)
    except csv.Error:
        return None
    return lines[1:] if len(lines) == n_rows + 1 else None


# ----------------------------------------------------------------------------------------------
# MLflow


def _history(client, run_id: str, key: str) -> pd.Series:
    """Metric history as a Series indexed by step (last value wins on duplicate steps)."""
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return pd.Series({m.step: m.value for m in hist}, dtype=float)  # steps ascending, as sorted


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _unique_images(client, rid: str, tags: dict, seen: pd.Series) -> float:
    """Unique training images of a run, as the trainer records them: the tag `UNIQUE_IMAGES_TAG` (a count,
    or "unbounded" -> inf), else the metric data/unique_images, else images seen / data/epochs (epochs
    0.0: an unbounded stream -> inf), else NaN (not recorded)."""
    tag = tags.get(UNIQUE_IMAGES_TAG)
    if tag == UNBOUNDED:
        return float("inf")
    if 0 < _float(tag) < np.inf:  # None or not a number: NaN
        return _float(tag)
    u = _history(client, rid, UNIQUE_IMAGES)
    if not u.empty and float(u.iloc[-1]) > 0:
        return float(u.iloc[-1])
    ep = _history(client, rid, EPOCHS)
    if not ep.empty and not seen.empty and float(seen.iloc[-1]) > 0:
        return float(seen.iloc[-1]) / float(ep.iloc[-1]) if float(ep.iloc[-1]) > 0 else float("inf")
    return float("nan")


def replicate_key(params: dict, without: tuple[str, ...] = ()) -> str:
    """A run's settings without its seed and bookkeeping (`seed`, `out`, `tracking.*`, `git.*`): runs that
    share the key are seeds of one cell (same model, budget, data, lr, evaluation), also when they were
    trained from different commits. ``without``: more params left out (``("optim.lr",)``: the cell at
    any learning rate)."""
    kept = sorted(
        (k, v)
        for k, v in params.items()
        if k not in ("seed", "out", *without) and not k.startswith(("tracking.", "git."))
    )
    return hashlib.sha1(repr(kept).encode()).hexdigest()[:12]


def csv_cell(points: pd.DataFrame) -> pd.Series:
    """A point's cell where the input names none (a CSV without `lr_group` / `replicate`): its model, N,
    budget and patch size. Without a `budget`, a run's budget is its cluster of final C
    (`cluster_budgets`: runs of one budget end a few steps apart)."""
    none = pd.Series(np.nan, index=points.index)  # a column a frame not `tidy`'d may lack
    budget = points.get("budget", none)
    if budget.isna().any():
        fin = points[points["final"].astype(bool)]
        budget = budget.where(
            budget.notna(), points["run_id"].map(cluster_budgets(fin["C"]).groupby(fin["run_id"]).first())
        )
    # str per value: NaN as "nan" (astype(str) keeps NaN, and a NaN key dropped every cell without a budget);
    # the patch size: patch 2 and 4 of one shape have about one N and are two cells
    cell = points["model"].map(str) + "|" + points["N"].map(str) + "|" + budget.map(str)
    return cell + "|" + points.get("patch_size", none).map(str)


def lr_groups(points: pd.DataFrame) -> pd.Series:
    """Each point's lr group: `lr_group`, else `csv_cell`."""
    return points["lr_group"].where(points["lr_group"].notna(), csv_cell(points))


def best_lr(
    points: pd.DataFrame, diverged: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """Cells trained at several learning rates (points alike but for `lr`: the same `lr_group`, by
    default model, N, budget and patch size) keep only the lr whose final point has the lowest loss (of equal
    losses, the smaller lr, whatever the rows' order): the fits then see each cell at its tuned lr, as
    in Kaplan et al. (2020) and Hoffmann et al. (2022). Run after `average_seeds`, so the lr is chosen
    on the seeds' mean; with the seeds kept apart (--per-seed, a CSV without `replicate`) an lr's loss is
    still the mean of its runs' final points, not the luckiest seed's (every seed of the lr kept is kept).
    The note says when the lrs of a cell have different numbers of seeds. ``diverged`` (`diverged_runs`:
    run_id, lr_group, lr of seeds left out for a NaN or inf loss): an lr with one ranks after every lr of
    its cell without one, whatever the mean of its surviving seeds (named in the note). Returns (kept,
    dropped: the final point of each lr left out, with a `reason`, note)."""
    if "lr" not in points.columns or points["lr"].nunique() < 2:
        return points, points.iloc[:0], None
    group = lr_groups(points)
    finals = points[points["final"].astype(bool)].assign(_g=group).dropna(subset=["lr"])
    finals = finals[finals.groupby("_g")["lr"].transform("nunique") > 1]
    if finals.empty:
        return points, points.iloc[:0], None
    seeds = finals["n_seeds"].fillna(1) if "n_seeds" in finals.columns else pd.Series(1, finals.index)
    means = (
        finals.assign(_s=seeds)
        .groupby(["_g", "lr"], as_index=False)
        .agg(loss=("loss", "mean"), k=("_s", "sum"))
    )
    means["bad"] = diverged_lrs(means["_g"], means["lr"], diverged)
    # of equal losses the smaller lr (the safer one), whatever the rows' order; an lr that diverged last
    best = means.sort_values(["bad", "loss", "lr"]).drop_duplicates("_g").set_index("_g")["lr"].sort_index()
    lost = group.isin(best.index) & (points["lr"] != group.map(best))
    dropped = points[lost & points["final"].astype(bool)].copy()
    lr_text = _lr_names(finals)
    dropped["reason"] = [f"lr {lr_text(g, lr)} lost to lr {lr_text(g, best[g])} in its cell" for lr, g in
                         zip(dropped["lr"], group[dropped.index])]  # fmt: skip
    span = finals.groupby("_g")["lr"].agg(["min", "max"])
    edge = [g for g in best.index if best[g] in (span.at[g, "min"], span.at[g, "max"])]
    first = finals.drop_duplicates("_g")
    name = {g: f"{m} at {c:.3g} FLOPs" for g, m, c in zip(first["_g"], first["model"], first["C"])}
    note = (
        f"{len(best)} cell(s) trained at several learning rates keep the lr with the lowest final loss "
        f"(--all-lrs keeps every lr): "
        + _first([f"{name[g]}: {lr_text(g, best[g])}" for g in best.index], 12)
    )
    if means["k"].max() > 1:
        note += "; each lr judged on the mean final loss over its seeds"
    k = means.groupby("_g")["k"].agg(["min", "max"])
    if len(uneven := k.index[k["min"] < k["max"]]):
        shown = [
            f"{name[g]}: "
            + ", ".join(f"lr {r.lr:.3g}: {r.k:.0f} seed(s)" for r in means[means["_g"] == g].itertuples())
            for g in uneven
        ]
        note += (
            f"; in {len(uneven)} cell(s) the lrs have different numbers of seeds (a seed failed, diverged or "
            f"is not finished), so an lr may win on the seeds that survived: {_first(shown, 5, '; ')}"
        )
    if edge:
        note += (
            f"; in {len(edge)} of them the best lr is the smallest or largest tried, so the optimum may lie "
            "beyond: add an lr past it"
        )
    if means["bad"].any():
        bad = means[means["bad"]]
        kept = bad["lr"].to_numpy() == bad["_g"].map(best).to_numpy()
        shown = [
            f"{name[g]}: lr {lr:.3g}" + (" (kept: every lr of the cell had one)" if k else "")
            for g, lr, k in zip(bad["_g"], bad["lr"], kept)
        ]
        note += (
            f"; {len(bad)} lr(s) had a seed that diverged (a NaN or inf loss, left out of the means), so "
            "each ranks after the lrs of its cell without one, however low its other seeds: "
            + _first(shown, 5, "; ")
        )
    return points[~lost], dropped, note


def _first(items: list[str], n: int, sep: str = ", ") -> str:
    """The first `n` of `items` joined by `sep`, and `sep` + "..." when there are more."""
    return sep.join(items[:n]) + (f"{sep}..." if len(items) > n else "")


def _lr_names(finals: pd.DataFrame):
    """``(lr group, lr) -> "0.03"``, or ``"0.03 (peak 0.014)"`` where the lr rules (`optim.lr_flops_ref`,
    `optim.lr_scaling`) made the run's peak another value (its `lr_peak`, `optim.lr_effective`)."""
    peaks = {}
    if "lr_peak" in finals.columns:
        peaks = finals.dropna(subset=["lr_peak"]).groupby(["_g", "lr"])["lr_peak"].first().to_dict()

    def name(g, lr: float) -> str:
        peak = peaks.get((g, lr))
        differs = peak is not None and not np.isclose(peak, lr, rtol=1e-6)
        return f"{lr:.3g}" + (f" (peak {peak:.3g})" if differs else "")

    return name


def diverged_lrs(group: pd.Series, lr: pd.Series, diverged: pd.DataFrame | None) -> np.ndarray:
    """(n,) bool: the (lr group, lr) pairs of which a seed diverged (``diverged``'s rows)."""
    if diverged is None or not len(diverged):
        return np.zeros(len(group), bool)
    pairs = set(zip(diverged["lr_group"].astype(str), diverged["lr"].astype(float)))
    return np.array([(str(g), float(x)) in pairs for g, x in zip(group, lr)], bool)


def diverged_runs(points: pd.DataFrame) -> pd.DataFrame | None:
    """The seeds `load_runs` left out because their training diverged (``attrs["diverged"]``: a failed
    run whose error says non-finite, or a finished one with a NaN or inf val/loss): run_id, lr_group, lr."""
    rows = points.attrs.get("diverged")
    return pd.DataFrame(rows, columns=["run_id", "lr_group", "lr"]) if rows else None


class LrRedraw:
    """The best-lr choice made again in each bootstrap resample (`__call__`: rng -> (n,) losses of the
    fitted points): in every cell trained at several lrs, each lr's seeds are resampled with replacement
    and the lr with the lowest mean final loss over them is chosen (`best_lr`'s rule: of equal means the
    smaller lr; an lr with a diverged seed last); the cell's points then take that lr's mean over ALL
    its seeds at their step (the full data's value when the choice stands). Points of other cells keep
    their loss. The resampled seeds make only the choice: the cell resampling (`bootstrap_points`)
    already carries the seed noise of a cell's mean through its residual, and a point given its
    resampled seeds' mean as well counted that noise again (a cell drawn c times adds c^2 times the
    seeds' variance: the slope's bootstrap variance was (1 + 2 (k-1)/k) times the OLS one; Davison &
    Hinkley 1997, sec. 3.8: resample the top stage, keep the lower stage as it is). So where the choice
    never flips the bootstrap is the plain cell bootstrap, bit for bit; the intervals widen only by the
    flips of the choice. With one seed per lr nothing varies.

    raw: the per-seed points (before `average_seeds`); fitted: the points the fits see, cells' seeds
    averaged (`run_id` 'a + b'); diverged: as for `best_lr`."""

    def __init__(self, raw: pd.DataFrame, fitted: pd.DataFrame, diverged: pd.DataFrame | None = None):
        raw = raw.assign(_g=lr_groups(raw), step=raw["step"].fillna(-1.0)).dropna(subset=["lr"])  # -1: none
        raw = raw[raw.groupby("_g")["lr"].transform("nunique") > 1]
        self.loss = fitted["loss"].to_numpy(float)
        of_run = raw.drop_duplicates("run_id").set_index("run_id")["_g"]
        first = fitted["run_id"].astype(str).str.split(" + ", regex=False).str[0]
        cell = first.map(of_run).to_numpy()
        fitted_lr, steps = fitted["lr"].to_numpy(float), fitted["step"].fillna(-1.0).to_numpy()
        self.cells = []  # (lrs (L,), diverged (L,), finals [(k_l,)], rows [(position, (L,) lr means)])
        for g, grp in raw.groupby("_g", sort=True):
            lrs = np.sort(grp["lr"].unique())
            by_lr = [grp[grp["lr"] == x] for x in lrs]
            runs = [sorted(b["run_id"].unique()) for b in by_lr]
            finals = [b[b["final"].astype(bool)].set_index("run_id").loc[r, "loss"].to_numpy(float)
                      for b, r in zip(by_lr, runs)]  # fmt: skip
            tables = [
                b.pivot_table(index="step", columns="run_id", values="loss")[r] for b, r in zip(by_lr, runs)
            ]
            rows = []
            for i in np.flatnonzero(cell == g):
                # each lr's mean over all its seeds at the point's step (NaN: a seed has no evaluation
                # there); the lr the point was fitted at keeps the fitted value, bit for bit
                means = np.array([t.loc[steps[i]].mean(skipna=False) if steps[i] in t.index else np.nan
                                  for t in tables])  # fmt: skip
                means[lrs == fitted_lr[i]] = self.loss[i]
                rows.append((int(i), means))
            if not rows:  # a cell the fits do not see (e.g. a holdout's held-out budget) draws nothing
                continue
            bad = diverged_lrs(pd.Series(g, index=range(len(lrs))), pd.Series(lrs), diverged)
            self.cells.append((lrs, bad, finals, rows))

    def __bool__(self) -> bool:
        return bool(self.cells)

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        out = self.loss.copy()
        for lrs, bad, finals, rows in self.cells:
            picks = [rng.integers(0, len(f), len(f)) for f in finals]
            keys = [(b, float(f[p].mean()), x) for b, f, p, x in zip(bad, finals, picks, lrs)]
            j = min(range(len(lrs)), key=keys.__getitem__)
            for i, means in rows:
                if np.isfinite(means[j]):  # else that lr has no evaluation at this point's step
                    out[i] = means[j]
        return out


def count_runs(run_ids: pd.Series) -> int:
    """How many runs points rest on: a cell's point averaged over its seeds joins their ids with ' + '
    (`average_seeds`), and each counts."""
    return len({r for ids in run_ids.astype(str) for r in ids.split(" + ")})


def select_seeds(points: pd.DataFrame, seeds: Sequence[int]) -> tuple[pd.DataFrame, str | None]:
    """Only the runs trained with one of ``seeds`` (a run's param `seed`; a CSV's column `seed`), and
    only their diverged seeds (``attrs["diverged"]``); ``seeds`` empty: every run. Returns (points,
    note or None). Raises ValueError when the points carry no seed, or no run has one of ``seeds``."""
    if not len(seeds):
        return points, None
    shown = ",".join(str(s) for s in seeds)
    have = pd.to_numeric(points["seed"], errors="coerce") if "seed" in points.columns else None
    known = sorted({int(s) for s in have.dropna()}) if have is not None else []
    if not known:
        raise ValueError(
            f"--train-seeds {shown}: the runs carry no training seed (an MLflow run's param seed, a CSV's "
            "column seed); leave the flag out to fit every run"
        )
    if absent := sorted(set(seeds) - set(known)):
        raise ValueError(
            f"--train-seeds {shown}: no run was trained with seed {', '.join(map(str, absent))}; the runs' "
            f"seeds are {', '.join(map(str, known))}"
        )
    keep = have.isin(list(seeds)).to_numpy()
    out = points[keep].copy()  # its attrs a deep copy of the points' (pandas)
    if div := out.attrs.get("diverged"):
        out.attrs["diverged"] = [r for r in div if r.get("seed") in seeds]
    n_all, n_kept = count_runs(points["run_id"]), count_runs(out["run_id"])
    note = (
        f"--train-seeds {shown}: {n_kept} of {n_all} runs, those trained with seed {shown} (the runs' "
        f"seeds: {', '.join(map(str, known))})"
    )
    return out, note


def seed_replicates(points: pd.DataFrame) -> pd.Series | None:
    """For a CSV with a seed column and no replicate column, each row's cell: its lr group (`best_lr`'s,
    by default `csv_cell`) at its lr; else None (the replicate column, or each run, is the cell)."""
    if "seed" in points.columns and points["replicate"].isna().all() and points["seed"].nunique() > 1:
        return lr_groups(points).map(str) + "|lr " + points["lr"].map(str)
    return None


def cell_key(points: pd.DataFrame) -> pd.Series:
    """Each row's cell, the runs that differ only in their seed: `seed_replicates`, else its replicate,
    else its own run."""
    derived = seed_replicates(points)
    if derived is not None:
        return derived
    return points["replicate"].where(points["replicate"].notna(), points["run_id"])


def _one_row_per_seed(g: pd.DataFrame, repeats: set[str]) -> pd.DataFrame:
    """``g`` (one cell's points at one step) with the runs of one seed averaged into one row (a seed
    trained twice is one seed, not two: the seeds' mean and ``n_seeds`` count it once); their ids go
    into ``repeats``. Rows without a seed are kept as they are."""
    if "seed" not in g.columns or g["seed"].isna().all() or not g["seed"].duplicated().any():
        return g
    rows = []
    for _, h in g.groupby(g["seed"].where(g["seed"].notna(), g["run_id"]), sort=False):
        if len(h) > 1:
            repeats.update(sorted(h["run_id"].astype(str))[1:])
        rows.append(_mean_row(h))
    return pd.DataFrame(rows)


def _mean_row(g: pd.DataFrame) -> pd.Series:
    """``g``'s rows as one: numbers averaged, the FID's standard error of the mean (NaN: one unknown),
    the run ids joined with ' + '."""
    row = g.iloc[0].copy()
    for col in g.columns:
        if col not in TEXT_COLUMNS and col not in ("run_id", "model", "final", "_k", "_s", "status"):
            row[col] = pd.to_numeric(g[col], errors="coerce").mean()
    row["fid_se"] = float(np.sqrt((g["fid_se"] ** 2).sum(min_count=len(g)))) / len(g)
    row["run_id"] = " + ".join(sorted(g["run_id"].astype(str)))
    return row


def average_seeds(points: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """One point per (replicate, step): the mean over the seeds of a cell (docs/analysis.md). `fid_se`
    is the standard error of the mean FID (NaN when a seed's is unknown); `run_id` joins the runs' ids
    with ' + '; `n_seeds` counts them. Returns (points, note or None)."""
    derived = None
    if (cells := seed_replicates(points)) is not None:
        points = points.assign(replicate=cells)
        derived = (
            "the seed column marks seeds: runs alike in model, N, budget, patch size (or lr_group) and lr "
            "are one cell (a replicate column sets the cells instead)"
        )
    pts = points.assign(_k=cell_key(points))
    n_runs = pts.groupby("_k")["run_id"].transform("nunique")
    if n_runs.max() < 2:
        return points, derived
    # the step that pairs seeds; without one, a run's only point, or else each row a point of its own
    # (a CSV without steps: the rows of runs with several are not paired, so their seeds are kept apart)
    alone = pts.groupby("run_id")["run_id"].transform("size") == 1
    own = pd.Series(-2.0 - np.arange(len(pts)), index=pts.index).where(~alone, -1.0)
    pts["_s"] = pd.to_numeric(pts["step"], errors="coerce").where(pts["step"].notna(), own)
    shared = pts.groupby(["_k", "_s"])["run_id"].transform("nunique") == n_runs
    apart = ~shared.groupby(pts["_k"]).transform("any")  # cells whose seeds share no step
    pts.loc[apart, "_k"] = pts.loc[apart, "run_id"]
    partial = ~shared & ~apart
    pts = pts[~partial]
    rows, repeats = [], set()
    for _, g in pts.groupby(["_k", "_s"], sort=False):
        g = _one_row_per_seed(g, repeats)
        row = _mean_row(g)
        row["n_seeds"] = len(g)
        if len(g) > 1:
            row["seed"] = np.nan  # a mean of seeds has none
        row["loss_seed_sd"] = g["loss"].std(ddof=1) / g["loss"].mean() if len(g) > 1 else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    cells = out.groupby("_k").agg(n=("n_seeds", "max"), model=("model", "first"), C=("C", "max"))
    out = out.drop(columns=["_k", "_s"]).reset_index(drop=True)
    many = out[out["n_seeds"] > 1]
    notes = [derived] if derived else []
    if len(many):
        worst = many.loc[many["loss_seed_sd"].idxmax()]
        notes.append(
            f"{len(many)} cell point(s) average the runs of a cell that differ only in their seed ("
            f"{int(many['n_seeds'].sum())} runs; --per-seed keeps them apart): the loss's sd between seeds "
            f"is {100 * many['loss_seed_sd'].median():.2g} % (median), "
            f"{100 * worst['loss_seed_sd']:.2g} % at most ({worst['model']}, {worst['C']:.3g} FLOPs)"
        )
    if cells["n"].nunique() > 1:  # a seed failed, diverged or is not finished: its cell averages fewer
        most = int(cells["n"].max())
        fewer = cells[cells["n"] < most].sort_values("C")
        notes.append(
            f"cells average different numbers of seeds: {int((cells['n'] == most).sum())} cell(s) {most}, "
            f"{len(fewer)} fewer ("
            + _first([f"{r.model} at {r.C:.3g} FLOPs: {r.n:.0f}" for r in fewer.itertuples()], 8)
            + "); the parametric law and the IsoFLOP fits weigh each cell by its seeds (a mean of k "
            "seeds has variance sigma^2 / k); the frontier, a minimum over cells, weighs none"
        )
    if repeats:
        notes.append(
            f"{len(repeats)} run(s) repeat a seed of their cell (the same cell and seed launched again, e.g. "
            f"under another sweep name): averaged with the run of that seed first, so that each seed counts "
            f"once: {', '.join(sorted(repeats)[:5])}"
        )
    if partial.any():
        notes.append(
            f"{int(partial.sum())} point(s) at steps that not every seed of their cell logged left out of "
            "the seeds' means"
        )
    if apart.any():
        runs = sorted(map(str, points.loc[apart, "run_id"].unique()))
        notes.append(
            f"{len(runs)} run(s) are seeds of a cell but share no evaluation step with its other seeds, so "
            f"they are not averaged (each is its own point): {', '.join(runs[:5])}"
        )
    return out, "; ".join(notes) or None


def fid_protocol(metric: str, params: dict, tags: dict | None = None) -> str:
    """How a run's FID was scored, from its ``eval.*`` params and its feature-space tag: e.g.
    ``"fid_photos, 1000 samples, ddim-50, cfg 1.0, features photos: photoscnn-...-w<digest>"``. FIDs
    compare only under one protocol: the sampler and its steps move the FID of one checkpoint by 50 % or
    more, and two trainings of the photo classifier by 13-37 % (docs/evaluation.md). Runs logged before
    the tag existed say ``features ?``: not pooled with runs that name theirs."""
    g = params.get
    space = (tags or {}).get(FEATURE_SPACE_TAG, "?")
    return (
        f"{metric.split('/')[-1]}, {g('eval.num_samples', '?')} samples, {g('eval.sampler', '?')}-"
        f"{g('eval.steps', '?')}, cfg {g('eval.cfg_scale', '?')}, features {space}"
    )


def one_fid_protocol(points: pd.DataFrame) -> tuple[pd.DataFrame, str | None, str | None]:
    """Points whose FIDs all share one protocol: FIDs under other protocols are blanked (NaN).

    Returns (points, the protocol kept or None, a note on what was left out or None). The protocol kept
    is the one with the most FID points (ties: the one used at the largest compute)."""
    has = points["fid"].notna() & points["fid_protocol"].notna()
    counts = points.loc[has, "fid_protocol"].value_counts()
    if len(counts) == 0:
        return points, None, None
    if len(counts) == 1:
        return points, str(counts.index[0]), None
    top = counts[counts == counts.max()].index
    at_max_c = points.loc[has & points["fid_protocol"].isin(top)].sort_values("C")["fid_protocol"].iloc[-1]
    out = points.copy()
    other = has & (out["fid_protocol"] != at_max_c)
    out.loc[other, ["fid", "fid_se"]] = np.nan
    left = "; ".join(f"{p}: {n}" for p, n in counts.items() if p != at_max_c)
    note = (
        f"FID: {int(other.sum())} point(s) scored under another protocol left out of the FID fits ({left}); "
        f"kept {int(counts[at_max_c])} scored with {at_max_c}. Rescore the others with "
        "`python -m dit_core.evaluate --checkpoint CELL` and the kept settings (docs/evaluation.md)"
    )
    return out, str(at_max_c), note


def _not_finite(values: np.ndarray) -> np.ndarray:
    """NaN, +-inf, or +-inf as MLflow stores it (+-FLOAT_MAX)."""
    return ~np.isfinite(values) | (np.abs(values) >= FLOAT_MAX)


def _shown(value: float) -> str:
    """A metric's value as the user would write it: MLflow's +-FLOAT_MAX is +-inf."""
    return f"{np.sign(value) * np.inf:g}" if np.isfinite(value) and abs(value) >= FLOAT_MAX else f"{value:g}"


def _bad_history(key: str, s: pd.Series) -> str | None:
    """Where a history that must be finite is not: val/loss > 0 at every step; compute and images seen
    >= 0, and > 0 after step 0 (the step-0 evaluation has no compute yet). None when it is fine."""
    v, steps = s.to_numpy(float), s.index.to_numpy(float)
    bad = _not_finite(v) | (v < 0)
    bad |= (v <= 0) if key == VAL_LOSS else ((v == 0) & (steps > 0))
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return f"{key} {_shown(v[i])} at step {steps[i]:.0f}"


def _run_points(client, run) -> tuple[pd.DataFrame, str | None, int]:
    """(points, why the run is left out or None, FID values logged but not usable). No points and
    no reason: it lacks val/loss, compute/train_flops or data/images_seen."""
    rid = run.info.run_id
    params = run.data.params
    loss = _history(client, rid, VAL_LOSS)
    if loss.empty:
        return pd.DataFrame(), None, 0
    comp = _history(client, rid, TRAIN_FLOPS)
    seen = _history(client, rid, IMAGES_SEEN)
    if comp.empty or seen.empty:
        log.warning("run %s has val/loss but no compute/train_flops or data/images_seen; skipped", rid)
        return pd.DataFrame(), None, 0
    for key, hist in ((VAL_LOSS, loss), (TRAIN_FLOPS, comp), (IMAGES_SEEN, seen)):
        if why := _bad_history(key, hist):  # a diverged training, or damaged accounting
            log.warning("run %s: %s; left out", rid, why)
            return pd.DataFrame(), why, 0
    steps = loss.index.to_numpy(float)
    # compute and data grow linearly in steps: interpolate where they were logged at other steps
    c, d = (np.interp(steps, h.index.to_numpy(float), h.to_numpy(float)) for h in (comp, seen))
    size, patch = _float(params.get("model.input_size")), _float(params.get("model.patch_size"))
    tpi = size / patch if size > 0 and patch > 0 else float("nan")
    fid = fid_se = pd.Series(np.nan, index=loss.index)
    protocol, n_bad_fid = None, 0
    for key in FID_METRICS:
        f = _history(client, rid, key)
        if not f.empty:
            fid = f.reindex(loss.index)
            v = fid.to_numpy(float)
            unusable = (_not_finite(v) | (v <= 0)) & ~np.isnan(v)
            n_bad_fid = int(unusable.sum()) + int(f.isna().sum())  # NaN logged: a diverged sample
            fid = fid.mask(unusable)  # inf or <= 0: not scored (NaN), said in the notes
            fid_se = _history(client, rid, f"{key}_se").reindex(loss.index)  # domain FIDs log one
            protocol = fid_protocol(key, params, run.data.tags)
            break
    df = pd.DataFrame(
        {
            "N": _float(params.get(MODEL_PARAMS)),
            "D": d,
            "C": c,
            "loss": loss.to_numpy(float),
            "fid": fid.to_numpy(float),
            **_lr_of(run),  # run_id, lr_group, lr, lr_peak
            "model": model_label_of_params(params) or "unknown",  # as the sweep's tables name it
            "step": steps,
            "final": False,
            "budget": _float(params.get("budget.train_flops")),
            "forward_gflops": _float(params.get(MODEL_FORWARD_GFLOPS)),
            "patch_size": patch,
            "data_name": params.get("data.name"),
            "input_size": size,
            "in_channels": _float(params.get("model.in_channels")),
            "schedule": params.get("optim.schedule"),
            "tokens_per_image": tpi**2,
            "N_non_embedding": _float(params.get(MODEL_PARAMS_NON_EMBEDDING)),
            "unique": _unique_images(client, rid, run.data.tags, seen),
            "fid_se": fid_se.to_numpy(float),
            "fid_protocol": protocol,
            "replicate": replicate_key(params),
            "status": run.data.tags.get(STATUS_TAG, run.info.status.lower()),
        }
    )
    df = df[(df["C"] > 0) & (df["D"] > 0)]  # the step-0 evaluation has no compute yet
    if len(df):
        df.loc[df.index[-1], "final"] = True
    return df, None, n_bad_fid


def _no_finished_runs(experiment: str, n_failed: int, unfinished: str) -> str:
    """The error for an experiment without a finished run: the runs it has instead, and what to do."""
    others = ", ".join(([f"{n_failed} failed"] if n_failed else []) + ([unfinished] if unfinished else []))
    todo = []
    if n_failed:
        todo.append(
            "`python sweeps/launch.py status` says why cells failed; relaunch the sweep to retry them"
        )
    if unfinished:
        todo.append("wait for the sweep to finish")
    return (
        f"MLflow experiment {experiment!r} has no finished runs (tag status=finished"
        f"{'; not finished: ' + others if others else ''}); "
        + ("; ".join(todo) if todo else "run `python sweeps/launch.py`")
    )


def load_runs(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Tidy points from the finished runs of an MLflow experiment. The runs left out (not finished,
    failed, damaged or diverged) are logged and said in ``attrs["notes"]``, which
    `analysis.pipeline.prepare` adds to the point-selection notes (docs/analysis.md, "Input"). Raises
    ValueError if the store (`check_sqlite_store`) or the experiment is missing, or the experiment has
    no finished run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()

    def missing(why: str) -> str:
        return (
            f"MLflow experiment {experiment!r} not found at {uri} ({why}); run `python sweeps/launch.py` "
            "first (or pass --experiment NAME / --tracking-uri URI, or --csv FILE)"
        )

    if not experiment:
        raise ValueError("the experiment name is empty; give --experiment NAME (a sweep's --name)")
    # read only: MLflow would create an empty store, or add its tables to another database, just to look
    check_sqlite_store(uri, missing=missing("no store file there, so no runs; none was created"))
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments(max_results=50))
        raise ValueError(missing(f"experiments there: {', '.join(names[:10])}" if names else "no experiment"))
    runs = client.search_runs([exp.experiment_id], max_results=50000)
    frames, n_finished, n_failed, unfinished, unusable, bad, n_bad_fid = [], 0, 0, {}, [], {}, {}
    settings: list[dict] = []  # the params of each run with points (`split_candidates`)
    diverged: list[dict] = []  # seeds whose training diverged: `best_lr` ranks their lr last
    for run in runs:
        tags = run.data.tags
        if tags.get("analysis", "").lower() == "true":
            continue
        status = tags.get(STATUS_TAG, run.info.status.lower()).lower()
        if status == STATUS_FAILED or run.info.status == "FAILED":
            log.info("skipping failed run %s", run.info.run_id)
            n_failed += 1
            if "non-finite" in tags.get(ERROR_TAG, ""):  # the trainer stopped at a NaN or inf loss
                diverged.append(_lr_of(run))
            continue
        if status != STATUS_FINISHED:  # still running, preempted, ...: its last point is not a finished run
            unfinished[status] = unfinished.get(status, 0) + 1
            continue
        n_finished += 1
        rid, n_text = run.info.run_id, run.data.params.get(MODEL_PARAMS)
        if n_text is None:
            log.warning("run %s has no model.params param; skipped", rid)
            unusable.append(rid)
            continue
        if not (0 < _float(n_text) < np.inf):
            bad[rid] = f"model.params {n_text!r} is not a positive number"
            log.warning("run %s: %s; left out", rid, bad[rid])
            continue
        points, why, n_bad_fid[rid] = _run_points(client, run)
        if why is not None:
            bad[rid] = why
            if why.startswith(VAL_LOSS):  # a NaN or inf loss: a diverged training
                diverged.append(_lr_of(run))
        elif not len(points):  # no val/loss, or no compute or data accounting (logged there)
            unusable.append(rid)
        frames.append(points)
        if len(points):
            settings.append(run.data.params)
    why = ", ".join(f"{n} {s}" for s, n in sorted(unfinished.items()))  # e.g. "2 running"
    if n_finished == 0:
        raise ValueError(_no_finished_runs(experiment, n_failed, why))
    frames = [f for f in frames if len(f)]
    if not frames:
        lost = f" ({len(bad)} left out for values that are not finite: {', '.join(sorted(bad.values())[:3])})"
        raise ValueError(
            f"MLflow experiment {experiment!r}: no run logged val/loss with compute and data"
            f"{lost if bad else ''}"
        )
    df = pd.concat(frames, ignore_index=True)
    validate_points(df, source=f"experiment {experiment!r}")
    df = tidy(df, None)
    notes = []
    if unfinished:
        notes.append(
            f"{sum(unfinished.values())} run(s) not finished left out ({why}): only finished runs are "
            "fitted; fit again when they finish"
        )
    if unusable:
        notes.append(
            f"{len(unusable)} finished run(s) left out for lack of val/loss, model.params, "
            f"compute/train_flops or data/images_seen: {', '.join(sorted(unusable)[:5])}"
        )
    if bad:
        shown = _first([f"{r} ({why})" for r, why in sorted(bad.items())], 10, "; ")
        notes.append(
            f"{len(bad)} finished run(s) left out for a value that is not a finite positive number (a NaN "
            f"or inf loss is a diverged training): {shown}"
        )
    if fid_runs := sorted(r for r, n in n_bad_fid.items() if n):
        notes.append(
            f"{sum(n_bad_fid.values())} FID value(s) that are NaN, inf or <= 0 treated as not scored (their "
            f"loss points are kept): {', '.join(fid_runs[:5])}"
        )
    for note in notes:
        log.warning("MLflow experiment %r: %s", experiment, note)
    if notes:
        df.attrs["notes"] = notes
    if diverged:
        df.attrs["diverged"] = diverged
    if candidates := split_candidates(settings):  # few or none: attrs are deep-copied with the frame
        df.attrs["settings"] = candidates
    return df


#: runs alike in these params look like one cell's seeds to `split_seeds`: model, budget and lr
_SAME_CELL = (MODEL_PARAMS, "model.patch_size", "budget.train_flops", "optim.lr", OPTIM_LR_EFFECTIVE)


def _alike(settings: Sequence[dict]) -> list[dict[str, list[dict]]]:
    """The runs' params grouped by `_SAME_CELL`, then by `replicate_key` within each group."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for params in settings:
        cell = tuple(params.get(k) for k in _SAME_CELL)
        groups.setdefault(cell, {}).setdefault(replicate_key(params), []).append(params)
    return list(groups.values())


def split_candidates(settings: Sequence[dict]) -> list[dict]:
    """The params of the runs `split_seeds` may name: those alike in model, budget and lr that fall into
    more than one cell (usually none, so the frame's attrs stay small)."""
    return [p for cells in _alike(settings) if len(cells) > 1 for runs in cells.values() for p in runs]


def split_seeds(settings: Sequence[dict], seeds: Sequence[int] = ()) -> str | None:
    """A note when runs that look like seeds of one cell are not averaged: runs alike in model, budget and
    lr, with no seed in common, whose other settings differ (e.g. one seed launched with FID, the others
    with ``--set eval.eval_every=0``), so `replicate_key` puts them in separate cells; each setting's
    values are named in the order of the cells' seeds. ``settings``: the runs' params (`load_runs`'
    ``attrs["settings"]``); ``seeds``: only those runs' (empty: all). None when there are none."""
    if len(seeds):
        settings = [p for p in settings if _float(p.get("seed")) in seeds]
    split = []
    for cells in _alike(settings):
        if len(cells) < 2:
            continue
        seed_sets = [{p.get("seed") for p in runs} for runs in cells.values()]
        if sum(map(len, seed_sets)) != len(set().union(*seed_sets)):  # a seed in two cells: a variant
            continue
        by_seed = sorted(cells.values(), key=lambda runs: min(_float(p.get("seed")) for p in runs))
        firsts = [runs[0] for runs in by_seed]
        keys = sorted({k for p in firsts for k in p} - {"seed", "out"})
        shown = [
            f"{k} " + " / ".join(str(p.get(k, "unset")) for p in firsts)
            for k in keys
            if k.split(".")[0] not in ("tracking", "git") and len({p.get(k) for p in firsts}) > 1
        ]
        flops = _float(firsts[0].get("budget.train_flops"))
        where = f"{model_label_of_params(firsts[0]) or 'unknown'} at {flops:.3g} FLOPs"
        split.append(f"{where} ({'; '.join(shown[:3])}{'; ...' if len(shown) > 3 else ''})")
    if not split:
        return None
    return (
        f"{len(split)} cell(s) have seeds that are not averaged because their other settings differ: "
        + _first(split, 4, "; ")
        + "; runs are one cell's seeds only when every setting but the seed agrees: launch every seed with "
        "the same --set, or fit a CSV with a replicate column"
    )


def _lr_of(run) -> dict:
    """A run's id, lr group, lr and training seed (`diverged_runs`' row, and `_run_points`' columns)."""
    params = run.data.params
    return {
        "run_id": run.info.run_id,
        "seed": _float(params.get("seed")),
        "lr_group": replicate_key(params, without=LR_PARAMS),
        "lr": _float(params.get("optim.lr")),
        "lr_peak": _float(params.get(OPTIM_LR_EFFECTIVE)),  # the peak the lr rules made of it
    }


# ----------------------------------------------------------------------------------------------
# which points, and what N and D mean


def select_points(points: pd.DataFrame, min_steps: int = 50, all_points: bool = False):
    """Keep the points valid for each run's lr schedule (`FINAL_ONLY_SCHEDULES`: the final point only;
    `all_points`: every point) and drop runs that ended below `min_steps` (docs/analysis.md). Returns
    (kept, dropped: one row per dropped run, its final point, with a `reason`, notes for the report)."""
    pts, notes = points, []
    last = pts.groupby("run_id")["step"].transform("max")
    short = last.notna() & (last < min_steps)
    is_final = pts["final"].astype(bool)
    dropped = pts[short & is_final].copy()
    dropped["reason"] = [
        f"cell ended at step {s:.0f} < --min-steps {min_steps}" for s in last[short & is_final]
    ]
    if short.any():
        notes.append(
            f"{dropped['run_id'].nunique()} run(s) dropped: fewer than --min-steps {min_steps} "
            "optimizer steps "
            f"({', '.join(f'{m} at {c:.3g} FLOPs' for m, c in zip(dropped['model'], dropped['C']))})"
        )
    pts = pts[~short]
    sched = pts["schedule"].fillna("unknown").astype(str)
    several = pts.groupby("run_id")["run_id"].transform("size") > 1
    if all_points:
        if several.any():
            notes.append("--all-points: every intermediate point of every run is used, whatever its schedule")
        return pts, dropped.reset_index(drop=True), notes
    final_only = sched.isin(FINAL_ONLY_SCHEDULES)
    mid = final_only & ~pts["final"].astype(bool)
    if mid.any():
        n_runs = pts.loc[final_only, "run_id"].nunique()
        notes.append(
            f"{n_runs} run(s) with a {'/'.join(sorted(set(sched[final_only])))} schedule: only the "
            f"final point of each is used ({int(mid.sum())} intermediate points left out: "
            "mid-schedule, not finished runs)"
        )
    for name, what in (("constant", "a constant lr"), ("unknown", "no logged optim.schedule")):
        m = (sched == name) & several
        if m.any():
            notes.append(
                f"{pts.loc[m, 'run_id'].nunique()} run(s) with {what}: every intermediate point is used as "
                "if it were a finished run (no cooldown: these points sit above a finished run's loss)"
            )
    return pts[~mid], dropped.reset_index(drop=True), notes


DATA_AXES = ("images", "tokens")
PARAM_AXES = ("total", "non_embedding")


def effective_data(d, unique, r_star: float) -> np.ndarray:
    """Muennighoff et al. 2023 (arXiv:2305.16264), effective data under repetition:
    D' = U + U R* (1 - exp(-R / R*)), U = min(unique, D), R = D / U - 1 (repetitions beyond the
    first epoch). D' = D without repetition; D' -> U (1 + R*) for many epochs. unique NaN or inf: D.
    -expm1 keeps 1 - exp(-x) accurate for small x = R / R* (1 - exp(-x) cancels to 0 below x ~ 1e-16).
    """
    d = np.asarray(d, float)
    u = np.asarray(unique, float)
    u = np.where(np.isfinite(u) & (u > 0), np.minimum(u, d), d)
    r = d / u - 1.0
    return u + u * r_star * -np.expm1(-r / r_star)


def _column_of_every_run(pts: pd.DataFrame, col: str, message: str) -> np.ndarray:
    """``pts[col]`` as floats; ValueError ``message`` (formatted with ``n`` and ``runs``, the first 5
    sorted run ids) when some rows' values are not finite and positive."""
    values = pts[col].to_numpy(float)
    bad = ~(np.isfinite(values) & (values > 0))
    if runs := sorted(map(str, pts.loc[bad, "run_id"].unique())):
        raise ValueError(message.format(n=len(runs), runs=runs[:5]))
    return values


def set_axes(points: pd.DataFrame, data_axis: str = "images", params: str = "total") -> pd.DataFrame:
    """N and D as asked: N total or non-embedding parameters, D images or tokens (images x tokens
    per image). Keeps the originals in N_total and images. ValueError names runs that lack a field."""
    if data_axis not in DATA_AXES:
        raise ValueError(f"--data-axis must be one of {DATA_AXES}, got {data_axis!r}")
    if params not in PARAM_AXES:
        raise ValueError(f"--params must be one of {PARAM_AXES}, got {params!r}")
    pts = points.copy()
    pts["N_total"], pts["images"] = pts["N"], pts["D"]
    if data_axis == "tokens":
        tpi = _column_of_every_run(
            pts,
            "tokens_per_image",
            "--data-axis tokens needs the tokens per image of every run (params model.input_size and "
            "model.patch_size, or a tokens_per_image CSV column); {n} run(s) lack it: {runs}. Use "
            "--data-axis images, or log those params",
        )
        pts["D"] = pts["D"] * tpi
        pts["unique"] = pts["unique"] * tpi
    if params == "non_embedding":
        pts["N"] = _column_of_every_run(
            pts,
            "N_non_embedding",
            "--params non_embedding reads the param model.params_non_embedding (CSV column "
            "N_non_embedding), which {n} run(s) do not have: {runs}. Rerun them with a trainer that logs "
            "it, or use --params total",
        )
    return pts
