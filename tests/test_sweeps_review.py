"""A new user's review of `python sweeps/launch.py`: flags that did nothing or lost work, and `status`
views that misled. One tiny sweep (the stand-in trainer, 9 steps, debug executor) serves the status tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _sweep_specs import fake_sweep_yaml

from sweeps import launch as cli

YAML = fake_sweep_yaml("rv", "review")


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


def test_relaunch_of_a_cell_whose_run_was_deleted_says_deleted_and_how_to_restore(
    tmp_path, monkeypatch, capsys
):
    """A cell whose MLflow run is in the trash (`MlflowClient.delete_run`): the relaunch said the
    experiment "does not hold" the run and suggested another --experiment / --tracking-uri."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rv.yaml").write_text(YAML)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["-c", "rv.yaml", "--executor", "debug", "--tracking-uri", uri]
    code, _, err = _main(argv, capsys)
    assert code == 0, err
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("review").experiment_id])
    run_id = run.info.run_id
    client.delete_run(run_id)
    code, out, err = _main(argv, capsys)
    assert code == 2
    assert f"belongs to MLflow run {run_id}, which was deleted (lifecycle_stage 'deleted'" in err
    assert f"mlflow runs restore --run-id {run_id}" in err and "mlflow gc" in err
    assert f"delete the folder {tmp_path / 'sweep_runs' / 'rv' / 'cells' / 'S-2-3e9'}" in err
    assert "does not hold" not in err and "--experiment" not in err
    client.restore_run(run_id)  # the fix the message names: the relaunch finds the finished cell
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert "0 submitted, 1 already finished" in out


def _dataclass_default(key: str):
    import dataclasses

    from sweeps.grid import ExecutorSpec, SweepSpec

    cls, name = (ExecutorSpec, key[len("executor.") :]) if key.startswith("executor.") else (SweepSpec, key)
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def test_help_states_each_default_as_the_dataclasses_and_the_parser_hold_it(monkeypatch):
    """`--help` gave no default for --poll, --parallel, --max-retries, --time, --signal-delay, --device,
    --mfu, --name, --experiment, --batch-size, and no help for the run/status positional. Each stated
    default is read back from the help and compared with the `SweepSpec`/`ExecutorSpec` field (or the
    parser's own default), so a default changed without its help, or a help number copied wrong, fails."""
    import inspect
    import re

    from sweeps.cost import DEFAULT_MFU, estimate
    from sweeps.runner import launch

    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: no hyphenated value is wrapped
    parser = cli.build_parser()
    text = parser.format_help()
    options = {}  # flag -> its help text (an option's entry: its line and the more indented ones after it)
    for m in re.finditer(r"^  (?:-\w, )?(--[\w-]+|\{run,status\})(.*(?:\n {5,}.*)*)", text, re.M):
        options[m.group(1)] = " ".join(m.group(2).split())
    stated = {}
    for flag, help_ in options.items():
        if m := re.search(r"\(default: the config's ([\w.]+), else ([^)]+)\)", help_):
            value = _dataclass_default(m.group(1))
            assert m.group(2) == (f"{value:g}" if isinstance(value, float) else str(value)), flag
            stated[flag] = m.group(1)
    expected = {
        "--parallel": "executor.local_parallelism", "--max-retries": "executor.max_retries",
        "--time": "executor.timeout_min", "--signal-delay": "executor.signal_delay_s", "--name": "name",
        "--experiment": "experiment", "--batch-size": "batch_size", "--output-dir": "output_dir",
        "--sizes-per-budget": "sizes_per_budget", "--spread": "size_spread",
        "--tokens-per-param": "tokens_per_param", "--max-steps": "isoflop_max_steps",
    }  # fmt: skip
    assert {f: stated.get(f) for f in expected} == expected
    # and each flag sets the field its help names
    dests = {a.option_strings[-1]: a.dest for a in parser._actions if a.option_strings}
    for flag, key in expected.items():
        field = cli._RENAMED.get(dests[flag], dests[flag])
        assert field == key.removeprefix("executor."), flag
    # the run-only flags whose default lives in the parser: stated as the parser holds it, from its source
    truth = {
        "--poll": inspect.signature(launch).parameters["poll_s"].default,
        "--mfu": DEFAULT_MFU,
        "--device": inspect.signature(estimate).parameters["device_name"].default,
    }
    for flag, value in truth.items():
        m = re.search(r"default: ([^);]+)\)", options[flag])
        assert m, flag
        # --device and --mfu: None in the parser, so that the dry run knows whether they were given
        assert parser.get_default(dests[flag]) == (None if flag in ("--device", "--mfu") else value)
        assert m.group(1) == (f"{value:g}" if isinstance(value, float) else value), flag
    assert "status" in options["{run,status}"] and "(default: run)" in options["{run,status}"]


