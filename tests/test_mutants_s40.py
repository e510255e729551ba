"""Session 40: tests that kill the surviving hand-placed mutants of the code of sessions 39 and 40
(`tests/hand_mutants.py`, docs/testing.md "Session 40"). Each test names, in its module's keyword, the
module it guards, because `hand_mutants.py` selects them with ``-k``: respace, cell_lock, SignalSync /
deferred, cancelled, best_lr / redraw, weigh."""

from __future__ import annotations

import logging
import signal
import threading

import numpy as np
import pandas as pd
import pytest

from dit_core.diffusion.respace import space_timesteps
from dit_core.trainer.signals import SIGNAL_SYNC_EVERY, SignalSync, signals_deferred

# ---------------------------------------------------------------- respace


@pytest.mark.parametrize("spec", [" ddim50 ", "\t250\n", " 10,5,1 "])
def test_respace_spec_text_is_read_without_its_surrounding_blanks(spec):
    """A spec string from YAML or a CLI flag may carry blanks around it: read as without them."""
    assert space_timesteps(1000, spec) == space_timesteps(1000, spec.strip())


# ---------------------------------------------------------------- signals: SignalSync, signals_deferred


def test_SignalSync_steps_too_fast_to_time_sync_at_the_step_bound_and_an_agreement_is_at_least_a_step():
    """A clock that does not move between agreements (steps faster than its resolution) gives the step
    bound, `every_steps`, not one step; an all-reduced interval of 0 still waits one step (the next
    agreement is never at the step that was just agreed on)."""
    sync = SignalSync(every_steps=7, every_s=1.0, clock=lambda: 5.0)
    sync.agree(0, sync.propose(0))
    assert sync.propose(3) == 7
    sync.agree(3, 0)
    assert (sync.interval, sync.next_step) == (1, 4)
    assert not sync.due(3) and sync.due(4)


def test_SignalSync_own_bounds_in_steps_and_seconds_are_used():
    """every_steps and every_s other than the defaults: 0.3 s steps fit 3 in 1 s; 0.01 s steps are
    capped at every_steps=5 (not `SIGNAL_SYNC_EVERY`)."""
    now = [0.0]
    sync = SignalSync(every_steps=5, every_s=1.0, clock=lambda: now[0])
    assert SIGNAL_SYNC_EVERY != 5
    sync.agree(0, 1)
    now[0] += 0.3
    assert sync.propose(1) == 3
    sync.agree(1, 3)
    now[0] += 0.03
    assert sync.propose(4) == 5


@pytest.fixture
def usr_handlers():
    """SIGUSR1 and SIGUSR2 each with a Python handler recording what reached it; restored after."""
    seen: list[int] = []
    handler = lambda signum, _frame: seen.append(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        yield seen, handler
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_signals_deferred_holds_each_signal_until_the_block_ends_then_delivers_it_once(usr_handlers, caplog):
    """Inside the block a signal reaches nobody but the yielded list (one entry per arrival); at its end
    the handlers there were are back and each signal that came is delivered once, to them, with a warning
    that names it and ``during``."""
    seen, handler = usr_handlers
    level = caplog.at_level(logging.WARNING, logger="dit_core.trainer.signals")
    with level, signals_deferred(signal.SIGUSR1, signal.SIGUSR2, during="ending the run") as held:
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGUSR1)
        assert seen == [] and held == [signal.SIGUSR2, signal.SIGUSR2, signal.SIGUSR1]
    assert seen == [signal.SIGUSR2, signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) is handler and signal.getsignal(signal.SIGUSR2) is handler
    assert [r.getMessage() for r in caplog.records] == [
        "received SIGUSR2 while ending the run; acting on it now",
        "received SIGUSR1 while ending the run; acting on it now",
    ]


def test_signals_deferred_without_a_signal_or_a_during_delivers_nothing_and_warns_nothing(
    usr_handlers, caplog
):
    seen, handler = usr_handlers
    with caplog.at_level(logging.WARNING, logger="dit_core.trainer.signals"):
        with signals_deferred(signal.SIGUSR1) as held:
            assert held == []
        assert seen == []
        with signals_deferred(signal.SIGUSR1):
            signal.raise_signal(signal.SIGUSR1)
    assert seen == [signal.SIGUSR1] and caplog.records == []  # no `during`: delivered, no warning
    assert signal.getsignal(signal.SIGUSR1) is handler


