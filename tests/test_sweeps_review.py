"""A new user's review of `python sweeps/launch.py`: flags that did nothing or lost work, and `status`
views that misled. One tiny sweep (the stand-in trainer, 9 steps, debug executor) serves the status tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeps import launch as cli

YAML = """\
name: rv
experiment: review
families: [S]
scale: {width_div: 8, depth_div: 4}
budgets: [3e9]
batch_size: 8
trainer: test_sweeps_fake_trainer
final_eval: false
train: {step_s: 0.0}
"""


def _main(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The sweep ``rv`` launched (debug executor) from ``<tmp>/a`` with a relative sqlite store."""
    import os

    root = tmp_path_factory.mktemp("review")
    (root / "a").mkdir()
    (root / "rv.yaml").write_text(YAML)
    old = os.getcwd()
    os.chdir(root / "a")
    try:
        argv = ["-c", str(root / "rv.yaml"), "--executor", "debug", "--tracking-uri", "sqlite:///mlflow.db"]
        assert cli.main(argv) == 0
    finally:
        os.chdir(old)
    return root


def test_no_wait_with_the_debug_executor_is_refused(tmp_path, monkeypatch, capsys):
    """The debug executor runs a cell only while its launcher waits: `--no-wait` left the cell's run
    SCHEDULED, untrained, counted as a try, and reported `failed` by the next `status`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rv.yaml").write_text(YAML)
    argv = ["-c", "rv.yaml", "--executor", "debug", "--no-wait", "--tracking-uri", "sqlite:///mlflow.db"]
    code, _, err = _main(argv, capsys)
    assert code == 2
    assert "error: --no-wait with --executor debug" in err and "--executor local" in err
    assert not (tmp_path / "sweep_runs").exists()  # nothing submitted, no run created


def test_max_steps_with_a_grid_is_refused_not_ignored(tmp_path, monkeypatch, capsys):
    """`--max-steps` caps only the sizes the isoflop/adaptive designs propose: on a grid it was accepted
    and ignored (S at 1e12 still trained 8078 steps)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["--grid", "S", "--budgets", "1e12", "--max-steps", "100", "--dry-run"], capsys)
    assert code == 2 and "S-2-1e12" not in out
    assert "error: --max-steps 100 applies to the isoflop/adaptive designs" in err and "--budgets" in err
    args = cli.build_parser().parse_args(["--design", "isoflop", "--budgets", "1e11", "--max-steps", "3000"])
    assert cli.spec_from_args(args).isoflop_max_steps == 3000  # isoflop takes it


def test_the_launch_record_keeps_the_store_where_status_finds_it_from_any_folder(
    launched, monkeypatch, capsys
):
    """sweep.json kept ``sqlite:///mlflow.db`` as given, so `status` from another folder looked for
    (or created) another store, and said the sweep's finished cells were missing."""
    record = json.loads((launched / "a" / "sweep_runs" / "rv" / "sweep.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{launched / 'a' / 'mlflow.db'}"
    (launched / "b").mkdir(exist_ok=True)
    monkeypatch.chdir(launched / "b")
    code, out, err = _main(
        ["status", "--name", "rv", "--output-dir", str(launched / "a" / "sweep_runs")], capsys
    )
    assert code == 0, err
    assert "1 finished" in out and "missing" not in out


def test_status_in_another_experiment_names_the_one_launched(launched, monkeypatch, capsys):
    """`status --experiment WRONG` showed every cell of a finished sweep as `missing`, exit 0."""
    monkeypatch.chdir(launched / "a")
    code, out, err = _main(["status", "--name", "rv", "--experiment", "nope"], capsys)
    assert code == 2 and "missing" not in out
    assert "no runs of it in experiment 'nope'" in err and "launched into experiment 'review'" in err


def test_status_of_a_sweep_whose_folder_is_elsewhere_shows_its_runs_not_the_demo(
    launched, monkeypatch, capsys
):
    """A sweep's folder moved (or another --output-dir): `status --name rv` showed the bundled demo's
    14 cells as `missing` next to the sweep's one finished run."""
    monkeypatch.chdir(launched / "a")
    uri = f"sqlite:///{launched / 'a' / 'mlflow.db'}"
    argv = ["status", "--name", "rv", "--experiment", "review", "--tracking-uri", uri]
    code, out, err = _main(argv + ["--output-dir", str(launched / "elsewhere")], capsys)
    assert code == 0, err
    assert "missing" not in out and "XL-2-1e12" not in out and "left out" not in out
    assert "S-2-3e9" in out and "1 finished" in out
    assert f"no folder {launched / 'elsewhere' / 'rv'}" in out
    assert f"--output-dir {Path(launched / 'a' / 'sweep_runs')}" in out
