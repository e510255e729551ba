"""The CLI's plain-text tables (sweeps/table.py): counts, alignment, the dry run's and status's columns."""

from __future__ import annotations

import re

import pytest

from sweeps.families import Scale
from sweeps.grid import SweepSpec, expand, format_budget
from sweeps.state import CellState
from sweeps.table import cells_table, format_count, render, status_table


@pytest.mark.parametrize(
    "n, text",
    [(0, "0"), (999, "999"), (12.5, "12.5"), (1000, "1K"), (1234, "1.23K"), (2_730_968, "2.73M"),
     (5e9, "5G"), (1e12, "1T"), (-2500, "-2.5K"), (40.0, "40")],
)  # fmt: skip
def test_format_count(n, text):
    assert format_count(n) == text


def test_render_aligns_the_first_column_left_and_the_others_right():
    text = render(["cell", "n"], [["a", "1"], ["long-id", "100"]])
    assert text.splitlines() == ["cell       n", "-------  ---", "a          1", "long-id  100"]
    assert render(["x", "y"], [["abc", ""]]).splitlines()[-1] == "abc"  # trailing blanks stripped
    assert render(["model", "n"], [["a", "1"]]).splitlines() == ["model  n", "-----  -", "a      1"]


def _columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_cells_table_has_one_row_per_cell_with_its_numbers():
    spec = SweepSpec(
        families=["S", "XL"], patch_sizes=[2], budgets=[1e12, 3e11], batch_size=32, scale=Scale(8, 4)
    )
    cells = expand(spec)
    lines = cells_table(cells).splitlines()
    assert _columns(lines[0]) == [
        "cell",
        "model",
        "shape",
        "params",
        "fwd GFLOPs",
        "budget FLOPs",
        "steps",
        "images",
    ]
    assert len(lines) == 2 + len(cells)
    for line, c in zip(lines[2:], cells):
        assert _columns(line) == [
            c.cell_id, c.model_name, c.model.describe(), format_count(c.params), f"{c.forward_gflops:.4g}",
            format_budget(c.budget), str(c.steps), str(c.images),
        ]  # fmt: skip


def test_status_table_shows_progress_metrics_and_the_model_of_an_unknown_cell():
    spec = SweepSpec(families=["S"], patch_sizes=[2], budgets=[1e12], batch_size=32, scale=Scale(8, 4))
    (cell,) = expand(spec)
    states = [
        CellState(cell.cell_id, "running", run_id="0123456789abcdef", step=7, loss=0.12345, val_loss=0.5,
                  fid=12.345, attempts=2, job_id="41_0", duplicates=1),
        CellState("gone-cell", "finished", params={"model.depth": "4", "model.hidden_size": "64.0",
                                                   "model.num_heads": "4", "model.patch_size": "2"}),
        CellState("bare-cell", "pending"),
    ]  # fmt: skip
    lines = status_table(states, {cell.cell_id: cell}).splitlines()
    assert _columns(lines[0]) == [
        "cell", "model", "state", "step", "train loss", "val loss", "FID", "tries", "job", "run"
    ]  # fmt: skip
    assert _columns(lines[2]) == [
        cell.cell_id, cell.model_name, "running (+1 dup)", f"7/{cell.steps}", "0.1235", "0.5000", "12.35",
        "2", "41_0", "01234567",
    ]  # fmt: skip
    assert _columns(lines[3]) == ["gone-cell", "DiT-d4-w64/2", "finished", "-", "-", "-", "-", "0", "-", "-"]
    assert _columns(lines[4]) == ["bare-cell", "?", "pending", "-", "-", "-", "-", "0", "-", "-"]
