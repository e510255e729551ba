"""Session 52: a warm worker made the sweep's MLflow store at its start-up, beside the launcher.

On a fresh store both ran MLflow's migrations at once, and the loser left the store half-migrated:
every later open failed with "table mcp_servers already exists" (21 tests of one local run in a row).
The worker now opens the store at its first cell, which the launcher submits once it has made it."""

from __future__ import annotations

import time

from sweeps.warm import WarmExecutor


def test_a_warm_worker_makes_no_store_before_its_first_cell(job_env, tmp_path):
    db = tmp_path / "fresh" / "mlflow.db"
    db.parent.mkdir()
    ex = WarmExecutor(
        tmp_path / "jobs", threads=1, trainer="test_sweeps_fake_trainer", tracking_uri=f"sqlite:///{db}"
    )
    try:
        deadline = time.monotonic() + 60
        while "ready in" not in ex.log_path.read_text():
            assert ex.alive() and time.monotonic() < deadline, ex.log_path.read_text()
            time.sleep(0.05)
        assert not db.exists()  # before: made at start-up, beside the launcher's own making of it
    finally:
        ex.kill()
