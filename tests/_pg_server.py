"""A real `mlflow server` backed by PostgreSQL, for tests and `benchmarks/sweep_scale.py`.

PostgreSQL itself is started by ``bash slurm/mlflow-db.sh up`` (CI: ``.ci/run``); its role may create
databases, so every user of this module gets a fresh database (no state shared between sessions).
``DITSCALE_PG_URI`` names the server and role (default: the role the script creates).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PG_URI = "postgresql://ditscale:ditscale@127.0.0.1:5432/mlflow"


def pg_uri() -> str:
    return os.environ.get("DITSCALE_PG_URI", DEFAULT_PG_URI)


def _with_db(uri: str, db: str) -> str:
    p = urlsplit(uri)
    return urlunsplit((p.scheme, p.netloc, f"/{db}", "", ""))


def pg_status(uri: str | None = None) -> str:
    """ "" when PostgreSQL answers at ``uri`` with the role's password, else why not."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[test]')"
    try:
        psycopg2.connect(uri or pg_uri(), connect_timeout=5).close()
    except psycopg2.Error as e:
        host = urlsplit(uri or pg_uri()).hostname
        return f"PostgreSQL at {host} unreachable ({str(e).strip()[:200]}): run `bash slurm/mlflow-db.sh up`"
    return ""


def _admin(uri: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(uri, connect_timeout=10)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_database(prefix: str = "ditscale_test") -> str:
    """A fresh, empty database; returns its URI (``postgresql://...``)."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    _admin(pg_uri(), f'CREATE DATABASE "{name}"')
    return _with_db(pg_uri(), name)


def drop_database(uri: str) -> None:
    name = urlsplit(uri).path.lstrip("/")
    _admin(pg_uri(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    """A local port free now (the kernel's pick): another process may take it before a server binds it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """A server could not bind its port: another process took it after `free_port` chose it."""


def wait_until_healthy(proc: subprocess.Popen, url: str, log: Path, since: int, timeout_s: float) -> None:
    """Wait until ``url``/health answers 200 (the server's start takes seconds, more under load).

    RuntimeError when ``proc`` exits first, `PortTaken` when its log (from byte ``since``: the log is
    appended to across restarts) says its address was in use; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_bytes()[since:].decode(errors="replace")[-3000:]
            taken = "address already in use" in tail.lower()
            raise (PortTaken if taken else RuntimeError)(f"mlflow server exited early:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {url} did not answer /health within {timeout_s} s")


def spawn_mlflow_server(args: list[str], log_path: Path) -> tuple[subprocess.Popen, int]:
    """``python -m mlflow server ARGS`` in a session of its own, its output appended to ``log_path``,
    without the caller's ``MLFLOW_TRACKING_URI`` and job execution. Returns the process and the log's
    size before it started: where this start's lines begin (`wait_until_healthy`'s ``since``)."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    since = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        cmd = [sys.executable, "-m", "mlflow", "server", *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, since


@dataclass
class MlflowServer:
    """A running `mlflow server`: its URL, process, backend database and folder (log, artifacts)."""

    url: str
    proc: subprocess.Popen
    db_uri: str
    folder: Path

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def start_pg_mlflow_server(folder: Path, workers: int = 2, timeout_s: float = 180.0) -> MlflowServer:
    """`mlflow server` on 127.0.0.1 (a free port) over a fresh PostgreSQL database, artifacts served
    from ``folder/artifacts`` (``--artifacts-destination``); log in ``folder/server.log``. A port taken
    before the server bound it is replaced by another (3 tries)."""
    folder.mkdir(parents=True, exist_ok=True)
    db = create_database()
    for attempt in range(3):
        port = free_port()
        args = [
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--backend-store-uri", db.replace("postgresql://", "postgresql+psycopg2://", 1),
            "--artifacts-destination", str(folder / "artifacts"),
        ]  # fmt: skip
        log_path = folder / "server.log"
        proc, since = spawn_mlflow_server(args, log_path)
        server = MlflowServer(f"http://127.0.0.1:{port}", proc, db, folder)
        try:
            wait_until_healthy(proc, server.url, log_path, since, timeout_s)
            return server
        except RuntimeError as e:
            server.stop()
            if isinstance(e, PortTaken) and attempt < 2:
                continue
            drop_database(db)
            raise
    raise AssertionError("unreachable")


def stop_pg_mlflow_server(server: MlflowServer) -> None:
    server.stop()
    drop_database(server.db_uri)
