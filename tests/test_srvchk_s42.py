"""A tracking server that does not answer in time is named for what it is, at the first contact, in one
timeout, with exit 2 and nothing created. Before session 42 both cases read "is unreachable (timed
out)", which sends the user to the network: a server that accepts connections but never answers
(stuck, stopped, overloaded), and a live server (``/health`` 200) whose store does not answer, as a
real sqlite-backed `mlflow server` does while another process holds its database locked (it answers
503 "database is locked" only after SQLite's 20 s busy wait)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _train_helpers import run_main
from conftest import start_mlflow_server, stop_mlflow_server
from mlflow.utils import credentials, rest_utils  # noqa: F401 - the store probe imports them: not timed
from test_http500_s41 import COMMANDS, scratch_dir, serve

from dit_core import tracking
from dit_core.tracking import check_tracking_server
from dit_core.trainer import cli as train_cli

T = 0.5  # the commands' check timeout here (s)
T1 = 1.0  # the direct checks' timeout: a timing bound with a second of slack on a busy machine


class HungServer:
    """A TCP listener on 127.0.0.1 that accepts each connection and never answers it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:  # closed
                return

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


class LiveHealthHungStore:
    """An HTTP server whose ``/health`` answers 200 at once while every other path (the store probe)
    waits until `close`: a live MLflow server whose database does not answer. Records the paths asked."""

    def __init__(self):
        self.release, self.paths = threading.Event(), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path.split("?")[0])
                if self.path != "/health":
                    outer.release.wait(30)
                    return  # closed unanswered
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.httpd, self.url = serve(Handler)

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


SERVERS = {"hung": HungServer, "store_hung": LiveHealthHungStore}


@pytest.fixture(params=list(SERVERS))
def slow(request):
    server = SERVERS[request.param]()
    server.kind = request.param
    yield server
    server.close()


def _timed_check(url: str, timeout_s: float) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(ValueError) as e:
        check_tracking_server(url, "HINT", timeout_s)
    return str(e.value), time.monotonic() - t0


def test_a_server_that_accepts_but_never_answers_is_refused_after_one_timeout():
    server = HungServer()
    try:
        msg, _ = _timed_check(server.url, T1)
    finally:
        server.close()
    assert msg == (
        f"MLflow tracking server {server.url} did not answer within {T1:g} s (GET /health): it accepts "
        "connections but sends no answer, or only part of one (stuck, stopped or overloaded?); HINT"
    )
    assert len(server.accepted) == 1  # one request: no store probe after a hung /health (no timing: s43)


def test_a_live_server_whose_store_does_not_answer_says_so_not_unreachable():
    server = LiveHealthHungStore()
    try:
        msg, _ = _timed_check(server.url, T1)
    finally:
        server.close()
    assert msg.startswith(
        f"MLflow tracking server {server.url} is up (/health answered) but its store did not answer "
        f"within {T1:g} s (GET {tracking.STORE_PROBE}): its database is locked, overloaded or down;"
    ), msg
    assert "unreachable" not in msg and "restart the server" in msg
    assert server.paths == ["/health", tracking.STORE_PROBE]  # one probe, not retried


def test_a_connect_that_times_out_is_still_called_unreachable():
    """No connection in time (a full accept queue here: Linux drops the SYN, as a firewall or a down
    host does) is the network's or the host's, not a hung server's: "unreachable", as before."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as s:
        first = socket.create_connection(s.getsockname())  # fills the queue: nobody accepts
        try:
            msg, took = _timed_check(f"http://127.0.0.1:{s.getsockname()[1]}", T1)
        finally:
            first.close()
    assert "is unreachable (timed out); HINT" in msg and "did not answer" not in msg, msg
    assert took < 10 * T1, took  # bounded, not the OS's ~2 min of SYN retries (generous: a loaded machine)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "CHECK_TIMEOUT_S", T)
    return scratch_dir(tmp_path, monkeypatch)


SAYS = {
    "hung": "did not answer within 0.5 s (GET /health)",
    "store_hung": "its store did not answer within 0.5 s",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cli", list(COMMANDS))
def test_the_commands_refuse_a_slow_server_with_exit_2_in_one_timeout(slow, scratch, capsys, cli):
    """The message's 0.5 s is the check's deadline: the commands use `CHECK_TIMEOUT_S` (no timing: s43)."""
    main, argv = COMMANDS[cli]
    code, err = run_main(capsys, main, ["--tracking-uri", slow.url, *argv])
    assert code == 2, err
    assert err.startswith(f"error: MLflow tracking server {slow.url} "), err
    assert SAYS[slow.kind] in err and "unreachable" not in err and err.count("\n") == 1, err
    assert sorted(p.name for p in Path.cwd().iterdir()) == []  # nothing created
    assert slow.kind != "store_hung" or slow.paths == ["/health", tracking.STORE_PROBE]
    assert slow.kind != "hung" or len(slow.accepted) == 1


LOCKER = """\
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.server  # ~20 s here, nearly all of it the server's start
@pytest.mark.timeout(180)
def test_a_real_sqlite_server_whose_database_another_process_locks(tmp_path, scratch, capsys):
    """A real `mlflow server` over sqlite, its file held by another process's ``BEGIN EXCLUSIVE``:
    `/health` answers 200 at once, the store probe hangs in SQLite's busy wait (20 s, then 503)."""
    store = tmp_path / "store"
    proc, url = start_mlflow_server(store)
    try:
        check_tracking_server(url, "HINT", 60.0)  # up and well (its first read is slow: no short timeout)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(store / "mlflow.db")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert locker.stdout.readline() == "locked\n"
            msg, took = _timed_check(url, 1.0)
            assert "is up (/health answered) but its store did not answer within 1 s" in msg, msg
            assert 1.0 <= took < 10.0, took  # the deadline, not SQLite's 20 s busy wait (generous: load)
            code, err = run_main(capsys, train_cli.main, ["--tracking-uri", url, "--model", "DiT-S/8"])
            assert code == 2 and "its store did not answer within 0.5 s" in err, err
            assert sorted(p.name for p in Path.cwd().iterdir()) == []
        finally:
            locker.stdin.close()  # ends the lock; the server's waiting reads then finish
            locker.wait(timeout=30)
        check_tracking_server(url, "HINT", 60.0)  # well again
    finally:
        stop_mlflow_server(proc)
