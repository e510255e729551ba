"""Session 45, issue 14 (one source of truth): the sweeps read a sqlite store's file with
`dit_core.tracking.sqlite_store_path`, so a ``sqlite+driver:///`` URI or one with ``?options`` is
checked as its plain ``sqlite:///FILE`` is; the dataset names and the config hash have one definition
each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sweeps import launch
from sweeps.state import check_tracking_uri

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch) -> Path:
    """An empty working folder, the default store pointed into it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/default.db")
    return tmp_path


def _status(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = launch.main(["status", "--name", "nosuch", *argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_a_driver_sqlite_store_in_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="folder .*missing does not exist; create it first"):
        check_tracking_uri(f"sqlite+pysqlite:///{tmp_path}/missing/mlflow.db")
    check_tracking_uri(f"sqlite+pysqlite:///{tmp_path}/mlflow.db")  # its folder exists: fine


def test_status_of_a_driver_sqlite_uri_makes_no_store(empty_cwd, capsys):
    code, err = _status(["--tracking-uri", f"sqlite+pysqlite:///{empty_cwd}/none.db"], capsys)
    assert code == 2 and "no MLflow store at sqlite+pysqlite:///" in err, err
    assert sorted(p.name for p in empty_cwd.iterdir()) == []


def test_status_reads_a_store_given_with_options(empty_cwd, capsys, monkeypatch):
    (empty_cwd / "m.db").touch()  # an empty file is a store to be (`check_sqlite_store`)
    read = []
    monkeypatch.setattr(launch, "read_runs", lambda uri, *a: read.append(uri) or [])
    code, err = _status(["--tracking-uri", f"sqlite:///{empty_cwd}/m.db?timeout=5"], capsys)
    assert read == [f"sqlite:///{empty_cwd}/m.db?timeout=5"], err
    assert code == 2 and "no sweep 'nosuch'" in err, err


def test_a_sweeps_data_root_is_checked_without_torch():
    """`FOLDER_DATASETS` is defined once, in the torch-free `dit_core.spec` (the data config reads it
    from there): a sweep with a data.root is checked, and a dry run tells whether it needs one, without
    importing torch (the check imported `dit_core.data.config`, and torch with it)."""
    code = """if True:
        import sys
        from sweeps.grid import load_spec
        spec = load_spec(None)
        spec.replace(data={"name": "latents", "root": "/data"}).validate()
        try:
            spec.replace(data={"name": "digits", "root": "/data"}).validate()
        except ValueError as e:
            assert "one of ['imagefolder', 'latents']" in str(e), e
        else:
            raise AssertionError("digits with a data.root was not refused")
        assert "torch" not in sys.modules
        import dit_core.data.config, dit_core.spec
        assert dit_core.data.config.FOLDER_DATASETS is dit_core.spec.FOLDER_DATASETS
    """
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
