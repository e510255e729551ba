"""200 cells through the real launcher, one SLURM job array and a PostgreSQL-backed mlflow server
(`benchmarks/sweep_scale.py` at 1,000 cells measures the same path; docs/sweeps.md has its figures).

Each cell runs `_scale_trainer`, a stand-in that writes a real cell's MLflow schema over REST in a
fraction of a second. Asserted are counts, never times: one run per cell, no duplicates, every
metric point stored, a relaunch that submits nothing, and ``status`` seeing every cell finished.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO_ROOT


def _benchmark():
    """`benchmarks/sweep_scale.py` (benchmarks/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location("sweep_scale", REPO_ROOT / "benchmarks" / "sweep_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _benchmark()

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.server, pytest.mark.slow]

CELLS, POINTS = 200, 5


def test_200_cell_array_keeps_every_run_and_metric_point(pg_mlflow_server, job_env, tmp_path):
    spec = bench.scale_spec(CELLS, tmp_path, pg_mlflow_server.url, bench.slurm_cpus(), points=POINTS)
    rep = bench.run_scale(
        spec,
        db_uri=pg_mlflow_server.db_uri,
        server_log=pg_mlflow_server.folder / "server.log",
        status_repeats=1,
    )
    assert rep.failed_cells == 0
    assert (rep.runs, rep.duplicates) == (CELLS, 0)
    # per cell: 5 keys at each of POINTS steps, val/loss and 5 fixed costs at the last one
    assert rep.points_expected == CELLS * (5 * POINTS + 6)
    assert rep.points_stored == rep.points_expected and rep.lost_points == 0
    assert rep.write_requests == CELLS * 5 and rep.server_errors == 0
    assert rep.relaunch_submitted == 0
    assert rep.status_finished == CELLS
