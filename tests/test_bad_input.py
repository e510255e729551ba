"""Bad input to every CLI: exit 2, a message that names what is wrong (and how to fix it), and
nothing created (no MLflow store or run, no output folder). The full list of inputs tried is the
"Bad input" table in docs/testing.md; these are a representative subset, one per kind of check."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis import fit_scaling
from dit_core import extract_latents
from dit_core.evaluate import __main__ as evaluate_cli
from dit_core.trainer import cli as train_cli
from sweeps import launch

ROOT = Path(__file__).resolve().parents[1]


#: sweep YAMLs whose values have the wrong type (each was a traceback before session 28)
BAD_TYPES = {
    "batch_abc.yaml": "batch_size: abc\n",
    "train_list.yaml": "train: [a]\n",
    "output_null.yaml": "output_dir: null\n",
    "centres_list.yaml": "isoflop_centres: [1, 2]\n",
    "eval_maybe.yaml": "final_eval: maybe\n",
    "mem_x.yaml": "executor: {mem_gb: x}\n",
}


def _dead_uri() -> str:
    """An http tracking URI on a local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """An empty working folder with the default MLflow store pointed into it (a file that must
    never appear), plus a few bad input files kept in ``inputs/``."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "list.yaml").write_text("- a\n- b\n")
    (inputs / "unknown_key.yaml").write_text("bogus_key: 3\n")
    for name, text in BAD_TYPES.items():
        (inputs / name).write_text(text)
    (inputs / "not.json").write_text("not json {")
    (inputs / "not_identified.json").write_text(json.dumps({"status": "not identified"}))
    (inputs / "no_D.csv").write_text("N,loss\n1e6,0.5\n2e6,0.4\n")
    (inputs / "three.csv").write_text("N,D,loss\n1e6,1e5,0.5\n2e6,1e5,0.4\n1e6,2e5,0.45\n")
    rows = ["N,D,loss"] + [
        f"{n},{d},{1.7 + 400 / n**0.34 + 410 / d**0.28:.6f}"
        for n in (1e6, 3e6, 1e7, 3e7)
        for d in (1e6, 3e6, 1e7)
    ]
    (inputs / "twelve.csv").write_text("\n".join(rows) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    return inputs


def _run(main, argv: list[str], capsys, caplog) -> tuple[int, str]:
    """``main(argv)`` as the CLI runs it: the exit code (argparse's SystemExit included) and what
    it wrote to stderr or logged."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err + caplog.text


def _assert_refused(code: int, text: str, phrase: str) -> None:
    assert code == 2, text
    assert phrase in text, text
    assert "Traceback" not in text
    created = sorted(p.name for p in Path.cwd().iterdir())
    assert created == [], f"a refused command created {created}"


# --- python sweeps/launch.py --------------------------------------------------------------------

LAUNCH = [
    (["--grid", "S,Q", "--dry-run"], "unknown model family 'Q'"),
    (["--budgets", "abc", "--dry-run"], "is not a number; write training FLOPs like 1e15"),
    (["--budgets", "0", "--dry-run"], "must be a positive number of training FLOPs"),
    (["--budgets", "1", "--dry-run"], "gives no model min_steps 50 steps (the most: 0); raise the budget"),
    (["--patch", "3", "--dry-run"], "does not divide the input size 16"),
    (["--set", "optim.lr=-1", "--dry-run"], "optim.lr: must be a finite number > 0"),
    (["--set", "optim.lr=abc", "--dry-run"], "optim.lr: cannot use 'abc' as float"),
    (["--set", "model.patch_size=3", "--dry-run"], "set per cell by the sweep"),
    (["--set", "train.lr", "--dry-run"], "must be KEY=VALUE"),
    (["--mfu", "0", "--dry-run"], "--mfu 0.0 must be in (0, 1]"),
    (["--device", "TPU", "--dry-run"], "invalid choice: 'TPU'"),
    (["--design", "isoflop", "--sizes-per-budget", "0", "--dry-run"], "needs 3 sizes per budget"),
    (["--experiment", "", "--dry-run"], "give an MLflow experiment name (--experiment NAME)"),
    (["--name", "..", "--dry-run"], "would be the output folder itself"),
    (["--poll", "0", "--dry-run"], "--poll 0.0: give the seconds between progress updates, > 0"),
    (["--head-dim", "0", "--depths", "2", "--widths", "8", "--dry-run"], "--head-dim 0: give channels"),
    (["--mem-gb", "-1", "--dry-run"], "executor.mem_gb: must be > 0, got -1.0"),
    (["--signal-delay", "-5", "--dry-run"], "executor.signal_delay_s: must be >= 0, got -5"),
    (["--patch", "2,2", "--dry-run"], "XL-2-1e11, XL-2-1e12, XL-2-3e11 appear more than once"),
    (["--grid", "S", "--budgets", "1e11,1.00001e11", "--dry-run"], "S-2-1e11 appear more than once"),
    # a real launch (not a dry run) refused before any folder, store or run exists
    (["--tracking-uri", "bogus://x", "--grid", "S"], "tracking URI 'bogus://x': give a database or a server"),
    (["--tracking-uri", "mlruns", "--grid", "S"], "MLflow's folder store is in maintenance mode"),
    (["status", "--tracking-uri", "bogus://x"], "tracking URI 'bogus://x': give a database or a server"),
    (["--set", "bogus.key=1", "--executor", "debug", "--grid", "S", "--patch", "8", "--budgets", "1e12"],
     "TrainConfig has no field 'bogus'"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "phrase"), LAUNCH, ids=[" ".join(a) for a, _ in LAUNCH])
def test_launch_refuses(scratch, capsys, caplog, argv, phrase):
    _assert_refused(*_run(launch.main, argv, capsys, caplog), phrase)


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("list.yaml", "expected a mapping of fields, got list"),
        ("unknown_key.yaml", "unknown key(s) ['bogus_key']"),
        ("missing.yaml", "not found; bundled configs"),
        ("batch_abc.yaml", "batch_size: cannot use 'abc' as int"),
        ("train_list.yaml", "train: cannot use ['a'] as dict"),
        ("output_null.yaml", "output_dir must be set (leave the key out for its default), got null"),
        ("centres_list.yaml", "isoflop_centres must map budgets to model sizes"),
        ("eval_maybe.yaml", "final_eval: cannot use 'maybe' as bool"),
        ("mem_x.yaml", "executor: mem_gb: cannot use 'x' as float"),
        (".", "Is a directory"),
    ],
)
def test_launch_refuses_bad_config(scratch, capsys, caplog, name, phrase):
    _assert_refused(
        *_run(launch.main, ["--config", str(scratch / name), "--dry-run"], capsys, caplog), phrase
    )


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("missing.json", "no such file; write one with `python analysis/fit_scaling.py --json"),
        ("not.json", "not readable JSON"),
        ("not_identified.json", "no usable N_opt law"),
    ],
)
def test_launch_refuses_bad_prior(scratch, capsys, caplog, name, phrase):
    argv = ["--design", "isoflop", "--prior", str(scratch / name), "--dry-run"]
    _assert_refused(*_run(launch.main, argv, capsys, caplog), phrase)