def test_signals_deferred_off_the_main_thread_changes_no_handler(usr_handlers):
    """Python runs handlers in the main thread only (and refuses to install them elsewhere): off it the
    block is a no-op that yields an empty list."""
    _, handler = usr_handlers
    out: list = []

    def body():
        with signals_deferred(signal.SIGUSR1, during="x") as held:
            out.append((list(held), signal.getsignal(signal.SIGUSR1)))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert out == [([], handler)]


# ---------------------------------------------------------------- sweeps/state.py: the cancelled-jobs note


@pytest.mark.parametrize("text", ["[1, 2]", '"7a"', "3", "null"])
def test_cancelled_jobs_note_that_is_json_but_not_an_object_counts_nothing(tmp_path, text):
    from sweeps.state import CANCELLED_FILE, cancelled_jobs

    (tmp_path / CANCELLED_FILE).write_text(text)
    assert cancelled_jobs(tmp_path) == {}


def test_cancelled_note_of_a_job_noted_again_holds_the_latest_count(tmp_path):
    """A local job's id is its pid, which a later launch's job of the same cell may get again before a
    record clears the note: the later note's count replaces the earlier one, other jobs' stay."""
    from sweeps.state import cancelled_jobs, note_cancelled

    note_cancelled(tmp_path, "7", 1)
    note_cancelled(tmp_path, "8", 2)
    note_cancelled(tmp_path, "7", 3)
    assert cancelled_jobs(tmp_path) == {"7": 3, "8": 2}


def test_cancelled_forget_without_a_note_is_quiet(tmp_path):
    """`forget_cancelled` runs after every record, most of them of cells with no note."""
    from sweeps.state import cancelled_jobs, forget_cancelled

    forget_cancelled(tmp_path)
    assert cancelled_jobs(tmp_path) == {}


def test_cancelled_note_and_the_interrupts_tag_count_one_cancel_once(tmp_path_factory):
    """A cell whose record carries interrupts 1 (an earlier Ctrl-C) and whose recorded job the launcher
    then noted as cancelled with interrupts 2 (the count including that earlier one) has interrupts 2,
    not 1 + 2: the note holds the cell's count, not an increment. Tries = attempts - interrupts, never
    below 0."""
    from _sweep_specs import migrated_store

    from sweeps.executor import JobRef
    from sweeps.state import (
        CellState,
        Submission,
        create_cell_runs,
        note_cancelled,
        read_states,
        record_submissions,
    )

    uri = migrated_store(tmp_path_factory, "cancelled-once")
    d = tmp_path_factory.mktemp("cell")
    ids = create_cell_runs(uri, "once", "s", {"a": "ha"})
    record_submissions(uri, [Submission(ids["a"], JobRef("local", "9", "", str(d)), 3, "h", True, 1)])
    assert read_states(uri, "once", "s", {"a": str(d)})["a"].interrupts == 1
    note_cancelled(d, "9", 2)
    st = read_states(uri, "once", "s", {"a": str(d)})["a"]
    assert (st.attempts, st.interrupts, st.tries) == (3, 2, 1)
    assert CellState("a", "failed", attempts=1, interrupts=2).tries == 0


# ---------------------------------------------------------------- sweeps/lock.py: the cell lock's wait


