"""The launcher's time-left estimate (`sweeps.eta`) against schedules worked out by hand, and its
progress line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.eta import CELL_FLOPS, STEP_FLOPS, cell_work, time_left
from sweeps.grid import expand, load_spec
from sweeps.task import make_task


def test_time_left_places_the_waiting_cells_on_the_slot_that_frees_first():
    # a (10 units) took 5 s: 2 units/s. b (20) has run 5 s: 10 left = 5 s. Two slots: c (10 = 5 s)
    # takes the idle slot (0 -> 5), then d (30 = 15 s) the first to free (5 -> 20).
    work = {"a": 10.0, "b": 20.0, "c": 10.0, "d": 30.0}
    frac, left = time_left(work, {"a": (0.0, 5.0), "b": (0.0, None)}, ["c", "d"], now=5.0, slots=2)
    assert left == pytest.approx(20.0)
    assert frac == pytest.approx(20 / 70)  # a's 10 and half of b's 20
    # one slot: b's 5 s, then c and d one after another
    assert time_left(work, {"a": (0.0, 5.0), "b": (0.0, None)}, ["c", "d"], 5.0, 1)[1] == pytest.approx(25)


def test_time_left_is_unknown_before_a_cell_ends_and_never_negative():
    work = {"a": 10.0, "b": 20.0}
    assert time_left(work, {"a": (0.0, None), "b": (0.0, None)}, [], now=3.0, slots=2) is None
    # b has run longer than its share of work says: nothing left of it, not a negative time
    frac, left = time_left(work, {"a": (0.0, 1.0), "b": (0.0, None)}, [], now=4.0, slots=2)
    assert (frac, left) == (1.0, 0.0)


def test_time_left_uses_each_cells_own_start_and_end():
    """Spans on the launcher's clock, not from 0: a (10 units) ran 100 -> 105 s, 2 units/s; b (20)
    started at 103 and has 20 - 2 x 2 = 16 units (8 s) left at 105; c (10, 5 s) takes the idle slot."""
    work = {"a": 10.0, "b": 20.0, "c": 10.0}
    frac, left = time_left(work, {"a": (100.0, 105.0), "b": (103.0, None)}, ["c"], now=105.0, slots=2)
    assert left == pytest.approx(8.0)
    assert frac == pytest.approx(1 - (16 + 10) / 40)
    # a cell that ended as it started (a cached result) gives no rate yet: unknown, not a crash
    assert time_left(work, {"a": (100.0, 100.0)}, ["b", "c"], now=101.0, slots=2) is None


def test_cell_work_adds_the_fixed_costs_to_the_flops():
    spec = load_spec("demo")
    cells = {c.cell_id: c for c in expand(spec)}
    s, xl = cells["S-2-1e12"], cells["XL-2-1e12"]
    for c in (s, xl):
        over = make_task(spec, c, Path("unused"), "sqlite:///unused.db").overrides
        # 1,000 DDIM-50 samples (no guidance) and 2,048 validation crops at step 0 and at the last step
        # (the runs log val/loss at both), at 2 x forward multiply-adds
        evals = (1000 * 50 + 2 * 2048) * 2e9 * c.forward_gflops
        assert cell_work(c, over) == pytest.approx(c.train_flops + evals + c.steps * STEP_FLOPS + CELL_FLOPS)


def test_progress_line_shows_the_time_left_and_a_log_gets_a_line_per_change(capsys):
    from sweeps.launch import _progress_printer
    from sweeps.runner import Progress

    show = _progress_printer()
    show(Progress(total=14, done=1, running=2, pending=11, elapsed_s=190.0, work_done=0.234, eta_s=601.0))
    show(Progress(total=14, done=1, running=2, pending=11, elapsed_s=192.0, work_done=0.24, eta_s=598.0))
    show(Progress(total=14, done=14, running=0, elapsed_s=800.0, work_done=1.0, eta_s=0.0))
    assert capsys.readouterr().err.splitlines() == [
        "[03:10] 1/14 done, 2 running, 0 failed, 11 waiting; 23% of the work, ~10:01 left",
        "[13:20] 14/14 done, 0 running, 0 failed",
    ]


def test_a_failed_cell_teaches_the_estimate_no_rate():
    """A cell that failed in 1 s would make the rate look huge and the time left ~0: it is left out."""
    from sweeps.runner import LaunchResult, Plan, Prepared, _Runner

    spec = load_spec("demo")
    prep = Prepared(spec, expand(spec), "local", "sqlite:///unused.db", Path("unused"))
    result = LaunchResult(prep, Plan())
    reports = []
    runner = _Runner(prep, None, result, {}, reports.append, 1.0, {})
    runner.work = {"a": 100.0, "b": 100.0, "c": 100.0}
    runner.t0 -= 10.0  # 10 s into the launch
    result.timings = {"a": (0.0, 1.0), "b": (0.0, 0.0)}
    result.errors = {"a": "injected failure"}
    runner._report({"b"}, [])
    assert reports[-1].failed == 1 and reports[-1].eta_s is None
    result.timings["c"] = (0.0, 5.0)  # c finished in 5 s: 20 units/s, so b (running 10 s) is done
    result.results["c"] = {}
    runner._report({"b"}, [])
    assert reports[-1].eta_s == 0.0 and reports[-1].work_done == pytest.approx(1.0)
