"""Hand-placed mutants for code that mutmut cannot follow (it runs in child processes), or follows too
slowly on a busy machine (session 40: the lines sessions 39 and 40 added, docs/testing.md).

mutmut maps mutants to tests by recording callers in the test process; `sweeps/warm.py` runs in
the warm worker (a child) and its forks, so mutmut finds no test for it (docs/testing.md). Here
each mutant is one exact text replacement (the table `tests/hand_mutants.txt`), applied alone to a
scratch copy of the repository, and the module's tests are run against it (stopping at the first
failure):

    OMP_NUM_THREADS=1 python tests/hand_mutants.py sweeps/warm.py [NAME ...]

It prints one JSON line per mutant (killed, the first failing test, seconds) and a summary. Not a
test module (no ``test_`` prefix): pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = Path("/tmp/ditscale-hand-mutants")

#: a mutant: (name, original text, mutated text)
Mutant = tuple[str, str, str]


def load(path: Path = ROOT / "tests" / "hand_mutants.txt") -> dict[str, tuple[list[str], list[Mutant]]]:
    """module -> (its tests, its mutants), from the table whose format its header describes."""
    table: dict[str, tuple[list[str], list[list]]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("== "):
            tests, mutants = table.setdefault(line[3:], ([], []))  # a later block adds to it
        elif line.startswith("tests: "):
            tests.extend(shlex.split(line[7:]))
        elif line.startswith("@ "):
            mutants.append([line[2:], [], []])
        elif line[:1] in ("-", "+"):
            mutants[-1][1 if line[0] == "-" else 2].append(line[1:])
    return {
        module: (tests, [(name, "\n".join(old), "\n".join(new)) for name, old, new in mutants])
        for module, (tests, mutants) in table.items()
    }


MUTANTS = load()


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