def _job_shell(run_dir, env=None):
    """A local job's shell: the cell-lock lines, then "locked"; returns the Popen."""
    import os
    import subprocess

    from sweeps.lock import cell_job_lock_lines

    return subprocess.Popen(" && ".join([*cell_job_lock_lines(run_dir), "echo locked"]), shell=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip


def test_cell_lock_a_job_shell_waits_out_a_check_that_holds_the_lock_for_seconds(tmp_path):
    """A `status` check (a shared lock) holding the cell's lock for 1.5 s: the job's shell waits, then
    takes the lock, and starts (it fails only after `CELL_LOCK_WAIT_S`, 10 s, of a live holder)."""
    import fcntl
    import os
    import time

    from sweeps.lock import CELL_LOCK

    holder = os.open(tmp_path / CELL_LOCK, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_SH)
    t0 = time.monotonic()
    threading.Timer(1.5, os.close, (holder,)).start()
    job = _job_shell(tmp_path)
    out, err = job.communicate(timeout=60)
    assert (job.returncode, out.strip()) == (0, "locked"), err
    assert time.monotonic() - t0 >= 1.5


def test_cell_lock_a_job_shell_waits_the_seconds_its_lines_name(tmp_path, monkeypatch):
    """The wait is the launcher's `CELL_LOCK_WAIT_S`, passed in the shell's lines, not the script's own
    default: at 0.3 s a job whose cell a live job holds fails in well under the default 10 s."""
    import fcntl
    import os
    import time

    import sweeps.lock
    from sweeps.lock import CELL_LOCK

    monkeypatch.setattr(sweeps.lock, "CELL_LOCK_WAIT_S", 0.3)
    holder = os.open(tmp_path / CELL_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        t0 = time.monotonic()
        job = _job_shell(tmp_path)
        out, err = job.communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        os.close(holder)
    assert job.returncode != 0 and "another job of this cell is alive" in err and "locked" not in out
    assert 0.3 <= waited < 5.0, waited


def test_cell_lock_a_job_shell_ignores_the_users_pythonpath(tmp_path):
    """The lock step runs before `sweeps` can be imported, as a stdlib-only script in isolated mode: a
    PYTHONPATH folder whose module shadows the standard library's does not reach it."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "shlex.py").write_text("raise ImportError('the PYTHONPATH copy of shlex was imported')\n")
    (tmp_path / "cell").mkdir()
    job = _job_shell(tmp_path / "cell", env={"PYTHONPATH": str(shadow)})
    out, err = job.communicate(timeout=60)
    assert (job.returncode, out.strip()) == (0, "locked"), err


def test_cell_lock_held_is_false_while_only_another_check_holds_it(tmp_path):
    """Two liveness checks at once (a `status` and a relaunch): neither takes the other for a live job."""
    import fcntl
    import os

    from sweeps.lock import CELL_LOCK, cell_lock_held

    holder = os.open(tmp_path / CELL_LOCK, os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)
        assert not cell_lock_held(tmp_path)
    finally:
        os.close(holder)


# ---------------------------------------------------------------- analysis/parametric.py: weighted points


def _weighted_case(e: float | None = None, heavy: bool = False):
    """`sweep()`'s 15 points (or, with ``e``, its law with E = e), point 7 moved 8 % off it and given
    weight 1, the others weight 4 (``heavy``: point 7 weight 4, the others 1); and the same points each
    given k times, the reference."""
    from _fit_helpers import sweep

    pts = sweep()
    n, d, loss = (pts[c].to_numpy(float) for c in ("N", "D", "loss"))
    if e is not None:
        from _fit_helpers import LAW

        loss = loss - LAW["E"] + e
    odd = np.arange(len(loss)) == 7
    loss = loss * np.where(odd, 1.08, 1.0)
    k = np.where(odd != heavy, 1.0, 4.0)
    rep = np.repeat(np.arange(len(loss)), k.astype(int))
    return (n, d, loss, k), (n[rep], d[rep], loss[rep], rep)


def test_weigh_point_weights_are_scaled_to_mean_one_and_checked():
    from analysis.parametric import point_weights

    np.testing.assert_array_equal(point_weights([1, 3], 2), [0.5, 1.5])
    np.testing.assert_array_equal(point_weights(np.array([[2.0], [2.0], [8.0]]), 3), [0.5, 0.5, 2.0])
    assert point_weights(None, 4) is None and point_weights([3, 3, 3], 3) is None
    for bad in ([1, 2], [1, 2, 3, 4], [1, 0, 2], [1, -1, 2], [1, np.nan, 2], [1, np.inf, 2]):
        with pytest.raises(ValueError, match=r"^weights must be 3 finite numbers > 0 \(one per point\)"):
            point_weights(bad, 3)


def test_weigh_objective_and_its_gradient_are_the_weighted_huber_sum():
    """`objective(w=)` against its definition: sum_i w_i huber(delta, log L_pred - log L_i), and its
    gradient against central differences; `grid_objective` gives the same values for many thetas."""
    from _fit_helpers import LAW
    from scipy.special import huber

    from analysis.parametric import grid_objective, objective, parametric_loss

    (n, d, loss, k), _ = _weighted_case()
    w = k / k.mean()
    ln, ld, ll = np.log(n), np.log(d), np.log(loss)
    delta = 0.01
    e, a, b = np.log([LAW["E"], LAW["A"], LAW["B"]])
    thetas = np.array([[e + s, a, b - s, LAW["alpha"], LAW["beta"]] for s in (-0.1, 0.0, 0.05)])
    for theta in thetas:
        params = dict(zip(("E", "A", "B"), np.exp(theta[:3]))) | {"alpha": theta[3], "beta": theta[4]}
        want = float(np.sum(w * huber(delta, np.log(parametric_loss(params, n, d)) - ll)))
        val, grad = objective(theta, ln, ld, ll, delta, w=w)
        assert val == pytest.approx(want, rel=1e-12)
        h = 1e-6
        f = lambda t: objective(t, ln, ld, ll, delta, w=w)[0]  # noqa: E731
        num = [(f(theta + h * u) - f(theta - h * u)) / (2 * h) for u in np.eye(5)]
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        grid_objective(thetas, ln, ld, ll, delta, w),
        [objective(t, ln, ld, ll, delta, w=w)[0] for t in thetas],
        rtol=1e-12,
    )


def test_weigh_starts_equal_those_of_the_points_given_k_times():
    """The grid's best starts and the variable-projection (NNLS) starts of weights k are those of the
    points replicated k times: a weighted least-squares row is a row given k times."""
    from analysis.parametric import ParametricConfig, _grid_starts, point_weights

    (n, d, loss, k), (rn, rd, rl, _) = _weighted_case()
    cfg = ParametricConfig()
    weighted = _grid_starts(np.log(n), np.log(d), np.log(loss), cfg, point_weights(k, len(k)))
    replicated = _grid_starts(np.log(rn), np.log(rd), np.log(rl), cfg)
    assert len(weighted) == len(replicated) == cfg.n_starts + cfg.n_varpro_starts
    np.testing.assert_allclose(np.array(weighted), np.array(replicated), rtol=1e-9, atol=1e-12)


def test_weigh_a_law_without_E_fits_as_the_points_given_k_times():
    """With E = 0 the fit holds E at 0 and bounds it by its profile: both weighted, like the points given
    k times (the objective is then n / sum(k) times theirs, being scaled to weights of mean 1)."""
    from analysis.parametric import ParametricConfig, e_upper_bound, fit_parametric

    (n, d, loss, k), (rn, rd, rl, _) = _weighted_case(e=0.0, heavy=True)
    cfg = ParametricConfig(delta=1.0)
    weighted = fit_parametric(n, d, loss, cfg, weights=k)
    reference = fit_parametric(rn, rd, rl, cfg)
    assert weighted.e_at_floor and reference.e_at_floor
    for p in ("A", "B", "alpha", "beta"):
        assert weighted.params[p] == pytest.approx(reference.params[p], rel=1e-4), p
    # the bound counts the fit's own points (n ln(f(E) / f0) <= threshold): 15 here, not 57
    assert weighted.e_upper == pytest.approx(
        e_upper_bound(reference.e_profile, reference.objective, len(n), cfg.profile_threshold, loss.min()),
        rel=1e-3,
    )
    assert weighted.objective == pytest.approx(reference.objective * len(n) / k.sum(), rel=1e-4)
    for (e1, f1), (e2, f2) in zip(weighted.e_profile, reference.e_profile):
        assert e1 == pytest.approx(e2) and f1 == pytest.approx(f2 * len(n) / k.sum(), rel=1e-3)


def test_weigh_a_point_weighing_most_fits_as_given_k_times_polish_included():
    """The outlier weighs 4, the others 1: the weighted objective at its optimum is above the unweighted
    one, so a polish run on the wrong objective would be taken; it is not."""
    from analysis.parametric import ParametricConfig, fit_parametric

    (n, d, loss, k), (rn, rd, rl, _) = _weighted_case(heavy=True)
    cfg = ParametricConfig(delta=1.0)
    weighted, reference = fit_parametric(n, d, loss, cfg, weights=k), fit_parametric(rn, rd, rl, cfg)
    for p in ("E", "A", "B", "alpha", "beta"):
        assert weighted.params[p] == pytest.approx(reference.params[p], rel=1e-4), p


def test_weigh_each_bootstrap_refit_is_that_of_its_drawn_points_given_k_times():
    """A resample of weighted points draws points with their weights; the reference resamples whole
    groups of the replicated points (each group: one point's k copies) with the same seed, which draws
    the same indices: every refit agrees."""
    from analysis.parametric import ParametricConfig, fit_parametric

    (n, d, loss, k), (rn, rd, rl, rep) = _weighted_case()
    cfg = ParametricConfig(delta=1.0)
    weighted = fit_parametric(n, d, loss, cfg, weights=k, n_bootstrap=6, seed=3)
    reference = fit_parametric(rn, rd, rl, cfg, n_bootstrap=6, seed=3, groups=rep)
    plain = fit_parametric(n, d, loss, cfg, n_bootstrap=6, seed=3)
    assert weighted.bootstrap.n_ok == reference.bootstrap.n_ok == 6
    for p in ("alpha", "beta", "a"):
        np.testing.assert_allclose(weighted.bootstrap.samples[p], reference.bootstrap.samples[p], rtol=2e-3)
        assert not np.allclose(plain.bootstrap.samples[p], reference.bootstrap.samples[p], rtol=2e-3), p


# ---------------------------------------------------------------- analysis/runs.py: best_lr, LrRedraw


def _lr_frame(rows: list[tuple]) -> pd.DataFrame:
    """Final points of runs: (lr_group, lr, loss, run_id[, n_seeds]); a cell's N and C from its group."""
    from analysis.runs import tidy

    out = []
    for g, lr, loss, rid, *k in rows:
        i = int(g[1:])
        row = {"model": f"m{i}", "N": 1e6 * i, "D": 1e7, "C": 6e13 * i, "loss": loss, "run_id": rid,
               "step": 100.0, "lr": lr, "lr_group": g}  # fmt: skip
        if k:
            row["n_seeds"] = k[0]
        out.append(row)
    return tidy(pd.DataFrame(out)).assign(final=True)


def test_best_lr_counts_only_cells_with_several_lrs_and_flags_only_an_edge_best():
    """Cell g1 at three lrs, best in the middle; cell g2 at one lr: one cell chose, none at an edge, g2's
    point kept as it is."""
    from analysis.runs import best_lr

    pts = _lr_frame(
        [("g1", 1e-3, 1.0, "a"), ("g1", 2e-3, 0.9, "b"), ("g1", 4e-3, 1.1, "c"), ("g2", 1e-3, 2.0, "d")]
    )
    kept, dropped, note = best_lr(pts)
    assert sorted(kept["run_id"]) == ["b", "d"] and sorted(dropped["run_id"]) == ["a", "c"]
    assert note.startswith(
        "1 cell(s) trained at several learning rates keep the lr with the lowest final loss"
    )
    assert "m1 at 6e+13 FLOPs: 0.002" in note and "m2" not in note and "smallest or largest" not in note
    _, _, note = best_lr(_lr_frame([("g1", 1e-3, 1.0, "a"), ("g1", 2e-3, 0.9, "b")]))
    assert "in 1 of them the best lr is the smallest or largest tried" in note  # the largest


@pytest.mark.parametrize("order", [1, -1])
def test_best_lr_of_equal_losses_keeps_the_smaller_lr_whatever_the_rows_order(order):
    from analysis.runs import best_lr

    rows = [("g1", 1e-3, 1.0, "a"), ("g1", 3e-3, 1.0, "b"), ("g1", 1e-2, 1.2, "c")][::order]
    kept, _, _ = best_lr(_lr_frame(rows))
    assert kept["run_id"].tolist() == ["a"]


def test_best_lr_notes_how_many_seeds_each_lr_was_judged_on():
    """Cell means over 2 seeds at each lr: judged on the means, no uneven-seeds note. Per-seed runs (3 at
    lr 1e-3, 2 at 3e-3; no `n_seeds`) or a point without `n_seeds` (one run): the lrs' seed counts differ
    and are named."""
    from analysis.runs import best_lr

    _, _, note = best_lr(_lr_frame([("g1", 1e-3, 1.0, "a + a2", 2), ("g1", 3e-3, 1.1, "b + b2", 2)]))
    assert (
        "; each lr judged on the mean final loss over its seeds" in note and "different numbers" not in note
    )
    per_seed = [("g1", 1e-3, v, f"a{i}") for i, v in enumerate((1.0, 1.1, 1.2))] + [
        ("g1", 3e-3, v, f"b{i}") for i, v in enumerate((1.0, 1.3))
    ]
    kept, _, note = best_lr(_lr_frame(per_seed))
    assert set(kept["lr"]) == {1e-3}  # mean 1.1 against 1.15, though b0 ties the best seed
    assert "in 1 cell(s) the lrs have different numbers of seeds" in note
    assert "m1 at 6e+13 FLOPs: lr 0.001: 3 seed(s), lr 0.003: 2 seed(s)" in note
    _, _, note = best_lr(_lr_frame([("g1", 1e-3, 1.0, "a + a2", 2), ("g1", 3e-3, 1.1, "b", np.nan)]))
    assert "lr 0.001: 2 seed(s), lr 0.003: 1 seed(s)" in note


def test_best_lr_names_a_diverged_lr_kept_because_every_lr_of_its_cell_diverged():
    from analysis.runs import best_lr

    pts = _lr_frame(
        [("g1", 1e-3, 1.0, "a"), ("g1", 3e-3, 0.9, "b"), ("g2", 1e-3, 2.0, "c"), ("g2", 3e-3, 2.1, "d")]
    )
    diverged = pd.DataFrame([("x", "g1", 1e-3), ("y", "g1", 3e-3), ("z", "g2", 1e-3)],
                            columns=["run_id", "lr_group", "lr"])  # fmt: skip
    kept, _, note = best_lr(pts, diverged)
    assert sorted(kept["run_id"]) == ["b", "d"]  # g1: both diverged, the lower loss; g2: the stable lr
    assert "3 lr(s) had a seed that diverged" in note
    assert "m1 at 6e+13 FLOPs: lr 0.003 (kept: every lr of the cell had one)" in note
    assert "m1 at 6e+13 FLOPs: lr 0.001;" in note and "m2 at 1.2e+14 FLOPs: lr 0.001" in note
    assert "lr 0.001 (kept" not in note


def _redraw_cell(steps_b=(100.0, 100.0), step=100.0):
    """Per-seed final points of a cell g1 at lr A (seeds 1.0, 1.2) and lr B (1.05, 1.05; at ``steps_b``),
    and of a cell g2 at one lr (seeds 1.0, 1.2); the fitted points: A's mean and g2's mean."""
    from analysis.runs import tidy

    rows = [("g1", 1e-3, 1.0, "a0", step), ("g1", 1e-3, 1.2, "a1", step),
            ("g1", 3e-3, 1.05, "b0", steps_b[0]), ("g1", 3e-3, 1.05, "b1", steps_b[1]),
            ("g2", 1e-3, 1.0, "c0", step), ("g2", 1e-3, 1.2, "c1", step)]  # fmt: skip
    raw = tidy(pd.DataFrame([{"N": 1e6 * int(g[1]), "D": 1e7, "C": 6e13, "loss": v, "run_id": r, "step": s,
                              "lr": lr, "lr_group": g} for g, lr, v, r, s in rows]))  # fmt: skip
    fitted = pd.DataFrame({"run_id": ["a0 + a1", "c0 + c1"], "loss": [1.1, 1.1], "step": [step, step],
                           "lr": [1e-3, 1e-3]})  # fmt: skip
    return raw, fitted


def test_redraw_leaves_a_cell_of_one_lr_alone_and_finds_points_without_a_step():
    """A cell trained at one lr has no choice to redo: its point keeps its seeds' mean in every resample
    (2 seeds: its resampled means would be 1.0, 1.1, 1.2). In the cell at two lrs the resampled seeds
    make only the choice: A (resampled mean 1.0 with p 1/4) keeps its full mean 1.1, else B's 1.05.
    Points without a step (a CSV without `step`) are redrawn like those with one."""
    from analysis.runs import LrRedraw

    for step in (100.0, np.nan):
        raw, fitted = _redraw_cell(step=step, steps_b=(step, step))
        redraw = LrRedraw(raw, fitted)
        rng = np.random.default_rng(0)
        draws = np.round([redraw(rng) for _ in range(200)], 9)
        assert set(draws[:, 1]) == {1.1}, step
        assert set(draws[:, 0]) == {1.05, 1.1}, step


def test_redraw_keeps_the_loss_where_the_winning_lr_has_no_value_for_every_drawn_seed():
    """lr B's seed b1 logged no point at step 100: where B wins there is no mean of B's seeds at that
    step, so the point keeps its loss; never NaN."""
    from analysis.runs import LrRedraw

    raw, fitted = _redraw_cell(steps_b=(100.0, 50.0))
    raw["final"] = True
    redraw = LrRedraw(raw, fitted)
    rng = np.random.default_rng(1)
    draws = np.array([redraw(rng)[0] for _ in range(300)])
    assert np.all(np.isfinite(draws)) and set(np.round(draws, 9)) == {1.1}
