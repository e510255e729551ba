"""The check of a tracking store before a run or a sweep (`dit_core.tracking.check_tracking_server`) ends
by one deadline, whatever the server does, and refuses at once an sqlite store no folder can hold.
Before session 43: a server that answered ``/health`` slowly and then hung on the store probe cost two
timeouts; one that trickled its answer (a byte at a time, headers or body) was not bounded at all (a
socket timeout bounds each read, not the answer); and as root a ``sqlite:////proc/mlflow.db`` passed the
check, then MLflow retried opening it for ~110 s and died in a traceback. Each test failed before."""

from __future__ import annotations

import http.server
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
from _train_helpers import run_main
from mlflow.utils import credentials, rest_utils  # noqa: F401 - the check imports them: not timed
from test_http500_s41 import COMMANDS, scratch_dir, serve

from dit_core import tracking
from dit_core.tracking import check_tracking_server

T = 0.5  # the commands' check timeout here (s)
DRIP_S = 0.1  # a trickling server's pause between two bytes (s): far below any read timeout here


class Server:
    """A local HTTP server: ``/health`` answers 200 after ``health_delay_s``; ``/health`` (``trickle`` =
    "health_headers") or the store probe ("store_headers", "store_body") trickles an endless answer, one
    byte per `DRIP_S`; else the store probe hangs. Every request waits at most until `close`. Records
    the paths asked."""

    def __init__(self, trickle: str = "", health_delay_s: float = 0.0):
        self.stop, self.paths = threading.Event(), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = self.path.split("?")[0]
                outer.paths.append(path)
                kind = "health" if path == "/health" else "store"
                try:
                    if kind == "health" and trickle != "health_headers":
                        outer.stop.wait(health_delay_s)
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                    elif trickle in (f"{kind}_headers", f"{kind}_body"):
                        head = b"HTTP/1.1 200 OK\r\n"
                        head += (
                            b"Content-Length: 1000000000\r\n\r\n" if trickle.endswith("body") else b"X-A: "
                        )
                        self.wfile.write(head)
                        while not outer.stop.wait(DRIP_S):
                            self.wfile.write(b"a")
                    else:
                        outer.stop.wait(60)
                except OSError:  # the client hung up
                    pass
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd, self.url = serve(Handler)

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _check_in_thread(url: str, timeout_s: float, wait_s: float) -> tuple[str | None, float]:
    """(the check's error, None if it raised none; seconds it took), the check run in a thread given
    ``wait_s`` to end: a check that does not end fails the test instead of hanging it."""
    out: dict = {}

    def run():
        try:
            check_tracking_server(url, "HINT", timeout_s)
            out["error"] = None
        except ValueError as e:
            out["error"] = str(e)

    t0 = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(wait_s)
    assert not worker.is_alive(), f"the check of {url} did not end in {wait_s} s (its timeout: {timeout_s} s)"
    return out["error"], time.monotonic() - t0


HUNG = "did not answer within 1 s (GET /health): it accepts connections but sends no answer, or only part"
STORE = f"is up (/health answered) but its store did not answer within 1 s (GET {tracking.STORE_PROBE})"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("trickle", ["health_headers", "store_headers", "store_body"])
def test_a_server_that_trickles_its_answer_is_refused_by_the_deadline(trickle):
    """A byte every 0.1 s never lets a 1 s read timeout fire: the check waited for ever (here the test's
    4 s); now the check's deadline ends it, naming the request that did not finish."""
    server = Server(trickle)
    try:
        msg, _ = _check_in_thread(server.url, 1.0, 4.0)
    finally:
        server.close()
    assert msg is not None and msg.startswith(f"MLflow tracking server {server.url} "), msg
    assert (HUNG if trickle == "health_headers" else STORE) in msg and "unreachable" not in msg, msg
    assert server.paths == ["/health"] + [tracking.STORE_PROBE] * trickle.startswith("store"), server.paths


