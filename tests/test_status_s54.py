"""Session 54: `status` during a live local launch showed the cells the launcher had not submitted yet as
`missing` (a 42-cell launch read "40 missing, 2 running"), the word for a cell no launch will train. With
a launcher holding the sweep's lock they are `waiting`; once it is gone, `missing` again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _sweep_specs import fake_sweep_yaml

from sweeps import launch as cli
from sweeps.lock import launcher_pid, sweep_lock
from sweeps.state import CellState, mark_waiting

HOLD = """import sys, time
from sweeps.lock import sweep_lock
with sweep_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The one-cell sweep ``wt`` (stand-in trainer) launched and finished on the debug executor."""
    root = tmp_path_factory.mktemp("s54")
    (root / "wt.yaml").write_text(fake_sweep_yaml("wt", "s54"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "sweep_runs"
    argv = [
        "-c",
        str(root / "wt.yaml"),
        "--executor",
        "debug",
        "--tracking-uri",
        uri,
        "--output-dir",
        str(out),
    ]
    assert cli.main(argv) == 0
    dry = [*argv[:2], "--executor", "local", *argv[4:], "--seeds", "0,1,2", "--dry-run"]
    return out / "wt", ["status", "--name", "wt", "--output-dir", str(out), "--seeds", "0,1,2"], dry


def _states(out: str) -> dict[str, str]:
    """{cell: state} from the status table's rows."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("---")) + 1
    end = next(i for i, ln in enumerate(lines) if i > start and ln[:1].isdigit())
    return {ln.split()[0]: ln.split()[2] for ln in lines[start:end]}


def _status(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return out


def test_cells_a_live_launcher_has_yet_to_submit_are_waiting_and_missing_once_it_is_killed(launched, capsys):
    sdir, argv, dry = launched
    assert launcher_pid(sdir) is None  # the launch that made it has exited
    out = _status(argv, capsys)
    assert _states(out) == {"S-2-3e9": "finished", "S-2-3e9-s1": "missing", "S-2-3e9-s2": "missing"}
    assert "waiting" not in out.split("\n", 1)[1]
    assert "a launch of this sweep is running" not in _status(dry, capsys)

    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(sdir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert launcher_pid(sdir) == holder.pid  # the pid sweep_lock writes, read back by another process
        out = _status(argv, capsys)
        assert _states(out) == {"S-2-3e9": "finished", "S-2-3e9-s1": "waiting", "S-2-3e9-s2": "waiting"}
        assert "1 finished, 2 waiting" in out
        assert (
            f"waiting: 2 cells wait for a free slot in the live launch of this sweep (pid {holder.pid})"
            in out
        )
        out = _status(dry, capsys)  # the dry run: what the live launch will submit, not a second launch
        assert "a launch would submit 2 of 3 cells" in out
        assert f"a launch of this sweep is running (pid {holder.pid}): it submits the cells it has" in out
        with (
            pytest.raises(RuntimeError, match=f"another launch of this sweep is running \\(pid {holder.pid}"),
            sweep_lock(sdir),
        ):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert launcher_pid(sdir) is None  # the kernel dropped the lock with its holder
    assert _states(_status(argv, capsys))["S-2-3e9-s1"] == "missing"


def test_mark_waiting_relabels_only_missing_cells():
    states = {
        s: CellState(s, s) for s in ("missing", "failed", "interrupted", "running", "queued", "finished")
    }
    assert mark_waiting(states) == ["missing"]
    assert [st.state for st in states.values()] == [
        "waiting",
        "failed",
        "interrupted",
        "running",
        "queued",
        "finished",
    ]


def test_no_lock_file_means_no_launcher(tmp_path):
    assert launcher_pid(tmp_path / "never-launched") is None
