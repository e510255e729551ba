"""Plain-text tables for the CLI: the dry-run cell table and the status table."""

from __future__ import annotations

from collections.abc import Sequence

from dit_core.spec import model_label_of_params
from sweeps.grid import Cell, format_budget
from sweeps.state import CellState


def format_count(n: float) -> str:
    """1234 -> "1.23K", 2730968 -> "2.73M"."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}" if isinstance(n, float) and not float(n).is_integer() else str(int(n))


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others, two spaces between columns."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = []
    for r in [header, ["-" * w for w in widths], *rows]:
        cells = [str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cells_table(cells: Sequence[Cell]) -> str:
    """cell | model | shape | params | fwd GFLOPs | budget | steps | images (the dry run)."""
    header = ["cell", "model", "shape", "params", "fwd GFLOPs", "budget FLOPs", "steps", "images"]
    rows = [
        [
            c.cell_id,
            c.model_name,
            c.model.describe(),
            format_count(c.params),
            f"{c.forward_gflops:.4g}",
            format_budget(c.budget),
            str(c.steps),
            str(c.images),
        ]
        for c in cells
    ]
    return render(header, rows)


def result(s: CellState, value: float | None, step: int | None, fmt: str) -> str:
    """A cell's latest ``value`` of a metric as its result, or, where it was measured before the cell's
    last step or the cell is not finished, with that ``step``: "1.0123 (step 0)" (MLflow keeps the
    latest point, so a cell stopped before its next validation would show its step-0 loss)."""
    if value is None:
        return "-"
    final = step is None or (s.state == "finished" and step == s.step)
    return f"{value:{fmt}}" + ("" if final else f" (step {step})")


def status_table(
    states: Sequence[CellState], cells: dict[str, Cell], trunks: dict[str, str] | None = None
) -> str:
    """cell | model | state | step | train loss | val loss | FID | tries | job | run; val loss and FID
    carry their step unless measured at a finished cell's last step (`result`); tries are
    `CellState.tries`: submissions less those their launcher stopped (what --max-retries
    counts). ``trunks``: the step of a ladder cell with none of its own yet
    (`sweeps.ladder.trunk_progress`)."""
    header = ["cell", "model", "state", "step", "train loss", "val loss", "FID", "tries", "job", "run"]
    rows = []
    for s in states:
        c = cells.get(s.cell_id)
        step = "-" if s.step is None else str(s.step)
        if c is not None:
            step += f"/{c.steps}"
        if s.step is None and s.cell_id in (trunks or {}):
            step = trunks[s.cell_id]
        rows.append(
            [
                s.cell_id,
                c.model_name if c else (model_label_of_params(s.params) or "?"),  # as the analysis names it
                s.state + (f" (+{s.duplicates} dup)" if s.duplicates else ""),
                step,
                "-" if s.loss is None else f"{s.loss:.4f}",
                result(s, s.val_loss, s.val_step, ".4f"),
                result(s, s.fid, s.fid_step, ".2f"),
                str(s.tries),
                s.job_id or "-",
                (s.run_id or "-")[:8],
            ]
        )
    return render(header, rows)