@pytest.mark.timeout(60)
def test_a_slow_health_and_a_hung_store_share_one_deadline(monkeypatch):
    """/health answering after 1.5 s of a 2 s timeout, then a store probe that hangs, took 1.5 + 2 s (the
    probe got a timeout of its own); now the probe gets what is left of the check's 2 s: at most 0.5 s,
    since /health took 1.5 s of it. Read from the timeout the probe is given, not timed: a bound of
    2.75 s on the whole check had 0.75 s of slack for a loaded CI machine."""
    given: list[float] = []
    real = rest_utils.http_request

    def spy(*args, **kwargs):
        given.append(kwargs["timeout"])
        return real(*args, **kwargs)

    monkeypatch.setattr(rest_utils, "http_request", spy)
    server = Server(health_delay_s=1.5)
    try:
        msg, _ = _check_in_thread(server.url, 2.0, 8.0)  # bounded: fails if the check outlives 8 s
    finally:
        server.close()
    assert msg is not None and STORE.replace("1 s", "2 s") in msg, msg
    assert server.paths == ["/health", tracking.STORE_PROBE]
    assert len(given) == 1 and 0 < given[0] <= 2.0 - 1.5, given  # one deadline: before, the probe had 2 s


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "CHECK_TIMEOUT_S", T)
    return scratch_dir(tmp_path, monkeypatch)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cli", list(COMMANDS))
def test_the_commands_refuse_a_trickling_store_with_exit_2(scratch, capsys, cli):
    server = Server("store_body")
    try:
        main, argv = COMMANDS[cli]
        code, err = run_main(capsys, main, ["--tracking-uri", server.url, *argv])
    finally:
        server.close()
    assert code == 2, err
    assert err.startswith(
        f"error: MLflow tracking server {server.url} is up (/health answered) but its store"
    )
    assert "did not answer within 0.5 s" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in Path.cwd().iterdir()) == []  # nothing created


# --- sqlite stores in a folder that cannot hold one ---------------------------------------------------


def _no_store(path) -> str:
    return f"{path}: no MLflow store can be made there, "


def test_a_store_in_proc_is_refused_even_for_root():
    """/proc's permission bits let root write (os.access says yes), yet no file can be made there: MLflow
    retried opening the database for ~110 s, then died in an SQLAlchemy traceback."""
    for store in (Path("/proc/mlflow.db"), Path("/proc/nosuch/sub/mlflow.db")):
        with pytest.raises(ValueError) as e:
            check_tracking_server(f"sqlite:///{store}", "HINT")
        assert str(e.value).startswith(_no_store(store) + "/proc "), e.value
        assert "sqlite:///path/to/mlflow.db" in str(e.value)


def test_a_folder_that_refuses_new_files_is_refused_however_it_refuses(tmp_path, monkeypatch):
    """Not only /proc: any folder where a new file cannot be made although access() says it can (a
    full disk, an immutable folder, root on sysfs); faked here by the file's creation failing."""

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(ValueError) as e:
        check_tracking_server(f"sqlite:///{tmp_path}/new/mlflow.db", "HINT")
    assert str(e.value).startswith(
        _no_store(tmp_path / "new/mlflow.db") + f"{tmp_path} cannot hold files (Operation not permitted); "
    ), e.value
    assert os.listdir(tmp_path) == []


def test_a_file_in_the_way_of_the_store_folder_is_refused(tmp_path):
    """``sqlite:///notes.txt/mlflow.db``: MLflow died in a FileExistsError traceback making the folder."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as e:
        check_tracking_server(f"sqlite:///{tmp_path}/notes.txt/sub/mlflow.db", "HINT")
    assert str(e.value).startswith(
        _no_store(tmp_path / "notes.txt/sub/mlflow.db") + f"{tmp_path / 'notes.txt'} is a file, not a folder;"
    ), e.value


def test_a_store_where_it_can_be_made_still_passes_and_leaves_nothing(tmp_path):
    check_tracking_server(f"sqlite:///{tmp_path}/a/b/mlflow.db", "HINT")
    check_tracking_server(f"sqlite:///{tmp_path}/mlflow.db", "HINT")
    assert os.listdir(tmp_path) == []  # the probe's file is gone


@pytest.mark.timeout(60)  # MLflow's own retries took ~110 s
@pytest.mark.parametrize("cli", list(COMMANDS))
def test_the_commands_refuse_a_store_under_proc_with_exit_2(scratch, capsys, cli):
    main, argv = COMMANDS[cli]
    code, err = run_main(capsys, main, ["--tracking-uri", "sqlite:////proc/nosuch/mlflow.db", *argv])
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: " + _no_store("/proc/nosuch/mlflow.db") + "/proc "), err
    assert err.count("\n") == 1, err
    assert sorted(p.name for p in Path.cwd().iterdir()) == []
