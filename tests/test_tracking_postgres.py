"""Many writers against the PostgreSQL-backed `mlflow server` (`pg_mlflow_server` in conftest.py).

Every writer is a real process that logs through the trainer's own path (`RunTracker`, whose
`MetricSender` batches points from a thread) and, in between, single points with
``MlflowClient.log_metric`` (one request each), all at the same time; every point is then counted
back from the server.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.server, pytest.mark.postgres, pytest.mark.slow]

WRITER = r"""
import sys, time
from pathlib import Path
from dit_core.tracking import RunTracker

url, exp, go = sys.argv[1], sys.argv[2], Path(sys.argv[6])
idx, steps, single = (int(a) for a in sys.argv[3:6])
tracker = RunTracker.start(uri=url, experiment=exp, run_name=f"writer{idx}", tags={"writer": str(idx)})
while not go.exists():  # all writers start together
    time.sleep(0.01)
for step in range(1, steps + 1):
    points = {"train/loss": idx + 1.0 / step, "lr": step * 1e-4, "data/images_seen": 8 * step}
    tracker.log_metrics(points, step)
    if step <= single:
        tracker.client.log_metric(tracker.run_id, "single", float(idx * 1000 + step), step=step)
left = tracker.flush(120)
tracker.finish("finished")
print("RESULT", left, tracker.sender.stats["dropped"])
"""


def test_concurrent_writer_processes_lose_no_metric_point(pg_mlflow_server, tmp_path):
    n, steps, single = 8, 400, 40
    url, exp = pg_mlflow_server.url, f"writers-{tmp_path.name}"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, exp, str(i), str(steps), str(single), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": url},
        )
        for i in range(n)
    ]
    client = MlflowClient(url)
    deadline = time.monotonic() + 120  # every writer has created its run before they all start
    while time.monotonic() < deadline:
        e = client.get_experiment_by_name(exp)
        if e is not None and len(client.search_runs([e.experiment_id])) == n:
            break
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll()]
        time.sleep(0.2)
    Path(go).touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert out.splitlines()[-1].split() == ["RESULT", "0", "0"], out[-2000:]

    exp_id = client.get_experiment_by_name(exp).experiment_id
    runs = client.search_runs([exp_id], max_results=100)
    assert sorted(r.data.tags["writer"] for r in runs) == sorted(str(i) for i in range(n))
    total = 0
    for r in runs:
        idx = int(r.data.tags["writer"])
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "finished"
        for key, value, count in (
            ("train/loss", lambda s, idx=idx: idx + 1.0 / s, steps),
            ("lr", lambda s: s * 1e-4, steps),
            ("data/images_seen", lambda s: 8.0 * s, steps),
            ("single", lambda s, idx=idx: float(idx * 1000 + s), single),
        ):
            hist = client.get_metric_history(r.info.run_id, key)
            got = sorted((m.step, m.value) for m in hist)
            assert [s for s, _ in got] == list(range(1, count + 1)), (idx, key, len(got))
            for s, v in got:
                assert abs(v - value(s)) <= 1e-9 * max(1.0, abs(v)), (idx, key, s, v)
            total += len(got)
    assert total == n * (3 * steps + single)
