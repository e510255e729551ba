"""`python sweeps/launch.py --dry-run` refuses what the real launch would refuse, with the same message
and exit 2, and creates nothing: no store file, no sweep folder, no MLflow experiment or run. What the
dry run's machine may lack (SLURM, the tracking server, data.root) is noted, and the bill still printed.

One tiny sweep (the stand-in trainer, debug executor) launched once into a real sqlite store serves the
relaunch checks."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
from pathlib import Path

import pytest
from _sweep_specs import fake_sweep_yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from sweeps import launch as cli
from sweeps.design import RECORD, design_cells, first_centre, make_prior
from sweeps.runner import sweep_dir

YAML = fake_sweep_yaml("dry", "dry-runs")


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _errors(err: str) -> list[str]:
    """The ``error: ...`` lines of a command's stderr (a real launch's may also hold MLflow's logs)."""
    return [line for line in err.splitlines() if line.startswith("error: ")]


def _files(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its bytes (the sqlite store's included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _store(uri: str) -> tuple[list[str], int]:
    """The store's experiments (any stage) and its number of runs (any stage)."""
    client = MlflowClient(uri)
    exps = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL)
    return sorted(e.name for e in exps), len(runs)


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working folder holding the sweep's YAML."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dry.yaml").write_text(YAML)
    return tmp_path


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """The sweep ``dry`` launched and finished (debug executor) into ``<root>/mlflow.db``, folder
    ``<root>/runs/dry``."""
    root = tmp_path_factory.mktemp("dry-launched")
    (root / "dry.yaml").write_text(YAML)
    argv = ["-c", str(root / "dry.yaml"), "--executor", "debug", "--tracking-uri", f"sqlite:///{root}/mlflow.db",
            "--output-dir", str(root / "runs")]  # fmt: skip
    assert cli.main(argv) == 0
    return root


def _not_a_store(kind: str, work: Path) -> str:
    """A tracking URI the real launch refuses: a CSV, another program's SQLite database, a store in
    a folder that does not exist."""
    if kind == "csv":
        (work / "points.csv").write_text("N,D,loss\n1e6,1e5,0.5\n")
        return f"sqlite:///{work}/points.csv"
    if kind == "foreign":
        con = sqlite3.connect(work / "other.db")
        con.execute("CREATE TABLE points (n REAL, loss REAL)")
        con.commit()
        con.close()
        return f"sqlite:///{work}/other.db"
    return f"sqlite:///{work}/no_such_folder/mlflow.db"


@pytest.mark.parametrize(
    ("kind", "phrase"),
    [
        ("csv", "points.csv is not an SQLite database, so not an MLflow store"),
        ("foreign", "other.db is an SQLite database but not an MLflow store (no experiments, runs"),
        ("no_folder", "no_such_folder does not exist; create it first"),
    ],
)
def test_a_dry_run_refuses_a_tracking_uri_that_is_no_mlflow_store(work, capsys, kind, phrase):
    """Before: the dry run printed the cells and the bill (exit 0) for a store the launch refuses."""
    uri = _not_a_store(kind, work)
    before = _files(work)
    code, out, err = _main(["-c", "dry.yaml", "--tracking-uri", uri, "--dry-run"], capsys)
    assert code == 2 and phrase in err and "nothing submitted" not in out
    assert _files(work) == before  # the file is left as it is; no store, no sweep folder
    real = _main(["-c", "dry.yaml", "--tracking-uri", uri, "--executor", "debug"], capsys)
    assert real[0] == 2 and _errors(real[2]) == _errors(err) != []  # the real launch's refusal, word for word
    assert _files(work) == before


def test_a_dry_run_makes_no_store_at_a_new_path(work, capsys):
    code, out, _ = _main(
        ["-c", "dry.yaml", "--tracking-uri", f"sqlite:///{work}/new.db", "--dry-run"], capsys
    )
    assert code == 0 and "dry run: nothing submitted" in out and "already in experiment" not in out
    assert sorted(p.name for p in work.iterdir()) == ["dry.yaml"]  # no new.db, no sweep_runs


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--set", "step_s=0.5"], "cell S-2-3e9 of sweep 'dry' was launched with other settings (step_s: "
         "'0.0' -> '0.5'); start a new sweep with --name NEW"),
        (["--experiment", "elsewhere"], "which experiment 'elsewhere' at sqlite:///{root}/mlflow.db does not "
         "hold; relaunch with the --experiment and --tracking-uri the sweep was launched with"),
        (["--tracking-uri", "sqlite:///{root}/fresh.db"], "which experiment 'dry-runs' at "
         "sqlite:///{root}/fresh.db does not hold"),
    ],
    ids=["changed-setting", "other-experiment", "other-store"],
)  # fmt: skip
def test_a_dry_run_refuses_the_settings_a_relaunch_refuses(launched, capsys, extra, phrase):
    """Before: a dry run with other settings than the sweep's recorded runs printed its bill (exit 0);
    the real relaunch refuses them. Now the dry run refuses them too, with the same message, and
    creates no store, experiment or run."""
    root = launched
    uri = f"sqlite:///{root}/mlflow.db"
    argv = ["-c", str(root / "dry.yaml"), "--tracking-uri", uri, "--output-dir", str(root / "runs"),
            "--executor", "debug", *(a.format(root=root) for a in extra)]  # fmt: skip
    files, store = _files(root), _store(uri)
    code, out, err = _main([*argv, "--dry-run"], capsys)
    assert code == 2 and phrase.format(root=root) in err and "nothing submitted" not in out
    assert _files(root) == files and _store(uri) == store  # no experiment 'elsewhere', no fresh.db
    real = _main(argv, capsys)
    assert real[0] == 2 and _errors(real[2]) == _errors(err) != []
    # nor does the refused real launch make the experiment or the store first
    assert _store(uri) == store and not (root / "fresh.db").exists()


