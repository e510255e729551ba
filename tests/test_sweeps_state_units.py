"""`sweeps.state` against a real sqlite MLflow store: cell runs created and recorded by the
launcher's functions, continued by the trainer's `RunTracker`, and states derived from them, with
real local jobs (processes holding the cell's lock) for liveness. Fast: one store per session, no
launcher, no training."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from _sweep_specs import cell_states, migrated_store
from mlflow.tracking import MlflowClient

from dit_core.config import TrainConfig
from dit_core.tracking import RunTracker, format_param
from sweeps import state
from sweeps.executor import JobRef
from sweeps.lock import cell_job_lock_lines
from sweeps.state import (
    CellState,
    check_resumable_cell,
    check_tracking_uri,
    config_hash,
    create_cell_runs,
    ensure_experiment,
    latest_step,
    plan,
    read_runs,
    read_states,
    record_submissions,
    resolve_tracking_uri,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One migrated sqlite store for the module; each test uses its own experiment."""
    return migrated_store(tmp_path_factory, "state-store")


@pytest.fixture
def exp(request) -> str:
    return request.node.name


@contextlib.contextmanager
def local_job(run_dir: Path):
    """A real local job of a cell: a shell that takes the cell's lock the way a submitted job does,
    then sleeps. Yields its Popen; SIGKILLed (with its group) on exit if still alive."""
    run_dir.mkdir(parents=True, exist_ok=True)
    job = subprocess.Popen(" && ".join([*cell_job_lock_lines(run_dir), "echo locked", "exec sleep 120"]),
                           shell=True, stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert job.stdout.readline().strip() == "locked"
        yield job
    finally:
        kill(job)


def kill(job: subprocess.Popen) -> None:
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    job.stdout.close()


def record_submission(uri: str, run_id: str, job: JobRef, attempts: int, cfg_hash: str, resubmitted: bool):
    """`record_submissions` for one cell."""
    record_submissions(uri, [state.Submission(run_id, job, attempts, cfg_hash, resubmitted)])


def submit(uri: str, run_id: str, run_dir: Path, attempts: int = 1, pid: int = 1, cfg_hash: str = "h"):
    """Record a local submission on the cell's run, as the launcher does."""
    ref = JobRef("local", str(pid), str(run_dir / "submitit"), str(run_dir))
    record_submission(uri, run_id, ref, attempts, cfg_hash, False)


def train(uri: str, exp: str, run_id: str, run_dir: Path, losses: dict[int, float], end: str | None,
          params: dict | None = None, extra: dict[str, float] | None = None) -> None:  # fmt: skip
    """What a cell's trainer writes: continue the run, its params, train/loss per step, and (unless
    ``end`` is None: the trainer was killed) its end status."""
    tr = RunTracker.start(uri=uri, experiment=exp, run_id=run_id, out_dir=run_dir)
    tr.log_params(params if params is not None else {"model.depth": 2, "optim.lr": 1e-3})
    for step, loss in losses.items():
        tr.log_metrics({"train/loss": loss}, step=step)
    if extra:
        tr.log_metrics(extra, step=max(losses, default=0))
    if end is None:
        assert tr.flush(30) == 0
        tr.sender.close(30)
    else:
        tr.finish(end)


# ---------------------------------------------------------------------- tracking URI
def test_resolve_tracking_uri_makes_sqlite_paths_absolute(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path}/x.db"
    assert resolve_tracking_uri("sqlite:///sub/../y.db") == f"sqlite:///{tmp_path}/y.db"
    assert resolve_tracking_uri("sqlite:////abs/z.db") == "sqlite:////abs/z.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    # a driver and ?options: the path alone is made absolute (session 46: the driver form stayed relative)
    assert resolve_tracking_uri("sqlite+pysqlite:///x.db") == f"sqlite+pysqlite:///{tmp_path}/x.db"
    got = resolve_tracking_uri("sqlite:///sub/../y.db?timeout=5")
    assert got == f"sqlite:///{tmp_path}/y.db?timeout=5"
    assert resolve_tracking_uri("sqlite:///:memory:") == "sqlite:///:memory:"  # not a file named :memory:
    mlflow.set_tracking_uri("sqlite:////somewhere/else.db")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel/m.db")  # the environment comes first
        assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/rel/m.db"
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        assert resolve_tracking_uri(None) == "sqlite:////somewhere/else.db"
        mlflow.set_tracking_uri(None)
        assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"  # MLflow's default
    finally:
        mlflow.set_tracking_uri(None)


def test_check_tracking_uri_names_the_missing_folder_and_the_dead_server(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/new.db")  # the folder exists; the file need not
    missing = tmp_path / "nope"
    with pytest.raises(ValueError) as e:
        check_tracking_uri(f"sqlite:///{missing}/m.db")
    assert str(e.value) == (
        f"MLflow sqlite store sqlite:///{missing}/m.db: folder {missing} does not exist; create it first"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens
    with pytest.raises(ValueError) as e:
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout_s=2)
    msg = str(e.value)
    assert msg.startswith(f"MLflow tracking server http://127.0.0.1:{port} is unreachable (")
    assert msg.endswith(state.AUTH_HINT) and "--host 127.0.0.1" in msg and "--app-name basic-auth" in msg
    assert "MLFLOW_TRACKING_USERNAME" in msg and "0.0.0.0" not in msg


def test_check_tracking_uri_gives_up_on_a_server_that_never_answers():
    with socket.socket() as s:  # accepts connections (backlog) but never replies
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        with pytest.raises(
            ValueError, match=r"did not answer within 0.5 s \(GET /health\): it accepts connections"
        ):
            check_tracking_uri(f"http://127.0.0.1:{s.getsockname()[1]}", timeout_s=0.5)


# ---------------------------------------------------------------------- creating and recording
def test_ensure_experiment_creates_it_once(store, exp):
    first = ensure_experiment(store, exp)
    assert ensure_experiment(store, exp) == first
    assert MlflowClient(store).get_experiment_by_name(exp).experiment_id == first


def test_config_hash_is_sha256_of_the_sorted_overrides_without_the_run_id():
    over = {"optim.lr": 3e-4, "model.depth": 2, "out": Path("/r/c"), "tracking.run_id": "abc"}
    text = '{"model.depth": 2, "optim.lr": 0.0003, "out": "/r/c"}'  # sorted keys, str() of a Path
    want = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert config_hash(over) == want
    assert config_hash(dict(reversed(over.items()))) == want  # key order does not matter
    assert config_hash({k: v for k, v in over.items() if k != "tracking.run_id"}) == want
    assert config_hash({**over, "tracking.run_id": "other"}) == want
    assert config_hash({**over, "optim.lr": 1e-3}) != want
    assert config_hash({}) == hashlib.sha256(b"{}").hexdigest()[:16]


def test_create_cell_runs_makes_one_scheduled_run_per_cell(store, exp):
    assert create_cell_runs("sqlite:////no/such/folder/m.db", exp, "s", {}) == {}  # nothing touched
    hashes = {"c2": "h2", "c0": "h0", "c1": "h1"}
    ids = create_cell_runs(store, exp, "s", hashes)
    assert list(ids) == ["c2", "c0", "c1"] and len(set(ids.values())) == 3
    client = MlflowClient(store)
    exp_id = client.get_experiment_by_name(exp).experiment_id
    for cell, run_id in ids.items():
        run = client.get_run(run_id)
        assert (run.info.experiment_id, run.info.run_name, run.info.status) == (exp_id, cell, "SCHEDULED")
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        assert tags == {"sweep": "s", "grid_cell": cell, "config_hash": hashes[cell], "attempts": "0"}
    one = create_cell_runs(store, exp, "s", {"c3": "h3"})["c3"]
    assert client.get_run(one).data.tags["grid_cell"] == "c3"
    assert {c: [r.info.run_id for r in rs] for c, rs in read_runs(store, exp, "s").items()} == {
        **{c: [r] for c, r in ids.items()},
        "c3": [one],
    }


def test_writes_to_a_server_go_eight_at_a_time_and_keep_their_order():
    from sweeps.state import WRITE_THREADS, _each

    assert WRITE_THREADS == 8
    barrier = threading.Barrier(8, timeout=30)  # the first 8 calls meet: 8 threads at once
    seen: list[int] = []

    def fn(x):
        seen.append(threading.get_ident())
        if x < 8:
            barrier.wait()
        return x * x

    assert _each("http://127.0.0.1:1", fn, list(range(20))) == [x * x for x in range(20)]
    assert len(set(seen)) == 8 and threading.get_ident() not in seen
    record = lambda x: seen.append(threading.get_ident()) or -x  # noqa: E731
    for uri, items in (("sqlite:///m.db", [1, 2, 3]), ("https://h", [4]), ("http://h", [])):
        seen.clear()
        assert _each(uri, record, items) == [-x for x in items]
        assert set(seen) <= {threading.get_ident()}  # in the caller's thread, one at a time
    seen.clear()
    assert _each("https://h", record, [5, 6]) == [-5, -6] and threading.get_ident() not in seen


def test_record_submissions_writes_the_job_and_reschedules_resubmitted_runs(store, exp, tmp_path):
    ids = create_cell_runs(store, exp, "s", {"a": "ha", "b": "hb", "c": "hc"})
    client = MlflowClient(store)
    client.set_terminated(ids["b"], "FAILED")  # b's first job failed
    train(store, exp, ids["c"], tmp_path / "c", {1: 0.5}, end=None)  # c's trainer is running (RUNNING)
    record_submissions(store, [
        state.Submission(ids["a"], JobRef("slurm", "17_0", "/logs/a", "/runs/a"), 1, "ha", False),
        state.Submission(ids["b"], JobRef("local", "4242", "/logs/b", "/runs/b"), 2, "hb2", True),
    ])  # fmt: skip
    record_submission(store, ids["c"], JobRef("debug", "9", "/logs/c", "/runs/c"), 3, "hc", False)
    want = {
        "a": ("SCHEDULED", {"executor": "slurm", "job_id": "17_0", "job_folder": "/logs/a", "attempts": "1",
                            "config_hash": "ha"}),
        "b": ("SCHEDULED", {"executor": "local", "job_id": "4242", "job_folder": "/logs/b", "attempts": "2",
                            "config_hash": "hb2"}),
        "c": ("RUNNING", {"executor": "debug", "job_id": "9", "job_folder": "/logs/c", "attempts": "3",
                          "config_hash": "hc"}),
    }  # fmt: skip
    for cell, (status, tags) in want.items():
        run = client.get_run(ids[cell])
        assert run.info.status == status, cell
        assert {k: run.data.tags[k] for k in state.RECORD_TAGS} == tags
    record_submissions(store, [])  # nothing to write


def test_runs_left_by_jobs_that_are_over_are_ended_and_a_resubmission_reschedules_them(store, exp, tmp_path):
    """`end_orphaned_runs`: a SCHEDULED run (its job died before the trainer started) becomes FAILED with
    tags status=died_before_training and the job's error; runs the trainer took over are left alone
    unless asked for (a Ctrl-C: RUNNING -> KILLED, status=interrupted); unknown ids are skipped. A
    resubmission sets the same run back to SCHEDULED, and `record_interrupts` counts Ctrl-C'd tries."""
    ids = create_cell_runs(store, exp, "s", {c: "h" for c in ("dead", "ran", "done", "cut")})
    client = MlflowClient(store)
    for cell in ids:
        submit(store, ids[cell], tmp_path / cell)
    train(store, exp, ids["ran"], tmp_path / "ran", {1: 0.5}, end="failed")
    train(store, exp, ids["done"], tmp_path / "done", {1: 0.5}, end="finished")
    train(store, exp, ids["cut"], tmp_path / "cut", {1: 0.5}, end=None)  # RUNNING, its job gone
    errors = {ids[c]: f"job of {c} ended before training" for c in ids} | {"0" * 32: ""}
    assert state.end_orphaned_runs(store, errors) == [ids["dead"]]
    dead = client.get_run(ids["dead"])
    assert dead.info.status == "FAILED" and dead.info.end_time is not None
    assert dead.data.tags["status"] == state.DIED_BEFORE_TRAINING == "died_before_training"
    assert dead.data.tags["error"] == "job of dead ended before training"
    got = {c: (r.info.status, r.data.tags["status"]) for c, r in ((c, client.get_run(ids[c])) for c in ids)}
    assert got == {"dead": ("FAILED", "died_before_training"), "ran": ("FAILED", "failed"),
                   "done": ("FINISHED", "finished"), "cut": ("RUNNING", "running")}  # fmt: skip
    assert "error" not in client.get_run(ids["done"]).data.tags
    left = ("SCHEDULED", "RUNNING")
    assert state.end_orphaned_runs(
        store, {ids["cut"]: ""}, status="KILLED", tag="interrupted", left=left
    ) == [ids["cut"]]
    cut = client.get_run(ids["cut"])
    assert (cut.info.status, cut.data.tags["status"], "error" in cut.data.tags) == (
        "KILLED",
        "interrupted",
        False,
    )

    state.record_interrupts(store, {ids["cut"]: 1})
    record_submission(store, ids["dead"], JobRef("local", "2", "/logs/d", "/runs/d"), 2, "h", True)
    assert client.get_run(ids["dead"]).info.status == "SCHEDULED"  # the retry continues the same run
    states = read_states(store, exp, "s", {c: str(tmp_path / c) for c in ids})
    assert (states["cut"].state, states["cut"].attempts, states["cut"].interrupts, states["cut"].tries) == (
        "interrupted",
        1,
        1,
        0,
    )
    assert (states["dead"].interrupts, states["dead"].tries) == (0, 2)


# ---------------------------------------------------------------------- reading
def test_read_runs_of_an_unknown_experiment_or_sweep_is_empty(store, exp):
    assert read_runs(store, exp + "-never-created", "s") == {}
    create_cell_runs(store, exp, "s", {"a": "h"})
    MlflowClient(store).create_run(ensure_experiment(store, exp), tags={"sweep": "s"})  # no grid_cell
    assert read_runs(store, exp, "other") == {}
    assert list(read_runs(store, exp, "s")) == ["a"]


def test_runs_are_read_in_pages_oldest_first(store, exp, monkeypatch):
    client = MlflowClient(store)
    exp_id = ensure_experiment(store, exp)
    made: dict[str, list[tuple[int, str]]] = {}
    for i in range(9):  # 4 cells, started at times given out of creation order; c0 and c1 twice more
        cell, t0 = f"c{i % 4}", 1_000_000 + 1000 * ((5 * i) % 9)
        run = client.create_run(exp_id, start_time=t0, tags={"sweep": "s", "grid_cell": cell})
        made.setdefault(cell, []).append((t0, run.info.run_id))
    client.create_run(exp_id, tags={"sweep": "t", "grid_cell": "c0"})  # another sweep
    want = {c: [r for _, r in sorted(rs)] for c, rs in made.items()}
    pages: list[int] = []
    search = MlflowClient.search_runs

    def counted(self, *args, **kwargs):  # the real request, recording the size of each page
        page = search(self, *args, **kwargs)
        pages.append(len(page))
        return page

    monkeypatch.setattr(MlflowClient, "search_runs", counted)
    whole = read_runs(store, exp, "s")
    assert pages == [9]  # one request while the sweep fits in a page
    pages.clear()
    monkeypatch.setattr(state, "PAGE_SIZE", 2)
    paged = read_runs(store, exp, "s")
    assert pages == [2, 2, 2, 2, 1]  # 9 runs in pages of 2
    for got in (whole, paged):
        assert {c: [r.info.run_id for r in rs] for c, rs in got.items()} == want


def test_latest_step_is_the_largest_step_of_that_key(store, exp, tmp_path):
    ids = create_cell_runs(store, exp, "s", {"a": "h", "b": "h"})
    train(store, exp, ids["a"], tmp_path / "a", {3: 0.5, 12: 0.2, 4: 0.4}, end="finished",
          extra={"val/loss": 0.3})  # fmt: skip
    runs = read_runs(store, exp, "s")
    a, b = runs["a"][0], runs["b"][0]
    assert latest_step(a, "train/loss") == 12 and latest_step(a, "val/loss") == 12
    assert latest_step(a, "eval/fid") is None and latest_step(b, "train/loss") is None
    train(store, exp, ids["b"], tmp_path / "b", {7: 1.0}, end="finished", extra={"val/loss": 0.9})
    assert latest_step(read_runs(store, exp, "s")["b"][0], "val/loss") == 7


def test_job_ref_needs_an_executor_a_job_id_and_a_submission(store, exp, tmp_path):
    ids = create_cell_runs(store, exp, "s", {c: "h" for c in "abcdef"})
    client = MlflowClient(store)
    submit(store, ids["a"], tmp_path / "a", attempts=1, pid=31)
    submit(store, ids["b"], tmp_path / "b", attempts=0)  # a job id, but no submission counted
    client.set_tag(ids["c"], "job_id", "5")  # the trainer's tags, no launcher record
    client.set_tag(ids["c"], "executor", "local")
    client.set_tag(ids["c"], "attempts", "2")
    record_submission(store, ids["d"], JobRef("", "7", "/f", "/r"), 1, "h", False)  # no executor
    record_submission(store, ids["e"], JobRef("local", "", "/f", "/r"), 1, "h", False)  # no job id
    runs = read_runs(store, exp, "s")
    ref = lambda c: state.job_ref(runs[c][0], f"/dir/{c}")  # noqa: E731
    assert ref("a") == JobRef("local", "31", str(tmp_path / "a" / "submitit"), "/dir/a")
    assert ref("c") == JobRef("local", "5", "", "/dir/c")  # no job_folder tag: ""
    assert [ref(c) for c in "bdef"] == [None] * 4


def test_states_come_from_the_run_status_and_the_cells_real_jobs(store, exp, tmp_path):
    cells = {c: tmp_path / c for c in ("never", "created", "done", "crashed", "died", "killed", "preempted",
                                       "training", "waiting", "by_hand")}  # fmt: skip
    ids = create_cell_runs(store, exp, "s", {c: f"h-{c}" for c in cells if c not in ("never", "by_hand")})
    # a trainer started by hand for a cell: its own run, tagged, never submitted (no attempts tag)
    by_hand = RunTracker.start(uri=store, experiment=exp, tags={"sweep": "s", "grid_cell": "by_hand"})
    by_hand.finish("failed")
    for c in ("done", "crashed", "died", "killed", "preempted", "training", "waiting"):
        submit(store, ids[c], cells[c], attempts=2 if c == "crashed" else 1)
    train(store, exp, ids["done"], cells["done"], {1: 0.9, 5: 0.5}, "finished",
          extra={"val/loss": 0.6, "eval/fid_digits": 30.0, "eval/fid_photos": 40.0})  # fmt: skip
    train(store, exp, ids["crashed"], cells["crashed"], {1: 0.9}, "failed", extra={"eval/fid_photos": 41.0})
    train(store, exp, ids["preempted"], cells["preempted"], {1: 0.9, 2: 0.8}, "preempted")
    train(store, exp, ids["training"], cells["training"], {1: 0.9, 2: 0.7, 3: 0.6}, None,
          extra={"eval/fid": 20.0, "eval/fid_digits": 21.0})  # fmt: skip
    with local_job(cells["killed"]) as job:  # the job that ran the trainer, then SIGKILL
        train(store, exp, ids["killed"], cells["killed"], {1: 0.9, 4: 0.4}, None)
    assert job.returncode == -signal.SIGKILL
    dup = MlflowClient(store).create_run(
        ensure_experiment(store, exp), tags={"sweep": "s", "grid_cell": "done"}
    )

    asked: list[set[str]] = []
    real = state.job_liveness

    def spy(refs):  # the real liveness check, recording which cells it was asked about
        asked.append(set(refs))
        return real(refs)

    with (local_job(cells["done"]), local_job(cells["training"]), local_job(cells["waiting"]),
          pytest.MonkeyPatch.context() as mp):  # fmt: skip
        mp.setattr(state, "job_liveness", spy)
        got = read_states(store, exp, "s", {c: str(d) for c, d in cells.items()})
        again = read_states(store, exp, "s", {c: str(d) for c, d in cells.items()})
    assert asked == [{"crashed", "died", "killed", "preempted", "training", "waiting"}] * 2
    assert {c: st.state for c, st in got.items()} == {
        "never": "missing", "created": "missing", "done": "finished", "crashed": "failed", "died": "failed",
        "killed": "interrupted", "preempted": "interrupted", "training": "running", "waiting": "queued",
        "by_hand": "missing",
    }  # fmt: skip
    assert {c: st.run_status for c, st in got.items()} == {
        "never": None, "created": "SCHEDULED", "done": "FINISHED", "crashed": "FAILED", "died": "SCHEDULED",
        "killed": "RUNNING", "preempted": "KILLED", "training": "RUNNING", "waiting": "SCHEDULED",
        "by_hand": "FAILED",
    }  # fmt: skip
    assert {c: (st.step, st.loss) for c, st in got.items()} == {
        "never": (None, None), "created": (None, None), "done": (5, 0.5), "crashed": (1, 0.9),
        "died": (None, None), "killed": (4, 0.4), "preempted": (2, 0.8), "training": (3, 0.6),
        "waiting": (None, None), "by_hand": (None, None),
    }  # fmt: skip
    assert {c: st.fid for c, st in got.items() if st.fid is not None} == {
        "done": 30.0, "crashed": 41.0, "training": 20.0,  # the first of eval/fid, _digits, _photos
    }  # fmt: skip
    assert {c: st.val_loss for c, st in got.items() if st.val_loss is not None} == {"done": 0.6}
    assert {c: st.attempts for c, st in got.items()} == {
        "never": 0, "created": 0, "done": 1, "crashed": 2, "died": 1, "killed": 1, "preempted": 1,
        "training": 1, "waiting": 1, "by_hand": 0,
    }  # fmt: skip
    assert {c: st.job_id for c, st in got.items() if st.job_id} == {c: "1" for c in ids if c != "created"}
    assert {c: st.run_id for c, st in got.items()} == {"never": None, **ids, "by_hand": by_hand.run_id}
    assert {c: st.config_hash for c, st in got.items()} == {"never": None, "by_hand": None} | {
        **{c: "h" for c in ids},
        "created": "h-created",  # the launcher's record replaces the hash of creation
    }
    assert {c: st.duplicates for c, st in got.items() if st.duplicates} == {"done": 1}
    assert got["done"].params == {"model.depth": "2", "optim.lr": "0.001"} and got["created"].params == {}
    assert got["never"] == CellState("never", "missing")
    assert dup.info.run_id not in {st.run_id for st in got.values()}  # a cell's record is its first run
    assert again == got  # read again: the same (each run's step comes with it, nothing more is asked)


def test_states_use_the_runs_given_and_read_none_themselves(store, exp, tmp_path):
    ids = create_cell_runs(store, exp, "s", {"a": "h", "b": "h"})
    submit(store, ids["a"], tmp_path / "a")
    runs = read_runs(store, exp, "s")
    del runs["b"]
    # another store: the states come from the runs given (cell a's job found dead, its run is read once
    # more, there, where it is not: it keeps the run given); under tmp_path, as that read makes the file
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere' / 'store.db'}"
    got = read_states(elsewhere, exp, "s", {"a": "x", "b": "y"}, runs=runs)
    assert (got["a"].state, got["a"].run_id, got["b"].state, got["b"].run_id) == (
        "failed",
        ids["a"],
        "missing",
        None,
    )


@pytest.mark.parametrize(
    ("status", "liveness", "want"),
    [
        ("RUNNING", "pending", "queued"),  # a requeued SLURM job waiting in the queue
        ("RUNNING", "running", "running"),
        ("SCHEDULED", "running", "queued"),  # the job started, its trainer not yet
        ("SCHEDULED", "pending", "queued"),
        ("FINISHED", "running", "finished"),
    ],
)
def test_slurm_liveness_maps_to_queued_or_running(store, exp, tmp_path, monkeypatch, status, liveness, want):
    # stand-in for a SLURM job's liveness (no SLURM controller here); the rest is real
    (run_id,) = create_cell_runs(store, exp, "s", {"a": "h"}).values()
    record_submission(store, run_id, JobRef("slurm", "12", str(tmp_path), str(tmp_path)), 1, "h", False)
    if status != "SCHEDULED":
        MlflowClient(store).update_run(run_id, status=status)
    monkeypatch.setattr(state, "job_liveness", lambda refs: dict.fromkeys(refs, liveness))
    assert read_states(store, exp, "s", {"a": str(tmp_path)})["a"].state == want


def test_a_cell_that_finishes_during_the_liveness_check_is_finished_not_interrupted(
    store, exp, tmp_path, monkeypatch
):
    """The runs are read before the jobs' liveness: a cell whose trainer ends its run FINISHED and
    whose job exits in between must not come out "interrupted" (run RUNNING, job gone), which a
    relaunch would resubmit. Its run is read again."""
    (run_id,) = create_cell_runs(store, exp, "s", {"a": "h"}).values()
    record_submission(store, run_id, JobRef("local", "7", str(tmp_path), str(tmp_path)), 1, "h", False)
    MlflowClient(store).update_run(run_id, status="RUNNING")

    def finishes_meanwhile(refs):
        MlflowClient(store).set_terminated(run_id, status="FINISHED")
        return {}  # its job (lock) is gone by now

    monkeypatch.setattr(state, "job_liveness", finishes_meanwhile)
    st = read_states(store, exp, "s", {"a": str(tmp_path)})["a"]
    assert (st.state, st.run_status) == ("finished", "FINISHED")


# ---------------------------------------------------------------------- decisions
def test_plan_skips_finished_and_live_cells_and_retries_up_to_the_limit():
    states = cell_states(
        ("fin", "finished", 9), ("run", "running", 9), ("que", "queued", 9), ("new", "missing"),
        ("unrecorded", "missing", 9), ("f1", "failed", 1), ("f2", "failed", 2), ("f3", "failed", 3),
        ("i2", "interrupted", 2), ("i3", "interrupted", 3),
    )  # fmt: skip
    p = plan(states, max_retries=2)
    assert (p.finished, p.running) == (["fin"], ["run", "que"])
    assert p.submit == ["new", "unrecorded", "f1", "f2", "i2"] and p.exhausted == ["f3", "i3"]
    assert plan(states, max_retries=0).exhausted == ["f1", "f2", "f3", "i2", "i3"]
    assert plan({}, max_retries=1) == state.Plan()


def test_a_changed_cell_is_refused_against_the_params_its_trainer_logged(store, exp, tmp_path):
    out = str(tmp_path / "a")
    old = {"optim.lr": 1e-3, "model.depth": 2, "out": out, "tracking.run_id": "x"}
    flat = TrainConfig().replace(**{k: v for k, v in old.items() if k != "tracking.run_id"}).to_flat_dict()
    (run_id,) = create_cell_runs(store, exp, "demo", {"a": config_hash(old)}).values()
    submit(store, run_id, tmp_path / "a", cfg_hash=config_hash(old))
    train(store, exp, run_id, tmp_path / "a", {1: 0.5}, None, params={**flat, "tracking.run_id": "x"})
    st = read_states(store, exp, "demo", {"a": out})["a"]
    assert (st.state, st.config_hash, st.params["optim.lr"]) == ("interrupted", config_hash(old), "0.001")

    check_resumable_cell("demo", st, old)  # same hash
    check_resumable_cell("demo", st, {**old, "optim.lr": "1e-3", "model.depth": "2"})  # YAML 1.1 strings
    check_resumable_cell("demo", st, {**old, "tracking.run_id": "y", "eval.val_every": None})  # not compared
    check_resumable_cell("demo", st, {**old, "no.such.param": 5})  # not in the run's params: not compared
    with pytest.raises(ValueError) as e:
        check_resumable_cell("demo", st, {**old, "optim.lr": "2e-3"})
    assert str(e.value) == (
        "cell a of sweep 'demo' was launched with other settings (optim.lr: '0.001' -> '0.002'); "
        "start a new sweep with --name NEW, or delete its folder and MLflow runs to redo it"
    )
    changed = {"model.depth": 3, "model.hidden_size": 64, "model.num_heads": 4, "model.patch_size": 4,
               "optim.lr": 2e-3, "optim.beta2": 0.95, "optim.eps": 1e-6, "optim.weight_decay": 0.1,
               "seed": 5, "log_every": 3}  # fmt: skip
    possible = {f"{k}: {format_param(flat[k])!r} -> {format_param(v)!r}" for k, v in changed.items()}
    with pytest.raises(ValueError, match=r"^cell a of sweep 'demo' was launched") as e:
        check_resumable_cell("demo", st, {**old, **changed})
    listed = str(e.value).split("other settings (")[1].split("); start")[0].split("; ")
    assert len(listed) == 8 and set(listed) < possible and len(possible) == 10  # the first 8 of 10
    # nothing to compare: no run, or a run created before hashes were recorded
    check_resumable_cell("demo", CellState("a", "missing"), {**old, **changed})
    st.config_hash = None
    check_resumable_cell("demo", st, {**old, **changed})


def test_an_override_dropped_since_counts_as_a_change(store, exp, tmp_path):
    from dit_core.data import build_dataset
    from dit_core.trainer.resolve import resolve_config

    old = {"optim.weight_decay": 0.1, "out": str(tmp_path / "a"), "budget.max_steps": 3}
    cfg = TrainConfig().replace(**old)
    flat = resolve_config(cfg, build_dataset(cfg.data, "train")).to_flat_dict()  # what the trainer logs
    (run_id,) = create_cell_runs(store, exp, "demo", {"a": config_hash(old)}).values()
    submit(store, run_id, tmp_path / "a", cfg_hash=config_hash(old))
    train(store, exp, run_id, tmp_path / "a", {1: 0.5}, None, params=flat)
    st = read_states(store, exp, "demo", {"a": old["out"]})["a"]
    dropped = {"out": old["out"], "budget.max_steps": 3}
    check_resumable_cell("demo", st, dropped)  # the overrides alone cannot tell
    with pytest.raises(ValueError, match=r"other settings \(optim.weight_decay: '0.1' -> '0.0'\)"):
        check_resumable_cell("demo", st, dropped, TrainConfig().replace(**dropped))
    same = {**old, "optim.weight_decay": "1e-1"}  # another hash, the same config: every field compared
    check_resumable_cell("demo", st, same, TrainConfig().replace(**same))


def test_a_cell_folder_and_its_run_must_belong_together(tmp_path):
    run_dir = tmp_path / "out" / "demo" / "cells" / "a"
    run_dir.mkdir(parents=True)
    where = ("exp", "sqlite:///x.db")
    state.check_cell_folder("demo", CellState("a", "missing"), run_dir, *where)  # a new cell
    (run_dir / "mlflow_run_id").write_text("abc123\n")  # ... of a run in another experiment or store
    with pytest.raises(ValueError, match=r"belongs to MLflow run abc123, which experiment 'exp' at "):
        state.check_cell_folder("demo", CellState("a", "missing"), run_dir, *where)
    st = CellState("a", "interrupted")
    st.run_id, st.params = "abc123", {"out": str(run_dir)}
    state.check_cell_folder("demo", st, run_dir, *where)  # its own folder
    elsewhere = tmp_path / "o2" / "demo" / "cells" / "a"
    with pytest.raises(
        ValueError, match=f"trains in {run_dir}, not in {elsewhere}; relaunch with --output-dir "
    ):
        state.check_cell_folder("demo", st, elsewhere, *where)
    st.state = "finished"
    state.check_cell_folder("demo", st, elsewhere, *where)  # nothing of it will run
    st.state = "interrupted"
    shutil.rmtree(run_dir)
    state.check_cell_folder("demo", st, elsewhere, *where)  # the folder moved: it trains on there


@pytest.mark.parametrize(
    ("kind", "done", "result", "queue", "over"),
    [
        ("slurm", True, False, {"7": "PENDING"}, False),  # sacct said NODE_FAIL, the job is requeued
        ("slurm", True, False, {"7": "RUNNING"}, False),
        ("slurm", True, False, {}, True),  # gone from the queue: over (failed)
        ("slurm", True, True, {"7": "COMPLETING"}, True),  # its result is written: over
        ("slurm", False, False, {}, False),
        ("local", True, False, {"7": "PENDING"}, True),  # squeue is not asked for local jobs
    ],
)
def test_a_slurm_job_sacct_calls_done_is_waited_for_while_squeue_still_lists_it(
    tmp_path, monkeypatch, kind, done, result, queue, over
):
    """The launcher's wait loop (`sweeps.runner._Runner._ended`, its result's grace 0 here): after a node
    failure sacct can report the job NODE_FAIL, which submitit's ``done()`` takes for over, while
    slurmctld has requeued it."""
    from types import SimpleNamespace

    from sweeps import executor
    from sweeps.runner import _Runner

    asked: list[list[str]] = []
    monkeypatch.setattr(executor, "squeue_states", lambda ids: asked.append(ids) or queue)
    monkeypatch.setattr("sweeps.runner.RESULT_GRACE_S", 0.0)
    pickle = tmp_path / "7_0_result.pkl"
    if result:
        pickle.write_bytes(b"")
    job = SimpleNamespace(done=lambda: done, job_id="7", paths=SimpleNamespace(result_pickle=pickle))
    runner = SimpleNamespace(prep=SimpleNamespace(kind=kind), over_since={})
    assert _Runner._ended(runner, "c", job, set()) is over
    assert bool(asked) == (kind == "slurm" and done and not result)
    assert _Runner._ended(runner, "c", job, {"c"})  # `_gone_unseen` found it over: collected


@pytest.mark.parametrize(
    "uri", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:?cache=shared"]
)
def test_check_tracking_uri_refuses_an_in_memory_store(uri):
    """A sweep's launcher and each of its jobs would open the in-memory store empty: the jobs failed with
    "no such table: runs" and the launcher advised a relaunch, which failed the same way."""
    with pytest.raises(ValueError, match="in-memory database.*sqlite:///FILE"):
        check_tracking_uri(uri)