def test_launch_refuses_unreachable_server(scratch, capsys, caplog):
    argv = [
        "--tracking-uri",
        _dead_uri(),
        "--executor",
        "debug",
        "--grid",
        "S",
        "--patch",
        "8",
        "--budgets",
        "1e12",
    ]
    _assert_refused(*_run(launch.main, argv, capsys, caplog), "is unreachable")


def test_launch_refuses_slurm_without_sbatch(scratch, tmp_path, monkeypatch, capsys, caplog):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    argv = ["--executor", "slurm", "--grid", "S", "--patch", "8", "--budgets", "1e12"]
    _assert_refused(*_run(launch.main, argv, capsys, caplog), "`sbatch` is not on PATH")


def test_launch_status_of_unknown_sweep_creates_no_store(scratch, capsys, caplog):
    _assert_refused(*_run(launch.main, ["status", "--name", "nosuch"], capsys, caplog), "no MLflow store at")


def test_launch_negative_budget_as_a_user_types_it(scratch):
    """The script itself, with the value argparse used to take for an option (issue 15, item 6)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / "launch.py"), "--budgets", "-1e11", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    _assert_refused(p.returncode, p.stderr, "budget '-1e11' must be a positive number of training FLOPs")


# --- python analysis/fit_scaling.py -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--experiment", "nosuch"], "MLflow experiment 'nosuch' not found"),
        (["--csv", "{inputs}/no_D.csv"], "missing column(s) ['D']"),
        (["--csv", "{inputs}/twelve.csv", "--predict", "-1e21"], "must be a positive number of FLOPs"),
        (["--csv", "{inputs}/three.csv", "--holdout", "largest"], "needs more than 5: add runs"),
        (["--csv", "{inputs}/missing.csv"], "CSV file not found"),
    ],
)
def test_fit_scaling_refuses(scratch, capsys, caplog, argv, phrase):
    argv = [a.format(inputs=scratch) for a in argv] + ["--out", "report"]
    _assert_refused(*_run(fit_scaling.main, argv, capsys, caplog), phrase)


def test_fit_scaling_refuses_unreachable_server(scratch, capsys, caplog):
    argv = ["--experiment", "nosuch", "--tracking-uri", _dead_uri(), "--out", "report"]
    _assert_refused(*_run(fit_scaling.main, argv, capsys, caplog), "is unreachable")


# --- python -m dit_core.train -------------------------------------------------------------------

TRAIN = [
    (["--data", "latents"], "needs root=<folder>"),
    (["--model", "DiT-Q/2"], "unknown model name 'DiT-Q/2'"),
    (["--patch-size", "3"], "patch_size=3 does not divide input_size=16"),
    (["--lr", "-1e-3"], "optim.lr: must be a finite number > 0"),
    (["--max-steps", "0"], "budget.max_steps: must be >= 1"),
    (["--precision", "fp16"], "fp16 needs a CUDA GPU"),
    (["--set", "bogus=1"], "TrainConfig has no field 'bogus'"),
    (["--config", "{inputs}/list.yaml"], "must hold a mapping of fields"),
]


@pytest.mark.parametrize(("argv", "phrase"), TRAIN, ids=[" ".join(a) for a, _ in TRAIN])
def test_train_refuses(scratch, monkeypatch, capsys, caplog, argv, phrase):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the fp16 check is the CPU one
    argv = [a.format(inputs=scratch) for a in argv] + ["--max-steps", "2"] * ("--max-steps" not in argv)
    code, text = _run(train_cli.main, argv, capsys, caplog)
    _assert_refused(code, text, phrase)
    assert re.search(rf"(?ms)^error: .*{re.escape(phrase)}", text), text  # as the other CLIs say it


@pytest.mark.parametrize("cli", ["launch", "train"])
@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("twelve.csv", "is not an SQLite database, so not an MLflow store"),
        ("other.db", "is an SQLite database but not an MLflow store (no experiments, runs, metrics, params"),
    ],
)
def test_a_sqlite_uri_that_is_not_an_mlflow_store_is_refused_and_left_as_it_is(
    scratch, monkeypatch, capsys, caplog, cli, name, phrase
):
    """The trainer and the launcher create the store, so a missing file is fine for them; a CSV given
    as the store, or another program's database, is not (MLflow would add its ~30 tables to it)."""
    import sqlite3

    path = scratch / name
    if name == "other.db":
        with sqlite3.connect(path) as con:
            con.execute("CREATE TABLE notes (text TEXT)")
        con.close()
    before = path.read_bytes()
    uri = f"sqlite:///{path}"
    if cli == "launch":
        code, text = _run(launch.main, ["--tracking-uri", uri, "--grid", "S"], capsys, caplog)
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        code, text = _run(train_cli.main, ["--tracking-uri", uri, "--max-steps", "2"], capsys, caplog)
    _assert_refused(code, text, phrase)
    assert path.read_bytes() == before


