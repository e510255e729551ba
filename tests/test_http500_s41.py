"""An MLflow server that is up but failing (HTTP 5xx: e.g. its database is down) is refused at the
first contact, in seconds, with exit 2, by the three commands that open the store. Before session 41
the launcher, the trainer and fit_scaling waited through MLflow's HTTP retries (~4.4 min) when the
server's ``/health`` answered 200 and its API 500, as a real ``mlflow server`` does without its
database."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from _train_helpers import run_main

from analysis import fit_scaling
from dit_core.tracking import check_tracking_server
from dit_core.trainer import cli as train_cli
from sweeps import launch


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.ThreadingHTTPServer, str]:
    """(server, its URL): ``handler`` served on a free local port by a daemon thread, each request in a
    daemon thread of its own (a handler left waiting does not keep the test process alive)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


class FakeServer:
    """A local HTTP server answering ``answers[path]`` (status, JSON body) in turn, the last one for
    ever after; paths not listed answer ``other``. Records (method, path, Authorization) of each request."""

    def __init__(
        self, answers: dict[str, list[tuple[int, dict]]], other=(500, {"error_code": "INTERNAL_ERROR"})
    ):
        self.answers, self.other, self.hits = answers, other, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                path = self.path.split("?")[0]
                outer.hits.append((self.command, path, self.headers.get("Authorization")))
                queue = outer.answers.get(path, [outer.other])
                status, body = queue.pop(0) if len(queue) > 1 else queue[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd, self.url = serve(Handler)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


STORE_PROBE = "/api/2.0/mlflow/experiments/search"  # the read dit_core.tracking probes the store with
DB_DOWN = '(psycopg2.OperationalError) connection to server at "127.0.0.1", port 5432 failed'
MODES = {
    "all": {},  # 500 to everything, /health included
    "health_ok": {
        "/health": [(200, {})],
        STORE_PROBE: [(500, {"error_code": "INTERNAL_ERROR", "message": DB_DOWN + "\n(Background: ...)"})],
    },
}


@pytest.fixture(params=list(MODES))
def broken(request):
    server = FakeServer({k: list(v) for k, v in MODES[request.param].items()})
    server.mode = request.param
    yield server
    server.close()


def scratch_dir(tmp_path, monkeypatch):
    """A fresh working folder, no ``MLFLOW_TRACKING_URI``, CPU only (also test_srvchk_s42's)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    return scratch_dir(tmp_path, monkeypatch)


COMMANDS = {
    "launch": (launch.main, ["--executor", "debug", "--grid", "S", "--patch", "8", "--budgets", "1e12"]),
    "train": (train_cli.main, ["--model", "DiT-S/8", "--max-steps", "2"]),
    "fit_scaling": (fit_scaling.main, ["--experiment", "nosuch", "--out", "report"]),
}


@pytest.mark.timeout(60)  # MLflow's retries took ~4.4 min here
@pytest.mark.parametrize("cli", list(COMMANDS))
def test_a_failing_server_is_refused_at_once_with_exit_2(broken, scratch, capsys, cli):
    main, argv = COMMANDS[cli]
    code, err = run_main(capsys, main, ["--tracking-uri", broken.url, *argv])
    assert code == 2, err
    want = f"error: MLflow tracking server {broken.url} answers HTTP 500"
    assert err.startswith(want), err
    assert "the server is up but its store fails (e.g. its database is down" in err and "server's log" in err
    assert "Traceback" not in err
    if broken.mode == "health_ok":
        assert f"HTTP 500 ({DB_DOWN}): " in err  # the first line of the server's own words
    assert err.count("\n") == 1, err  # one line
    assert sorted(p.name for p in Path.cwd().iterdir()) == []  # nothing created
    paths = [p for _, p, _ in broken.hits]
    assert paths == ["/health"] + [STORE_PROBE] * (broken.mode == "health_ok"), paths  # no retries


def test_the_probe_sends_mlflows_credentials_and_leaves_other_answers_to_mlflow(monkeypatch):
    """A basic-auth server's 401 (no or wrong credentials) is MLflow's to report, as before; the
    probe carries MLFLOW_TRACKING_USERNAME / _PASSWORD as MLflow's requests do."""
    server = FakeServer({"/health": [(200, {})], STORE_PROBE: [(401, {"error_code": "UNAUTHENTICATED"})]})
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
        check_tracking_server(server.url, "hint")  # no error
        assert server.hits[-1][1] == STORE_PROBE and server.hits[-1][2] == "Basic YW5uOnNlY3JldA=="
    finally:
        server.close()


def test_a_health_5xx_is_no_longer_called_unreachable():
    server = FakeServer({"/health": [(503, {})]})
    try:
        with pytest.raises(ValueError, match=r"answers HTTP 503: the server is up but its store fails") as e:
            check_tracking_server(server.url, "hint")
        assert "unreachable" not in str(e.value)
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_requests_after_the_probe_keep_mlflows_retries():
    """Only the probe skips MLflow's retries: a run's requests still ride out a passing 500
    (dit_core.tracking's metric sender relies on them)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    ok = (200, {"experiments": []})
    path = "/api/2.0/mlflow/experiments/get-by-name"
    server = FakeServer({"/health": [(200, {})], STORE_PROBE: [ok], path: [(500, {}), (200, {})]})
    try:
        check_tracking_server(server.url, "hint")
        r = http_request(get_default_host_creds(server.url), path, "GET", params={"experiment_name": "x"})
        assert r.status_code == 200
        assert [p for _, p, _ in server.hits] == ["/health", STORE_PROBE, path, path]
    finally:
        server.close()


DAMAGED = "(sqlite3.DatabaseError) file is not a database"


@pytest.mark.parametrize("cli", list(COMMANDS))
def test_a_store_that_mlflow_answers_400_is_refused_without_a_traceback(scratch, capsys, cli):
    """MLflow answers 400 (BAD_REQUEST) when its database raises e.g. "file is not a database": no
    retries, but the trainer and fit_scaling died in a RestException traceback (exit 1), the launcher
    after creating sweep_runs/."""
    server = FakeServer(
        {"/health": [(200, {})]}, other=(400, {"error_code": "BAD_REQUEST", "message": DAMAGED})
    )
    try:
        main, argv = COMMANDS[cli]
        code, err = run_main(capsys, main, ["--tracking-uri", server.url, *argv])
        assert code == 2, err
        assert err == (
            f"error: MLflow tracking server {server.url} answers HTTP 400 ({DAMAGED}): the server is up but "
            "its store fails (e.g. its database is down, damaged, full or locked); see the server's log, fix "
            "it or restart the server, then run this again\n"
        )
        assert sorted(p.name for p in Path.cwd().iterdir()) == []
    finally:
        server.close()
