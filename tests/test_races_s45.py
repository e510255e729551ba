"""Session 45, helper "races": the shared server helpers survive a port taken between `free_port` choosing
it and the server binding it (another process's bind or outgoing connection, in the seconds a server's
imports take), instead of failing the test that asked for a server (docs/testing.md, "Session 45")."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

import conftest
import pytest
from _pg_server import PortTaken, wait_until_healthy

EXIT_WITH = "import sys; print(sys.argv[1], flush=True); sys.exit(1)"


def _exits_saying(text: str, log) -> subprocess.Popen:
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-c", EXIT_WITH, text], stdout=f, stderr=subprocess.STDOUT)
    proc.wait(timeout=60)
    return proc


def test_a_server_that_exits_on_a_taken_port_is_told_from_other_exits(tmp_path):
    """uvicorn's words for a taken port make `PortTaken` (retried by the callers); any other early exit
    stays a RuntimeError; only this start's part of the log counts (a restart appends to it)."""
    log = tmp_path / "server.log"
    url = f"http://127.0.0.1:{conftest.free_port()}"
    taken = (
        "ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 1): address already in use"
    )
    with pytest.raises(PortTaken, match="address already in use"):
        wait_until_healthy(_exits_saying(taken, log), url, log, 0, timeout_s=60)
    since = log.stat().st_size
    with pytest.raises(RuntimeError, match="exited early") as e:
        wait_until_healthy(_exits_saying("ImportError: no module", log), url, log, since, timeout_s=60)
    assert not isinstance(e.value, PortTaken) and "already in use" not in str(e.value)


@pytest.mark.server
@pytest.mark.timeout(300)
def test_a_port_taken_before_the_server_binds_it_is_replaced_by_another(tmp_path, monkeypatch):
    """The first port `free_port` gives is bound by someone else (here: this test, never listening) by the
    time the server binds: the helper starts it again on another free port (before: "mlflow server exited
    early ... address already in use", the asking test failed)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    held = holder.getsockname()[1]
    ports, real = [held], conftest.free_port
    monkeypatch.setattr(conftest, "free_port", lambda: ports.pop() if ports else real())
    try:
        proc, url = conftest.start_mlflow_server(tmp_path / "server")
    finally:
        holder.close()
    try:
        assert not url.endswith(f":{held}"), url
        assert "address already in use" in (tmp_path / "server" / "server.log").read_text()
        with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
            assert r.status == 200
    finally:
        conftest.stop_mlflow_server(proc)
