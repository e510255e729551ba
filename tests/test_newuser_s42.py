"""Session 42's new-user pass over the CLIs (docs/testing.md, "Session 42"): an --out that cannot be made, a
list holding one bad item, the launcher's `next:` line for a sweep of short cells, fit_scaling's --help,
and the trainer's --print-config into a closed pipe. Each test failed on the code before its fix."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import yaml
from _sweep_specs import fake_sweep_yaml
from _train_helpers import train_cli

from analysis import fit_scaling
from analysis.pipeline import AnalysisConfig
from dit_core.configio import EXIT_PIPE_CLOSED, ConfigError, parse_value
from sweeps import launch
from sweeps.grid import expand, load_spec, spec_from_dict

TINY = ["--model", "none", "--depth", "1", "--width", "16", "--heads", "2", "--patch-size", "2",
        "--data", "digits", "--image-size", "8", "--global-batch-size", "8", "--max-steps", "1",
        "--model.frequency_embedding_size", "16", "--no-mlflow"]  # fmt: skip


@pytest.mark.parametrize("below", ["", "run"], ids=["the-link", "a-folder-under-it"])
def test_an_out_through_a_broken_link_exits_2_naming_the_link(tmp_path, capsys, below):
    """``--out`` a link to a scratch folder that is gone (or a folder under it) was a FileExistsError /
    FileNotFoundError traceback and exit 1, as was an --out on a file system where nothing can be made
    (``/proc/x``); now ``error: out: cannot write to ...`` naming the link and its target, exit 2."""
    link = tmp_path / "scratch"
    link.symlink_to(tmp_path / "gone")
    out = link / below if below else link
    code, err = train_cli(capsys, [*TINY, "--out", str(out)])
    assert code == 2 and "Traceback" not in err, err
    assert (
        f"error: out: cannot write to {out} ({link} is a link to {tmp_path / 'gone'}, which does not exist)"
        in err
    )
    assert not (tmp_path / "gone").exists()


def test_a_list_with_one_bad_item_names_the_item_not_the_list(tmp_path):
    """A sweep YAML's ``budgets: [abc]`` read ``budgets: cannot use ['abc'] as list; give a list value``,
    as if the value were no list; the message now names the item and the type it is not."""
    with pytest.raises(
        ConfigError, match=r"budgets: cannot use \['abc'\] as list \(its item 'abc' is not a float\)"
    ):
        spec_from_dict({"families": ["S"], "budgets": ["abc"]}, where="x.yaml")
    with pytest.raises(
        ConfigError, match=r"^data.crop_scale: cannot use '0.1,abc' as tuple \(its item 'abc' is"
    ):
        parse_value("0.1,abc", tuple[float, ...], "data.crop_scale")
    assert parse_value(' [" 3", 4] ', list[int], "k") == [3, 4]  # items still stripped, JSON or not
    with pytest.raises(ConfigError, match=r"^k: cannot use 5 as list; give a list value$"):  # no list at all
        parse_value(5, list[int], "k")


def test_the_next_line_of_a_sweep_of_short_cells_keeps_them_in_the_fit():
    """A sweep launched with cells of fewer steps than fit_scaling's --min-steps default (50; here a grid
    without min_steps: 9 steps) printed ``next: python analysis/fit_scaling.py --experiment E``, which
    drops every such cell and exits 2 ("1 points after point selection"); the line
    (`launch.fit_command`, which `cmd_run` prints) now carries ``--min-steps`` of the shortest cell."""
    spec = spec_from_dict(yaml.safe_load(fake_sweep_yaml("fk", "exp"))).replace(tracking_uri="sqlite:///m.db")
    cells = expand(spec)
    steps = min(c.steps for c in cells)
    assert steps < AnalysisConfig.min_steps
    assert launch.fit_command(spec, cells) == (
        f"python analysis/fit_scaling.py --experiment exp --tracking-uri sqlite:///m.db --min-steps {steps}"
    )


def test_fit_command_adds_no_min_steps_when_every_cell_reaches_the_default():
    """The demo's cells all make >= 50 steps (its min_steps): its `next:` line stays as the README shows."""
    spec = load_spec("demo")
    cells = expand(spec)
    assert min(c.steps for c in cells) >= AnalysisConfig.min_steps
    assert launch.fit_command(spec, cells) == "python analysis/fit_scaling.py --experiment ditscale-demo"


def test_fit_scaling_help_names_its_program_and_the_out_default():
    """Its usage read ``fit_scaling`` (no such command; the others read ``python sweeps/launch.py``),
    and --out, where report.md and results.json land, gave no default."""
    text = fit_scaling.build_parser().format_help()
    assert text.startswith("usage: python analysis/fit_scaling.py ")
    assert "(default: scaling_report)" in " ".join(text.split())


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_print_config_into_a_closed_pipe_exits_141_quietly(monkeypatch, capsys):
    """``python -m dit_core.train --print-config | head -2`` was a BrokenPipeError traceback (exit 1) when
    head left first; now exit 141, as the launcher and fit_scaling."""
    from dit_core.trainer.cli import main

    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["--print-config"]) == EXIT_PIPE_CLOSED
    assert capsys.readouterr().err == ""


def test_out_lock_error_path_is_the_library_one(tmp_path):
    """The library (`out_folder_lock`) raises the ConfigError itself: sweeps' in-process cells get it too."""
    from dit_core.trainer.out_lock import out_folder_lock

    link = tmp_path / "l"
    link.symlink_to(tmp_path / "nothing")
    with (
        pytest.raises(ConfigError, match=r"^out: cannot write to .* is a link to"),
        out_folder_lock(Path(link)),
    ):
        pass


def test_a_store_in_a_folder_that_is_not_writable_exits_2_before_training(tmp_path, capsys, monkeypatch):
    """``--tracking-uri sqlite:///RO/mlflow.db`` in a folder the user cannot write to (another user's, a
    read-only mount) passed the store check; MLflow then retried opening it for ~100 s of warnings and
    failed with an SQLAlchemy traceback. Now exit 2 at once, naming the folder. Faked: tests may run as
    root, for whom every folder is writable."""
    ro, real_access = tmp_path / "ro", os.access
    ro.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and real_access(p, mode, **kw))
    argv = [*TINY[:-1], "--out", str(tmp_path / "run"), "--tracking-uri", f"sqlite:///{ro}/sub/mlflow.db"]
    code, err = train_cli(capsys, argv)
    assert code == 2 and "Traceback" not in err, err
    assert f"error: {ro}/sub/mlflow.db: no MLflow store can be made there, {ro} is not writable" in err
    assert list(ro.iterdir()) == [] and not (tmp_path / "run").exists()