def test_a_dry_run_of_a_launched_sweep_says_what_a_relaunch_would_submit(launched, capsys):
    root = launched
    uri = f"sqlite:///{root}/mlflow.db"
    files, store = _files(root), _store(uri)
    argv = [
        "-c",
        str(root / "dry.yaml"),
        "--tracking-uri",
        uri,
        "--output-dir",
        str(root / "runs"),
        "--dry-run",
    ]
    code, out, _ = _main(argv, capsys)
    assert code == 0 and "S-2-3e9 " in out
    assert "already in experiment 'dry-runs': 1 finished, 0 running or queued, 0 out of retries; a launch " \
           "would submit 0 of 1 cells" in out  # fmt: skip
    assert _files(root) == files and _store(uri) == store


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--output-dir", "dry.yaml"], "--output-dir: {work}/dry.yaml is a file, not a folder"),
        (["--executor", "debug", "--no-wait"], "--no-wait with --executor debug"),
        (["--design", "adaptive", "--patch", "2,4", "--budgets", "3e9,1e10"],
         "the adaptive design refits one N_opt(C) law: give one patch size"),
    ],
    ids=["output-dir-a-file", "no-wait-debug", "adaptive-two-patches"],
)  # fmt: skip
def test_a_dry_run_refuses_what_a_launch_refuses_before_any_run(work, capsys, argv, phrase):
    """Before: each printed the dry run's bill (exit 0); the real launch refused it."""
    argv = ["-c", "dry.yaml", "--tracking-uri", f"sqlite:///{work}/mlflow.db", *argv]
    code, out, err = _main([*argv, "--dry-run"], capsys)
    assert code == 2 and phrase.format(work=work) in err and "nothing submitted" not in out
    real = _main(argv, capsys)
    assert real[0] == 2 and _errors(real[2]) == _errors(err) != []
    assert sorted(p.name for p in work.iterdir()) == ["dry.yaml"]


def test_a_dry_run_refuses_an_adaptive_budget_placed_with_other_settings(work, capsys):
    """An adaptive sweep keeps each placed budget's cells (design.json); a relaunch whose settings give
    other cells there is refused. Before: the dry run printed the other cells."""
    argv = ["--design", "adaptive", "--budgets", "1e11,3e11", "--patch", "2", "--executor", "debug",
            "--tracking-uri", f"sqlite:///{work}/mlflow.db"]  # fmt: skip
    spec = cli.spec_from_args(cli.build_parser().parse_args(argv))
    centre, source = first_centre(spec, make_prior(spec), 1e11, 2)
    ids = [c.cell_id for c in design_cells(spec.replace(budgets=[1e11], isoflop_centres={1e11: centre}))]
    sdir = sweep_dir(spec)
    sdir.mkdir(parents=True)  # the record as `sweeps.design.launch_adaptive` writes it when it places 1e11
    record = {"design": "adaptive", "budgets": {"1e11": {"centre": centre, "source": source, "cells": ids}}}
    (sdir / RECORD).write_text(json.dumps(record))
    before = _files(work)
    same = _main([*argv, "--dry-run"], capsys)
    assert same[0] == 0, same[2]  # the same settings pass
    code, out, err = _main([*argv, "--spread", "2", "--dry-run"], capsys)
    assert code == 2 and "nothing submitted" not in out
    assert f"budget 1e11 of adaptive sweep 'demo' was placed as {ids}; the settings now give" in err
    real = _main([*argv, "--spread", "2"], capsys)
    assert real[0] == 2 and _errors(real[2]) == _errors(err) != []
    assert _files(work) == before


def test_a_dry_run_notes_what_its_machine_lacks_and_prices_the_study(work, capsys, monkeypatch):
    """SLURM absent, the tracking server out of reach: a real launch refuses both here; the dry run
    prices the study and says so. A bad sbatch line is refused (before: only when a launch submitted,
    after making the sweep's folder and writing its record)."""
    empty = work / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no sbatch
    base = ["-c", "dry.yaml", "--tracking-uri", f"sqlite:///{work}/mlflow.db", "--dry-run"]
    code, out, _ = _main([*base, "--executor", "slurm"], capsys)
    assert (
        code == 0
        and "CPU core-hours on SLURM for 1 cells (gpus_per_node 0: no GPU requested)" in out
        and "dry run: nothing submitted" in out
    )
    assert "SLURM was requested (--executor slurm, or executor.name: slurm in the sweep's config) but " \
        "`sbatch` is not on PATH" in out  # fmt: skip
    assert "(a real launch here refuses; the bill is priced all the same)" in out
    code, _, err = _main([*base, "--executor", "slurm", "--sbatch=--qos high"], capsys)
    assert code == 2 and "extra sbatch line '--qos high' is not of the form --key=value" in err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, out, _ = _main([*base, "--tracking-uri", dead], capsys)
    assert (
        code == 0
        and "min wall on this machine's CPU" in out
        and f"MLflow tracking server {dead} is unreachable" in out
    )
    assert "the settings a relaunch compares were not checked" in out
    assert sorted(p.name for p in work.iterdir()) == ["bin", "dry.yaml"]