def test_train_refuses_unreachable_server(scratch, capsys, caplog):
    """Refused before the run folder exists (MLflow itself would retry for minutes)."""
    argv = ["--tracking-uri", _dead_uri(), "--max-steps", "2"]
    _assert_refused(*_run(train_cli.main, argv, capsys, caplog), "--no-mlflow")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A one-step DiT-S/8 run folder (no MLflow)."""
    out = tmp_path_factory.mktemp("run") / "run"
    code = train_cli.main(["--model", "DiT-S/8", "--max-steps", "1", "--no-mlflow", "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_train_refuses_resume_with_another_config(trained_run, capsys, caplog):
    before = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    argv = [
        "--model",
        "DiT-S/8",
        "--lr",
        "3e-4",
        "--max-steps",
        "2",
        "--no-mlflow",
        "--out",
        str(trained_run),
    ]
    code, text = _run(train_cli.main, argv, capsys, caplog)
    assert code == 2 and "was written by a different config (optim.lr:" in text, text
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == before  # nothing written


# --- python -m dit_core.evaluate / python -m dit_core.extract_latents ----------------------------


def test_evaluate_refuses_missing_checkpoint(scratch, capsys, caplog):
    _assert_refused(
        *_run(evaluate_cli.main, ["--checkpoint", "missing.pt"], capsys, caplog), "does not exist; pass"
    )


def test_evaluate_refuses_a_file_that_is_not_a_checkpoint(scratch, capsys, caplog):
    argv = ["--checkpoint", str(scratch / "list.yaml")]
    _assert_refused(
        *_run(evaluate_cli.main, argv, capsys, caplog), "is not a checkpoint written by dit_core.train"
    )


@pytest.mark.slow
def test_evaluate_refuses_bad_sample_count(trained_run, scratch, capsys, caplog):
    argv = ["--checkpoint", str(trained_run), "--num-samples", "-5"]
    _assert_refused(*_run(evaluate_cli.main, argv, capsys, caplog), "num_samples must be >= 2")


def test_extract_latents_refuses_missing_folder(scratch, capsys, caplog):
    argv = ["--data-path", "missing", "--output", "latents", "--vae", "some/vae"]
    _assert_refused(*_run(extract_latents.main, argv, capsys, caplog), "does not exist or is not a directory")


@pytest.mark.parametrize(
    "module",
    ["dit_core.trainer.cli", "dit_core.evaluate.__main__", "dit_core.extract_latents", "sweeps.launch",
     "analysis.fit_scaling"],
)  # fmt: skip
def test_every_option_of_every_cli_has_help(module):
    """`--help` teaches: no option is listed with its name alone, or with only its default."""
    import importlib
    import re

    parser = importlib.import_module(module).build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    bare = [a.dest for a in options if not re.sub(r"\(default: [^)]*\)", "", a.help or "").strip()]
    assert len(options) >= 10 and bare == []
