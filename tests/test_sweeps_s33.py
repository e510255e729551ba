"""Session 33's sweep defects: a launch whose cells failed without a job error exited 0; `status --name X`
without -c described the bundled demo's cells, not the sweep's; ``executor.mem_gb`` was checked in two
places. This module is also a custom trainer (``trainer: test_sweeps_s33``) that reports its outcome
instead of raising, as a user's own trainer may."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import test_sweeps_fake_trainer as fake
from _sweep_specs import fake_sweep_yaml
from mlflow.tracking import MlflowClient

from sweeps import grid
from sweeps import launch as cli
from sweeps.grid import SweepSpec


@dataclasses.dataclass
class TrainConfig(fake.TrainConfig):
    returned_status: str = "failed"  # the status `train` returns; "": a result without a status


def train(cfg: TrainConfig) -> dict:
    """Trains nothing and leaves the cell's MLflow run as the launcher made it (SCHEDULED)."""
    return {"status": cfg.returned_status} if cfg.returned_status else {"loss": 1.0}


def _main(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _custom_yaml(tmp_path: Path, returned_status: str) -> Path:
    text = fake_sweep_yaml("cu", "custom").replace("test_sweeps_fake_trainer", "test_sweeps_s33")
    path = tmp_path / "cu.yaml"
    path.write_text(text.replace("train: {step_s: 0.0}", f"train: {{returned_status: '{returned_status}'}}"))
    return path


@pytest.mark.parametrize(
    ("returned", "why"),
    [
        ("failed", "RuntimeError: trainer test_sweeps_s33 returned status 'failed', not 'finished'"),
        ("", "its job ended, but its run is failed (MLflow status SCHEDULED)"),
    ],
)
def test_a_launch_whose_trainer_reports_a_failure_exits_1_naming_the_cell_and_its_logs(
    job_env, tmp_path, capsys, returned, why
):
    """A custom trainer that returns a failure status (or returns without ending its run) instead of
    raising: the launch printed `1 failed` in its table and the next command, and exited 0."""
    config = _custom_yaml(tmp_path, returned)
    argv = [
        "-c",
        str(config),
        "--executor",
        "local",
        "--tracking-uri",
        job_env,
        "--experiment",
        tmp_path.name,
    ]
    code, out, err = _main(argv, capsys)
    assert code == 1
    assert "next:" not in out and "1 cell(s) failed; relaunch the same command" in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("FAILED ")]
    assert line.startswith(f"FAILED S-2-3e9: {why} (logs: ")
    logs = line.split("(logs: ")[1].rstrip(")").split(", ")
    assert [p[-10:] for p in logs] == ["_0_log.out", "_0_log.err"] and all(Path(p).is_file() for p in logs)
    assert ("returned status 'failed'" in Path(logs[1]).read_text()) == bool(returned)  # the job's traceback
    client = MlflowClient(job_env)
    (run,) = client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id])
    assert run.info.status == ("FAILED" if returned else "SCHEDULED")  # a failure the job reported: ended
    assert run.data.tags.get("status") == ("failed" if returned else None)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The sweep ``rv`` (the stand-in trainer, S at Scale(8, 4): DiT-d3-w48/2) launched on the debug
    executor into ``<tmp>/sweep_runs`` with its own sqlite store; the bundled demo's S is DiT-d3-w12/2."""
    root = tmp_path_factory.mktemp("s33")
    (root / "rv.yaml").write_text(fake_sweep_yaml("rv", "review"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = str(root / "sweep_runs")
    argv = ["-c", str(root / "rv.yaml"), "--executor", "debug", "--tracking-uri", uri, "--output-dir", out]
    assert cli.main(argv) == 0
    return ["--name", "rv", "--output-dir", out]


def _rows(out: str) -> dict[str, list[str]]:
    """The status table's rows, {cell: [model, state]}: the lines between its rule and its counts."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("---")) + 1
    end = next(i for i, ln in enumerate(lines) if i > start and ln[:1].isdigit())
    return {ln.split()[0]: ln.split()[1:3] for ln in lines[start:end]}


def test_status_seeds_without_config_applies_them_to_the_sweeps_own_record(launched, capsys):
    """`status --name rv --seeds 0,1` without -c showed the bundled demo's 14 cells (S, B, L, XL at its
    scale), with seeds, all `missing`, instead of the sweep's one cell with its second seed."""
    code, out, err = _main(["status", *launched, "--seeds", "0,1"], capsys)
    assert code == 0, err
    assert "experiment 'review'" in out
    rows = _rows(out)
    assert rows == {"S-2-3e9": ["DiT-d3-w48/2", "finished"], "S-2-3e9-s1": ["DiT-d3-w48/2", "missing"]}


def test_status_of_a_named_sweep_without_its_record_never_shows_the_demos_cells(launched, capsys):
    """No sweep.json (e.g. a launch refused after its folder was made) and no -c: `status --name rv`
    listed the demo's cells as `missing` beside the sweep's run, and `--seeds` applied to the demo's."""
    record = Path(launched[-1]) / "rv" / "sweep.json"
    kept = record.read_text()
    record.unlink()
    uri = f"sqlite:///{Path(launched[-1]).parent / 'mlflow.db'}"
    argv = ["status", *launched, "--experiment", "review", "--tracking-uri", uri]
    try:
        code, out, err = _main([*argv, "--seeds", "0,1"], capsys)
        assert code == 2 and out == ""
        assert f"error: sweep rv: no record of its launch ({record})" in err and "-c/--config" in err
        code, out, err = _main(argv, capsys)
        assert code == 0, err
        assert _rows(out) == {"S-2-3e9": ["DiT-d3-w48/2", "finished"]}
        assert f"no record of its launch ({record}): the table shows the sweep's runs in MLflow only" in out
    finally:
        record.write_text(kept)


def test_executor_mem_gb_is_checked_in_one_place(monkeypatch):
    """`SweepSpec.validate` checked mem_gb > 0 in its executor rules and finite / at least 1 MB after
    them. Now `check_mem_gb` alone does, with the same messages: stubbed out, nothing refuses one."""
    for value, message in [
        (-1.0, "executor.mem_gb: must be > 0, got -1.0"),
        (float("nan"), "executor.mem_gb: must be > 0, got nan"),
        (float("inf"), "executor.mem_gb: must be > 0 and finite, got inf"),
        (0.0001, "executor.mem_gb: 0.0001 GB is under 1 MB (SLURM reads --mem=0 as all of a node's memory)"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            SweepSpec().replace(executor={"mem_gb": value})
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            grid.check_mem_gb(value)
    grid.check_mem_gb(None)
    grid.check_mem_gb(16)
    monkeypatch.setattr(grid, "check_mem_gb", lambda mem_gb: None)
    for value in (-1.0, float("inf"), 0.0001):
        assert SweepSpec().replace(executor={"mem_gb": value}).executor.mem_gb == value
