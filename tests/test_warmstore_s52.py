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


def test_the_store_is_opened_with_no_pooled_connection_left_to_span_a_fork(tmp_path):
    """`_open_store` (at the worker's first cell) warms MLflow's engine for the children, then closes its
    pooled connections: a child must not inherit a sqlite connection across the fork."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    from sweeps.warm import _open_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments(max_results=1)  # the launcher made the store
    _open_store(uri)
    engines = [e for key, e in SqlAlchemyStore._engine_map.items() if str(tmp_path) in str(key)]
    assert engines and all(e.pool.checkedin() == 0 for e in engines)
