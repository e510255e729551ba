"""Session 46 (lead): a tracking URI whose address another HTTP server holds. The launcher, the
trainer and the analysis called it "unreachable (File not found)"; it answers, but not as MLflow."""

from __future__ import annotations

import http.server
import threading

import pytest
from _pg_server import free_port

from dit_core.tracking import check_tracking_server


@pytest.fixture
def other_http_server():
    """A real HTTP server that is not MLflow (Python's file server), on a free local port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_address_held_by_another_http_server_is_named_so(other_http_server):
    with pytest.raises(ValueError) as e:
        check_tracking_server(other_http_server, "HINT", timeout_s=30)
    msg = str(e.value)
    assert "GET /health answers HTTP 404" in msg and "another program holds that address" in msg, msg
    assert "unreachable" not in msg and msg.endswith("; HINT"), msg


def test_a_closed_port_is_still_unreachable():
    with pytest.raises(ValueError, match=r"is unreachable \(.*\); HINT$"):
        check_tracking_server(f"http://127.0.0.1:{free_port()}", "HINT", timeout_s=30)