def test_a_bad_mfu_is_an_error_before_the_dry_run_prints_its_cells(tmp_path, monkeypatch, capsys):
    """`--mfu 0 --dry-run` printed the whole cell table, then its error."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["--grid", "S", "--budgets", "1e11", "--mfu", "0", "--dry-run"], capsys)
    assert code == 2 and "--mfu 0.0 must be in (0, 1]" in err
    assert out == ""


def test_a_no_wait_relaunch_that_submits_nothing_prints_no_empty_jobs_line(tmp_path, monkeypatch, capsys):
    """A `--no-wait` relaunch of a finished sweep printed ``jobs: `` with nothing after it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rv.yaml").write_text(YAML)
    argv = ["-c", "rv.yaml", "--tracking-uri", "sqlite:///mlflow.db"]
    code, _, err = _main(argv + ["--executor", "debug"], capsys)
    assert code == 0, err
    code, out, err = _main(argv + ["--executor", "local", "--no-warm", "--no-wait"], capsys)
    assert code == 0, err
    assert "0 submitted, 1 already finished" in out
    assert "jobs:" not in out and "watch with: python sweeps/launch.py status" in out


def test_status_tries_column_shows_tries_not_submissions_as_the_docs_define_them():
    """The column headed ``tries`` showed ``attempts`` (submissions), counting those a Ctrl-C stopped,
    which --max-retries does not count (`CellState.tries`)."""
    from sweeps.state import CellState
    from sweeps.table import status_table

    st = CellState("c", "interrupted", attempts=3, interrupts=2)
    header, _, row = status_table([st], {}).splitlines()
    import re

    columns = [re.split(r"\s{2,}", line.strip()) for line in (header, row)]
    assert dict(zip(*columns))["tries"] == "1" == str(st.tries)
    docs = " ".join((Path(__file__).parents[1] / "docs" / "sweeps.md").read_text().split())
    assert "tries (`CellState.tries`: submissions, `attempts`, less those their launcher stopped" in docs


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--dry-run"], "--dry-run"),
        (["--executor", "local"], "--executor"),
        (["--no-wait"], "--no-wait"),
        (["--max-retries", "3"], "--max-retries"),
        (["--mfu", "0.5"], "--mfu"),
    ],
)
def test_status_refuses_the_flags_only_a_launch_uses(launched, monkeypatch, capsys, argv, phrase):
    """`status --dry-run`, `status --executor local`, `status --no-wait` were accepted and ignored."""
    monkeypatch.chdir(launched / "a")
    code, out, err = _main(["status", "--name", "rv"] + argv, capsys)
    assert code == 2 and out == ""
    assert f"error: status only reads; {phrase} applies to a launch" in err


def test_status_takes_verbose(launched, monkeypatch, capsys):
    monkeypatch.chdir(launched / "a")
    code, out, err = _main(["status", "--name", "rv", "-v"], capsys)
    assert code == 0, err
    assert "1 finished" in out


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--grid", "S,S"], "cells S-2-1e11 appear more than once: model S (--grid/--shapes) listed twice"),
        (["--grid", "S,s"], "model S (--grid/--shapes) listed twice"),
        (["--grid", "S", "--budgets", "1e11,1e11"], "cells S-2-1e11 appear more than once: budget 1e11"),
        (["--grid", "S", "--patch", "2,2"], "cells S-2-1e11 appear more than once: patch size 2 (--patch)"),
        (["--shapes", "4x64x4,4x64x4", "--budgets", "1e13"], "model d4w64h4 (--grid/--shapes) listed twice"),
        (["--design", "isoflop", "--budgets", "1e11,1e11"], "budget 1e11 (--budgets) listed more than once"),
    ],
)
def test_a_value_listed_twice_is_an_error_naming_it_never_deduplicated(
    tmp_path, monkeypatch, capsys, argv, phrase
):
    """`--grid S,S` and `--budgets 1e11,1e11` were silently deduplicated, while `--patch 2,2` was an
    error whose message said a family listed twice is one too."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(argv + ["--budgets", "1e11"] * ("--budgets" not in argv) + ["--dry-run"], capsys)
    assert code == 2 and out == ""
    assert phrase in err and "list each once" in err


def test_an_adaptive_launch_refuses_a_budget_listed_twice(tmp_path):
    from sweeps.design import launch_adaptive
    from sweeps.grid import SweepSpec

    spec = SweepSpec(design="adaptive", budgets=[1e11, 1e11], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"budget 1e11 \(--budgets\) listed more than once"):
        launch_adaptive(spec)
