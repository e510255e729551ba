"""Session 41 (cost2): the dry run's bill prices what a launch would run. On a relaunch it counts only
the cells a launch would submit (`sweeps.state.plan`), not the finished ones; a SLURM sweep whose
cells request no GPU (`gpus_per_node` 0) is priced in CPU core-hours, not H100 GPU-hours."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _sweep_specs import fake_sweep_yaml

from sweeps import launch as cli
from sweeps.eta import CPU_RATES, cell_work
from sweeps.grid import expand
from sweeps.task import make_task


def _dry_run(argv: list[str], capsys) -> str:
    assert cli.main([*argv, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return out


def _estimate(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("estimate: "))


@pytest.fixture(scope="module")
def half_done(tmp_path_factory) -> Path:
    """The one-cell sweep ``left`` (budget 3e9) launched and finished into ``<root>/mlflow.db``; a
    relaunch with budgets 3e9,1e10 finds 1 of its 2 cells finished."""
    root = tmp_path_factory.mktemp("left")
    (root / "left.yaml").write_text(fake_sweep_yaml("left", "left-runs"))
    argv = ["-c", str(root / "left.yaml"), "--executor", "debug", "--tracking-uri",
            f"sqlite:///{root}/mlflow.db", "--output-dir", str(root / "runs")]  # fmt: skip
    assert cli.main(argv) == 0
    return root


@pytest.mark.parametrize("extra", [["--executor", "local"], ["--executor", "local", "--device", "H100"]])
def test_a_relaunch_dry_run_prices_only_the_cells_a_launch_would_submit(
    half_done, capsys, monkeypatch, extra
):
    """Before: the CPU estimate (and the GPU bill) counted the finished 3e9 cell too, "for 2 cells".
    Now the estimate is the one of a fresh sweep of the 1e10 cell alone, and says it skips the other."""
    root = half_done
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    base = ["-c", str(root / "left.yaml"), "--output-dir", str(root / "runs"), *extra]
    out = _dry_run([*base, "--budgets", "3e9,1e10", "--tracking-uri", f"sqlite:///{root}/mlflow.db"], capsys)
    assert "S-2-3e9 " in out and "S-2-1e10 " in out  # the cells' table lists both
    fresh = _dry_run([*base, "--budgets", "1e10", "--tracking-uri", f"sqlite:///{root}/fresh.db"], capsys)
    assert _estimate(out) == _estimate(fresh) and " for 1 cells" in _estimate(out)
    bill = out.split(_estimate(out))[0].rstrip().rsplit("\n\n", 1)[1]  # the bill's table
    assert "S-2-1e10 " in bill and "S-2-3e9 " not in bill
    assert (
        "already in experiment 'left-runs': 1 finished, 0 running or queued, 0 out of retries; a launch "
        "would submit 1 of 2 cells (the estimate above is for those 1)\n" in out
    )
    assert not (root / "fresh.db").exists()


def test_a_dry_run_that_cannot_read_the_runs_says_its_bill_counts_every_cell(tmp_path, capsys, monkeypatch):
    """A tracking server out of reach: the runs are not read, so the bill is for all cells: it says so."""
    import socket

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(fake_sweep_yaml("s", "s-runs"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = _dry_run(["-c", "s.yaml", "--executor", "local", "--tracking-uri", dead], capsys)
    assert "the settings a relaunch compares were not checked, and the estimate counts every cell" in out


def _slurm(argv: list[str], tmp_path: Path, capsys, monkeypatch) -> str:
    """A SLURM sweep's dry run where no cluster answers (no sbatch on PATH): priced all the same."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin").mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return _dry_run(["--grid", "S,B", "--budgets", "1e11,3e11", "--executor", "slurm", "--tracking-uri", uri,
                     *argv], capsys)  # fmt: skip


def test_a_slurm_sweep_on_cpu_nodes_is_priced_in_core_hours(tmp_path, capsys, monkeypatch):
    """`--executor slurm` with `gpus_per_node` 0 printed "... GPU-hours on H100": no GPU is requested.
    Now: CPU core-hours from the same work model at `CPU_RATES` (one core per thread); more cores per
    cell give the same core-hours and a shorter wall time per cell."""
    out = _slurm([], tmp_path, capsys, monkeypatch)
    assert "GPU-hours on" not in out and "MFU" not in out
    cli_spec = cli.spec_from_args(cli.build_parser().parse_args(["--grid", "S,B", "--budgets", "1e11,3e11"]))
    cells = expand(cli_spec)
    work = sum(cell_work(c, make_task(cli_spec, c, Path("u"), "sqlite:///u.db").overrides) for c in cells)
    lo, hi = (work / r / 3600 for r in (max(CPU_RATES), min(CPU_RATES)))
    line = _estimate(out)
    assert line == (
        f"estimate: {lo:.3g} to {hi:.3g} CPU core-hours on SLURM for {len(cells)} cells (gpus_per_node 0: "
        "no GPU requested), 1 core each (nodes x tasks_per_node x cpus_per_task)"
    )
    minutes = [re.split(r"\s{2,}", ln)[-1] for ln in out.splitlines() if ln.startswith("S-2-1e11 ")]
    out4 = _slurm(["--cpus-per-task", "4", "--tasks-per-node", "2"], tmp_path, capsys, monkeypatch)
    assert _estimate(out4) == line.replace("1 core each", "8 cores each")
    minutes4 = [re.split(r"\s{2,}", ln)[-1] for ln in out4.splitlines() if ln.startswith("S-2-1e11 ")]
    fast, slow = (float(x) for x in minutes[-1].split("-"))  # the bill's row: "fast-slow" minutes
    fast4, slow4 = (float(x) for x in minutes4[-1].split("-"))
    assert (fast4, slow4) == pytest.approx((fast / 8, slow / 8), rel=0.06)  # printed at 2 digits


@pytest.mark.parametrize("extra", [["--gpus-per-node", "1"], ["--device", "A100"], ["--mfu", "0.3"]])
def test_a_slurm_sweep_with_gpus_or_a_named_device_keeps_gpu_hours(tmp_path, capsys, monkeypatch, extra):
    out = _slurm(extra, tmp_path, capsys, monkeypatch)
    assert "GPU-hours on" in out and "core-hours" not in out
