"""`sweeps.state` reads a sweep's runs in pages filtered on its tag, and takes a cell's progress
from the latest metric each run carries (no per-run metric-history request)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sweeps import state


def test_paged_read_keeps_every_run_in_creation_order_and_status_steps_need_no_history(
    mlflow_uri, monkeypatch, tmp_path
):
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("pages")
    made: dict[str, list[str]] = {}
    for i in range(7):  # 5 cells; c0 and c1 get a second (duplicate) run
        cell = f"c{i % 5}"
        run = client.create_run(exp, tags={"sweep": "s", "grid_cell": cell, "attempts": "1"})
        made.setdefault(cell, []).append(run.info.run_id)
        for step, loss in ((3, 0.5), (10 + i, 0.2), (4, 0.4)):  # logged out of step order
            client.log_metric(run.info.run_id, "train/loss", loss, step=step)
        client.set_terminated(run.info.run_id, "FINISHED")
    client.create_run(exp, tags={"sweep": "other", "grid_cell": "c0"})  # another sweep: not read

    monkeypatch.setattr(state, "PAGE_SIZE", 2)  # 7 runs: 4 pages
    runs = state.read_runs(mlflow_uri, "pages", "s")
    assert {c: [r.info.run_id for r in rs] for c, rs in runs.items()} == made

    def no_history(*a, **k):
        raise AssertionError("status must not read metric histories")

    monkeypatch.setattr(MlflowClient, "get_metric_history", no_history)
    cells = {c: str(tmp_path / c) for c in made}
    states = state.read_states(mlflow_uri, "pages", "s", cells)
    for cell, st in states.items():
        i = int(cell[1:])  # the cell's record is its first run, the i-th created: last step 10 + i
        assert (st.state, st.run_id, st.step) == ("finished", made[cell][0], 10 + i)
        assert st.loss == pytest.approx(0.2) and st.duplicates == len(made[cell]) - 1
