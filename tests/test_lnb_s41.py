"""Session 41 (lnb): the dry run's bill fits the executor. A local CPU sweep is priced in wall time on
this machine's CPU (`sweeps.eta`'s work model at the demo's measured rates), not in H100 GPU-hours; a
GPU sweep, or one given --device or --mfu, keeps its GPU-hours (SLURM on CPU nodes: test_cost2_s41.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sweeps import launch as cli
from sweeps.grid import expand, load_spec
from sweeps.task import make_task


def _dry_run(argv: list[str], capsys, monkeypatch, tmp_path, cores: int = 2) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert cli.main([*argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def test_cpu_estimate_places_the_cells_longest_first_on_the_free_slots():
    """Work 3, 2, 2, 1 (x rate x threads) in `longest_first`'s order (budget, then steps) on 2 slots:
    3 | 2, then 2 at t=2 (ends 4), 1 at t=3 (ends 4): 4 s. On 1 slot, 8 s; with 2 threads, half."""
    from sweeps.eta import CELL_FLOPS, STEP_FLOPS, CpuEstimate

    spec = load_spec("demo")
    cells = [c for c in expand(spec) if c.cell_id in ("S-2-3e10", "B-2-3e10", "S-2-1e11", "XL-2-1e12")]
    base = {c.cell_id: c.train_flops + c.steps * STEP_FLOPS + CELL_FLOPS for c in cells}
    units = {"XL-2-1e12": 3.0, "S-2-1e11": 2.0, "S-2-3e10": 2.0, "B-2-3e10": 1.0}  # longest_first's order
    evals = tuple(units[c.cell_id] * 1e12 - base[c.cell_id] for c in cells)
    est = CpuEstimate(tuple(cells), evals, slots=2, threads=1)
    assert est.wall_s(1e12) == pytest.approx(4.0)
    assert CpuEstimate(tuple(cells), evals, slots=1, threads=1).wall_s(1e12) == pytest.approx(8.0)
    assert CpuEstimate(tuple(cells), evals, slots=2, threads=2).wall_s(1e12) == pytest.approx(2.0)


def test_the_demo_estimate_brackets_its_measured_wall_times():
    """The demo's cells at `CPU_RATES` (2 slots, 1 thread): within 6 % of the 417 s (session 28, an
    AVX-512 EPYC) and 846 s (session 48's launch on the AVX2 EPYC, the slowest 2-core host measured)."""
    from sweeps.eta import CPU_RATES, CpuEstimate, cell_work

    spec = load_spec("demo")
    cells = expand(spec)
    over = {c.cell_id: make_task(spec, c, Path("u"), "sqlite:///u.db").overrides for c in cells}
    from sweeps.cost import cell_eval_flops

    est = CpuEstimate(tuple(cells), tuple(cell_eval_flops(c, over[c.cell_id]) for c in cells), 2, 1)
    assert est.work == pytest.approx([cell_work(c, over[c.cell_id]) for c in cells], rel=1e-15)
    slow, fast = (est.wall_s(r) for r in sorted(CPU_RATES))
    assert slow == pytest.approx(846, rel=0.06) and fast == pytest.approx(417, rel=0.06)


def test_a_local_cpu_dry_run_prints_wall_time_on_this_cpu_not_gpu_hours(capsys, monkeypatch, tmp_path):
    """`launch.py --grid S,B,L,XL --dry-run` on the local executor printed "7.3e-06 GPU-hours on H100"
    for a sweep that runs ~7-11 minutes on 2 CPU cores."""
    out = _dry_run(["--grid", "S,B,L,XL", "--executor", "local"], capsys, monkeypatch, tmp_path)
    assert "GPU-hours on" not in out and "MFU" not in out
    from sweeps.eta import CPU_RATES

    m = re.search(
        r"estimate: ([\d.]+) to ([\d.]+) min wall on this machine's CPU \(2 cores\) for 14 cells", out
    )
    assert m, out
    lo, hi = float(m.group(1)), float(m.group(2))
    assert (
        6.0 < lo < 7.5
        and 13.0 < hi < 14.5
        and hi / lo == pytest.approx(max(CPU_RATES) / min(CPU_RATES), rel=0.02)
    )
    assert "2 at a time (--parallel), 1 thread each" in out and "--device" in out
    # the table: a minutes column per cell, no GPU-hours
    header = next(line for line in out.splitlines() if line.startswith("cell ") and "work" in line)
    assert re.split(r"\s{2,}", header) == [
        "cell",
        "steps",
        "images",
        "train FLOPs",
        "eval FLOPs",
        "work",
        "min",
    ]
    # more cores: more threads per cell, a shorter estimate
    out8 = _dry_run(["--grid", "S,B,L,XL", "--executor", "local"], capsys, monkeypatch, tmp_path, cores=8)
    assert "(8 cores) for 14 cells, 2 at a time (--parallel), 4 threads each" in out8


@pytest.mark.parametrize(
    "extra",
    [["--device", "A100"], ["--mfu", "0.3"], ["--gpus-per-node", "1"]],
)
def test_gpu_hours_when_the_sweep_has_gpus_or_a_device_is_named(capsys, monkeypatch, tmp_path, extra):
    out = _dry_run(
        ["--grid", "S", "--budgets", "1e11", "--executor", "local", *extra], capsys, monkeypatch, tmp_path
    )
    device = extra[1] if extra[0] == "--device" else "H100"
    assert f"GPU-hours on {device} for 1 cells" in out and "min wall on this machine's CPU" not in out
