"""Hand-placed mutants for code that mutmut cannot follow (it runs in child processes).

mutmut maps mutants to tests by recording callers in the test process; `sweeps/warm.py` runs in
the warm worker (a child) and its forks, so mutmut finds no test for it (docs/testing.md). Here
each mutant is one exact text replacement, applied alone to a scratch copy of the repository, and
the module's tests are run against it (stopping at the first failure):

    OMP_NUM_THREADS=1 python tests/hand_mutants.py sweeps/warm.py [NAME ...]

It prints one JSON line per mutant (killed, the first failing test, seconds) and a summary. Not a
test module (no ``test_`` prefix): pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = Path("/tmp/ditscale-hand-mutants")

#: module -> (its tests, [(name, original text, mutated text)]); each original occurs exactly once
MUTANTS: dict[str, tuple[list[str], list[tuple[str, str, str]]]] = {
    "sweeps/warm.py": (
        ["tests/test_sweeps_warm.py"],
        [
            (
                "exit_code_missing_is_0",
                '_file("_exit").read_text())\n        except (FileNotFoundError, ValueError):\n            return None',
                '_file("_exit").read_text())\n        except (FileNotFoundError, ValueError):\n            return 0',
            ),
            ("done_ignores_lock", "alive() and not cell_lock_held(self.run_dir)", "alive()"),
            ("results_ignores_code", 'if kind == "success" and code == 0:', 'if kind == "success":'),
            ("results_signal_name", 'f"killed by {signal.Signals(-code).name}"', 'f"exit status {code}"'),
            ("results_no_remote_tb", "\\n{value or ''}\".rstrip()", '".rstrip()'),
            (
                "cancel_sigterm",
                '_file("_pid").read_text()), signal.SIGINT)',
                '_file("_pid").read_text()), signal.SIGTERM)',
            ),
            ("no_thread_env", "if threads:  # read by", "if False:  # read by"),
            ("no_pythonpath", 'env["PYTHONPATH"] = os.pathsep.join(', 'env["UNUSED"] = os.pathsep.join('),
            ("same_job_id", "self.submitted += 1\n", "self.submitted += 0\n"),
            ("close_keeps_stdin", "self.proc.stdin.close()", "self.proc.stdin.flush()"),
            ("kill_keeps_log", "self.log_path.unlink(missing_ok=True)", "pass"),
            ("warmup_no_dispose", "    _dispose_sql_engines()\n    tracking", "    tracking"),
            ("child_keeps_other_locks", "for fd in others:  # other cells", "for fd in []:  # other cells"),
            ("child_no_log_redirect", 'for fd, ext in ((1, "out"), (2, "err")):', "for fd, ext in ():"),
            ("child_no_sigint", "signal.signal(signal.SIGINT, signal.default_int_handler)", "pass"),
            ("child_sigterm_ignored", "(signal.SIGTERM, signal.SIG_DFL)", "(signal.SIGTERM, signal.SIG_IGN)"),
            ("child_no_usr2", "    signal.signal(signal.SIGUSR2, requeue)\n", ""),
            ("child_no_reseed", '        sys.modules["numpy"].random.seed()', "        pass"),
            ("child_no_threads", '        sys.modules["torch"].set_num_threads(threads)', "        pass"),
            ("child_requeue_as_success", "return REQUEUE_EXIT\n    except", "return 0\n    except"),
            (
                "child_error_code_0",
                '("error", traceback.format_exc()), 1',
                '("error", traceback.format_exc()), 0',
            ),
            (
                "fork_no_pid_file",
                '        atomic_write_bytes(slot.folder / f"{slot.job_id}_pid", str(pid).encode())\n',
                "",
            ),
            ("fork_started_0", "pid, time.monotonic(), False", "pid, 0.0, False"),
            ("request_lockfail_exit0", '_exit", b"1")', '_exit", b"0")'),
            (
                "reap_requeue_le",
                'slot.requeues < int(self.cfg["max_num_timeout"])',
                'slot.requeues <= int(self.cfg["max_num_timeout"])',
            ),
            (
                "reap_no_refork",
                "                    self.fork(slot)\n                    continue",
                "                    continue",
            ),
            (
                "reap_keeps_lock",
                "            os.close(slot.lock_fd)  # released",
                "            pass  # released",
            ),
            (
                "reap_exit_before_unlock",
                "            os.close(slot.lock_fd)  # released before the exit is reported: a relaunch"
                " sees it over\n"
                '            atomic_write_bytes(slot.folder / f"{slot.job_id}_exit", str(code).encode())',
                '            atomic_write_bytes(slot.folder / f"{slot.job_id}_exit", str(code).encode())\n'
                "            os.close(slot.lock_fd)",
            ),
            (
                "limits_no_delay",
                'float(self.cfg["timeout_s"]) - float(self.cfg["signal_delay_s"])',
                'float(self.cfg["timeout_s"])',
            ),
            ("limits_rewarn", "                slot.warned = True\n", ""),
            ("loop_exit_at_eof", "while not eof or self.by_pid:", "while not eof:"),
        ],
    ),
    # the cell lock's wait, which warm.py and a local job's shell share (moved out of warm.py in session 40)
    "sweeps/lock.py": (
        ["tests/test_sweeps_warm.py"],
        [
            (
                "lock_shared",
                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
                "fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)",
            ),
            ("lock_no_wait", "if time.monotonic() > end:", "if True:"),
        ],
    ),
}


def run(module: str, names: list[str]) -> list[dict]:
    tests, mutants = MUTANTS[module]
    work = SCRATCH / module.replace("/", "_")
    shutil.rmtree(work, ignore_errors=True)
    for part in ("dit_core", "sweeps", "analysis", "tests", "pyproject.toml"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / part)
    target = work / module
    original = target.read_text()
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
    records = []
    for name, old, new in mutants:
        if names and name not in names:
            continue
        if original.count(old) != 1:
            raise SystemExit(f"{module}: mutant {name}'s text occurs {original.count(old)} times, not once")
        mutated = original.replace(old, new)
        compile(mutated, module, "exec")  # a mutant that does not parse would be 'killed' at collection
        target.write_text(mutated)
        t0 = time.monotonic()
        try:
            cmd = [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-x", "-q", *tests]
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            out = proc.stdout + proc.stderr
            killed, failed = proc.returncode != 0, [ln for ln in out.splitlines() if ln.startswith("FAILED")]
        except subprocess.TimeoutExpired:
            killed, failed = True, ["timeout (600 s)"]
        finally:
            target.write_text(original)
        rec = {"mutant": name, "killed": killed, "by": failed[:1], "s": round(time.monotonic() - t0)}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", choices=sorted(MUTANTS))
    parser.add_argument("names", nargs="*", help="only these mutants (default: all)")
    args = parser.parse_args()
    records = run(args.module, args.names)
    alive = [r["mutant"] for r in records if not r["killed"]]
    print(f"{len(records) - len(alive)} of {len(records)} killed; survived: {alive}")


if __name__ == "__main__":
    main()
