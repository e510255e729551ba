"""`sweeps.state.read_states` reads a cell's run again when its job is found dead (the runs were read
before the liveness check): only those cells' runs, by run id, not every page of the sweep. A real
sqlite store; the client's reads are counted by wrapping the real methods (nothing is faked)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _sweep_specs import migrated_store
from mlflow.tracking import MlflowClient

from sweeps import state
from sweeps.executor import JobRef
from sweeps.state import Submission, create_cell_runs, ensure_experiment, read_states, record_submissions


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return migrated_store(tmp_path_factory, "reread-store")


@pytest.fixture
def reads(monkeypatch) -> list[tuple[str, int]]:
    """Every ``search_runs`` / ``get_run`` of any client: (what was asked, runs returned)."""
    seen: list[tuple[str, int]] = []
    search, get = MlflowClient.search_runs, MlflowClient.get_run

    def counted_search(self, *args, **kwargs):
        page = search(self, *args, **kwargs)
        seen.append((kwargs.get("filter_string", ""), len(page)))
        return page

    def counted_get(self, run_id):
        seen.append((f"get_run {run_id}", 1))
        return get(self, run_id)

    monkeypatch.setattr(MlflowClient, "search_runs", counted_search)
    monkeypatch.setattr(MlflowClient, "get_run", counted_get)
    return seen


def _submitted(uri: str, exp: str, tmp_path: Path, cells: list[str]) -> dict[str, str]:
    """Each cell's run, created and submitted as a local job (whose lock nobody holds: dead)."""
    ids = create_cell_runs(uri, exp, "s", dict.fromkeys(cells, "h"))
    subs = [
        Submission(ids[c], JobRef("local", "7", str(tmp_path / c), str(tmp_path / c)), 1, "h", False)
        for c in cells
    ]
    record_submissions(uri, subs)
    return ids


def test_only_the_dead_cells_runs_are_read_again(store, tmp_path, monkeypatch, reads):
    """7 runs (6 cells, one twice) in pages of 2: the first read is 4 pages. 4 cells are unfinished
    and their jobs dead; one finishes, another logs a step, while the liveness is checked. Reading
    them again reads those 4 runs (2 requests of 2 ids), not the sweep's 4 pages again; the states are the
    ones a later read gives."""
    exp = "reread"
    cells = ["done1", "done2", "racer", "moved", "crashed", "idle"]
    ids = _submitted(store, exp, tmp_path, cells)
    client = MlflowClient(store)
    for c in ("done1", "done2"):
        client.log_metric(ids[c], "train/loss", 0.5, step=9)
        client.set_terminated(ids[c], status="FINISHED")
    for c in ("racer", "moved"):
        client.update_run(ids[c], status="RUNNING")
        client.log_metric(ids[c], "train/loss", 0.9, step=3)
    client.set_terminated(ids["crashed"], status="FAILED")
    dup = client.create_run(ensure_experiment(store, exp), tags={"sweep": "s", "grid_cell": "idle"})
    run_dirs = {c: str(tmp_path / c) for c in cells}

    real = state.job_liveness

    def meanwhile(refs):  # the real check (no lock held: every job dead), while two trainers go on
        client.log_metric(ids["racer"], "train/loss", 0.4, step=12)
        client.set_terminated(ids["racer"], status="FINISHED")
        client.log_metric(ids["moved"], "train/loss", 0.7, step=5)
        return real(refs)

    monkeypatch.setattr(state, "PAGE_SIZE", 2)
    monkeypatch.setattr(state, "job_liveness", meanwhile)
    got = read_states(store, exp, "s", run_dirs)
    sweep_pages = [(f, n) for f, n in reads if f == "tags.sweep = 's'"]
    again = [(f, n) for f, n in reads if f != "tags.sweep = 's'"]
    assert [n for _, n in sweep_pages] == [2, 2, 2, 1]  # the first read only
    # racer, moved, crashed, idle by run id, as many ids a request as runs a page: 2 requests, 4 runs
    assert [n for _, n in again] == [2, 2]
    asked = [
        r.strip("' ") for f, _ in again for r in f.removeprefix("attributes.run_id IN (")[:-1].split(",")
    ]
    assert sorted(asked) == sorted(ids[c] for c in ("racer", "moved", "crashed", "idle"))
    assert {c: (s.state, s.run_status, s.step, s.loss) for c, s in got.items()} == {
        "done1": ("finished", "FINISHED", 9, 0.5),
        "done2": ("finished", "FINISHED", 9, 0.5),
        "racer": ("finished", "FINISHED", 12, 0.4),  # finished meanwhile: not interrupted
        "moved": ("interrupted", "RUNNING", 5, 0.7),
        "crashed": ("failed", "FAILED", None, None),
        "idle": ("failed", "SCHEDULED", None, None),
    }
    assert got["idle"].run_id == ids["idle"] and got["idle"].duplicates == 1  # its duplicate kept
    assert dup.info.run_id not in {s.run_id for s in got.values()}
    monkeypatch.setattr(state, "job_liveness", real)
    assert read_states(store, exp, "s", run_dirs) == got  # the settled view


def test_a_dead_cell_whose_run_was_deleted_meanwhile_is_read_as_before(store, tmp_path, monkeypatch, reads):
    """A record not found by id (deleted between the reads) falls back to the sweep's search, as every
    re-read used to be: the cell's next run becomes its record."""
    exp = "reread-deleted"
    ids = _submitted(store, exp, tmp_path, ["a", "b"])
    client = MlflowClient(store)
    later = client.create_run(ensure_experiment(store, exp), tags={"sweep": "s", "grid_cell": "a"})
    client.set_terminated(later.info.run_id, status="FINISHED")
    real = state.job_liveness

    def deleted_meanwhile(refs):
        client.delete_run(ids["a"])
        return real(refs)

    monkeypatch.setattr(state, "job_liveness", deleted_meanwhile)
    got = read_states(store, exp, "s", {c: str(tmp_path / c) for c in "ab"})
    assert (got["a"].run_id, got["a"].state, got["a"].duplicates) == (later.info.run_id, "finished", 0)
    assert (got["b"].run_id, got["b"].state) == (ids["b"], "failed")
    assert [f.split(" (")[0] for f, _ in reads] == [
        "tags.sweep = 's'",  # the first read
        "attributes.run_id IN",  # a and b by id: a not found
        "tags.sweep = 's'",  # a by the sweep's search
    ]
