"""Session 36's QA pass over `sweeps/launch.py` and `analysis/fit_scaling.py` as a new user meets them.
Each test failed on the code before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _sweep_specs import fake_sweep_yaml, states_of, wait_for

from analysis import fit_scaling
from dit_core.configio import EXIT_PIPE_CLOSED
from sweeps import launch
from sweeps.grid import load_spec


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = launch.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("families: [S\n", "not valid YAML (line 2, column 1: expected ',' or ']', but got '<stream end>')"),
        (
            "families: [S]\n\tbudgets: [1e11]\n",
            "not valid YAML (line 2, column 1: found character '\\t' that",
        ),
        (b"SQLite format 3\x00\xec\xff", "not a text file, so not a sweep YAML"),
    ],
    ids=["unclosed-list", "tab-indent", "binary"],
)
@pytest.mark.parametrize("command", ["run", "status"])
def test_config_that_is_not_yaml_is_refused(tmp_path: Path, monkeypatch, capsys, text, what, command):
    """A sweep YAML with a syntax error was a YAML traceback and exit 1; now exit 2 naming the file, the
    line and the fix, and nothing made."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "typo.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = [command, "-c", str(cfg), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    code, _, err = _main([*argv, "--dry-run"] if command == "run" else argv, capsys)
    assert code == 2, err
    assert f"error: {cfg}: {what}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]


def test_a_relaunch_that_finds_cells_still_running_says_to_watch_them_not_to_fit(job_env, tmp_path, capsys):
    """A waiting relaunch while an earlier launch's cell still ran (`--no-wait`, or a launcher killed) did
    not wait for it, showed it `running`, and still printed `next: python analysis/fit_scaling.py`, which
    would fit without that cell. It now says how to watch the cell and to fit once it has finished."""
    cfg = tmp_path / "fk.yaml"
    cfg.write_text(fake_sweep_yaml("fk", tmp_path.name))
    argv = ["-c", str(cfg), "--executor", "local", "--tracking-uri", job_env, "--set", "step_s=0.5"]
    assert _main([*argv, "--no-wait"], capsys)[0] == 0
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert "0 submitted, 0 already finished, 1 still running" in out
    assert "next:" not in out
    assert (
        "1 cell(s) still running (S-2-3e9); watch with: python sweeps/launch.py status "
        f"--config {cfg} --tracking-uri {job_env}\n" in out
    )
    assert f"then: python analysis/fit_scaling.py --experiment {tmp_path.name}" in out
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    wait_for(lambda: states_of(spec, job_env)["S-2-3e9"].state == "finished", "the cell")
    code, out, err = _main(argv, capsys)  # all finished: the fit comes next
    assert code == 0 and "1 finished" in out and "\nnext: python analysis/fit_scaling.py" in out, out + err


ROOT = Path(__file__).resolve().parents[1]


def _with_stdout_closed(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``python argv`` from the repo as `... | head -0` would: the reader of its stdout gone at once.
    Returns the exit status and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()
    err = p.stderr.read().decode()
    return p.wait(timeout=300), err


def test_launch_dry_run_into_a_closed_pipe_exits_quietly(tmp_path: Path):
    """`launch.py --dry-run | head` printed `error: [Errno 32] Broken pipe; check --config and
    --output-dir` (exit 2), blaming options that were right."""
    argv = [str(ROOT / "sweeps/launch.py"), "--grid", "S", "--budgets", "3e10", "--dry-run"]
    code, err = _with_stdout_closed([*argv, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], tmp_path)
    assert (code, err) == (EXIT_PIPE_CLOSED, "")


def test_fit_into_a_closed_pipe_exits_quietly_with_its_report_written(tmp_path: Path):
    """`fit_scaling.py ... | head` was a BrokenPipeError traceback and exit 1, "a crash (a bug: please
    report it)"; the report was written all the same."""
    from _fit_helpers import sweep

    sweep().to_csv(tmp_path / "points.csv", index=False)
    argv = [str(ROOT / "analysis/fit_scaling.py"), "--csv", "points.csv", "--bootstrap", "0", "--out", "rep"]
    code, err = _with_stdout_closed(argv, tmp_path)
    assert (code, err) == (EXIT_PIPE_CLOSED, "")
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "results.json").is_file()


def test_out_of_retries_names_the_tries_made_and_the_max_retries_that_runs_them_again(
    job_env, tmp_path, capsys
):
    """A cell tried twice, relaunched with --max-retries 0: the launch said `tried 1 times; relaunch with
    --max-retries 1 or more`, from the flag, not the cell; --max-retries 1 then submitted nothing."""
    cfg = tmp_path / "fk.yaml"
    cfg.write_text(fake_sweep_yaml("fk", tmp_path.name))
    argv = ["-c", str(cfg), "--executor", "local", "--tracking-uri", job_env]
    argv += ["--set", "fail_cell=S-2-3e9", "--set", "fail_times=99"]
    for _ in range(2):
        assert _main(argv, capsys)[0] == 1
    code, _, err = _main([*argv, "--max-retries", "0"], capsys)
    assert code == 1
    assert "1 cell(s) out of retries (S-2-3e9: tried 2 times); relaunch with --max-retries 2 or more" in err
    code, out, err = _main([*argv, "--max-retries", "2"], capsys)  # what it said: the cell runs again
    assert code == 1 and "sweep fk on local: 1 submitted" in out, out + err


def test_an_experiment_whose_runs_all_failed_says_so_not_to_wait(tmp_path: Path, capsys):
    """Every cell of a sweep failed (here 2 runs, out of retries): the fit said `has no finished runs
    (tag status=finished); wait for the sweep to finish`, though nothing was left to finish."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("all-failed", artifact_location=(tmp_path / "art").as_uri())
    for status, tag in (("FAILED", "failed"), ("FAILED", "died_before_training"), ("RUNNING", "running")):
        run = client.create_run(exp_id, tags={"status": tag})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
    argv = ["--experiment", "all-failed", "--tracking-uri", uri, "--out", str(tmp_path / "rep")]
    assert fit_scaling.main(argv) == 2
    err = capsys.readouterr().err
    assert "has no finished runs (tag status=finished; not finished: 2 failed, 1 running)" in err, err
    assert "`python sweeps/launch.py status` says why cells failed; relaunch the sweep to retry them" in err


def test_sigterm_to_a_waiting_launcher_says_so_and_stops_its_local_cells(job_env, tmp_path):
    """SIGTERM to a launcher waiting on its cells (`kill`, `timeout`, a cancelled CI job) ended it without
    a word while its cells trained on. Session 36 made it say so; since session 44 it stops the local
    cells as a Ctrl-C does (here a trainer whose Ctrl-C fails its run) and exits 143."""
    import signal

    cfg = tmp_path / "fk.yaml"
    cfg.write_text(fake_sweep_yaml("fk", tmp_path.name))
    argv = [str(ROOT / "sweeps/launch.py"), "-c", str(cfg), "--executor", "local", "--tracking-uri", job_env]
    spec = load_spec(cfg).replace(tracking_uri=job_env)
    states_of(spec, job_env)  # the session's store made here first: two processes creating it collide
    p = subprocess.Popen(
        [sys.executable, *argv, "--set", "step_s=0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    spec = load_spec(cfg).replace(tracking_uri=job_env)

    def started() -> bool:
        assert p.poll() is None, p.communicate()[1].decode()  # the launcher waits on its cell
        return states_of(spec, job_env)["S-2-3e9"].state == "running"

    wait_for(started, "the cell to start")
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=60)[1].decode()
    assert p.returncode == 143, err
    assert "interrupted (SIGTERM): SLURM jobs keep running; local jobs get the Ctrl-C" in err
    st = states_of(spec, job_env)["S-2-3e9"]  # failed by its trainer's Ctrl-C, or ended by the launcher
    assert st.state in ("failed", "interrupted") and st.tries == 0 and st.run_status != "RUNNING", st


def test_a_json_that_cannot_be_written_is_named_and_the_report_kept(tmp_path: Path, capsys):
    """`--json /dev/full` (a full disk) said "cannot write the report ...; the fit was not saved" though
    the report had been written; now the JSON is named, and where the report is."""
    from _fit_helpers import sweep

    sweep().to_csv(tmp_path / "points.csv", index=False)
    rep = tmp_path / "rep"
    argv = [
        "--csv",
        str(tmp_path / "points.csv"),
        "--bootstrap",
        "0",
        "--out",
        str(rep),
        "--json",
        "/dev/full",
    ]
    assert fit_scaling.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: cannot write --json /dev/full (" in err and f"the report is in {rep}" in err, err
    assert (rep / "report.md").is_file()


def test_a_diverged_cell_is_told_to_change_its_lr_in_a_new_sweep(job_env, tmp_path, capsys):
    """A cell whose trainer stopped at a non-finite loss was only told to "relaunch the same command to
    retry", which diverges again, and a relaunch with another lr is refused as other settings."""
    cfg = tmp_path / "fk.yaml"
    cfg.write_text(fake_sweep_yaml("fk", tmp_path.name))
    argv = ["-c", str(cfg), "--executor", "local", "--tracking-uri", job_env, "--max-retries", "0"]
    # the fake trainer raises this text as the real one words a divergence
    code, _, err = _main([*argv, "--set", "setup_error=non-finite training loss (nan) at step 3"], capsys)
    assert code == 1
    assert "1 of them diverged (S-2-3e9): a retry with the same settings diverges again" in err, err
    assert "--name NEW" in err and "--set optim.lr=" in err
