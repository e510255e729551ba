"""Shared fixtures: an isolated MLflow store per session, a real `mlflow server`, SLURM detection.

Under DITSCALE_CI=1 every skip fails (the plugin `_ci_policy`, with its allow-list ALLOWED_SKIPS).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _pg_server import PortTaken, free_port, spawn_mlflow_server, wait_until_healthy

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"

pytest_plugins = ["pytester", "_ci_policy"]

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share 2 cores: one torch thread each, in-process
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def session_mlflow_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def _isolated_mlflow(session_mlflow_dir, monkeypatch):
    """Never let a test write to ./mlflow.db: point MLflow at a per-session sqlite store."""
    if os.environ.get("DITSCALE_TEST_KEEP_URI") != "1":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_mlflow_dir}/mlflow.db")
    # A sqlite store puts artifacts under ./mlruns of the working directory unless this is set
    # (MLflow's own variable, read when a client store is created); keep them out of the checkout.
    monkeypatch.setenv("_MLFLOW_SERVER_ARTIFACT_ROOT", str(session_mlflow_dir / "artifacts"))
    yield
    # a trainer run in this process (the sweeps' debug executor, the stand-in trainer) may have called
    # mlflow.set_tracking_uri: that global outranks MLFLOW_TRACKING_URI, so a later test's MlflowClient()
    # would read this test's store while its subprocesses write the session's
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and getattr(utils, "_tracking_uri", None) is not None:
        sys.modules["mlflow"].set_tracking_uri(None)  # unsets the variable too: monkeypatch restores it


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test (creating one costs a few seconds of migrations)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def start_mlflow_server(
    store_dir: Path, timeout_s: float = 180.0, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    """Start a real `mlflow server` on 127.0.0.1 with one worker; returns (process, url).

    ``port``: a chosen port (so that a restarted server comes back where the client expects it);
    default a free one. The store and its log are appended to, so a restart keeps both. A port that
    another process took before the server bound it (`PortTaken`) is tried again, 3 times in all: a new
    free port, or the chosen one after a second. ``timeout_s``: for /health (a start takes 7-20 s, more
    on a loaded machine; the first one migrates a fresh store)."""
    for attempt in range(3):
        try:
            return _start_mlflow_server(store_dir, timeout_s, port or free_port())
        except PortTaken:
            if attempt == 2:
                raise
            time.sleep(1.0 if port else 0.0)
    raise AssertionError("unreachable")


def _start_mlflow_server(store_dir: Path, timeout_s: float, port: int) -> tuple[subprocess.Popen, str]:
    store_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{store_dir}/mlflow.db",
        "--artifacts-destination", str(store_dir / "artifacts"),
    ]  # fmt: skip
    log_path = store_dir / "server.log"
    proc, since = spawn_mlflow_server(args, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log_path, since, timeout_s)
    except RuntimeError:
        stop_mlflow_server(proc)
        raise
    return proc, url


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """URL of a real `mlflow server` on 127.0.0.1 (one worker), stopped at the end of the session."""
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield url
    stop_mlflow_server(proc)


@pytest.fixture(scope="session")
def pg_mlflow_server(tmp_path_factory):
    """A real `mlflow server` (2 workers) over a fresh PostgreSQL database, for many writers: an
    `_pg_server.MlflowServer` (``.url``). PostgreSQL comes from `bash slurm/mlflow-db.sh up`."""
    from _pg_server import pg_status, start_pg_mlflow_server, stop_pg_mlflow_server

    why = pg_status()
    if why:
        pytest.skip(why)
    server = start_pg_mlflow_server(tmp_path_factory.mktemp("pg-mlflow-server"))
    yield server
    stop_pg_mlflow_server(server)


@pytest.fixture(scope="session")
def tiny_vae():
    """A random 2-block `AutoencoderKL` (diffusers): RGB 16 px <-> 4 x 8 x 8 latents, seeded."""
    import diffusers
    import torch

    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, sample_size=16,
    ).eval()  # fmt: skip


@pytest.fixture(scope="session")
def vae_dir(tiny_vae, tmp_path_factory) -> Path:
    """`tiny_vae` saved as a diffusers folder (what ``--vae PATH`` reads)."""
    path = tmp_path_factory.mktemp("vae")
    tiny_vae.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory) -> Path:
    """DITSCALE_CACHE for the test_evaluate* modules, so each domain classifier trains once a session."""
    path = tmp_path_factory.getbasetemp() / "ditscale-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def eval_cache_env(eval_cache, monkeypatch) -> Path:
    """Point DITSCALE_CACHE at `eval_cache` for one test (modules: ``pytest.mark.usefixtures``)."""
    monkeypatch.setenv("DITSCALE_CACHE", str(eval_cache))
    return eval_cache


def slurm_available() -> tuple[bool, str]:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False, "SLURM client tools not found (run `bash slurm/slurm-ci.sh up`)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"sinfo failed: {e}"
    if out.returncode != 0 or not out.stdout.strip():
        return False, f"SLURM cluster not reachable: {out.stderr.strip()[:200]}"
    return True, ""


#: The test files on the one SLURM cluster: one pytest-xdist worker runs them all, in turn (one of them
#: sets the cluster's only node DOWN). `pytest_collection_modifyitems` checks the list against the marks.
SLURM_FILES = (
    "tests/test_slurm_sweeps.py",
    "tests/test_sweep_scale.py",
    "tests/test_faults_slurm_down.py",
    "tests/test_faults_slurm.py",
    "tests/test_qa_slurm_s37.py",
    "tests/test_sweeps_left_s38.py",
    "tests/test_sweeps_submit_s38.py",
    "tests/test_left_s39.py",
    "tests/test_slurm_s40.py",
    "tests/test_slurm2_s40.py",
    "tests/test_srun41_s41.py",
    "tests/test_sacct_s42.py",
)
#: Scopes sent to the workers first: the longest, so that both workers end at about the same time.
FIRST = ("slurm", "tests/test_e2e.py", "tests/test_sweeps_local.py", "tests/test_sweeps_warm.py")


def xdist_scope(nodeid: str) -> str:
    """The unit a pytest-xdist worker runs whole: "slurm" for the SLURM files, else the test's file (so
    a module fixture, such as the end-to-end demo sweep, runs once)."""
    path = nodeid.split("::")[0]
    return "slurm" if path in SLURM_FILES else path


@pytest.hookimpl(optionalhook=True)  # `pytest -p no:xdist -o addopts=` still loads this file
def pytest_xdist_make_scheduler(config, log):
    """`pytest -n 2` (pyproject's addopts): whole scopes (`xdist_scope`) per worker, in collection order
    (`FIRST` first; xdist's default would reorder the scopes by their number of tests)."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False

    class ScopeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return ScopeScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    # the marker, not `"slurm" in it.keywords`: keywords hold every parent folder's name too (a checkout
    # in a folder named slurm would make every test a SLURM test)
    marked = [it for it in items if it.get_closest_marker("slurm") is not None]
    unlisted = sorted({it.nodeid.split("::")[0] for it in marked} - set(SLURM_FILES))
    if unlisted:
        raise pytest.UsageError(
            f"tests marked slurm outside conftest.SLURM_FILES: {unlisted}; add them there"
        )
    rank = {scope: i for i, scope in enumerate(FIRST)}
    items.sort(key=lambda it: rank.get(xdist_scope(it.nodeid), len(FIRST)))  # stable: file order otherwise
    ok, why = slurm_available()
    if ok or os.environ.get("DITSCALE_CI") == "1":  # in CI a missing cluster fails, never skips
        return
    skip = pytest.mark.skip(reason=why)
    for item in marked:
        item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """``DITSCALE_TEST_CPU=FILE pytest``: append a line per test to FILE, ``nodeid, wall s, own CPU s,
    reaped children's CPU s`` (tab-separated; set-up and teardown included): where the suite's time
    goes, since it is CPU-bound at two workers (docs/testing.md). A SLURM job's CPU is slurmd's, not
    counted."""
    out = os.environ.get("DITSCALE_TEST_CPU")
    if not out:
        yield
        return
    t0, own0, kids0 = time.monotonic(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    yield
    own, kids = _cpu(resource.RUSAGE_SELF) - own0, _cpu(resource.RUSAGE_CHILDREN) - kids0
    with open(out, "a") as f:
        f.write(f"{item.nodeid}\t{time.monotonic() - t0:.2f}\t{own:.2f}\t{kids:.2f}\n")


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder for files a test keeps (screenshots, plots) for humans to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def job_env(monkeypatch, tmp_path, session_mlflow_dir) -> str:
    """Jobs (local processes, or sbatch, which exports the environment) import the repo and tests/
    (the stand-in trainer); cwd is tmp_path. Returns the session's tracking URI: tests use their own
    experiment names, since a fresh sqlite store costs ~5 s of migrations per test."""
    tests = Path(__file__).resolve().parent
    path = os.pathsep.join([str(tests), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path.rstrip(os.pathsep))
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{session_mlflow_dir}/mlflow.db"
