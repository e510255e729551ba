"""Session 42 (dry0): what `launch.py --dry-run` and a relaunch print when there is nothing (or little)
to submit. A dry run of a finished sweep printed a bill of 0 cells ("total 0 ... estimate: 0.0 to 0.0
min ... for 0 cells") instead of saying that nothing would be submitted, why, and what adds cells; a
grid model that `min_steps` leaves without a cell at every budget was only listed among the cells left
out. One tiny sweep (the stand-in trainer, one cell of 9 steps, debug executor) serves them all."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from _sweep_specs import fake_sweep_yaml, runs_by_cell

from sweeps import launch as cli
from sweeps.grid import expand


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _run_ids(uri: str, experiment: str) -> list[str]:
    return sorted(r.info.run_id for rs in runs_by_cell(uri, experiment).values() for r in rs)


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[list[str], str]:
    """The one-cell sweep ``d0`` (S-2-3e9) launched and finished: (its command line, store URI)."""
    root = tmp_path_factory.mktemp("dry0")
    (root / "d0.yaml").write_text(fake_sweep_yaml("d0", "d0-runs"))
    uri = f"sqlite:///{root}/mlflow.db"
    argv = ["-c", str(root / "d0.yaml"), "--tracking-uri", uri, "--output-dir", str(root / "runs")]
    assert cli.main([*argv, "--executor", "debug"]) == 0
    return argv, uri


def test_a_dry_run_of_a_finished_sweep_says_nothing_to_submit_and_how_to_add_cells(done, capsys):
    """Before: an empty bill table, "estimate: 0.0 to 0.0 min wall ... for 0 cells", and "(the estimate
    above is for those 0)". Now no bill: the counts, "nothing to submit", and the flags that add cells
    or retrain one; exit 0, and no run made."""
    argv, uri = done
    before = _run_ids(uri, "d0-runs")
    code, out, err = _main([*argv, "--executor", "local", "--dry-run"], capsys)
    assert code == 0, err
    assert "estimate:" not in out and "for 0 cells" not in out and "the estimate above" not in out, out
    assert not [ln for ln in out.splitlines() if ln.startswith("total ")], out
    assert (
        "already in experiment 'd0-runs': 1 finished, 0 running or queued, 0 out of retries; a launch would "
        "submit 0 of 1 cells: nothing to submit, so no bill\n" in out
    )
    assert "add cells: budgets (--budgets), models (--grid, --shapes), seeds (--seeds) or lrs (--lrs)" in out
    assert "launch it as a new sweep (--name NEW)" in out and out.endswith("dry run: nothing submitted\n")
    for flag in ("--budgets", "--grid", "--shapes", "--seeds", "--lrs", "--name"):  # flags that exist
        assert flag in cli.build_parser().format_help()
    assert "S-2-3e9 " in out  # the cells' table stays
    assert _run_ids(uri, "d0-runs") == before


@pytest.mark.parametrize("state", ["running", "failed"])
def test_nothing_to_submit_names_the_live_and_the_out_of_retries_cells(done, capsys, monkeypatch, state):
    """Seeds 0,1: S-2-3e9 finished and S-2-3e9-s1 taken for live (or failed 3 times, max 2 retries):
    a launch would submit nothing. The dry run says which cell is live and how to watch it, or which is
    out of retries and the --max-retries that tries it again."""
    argv, uri = done
    real = cli.preview

    def preview(*a, **kw):
        states = real(*a, **kw)
        states["S-2-3e9-s1"] = dataclasses.replace(states["S-2-3e9-s1"], state=state, attempts=3)
        return states

    monkeypatch.setattr(cli, "preview", preview)
    code, out, err = _main([*argv, "--executor", "local", "--seeds", "0,1", "--dry-run"], capsys)
    assert code == 0, err
    assert "estimate:" not in out and "a launch would submit 0 of 2 cells: nothing to submit" in out, out
    if state == "running":
        assert "1 finished, 1 running or queued, 0 out of retries" in out
        assert "running or queued: S-2-3e9-s1; a launch does not submit them again; watch them with: " in out
        assert f"python sweeps/launch.py status --config {argv[1]} --tracking-uri {uri}" in out
    else:
        assert "1 finished, 0 running or queued, 1 out of retries" in out
        assert "out of retries: S-2-3e9-s1: tried 3 times; relaunch with --max-retries 3 or more" in out


def test_a_relaunch_with_nothing_to_submit_exits_0_and_makes_no_run(done, capsys):
    """Checked fine (no change): a waiting relaunch of the finished sweep submits nothing, shows the
    table and the fit to run next, exit 0, and the store keeps exactly its runs."""
    argv, uri = done
    before = _run_ids(uri, "d0-runs")
    code, out, err = _main([*argv, "--executor", "debug"], capsys)
    assert code == 0, err
    assert "0 submitted, 1 already finished, 0 still running, 0 out of retries" in out
    assert "\nnext: python analysis/fit_scaling.py --experiment d0-runs" in out
    assert _run_ids(uri, "d0-runs") == before


def _two_families(tmp_path: Path) -> list[str]:
    """Families S and B at 3e9 (9 and 2 steps), a store that does not exist yet."""
    yaml = fake_sweep_yaml("d1", "d1-runs").replace("families: [S]", "families: [S, B]")
    (tmp_path / "d1.yaml").write_text(yaml)
    return ["-c", str(tmp_path / "d1.yaml"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--output-dir", str(tmp_path / "runs"), "--executor", "local"]  # fmt: skip


def test_a_model_that_min_steps_leaves_without_any_cell_is_named_with_the_fixes(tmp_path, capsys):
    """`--min-steps 5` at 3e9 leaves B (2 steps) out of every budget: the line listed B-2-3e9 among the
    cells left out, never that B trains nowhere. Now it says so and what keeps it (a budget that gives
    it 5 steps, or --min-steps 2), and both fixes do keep it; a model left out at some budgets only
    gets no such line. The dry run still exits 0 and makes nothing."""
    argv = _two_families(tmp_path)
    code, out, err = _main([*argv, "--min-steps", "5", "--dry-run"], capsys)
    assert code == 0, err
    assert "left out, below min_steps 5: B-2-3e9 (2 steps)\n" in out
    said = next(ln for ln in out.splitlines() if ln.startswith("B gets no cell"))
    assert said.startswith("B gets no cell: below min_steps 5 at every budget (the most: 2 steps at 3e9); ")
    assert "or lower --min-steps to 2 to train it, or drop it (--grid, --shapes)" in said
    budget = said.split("add a budget of ")[1].split(" ")[0]
    spec = cli.spec_from_args(cli.build_parser().parse_args([*argv, "--min-steps", "5", "--budgets", budget]))
    assert "B-2-" + budget in {c.cell_id for c in expand(spec)}
    spec = spec.replace(min_steps=2, budgets=[3e9])
    assert "B-2-3e9" in {c.cell_id for c in expand(spec)}
    code, out, err = _main([*argv, "--min-steps", "5", "--budgets", f"3e9,{budget}", "--dry-run"], capsys)
    assert code == 0 and "left out, below min_steps 5: B-2-3e9" in out and "gets no cell" not in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_a_family_named_twice_is_refused_naming_it(tmp_path, capsys):
    """Checked fine (no change): `--grid S,B,S` (or `S,s`) is bad input: exit 2, one line naming S and
    the fix, nothing made."""
    argv = _two_families(tmp_path)
    for grid in ("S,B,S", "S,s"):
        code, out, err = _main([*argv, "--grid", grid, "--dry-run"], capsys)
        assert code == 2 and out == ""
        assert err == "error: cells S-2-3e9 appear more than once: model S (--grid/--shapes) listed twice; " \
            "list each once\n"  # fmt: skip
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_a_family_named_twice_whose_cells_min_steps_all_leaves_out_is_still_refused(tmp_path, capsys):
    """`--grid S,B,B --min-steps 5` at 3e9: B's cells are all left out, so no cell id repeated and the
    grid ran S alone, exit 0, listing "B-2-3e9 (2 steps), B-2-3e9 (2 steps)" as left out. A family
    named twice is bad input whatever min_steps does: exit 2, naming it; nothing made."""
    argv = _two_families(tmp_path)
    code, out, err = _main([*argv, "--grid", "S,B,B", "--min-steps", "5", "--dry-run"], capsys)
    assert (code, out) == (2, "")
    assert err == "error: model B (--grid/--shapes) listed more than once; list each once\n"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_a_family_and_a_custom_shape_that_are_one_model_are_refused(tmp_path, capsys):
    """`--grid S --shapes 3x48x6` at the sweep's scale (S is d3 w48 h6) planned S-2-3e9 and
    d3w48h6-2-3e9: one model trained twice under two names, two equal points for the fit. Now bad input
    (exit 2) naming both names and the shape; nothing made. Distinct shapes still pass."""
    argv = _two_families(tmp_path)
    code, out, err = _main([*argv, "--grid", "S,B", "--shapes", "3x48x6", "--dry-run"], capsys)
    assert code == 2 and out == ""
    assert err == (
        "error: models S and d3w48h6 are one shape, d3 w48 h6: the grid would train each such model twice, "
        "under two names; list it once (drop one name from --grid or --shapes)\n"
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
    code, out, err = _main([*argv, "--grid", "S", "--shapes", "3x48x4", "--dry-run"], capsys)
    assert code == 0 and "d3w48h4-2-3e9 " in out, err
