"""Shared by the sweep tests: specs (the fake trainer at demo scale, one tiny real cell) and the
MLflow runs of a sweep by grid cell. MLflow is imported where it is used: `test_sweeps.py`, which
needs no store, collects without it."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from sweeps.families import Scale
from sweeps.grid import Cell, ExecutorSpec, SweepSpec, expand
from sweeps.lock import cell_lock_held
from sweeps.runner import LaunchResult, launch, sweep_dir
from sweeps.state import CellState, read_states


def fake_trainer_spec(
    tmp_path: Path,
    uri: str,
    *,
    name: str,
    experiment: str,
    budgets: list[float],
    executor: ExecutorSpec,
    train: dict | None = None,
) -> SweepSpec:
    """Families S and B at demo scale (Scale(8, 4)), patch 2, batch 8, through
    `test_sweeps_fake_trainer` (0.01 s a step, plus ``train``); runs under ``tmp_path/runs`` in
    the experiment ``<experiment>-<tmp_path.name>``."""
    return SweepSpec(
        name=name,
        experiment=f"{experiment}-{tmp_path.name}",
        tracking_uri=uri,
        output_dir=str(tmp_path / "runs"),
        families=["S", "B"],
        scale=Scale(8, 4),
        budgets=budgets,
        batch_size=8,
        trainer="test_sweeps_fake_trainer",
        final_eval=False,
        train={"step_s": 0.01, **(train or {})},
        executor=executor,
    )


def tiny_real_spec(
    tmp_path: Path,
    uri: str,
    name: str,
    *,
    experiment: str,
    budget: float,
    train: dict,
    executor: ExecutorSpec,
) -> SweepSpec:
    """One tiny cell through `dit_core.train` (1 block, width 32, 2 heads, patch 4, batch 8); runs
    under ``tmp_path/name`` in the experiment ``<experiment>-<tmp_path.name>``."""
    return SweepSpec(
        name=name,
        experiment=f"{experiment}-{tmp_path.name}",
        tracking_uri=uri,
        output_dir=str(tmp_path / name),
        families=[],
        shapes=[[1, 32, 2]],
        patch_sizes=[4],
        budgets=[budget],
        batch_size=8,
        final_eval=False,
        train=train,
        executor=executor,
    )


def write_sweep_config(
    spec: SweepSpec, path: Path, *, families: list[str], trainer: str | None = None, **executor
) -> Path:
    """``spec`` (of `fake_trainer_spec`) as a sweep config at ``path`` for ``sweeps/launch.py -c``:
    ``families`` at its Scale(8, 4), one local cell at a time (``executor``: more of its keys, e.g.
    ``local_warm``), ``trainer`` in place of the spec's."""
    data = {
        "name": spec.name, "experiment": spec.experiment, "tracking_uri": spec.tracking_uri,
        "output_dir": spec.output_dir, "families": families, "scale": {"width_div": 8, "depth_div": 4},
        "budgets": spec.budgets, "batch_size": spec.batch_size, "trainer": trainer or spec.trainer,
        "final_eval": False, "train": spec.train,
        "executor": {"name": "local", "local_parallelism": 1, **executor},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    return path


def runs_by_cell(uri: str, experiment: str) -> dict[str, list]:
    """The experiment's MLflow runs grouped by their ``grid_cell`` tag."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id]):
        out.setdefault(r.data.tags["grid_cell"], []).append(r)
    return out


def states_of(spec: SweepSpec, uri: str) -> dict:
    """The launcher's view of every cell of ``spec`` (`sweeps.state.read_states`)."""
    cells = {c.cell_id: str(sweep_dir(spec) / "cells" / c.cell_id) for c in expand(spec)}
    return read_states(uri, spec.experiment, spec.name, cells)


def cell_states(*rows: tuple) -> dict[str, CellState]:
    """``{cell_id: CellState}`` from rows ``(cell_id, state[, attempts[, interrupts]])``, in their order
    (a relaunch plan keeps it)."""

    def row(cell_id: str, state: str, attempts: int = 0, interrupts: int = 0) -> CellState:
        return CellState(cell_id, state, attempts=attempts, interrupts=interrupts)

    return {r[0]: row(*r) for r in rows}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs. A zombie (ended, not yet reaped) does not, nor does a pid whose
    /proc entry goes away between checks: the parent may reap it at any moment (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for(pred, what: str, timeout_s: float = 90.0) -> None:
    """Poll ``pred`` every 50 ms; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ctrl_c_twice_once_cancelled(folders: list[Path], timeout_s: float, first_after_s: float) -> tuple:
    """A user in a thread: once every cell folder holds the launcher's cancel note (the cancel after a
    failed record has begun), Ctrl-C after ``first_after_s``, and again a second later. Returns (the
    started thread, a list that gets the monotonic time of the second Ctrl-C)."""
    from sweeps.state import CANCELLED_FILE

    second: list[float] = []

    def user():
        wait_for(lambda: all((f / CANCELLED_FILE).exists() for f in folders), "the cancel", timeout_s)
        time.sleep(first_after_s)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)
        second.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=user, daemon=True)
    t.start()
    return t, second


def step_of(progress: Path) -> int:
    """The step a fake-trainer cell has reached, from its progress file (0 before the first)."""
    text = progress.read_text() if progress.exists() else ""
    return int(text) if text.strip() else 0


def launch_until_step(spec: SweepSpec, progress: Path, step: int = 5) -> tuple[threading.Thread, dict, Path]:
    """Launch one-cell ``spec`` in a thread (the result lands in ``box["r"]``) and return once its
    fake trainer has reached ``step``: (thread, box, the cell's run folder, which holds its ``pid``)."""
    (cell,) = expand(spec)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", launch(spec, poll_s=0.3)))
    t.start()
    wait_for(lambda: step_of(progress) >= step, "progress")
    return t, box, sweep_dir(spec) / "cells" / cell.cell_id


def one_s_cell(make_spec, tmp_path: Path, uri: str, step_s: float = 0.1) -> tuple[SweepSpec, Cell, Path]:
    """The S cell of ``make_spec(tmp_path, uri, **train)`` alone at 1e10 FLOPs, ``step_s`` a step, its
    fake trainer writing the step it reached to ``tmp_path/progress``: (spec, cell, progress file)."""
    progress = tmp_path / "progress"
    spec = make_spec(tmp_path, uri, step_s=step_s, progress_file=str(progress)).replace(
        families=["S"], budgets=[1e10]
    )
    (cell,) = expand(spec)
    return spec, cell, progress


def signal_cell_mid_run(
    make_spec, tmp_path: Path, uri: str, signum: int, join_s: float
) -> tuple[SweepSpec, Cell, LaunchResult, Path, int]:
    """Launch `one_s_cell` in a thread, send its trainer ``signum`` at step 5 and wait up to ``join_s``
    for the launch to end: (spec, cell, the launch's result, the cell's run folder, the pid signalled)."""
    spec, cell, progress = one_s_cell(make_spec, tmp_path, uri)
    t, box, run_dir = launch_until_step(spec, progress)
    pid = int((run_dir / "pid").read_text())
    os.kill(pid, signum)
    t.join(join_s)
    return spec, cell, box["r"], run_dir, pid


def relaunch_while_running(spec: SweepSpec, progress: Path) -> LaunchResult:
    """A --no-wait launch of all of ``spec``'s cells, which returns once each job holds its cell's lock
    (the cells run for seconds: a relaunch at once must see them alive); once a trainer has reached
    step 2, a second --no-wait launch submits nothing and sees them all running. Returns the first."""
    first = launch(spec, wait=False)
    assert sorted(first.submitted) == sorted(c.cell_id for c in expand(spec))
    assert all(cell_lock_held(sweep_dir(spec) / "cells" / c) for c in first.submitted)
    wait_for(lambda: step_of(progress) >= 2, "progress")
    again = launch(spec, wait=False)
    assert again.submitted == [] and sorted(again.plan.running) == sorted(first.submitted)
    return first


def fake_final_weight(cell) -> float:
    """The fake trainer's weight after all of ``cell``'s steps, from w = 0 and
    ``w <- w - 0.1 (w - target)``: target (1 - 0.9^steps), however often it was interrupted."""
    target = 1.0 + cell.model.hidden_size / 100.0
    return target * (1 - 0.9**cell.steps)


def assert_relaunch_resumes(spec: SweepSpec, uri: str, cell, run_id: str) -> None:
    """A relaunch resubmits the interrupted ``cell`` only, which resumes into its one run ``run_id``
    and ends where an uninterrupted run would (second attempt, FINISHED)."""
    res = launch(spec, poll_s=0.3)
    assert res.submitted == [cell.cell_id] and res.errors == {}
    out = res.results[cell.cell_id]
    assert out["starts"] == 2 and out["run_id"] == run_id
    assert abs(out["weight"] - fake_final_weight(cell)) <= 1e-12 * fake_final_weight(cell)
    (run,) = runs_by_cell(uri, spec.experiment)[cell.cell_id]
    assert run.info.status == "FINISHED" and run.data.tags["attempts"] == "2"


def assert_requeued_to_the_same_result(spec: SweepSpec, uri: str, cell: Cell, res: LaunchResult):
    """``res``, the launch of ``cell`` alone whose trainer was requeued once mid-run, ended where an
    uninterrupted run would: no error, a second start that reached the last step with the final
    weight, and one MLflow run whose ``train/loss`` holds each step once. Returns that run."""
    from mlflow.tracking import MlflowClient

    assert res.errors == {}
    out = res.results[cell.cell_id]
    assert out["starts"] == 2 and out["step"] == cell.steps
    assert out["weight"] == pytest.approx(fake_final_weight(cell), rel=1e-12)
    (run,) = runs_by_cell(uri, spec.experiment)[cell.cell_id]
    hist = MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in hist) == list(range(1, cell.steps + 1))
    return run


def fake_sweep_yaml(name: str, experiment: str) -> str:
    """A sweep YAML of one S cell at 3e9 FLOPs (Scale(8, 4), batch 8) through
    `test_sweeps_fake_trainer` at no time per step, without a final evaluation."""
    return (
        f"name: {name}\nexperiment: {experiment}\nfamilies: [S]\nscale: {{width_div: 8, depth_div: 4}}\n"
        "budgets: [3e9]\nbatch_size: 8\ntrainer: test_sweeps_fake_trainer\nfinal_eval: false\n"
        "train: {step_s: 0.0}\n"
    )


def migrated_store(tmp_path_factory, name: str) -> str:
    """A ``sqlite:///`` MLflow store in a new temporary folder ``name``, its tables created."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp(name)}/mlflow.db"
    MlflowClient(uri).search_experiments()  # creates the tables once
    return uri
