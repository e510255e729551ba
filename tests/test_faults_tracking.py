"""Faults on purpose, tracking side: the MLflow server goes away and comes back in the middle of a
run (real `mlflow server`, restarted on the same port), and the run continues, loses no metric and
is not duplicated; a dead server never blocks the caller and the buffer is bounded; a resumed run
logs each step once and finds a run whose id was never saved. Figures: docs/testing-faults.md.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest
from _train_helpers import one_thread, tiny_config
from conftest import free_port, start_mlflow_server, stop_mlflow_server
from mlflow import MlflowClient
from mlflow.entities import Metric

from dit_core.tracking import RUN_ID_FILE, RUN_KEY_FILE, RUN_KEY_TAG, MetricSender, RunTracker

#: Ports bound and never listened on, for the rest of the session: a connect there is refused at once, and
#: no server started later can take the port while a test's sender (or MLflow's retries inside it, which
#: outlive the test by minutes) still sends to it.
_DEAD_PORTS: list[socket.socket] = []


def dead_port() -> int:
    """A local port where nothing listens and nothing will: bound, not listening, held for the session."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _DEAD_PORTS.append(sock)
    return sock.getsockname()[1]


def _wait(pred, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(0.01)


def test_sender_never_waits_for_a_dead_server_and_bounds_its_buffer(monkeypatch, caplog):
    """With MLflow's default HTTP retries (minutes), `put` returns while the first request is still
    being retried inside MLflow; past ``max_buffered`` the oldest points are dropped with one warning."""
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(var, raising=False)
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{dead_port()}")  # nothing listens there
    sender = MetricSender(client, "0" * 32, max_buffered=10)
    points = [Metric("train/loss", float(i), 0, i) for i in range(25)]
    with caplog.at_level(logging.WARNING, logger="dit_core.tracking"):
        sender.put(points[:5])
        _wait(lambda: len(sender._in_flight) == 5, what="first batch in flight")
        sender.put(points[5:])  # 20 more while the first request is retried: 10 fit
        assert sender.stats["failed_sends"] == 0  # MLflow is still retrying the first request
        assert [m.step for m in sender.pending()] == [0, 1, 2, 3, 4, *range(15, 25)]
        assert sender.stats["dropped"] == 10 and sender.stats["max_buffered"] == 25
        assert sender.close(timeout=0.0) == 15
    warnings = [r.getMessage() for r in caplog.records]
    full = [w for w in warnings if "buffer full (10 points)" in w]
    assert len(full) == 1 and "max_buffered" not in full[0], warnings  # no setting the user cannot reach
    assert any("15 metric points of run" in w and "were not sent" in w for w in warnings), warnings
    with pytest.raises(ValueError, match="max_buffered must be >= 1"):
        MetricSender(client, "0" * 32, max_buffered=0)


class _Switchable(MlflowClient):
    """A real sqlite-backed client whose ``log_batch`` fails while ``down`` is set (a server outage
    without a server: the restart test below has the real one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.down = threading.Event()

    def log_batch(self, *args, **kwargs):
        if self.down.is_set():
            raise ConnectionError("server down")
        return super().log_batch(*args, **kwargs)


def test_two_outages_are_counted_and_their_lengths_add_up(tmp_path, caplog):
    """Each outage is warned about once when it starts and once when it ends (with how long it lasted
    and how many points were sent late); ``stats`` counts the outages and sums their lengths, and
    every point reaches the run with its step and timestamp."""
    client = _Switchable(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("outages")).info.run_id
    sender = MetricSender(client, run_id, retry_s=(0.01, 0.02))
    lengths = []
    with caplog.at_level(logging.WARNING, logger="dit_core.tracking"):
        for outage in range(2):
            t0 = time.monotonic()  # before the outage: the sender's own start of it comes later
            client.down.set()
            sender.put(
                [Metric("loss", float(s), 1000 + s, s) for s in (3 * outage, 3 * outage + 1, 3 * outage + 2)]
            )
            _wait(lambda n=outage: sender.stats["outages"] == n + 1, what="outage noticed")
            time.sleep(0.2)
            client.down.clear()
            _wait(lambda: not sender.pending(), what="points sent")
            lengths.append(time.monotonic() - t0)
            assert sender.stats["late"] == 3
        assert sender.close() == 0
    assert sender.stats["outages"] == 2 and sender.stats["sent"] == 6
    # each outage lasts at least the 0.2 s slept after the sender noticed it, and at most from before it
    # began (t0) until the test saw every point sent: both hold on any machine, however loaded
    assert 0.4 <= sender.stats["outage_s"] <= sum(lengths)
    warnings = [r.getMessage() for r in caplog.records]
    down = [w for w in warnings if "is unreachable" in w]
    assert len(down) == 2 and all(
        w.endswith("is unreachable (ConnectionError: server down); training continues, metrics are "
                   "buffered (3 now, at most 100000) and retried") for w in down
    ), down  # fmt: skip
    back = [w for w in warnings if "reachable again" in w]
    assert len(back) == 2 and all(w.endswith(" s; sending 3 buffered metric points") for w in back)
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value, m.timestamp) for m in history) == [
        (s, float(s), 1000 + s) for s in range(6)
    ]


def test_resumed_run_logs_each_step_once_and_a_run_whose_id_was_lost_is_found(tmp_path):
    """A resumed tracker skips (key, step) pairs already on the server, including requeued points
    from a checkpoint; a job killed after creating its run but before saving the id continues that
    run through ``<out>/mlflow_run_key``; ``reuse_saved_id=False`` starts a new one."""
    exp = f"faults-trk-{tmp_path.name}"
    t1 = RunTracker.start(uri=None, experiment=exp, out_dir=tmp_path)
    for step in (1, 2, 3):
        t1.log_metrics({"a": float(step)}, step)
    t1.log_metrics({"a": 99.0}, 3)  # same (key, step) in the same run: skipped
    assert t1.flush(timeout=60) == 0 and t1.skipped == 1
    t1.finish("preempted")

    (tmp_path / RUN_ID_FILE).unlink()  # as if killed before the id was saved
    t2 = RunTracker.start(uri=None, experiment=exp, out_dir=tmp_path)
    assert t2.run_id == t1.run_id and t2.resumed
    t2.log_metrics({"a": 30.0}, 3)  # replayed after the checkpoint: already on the server
    t2.log_metrics({"a": 4.0}, 4)
    t2.requeue([["a", 20.0, 0, 2], ["a", 5.0, 0, 5]])  # unsent points of a checkpoint
    t2.finish("finished")
    client = MlflowClient()
    history = sorted((m.step, m.value) for m in client.get_metric_history(t1.run_id, "a"))
    assert history == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)]
    assert t2.skipped == 2
    exp_id = client.get_experiment_by_name(exp).experiment_id
    key = (tmp_path / RUN_KEY_FILE).read_text().strip()
    assert client.get_run(t1.run_id).data.tags[RUN_KEY_TAG] == key
    assert len(client.search_runs([exp_id])) == 1

    t3 = RunTracker.start(uri=None, experiment=exp, out_dir=tmp_path, reuse_saved_id=False)
    assert t3.run_id != t1.run_id and not t3.resumed
    t3.finish("finished")
    assert (tmp_path / RUN_KEY_FILE).read_text().strip() != key
    assert len(client.search_runs([exp_id])) == 2


# ---------------------------------------------------------------------- a real server, restarted


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlflow_server_restart_mid_run_loses_no_metric(tmp_path, monkeypatch, caplog, artifacts_dir):
    """Train 60 steps logging every step against a real server; at step 10 the server is stopped and
    started again on the same port; training goes on meanwhile. Afterwards the experiment holds one
    FINISHED run with every metric at every expected step exactly once, with exact values."""
    from dit_core.tracking import FIXED_COST_METRICS
    from dit_core.trainer.loop import Trainer

    # MLflow's own retries would only delay the late points (see MetricSender); leave it to ours
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store, port = tmp_path / "server", free_port()
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    steps, stop_at, resume_at, val_every = 60, 10, 40, 5
    server = {"proc": start_mlflow_server(store, timeout_s=120.0, port=port)[0]}
    down, up = threading.Event(), threading.Event()
    times: dict[str, float] = {}

    def restart():
        times["stop"] = time.monotonic()
        stop_mlflow_server(server["proc"])
        times["down"] = time.monotonic()
        down.set()
        server["proc"] = start_mlflow_server(store, timeout_s=120.0, port=port)[0]
        times["up"] = time.monotonic()
        up.set()

    overrides = {"tracking.uri": uri, "tracking.experiment": "restart", "log_every": 1,
                 "eval.val_every": val_every}  # fmt: skip
    cfg = tiny_config(tmp_path / "run", steps=steps, **overrides)
    restarter = threading.Thread(target=restart, daemon=True)
    steps_while_down = []
    try:
        with one_thread():
            trainer = Trainer(cfg)
            real_step = trainer.train_step

            def train_step():
                real_step()
                if trainer.step == stop_at:
                    restarter.start()
                    assert down.wait(60), "the server did not stop"
                elif trainer.step == resume_at:
                    assert up.wait(300), "the server did not come back"
                if down.is_set() and not up.is_set():
                    steps_while_down.append(trainer.step)

            trainer.train_step = train_step
            with caplog.at_level(logging.WARNING, logger="dit_core.tracking"):
                result = trainer.run(progress_bar=False)
    finally:
        restarter.join(timeout=300)

    try:
        client = MlflowClient(tracking_uri=uri)
        assert result.status == "finished" and result.step == steps
        runs = client.search_runs([client.get_experiment_by_name("restart").experiment_id])
        assert [r.info.run_id for r in runs] == [result.run_id]  # not duplicated
        assert runs[0].info.status == "FINISHED" and runs[0].data.tags["status"] == "finished"
        every = list(range(1, steps + 1))
        vals = list(range(0, steps + 1, val_every))
        expected = {"train/loss": every, "lr": every, "perf/images_per_s": every, "val/loss": vals,
                    "compute/train_flops": [0, *every], "data/images_seen": [0, *every],
                    "data/unique_images": [0, *every], "data/epochs": [0, *every],
                    **dict.fromkeys(FIXED_COST_METRICS, [steps])}  # fmt: skip
        got = {k: sorted(client.get_metric_history(result.run_id, k), key=lambda m: m.step) for k in expected}
        assert set(runs[0].data.metrics) == set(expected)
        for key, want in expected.items():
            assert [m.step for m in got[key]] == want, f"{key}: steps lost or duplicated"
        fpi = trainer.fpi
        assert all(m.value == 8 * m.step for m in got["data/images_seen"])
        assert all(m.value == pytest.approx(fpi * 8 * m.step, rel=1e-12) for m in got["compute/train_flops"])
        points = sum(len(v) for v in got.values())
        assert points == sum(len(v) for v in expected.values())
    finally:
        stop_mlflow_server(server["proc"])

    stats = trainer.tracker.sender.stats
    downtime = times["up"] - times["stop"]
    epoch_ms = {k: 1000 * (time.time() - time.monotonic() + t) for k, t in times.items()}
    during = sum(epoch_ms["down"] <= m.timestamp <= epoch_ms["up"] for v in got.values() for m in v)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("is unreachable" in w for w in warnings) and any("reachable again" in w for w in warnings)
    assert stats["outages"] >= 1 and stats["dropped"] == 0 and stats["failed_sends"] >= 1
    assert len(steps_while_down) >= 5, f"training did not go on while the server was down: {steps_while_down}"
    figures = {
        "downtime_s": round(downtime, 1), "steps_trained_while_down": len(steps_while_down),
        "points_logged_while_down": during, "max_points_buffered": stats["max_buffered"],
        "failed_sends": stats["failed_sends"], "outage_seen_by_sender_s": round(stats["outage_s"], 1),
        "metric_points_expected": sum(len(v) for v in expected.values()), "metric_points_on_server": points,
        "points_lost": sum(len(v) for v in expected.values()) - points, "runs": len(runs),
    }  # fmt: skip
    (artifacts_dir / "faults_server_restart.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    assert during >= 5 * (len(steps_while_down) - 1)  # 5 metrics a step, all logged while down arrived
