"""A researcher's probe of `python sweeps/launch.py`: values that were accepted and then ignored, broke
the launch after it had submitted, or named the wrong place to fix them. Each is refused up front
(exit 2, `error: ...` naming it), dry runs included."""

from __future__ import annotations

import pytest

from sweeps import launch as cli
from sweeps.grid import load_spec
from sweeps.state import resolve_tracking_uri


def _dry_run(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["-c", "digits", "--grid", "S", "--budgets", "1e11", "--executor", "local", "--dry-run"]
    code = cli.main(base + ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"] + argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        # time.sleep(nan) raised ValueError in the wait loop, after the jobs were submitted; inf overflowed
        (["--poll", "nan"], "--poll nan: give the seconds between progress updates, > 0 and finite"),
        (["--poll", "inf"], "--poll inf: give the seconds between progress updates, > 0 and finite"),
        # submitit's int(mem_gb * 1024) overflowed when the SLURM executor was made, after the store was
        (["--mem-gb", "inf"], "executor.mem_gb: must be > 0 and finite, got inf"),
        # submitted as --mem=0MB, which SLURM reads as all of the node's memory
        (["--mem-gb", "0.0001"], "executor.mem_gb: 0.0001 GB is under 1 MB (SLURM reads --mem=0 as all"),
        # the trainer then never took the cell's run over: the cell trained, was `failed`, and retried
        (["--set", "tracking.enabled=false"], "train: tracking.enabled=False: a sweep's cells are always"),
        # replaced by the cell's own run id when the job was submitted
        (["--set", "tracking.run_id=abc"], "train: tracking.run_id set per cell by the sweep"),
        # counts and lists named by their flag (moved here from test_sweeps.py)
        (["--budgets", "-1e11"], "budget '-1e11' must be a positive number of training FLOPs"),
        (["--budgets", "-5"], "budget '-5' must be a positive number"),
        (["--budgets", "1e12,-3e11"], "budget '-3e11' must be a positive number"),
        (["--budgets", "lots"], "budget 'lots' is not a number"),
        (["--parallel", "-2"], "executor.local_parallelism: must be >= 1, got -2"),
        (["--budgets"], "expected one argument"),
        (["--seeds", "0,0"], "repeat a seed"),
        (["--seeds", "-1"], "must be a whole number >= 0"),
        (["--seeds", "x"], "argument --seeds"),
        (["--seeds", "0,1", "--set", "seed=3"], "both choose the seed"),
        (["--lrs", "0"], "lr 0.0 must be a positive number (e.g. --lrs 1e-3,3e-3,1e-2)"),
        (["--lrs", "1e-2,0.01"], "repeat an lr"),
    ],
)
def test_a_value_a_launch_cannot_use_is_refused_before_anything_runs(
    tmp_path, monkeypatch, capsys, argv, phrase
):
    code, out, err = _dry_run(argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and out == ""
    assert phrase in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sweep_runs").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--prior", "fit.json"],
        ["--tokens-per-param", "5"],
        ["--sizes-per-budget", "7"],
        ["--spread", "3"],
        ["--head-dim", "8"],  # sizes --depths/--widths or the designs' shapes: --grid S has neither
    ],
)
def test_a_design_option_with_a_grid_is_refused_not_ignored(tmp_path, monkeypatch, capsys, argv):
    """A grid trains the --grid/--shapes models as listed: `--prior fit.json` without `--design isoflop`
    ran the families at every budget and never read the prior."""
    code, out, err = _dry_run(argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and out == ""
    assert f"error: {argv[0]}: used by the isoflop/adaptive designs only" in err and "--design isoflop" in err
    parse = cli.build_parser().parse_args
    if argv[0] == "--head-dim":  # still sizes the custom grid of --depths/--widths
        spec = cli.spec_from_args(parse(["--depths", "2", "--widths", "32", "--budgets", "1e12"] + argv))
        assert spec.shapes == [[2, 32, 4]]
    elif argv[0] != "--prior":  # the isoflop design takes them
        spec = cli.spec_from_args(parse(["--design", "isoflop", "--budgets", "1e11"] + argv))
        assert spec.design == "isoflop"


@pytest.mark.parametrize(
    ("yaml_text", "phrase"),
    [
        # val_every = steps / max(1, val_points): 0 and -3 gave one validation point, silently
        ("val_points: 0\n", "val_points: must be >= 1, got 0"),
        ("val_points: -3\n", "val_points: must be >= 1, got -3"),
        # named DiTConfig.input_size, a key the sweep's YAML does not have
        ("data: {name: digits, input_size: 0}\n", "data.input_size: must be >= 1, got 0"),
        ("data: {name: digits, in_channels: 0}\n", "data.in_channels: must be >= 1, got 0"),
        # a divide-by-zero warning, then "1 model size(s) ... within infx of its N_opt"
        ("design: isoflop\nsize_spread: .inf\n", "size_spread must be a finite number > 1"),
        ("design: isoflop\ntokens_per_param: .inf\n", "tokens_per_param must be a finite number > 0"),
    ],
)
def test_a_bad_yaml_value_is_an_error_naming_its_key(tmp_path, yaml_text, phrase):
    path = tmp_path / "s.yaml"
    path.write_text("scale: {width_div: 8, depth_div: 4}\nbudgets: [1e11]\n" + yaml_text)
    with pytest.raises(ValueError) as e:
        load_spec(path)
    assert phrase in str(e.value)


def test_an_empty_tracking_uri_is_the_default_store_made_absolute(tmp_path, monkeypatch):
    """`tracking_uri: ''` went to the jobs and into sweep.json as '', not the absolute default store,
    so jobs and `status` in another folder read another store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("") == resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"


def test_the_data_root_note_names_the_config_not_the_sweep_name(tmp_path, monkeypatch, capsys):
    """With --name run1 the dry run said to set data.root in run1.yaml, a file that does not exist."""
    monkeypatch.chdir(tmp_path)
    argv = ["-c", "imagenet256", "--name", "run1", "--executor", "slurm", "--dry-run"]
    code = cli.main(argv + ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "run1.yaml" not in out and "in the sweep's YAML, -c imagenet256" in out


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        # was "argument command: invalid choice: '3'": the mistyped flag's value was taken for the command
        (["--max-retry", "3"], "unrecognized arguments: --max-retry"),
        (["--val-points", "3"], "unrecognized arguments: --val-points"),
        (["stat"], "argument command: invalid choice: 'stat'"),  # still refused
    ],
)
def test_a_mistyped_flag_is_named_not_its_value_taken_for_the_command(
    tmp_path, monkeypatch, capsys, argv, phrase
):
    code, out, err = _dry_run(argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and out == ""
    assert phrase in err and "--help" in err


def test_a_setup_or_sbatch_line_given_as_text_keeps_its_commas(tmp_path):
    """`setup: "export CUDA_VISIBLE_DEVICES=0,1"` was split at the comma into two shell lines."""
    path = tmp_path / "s.yaml"
    path.write_text(
        'name: s\nexecutor:\n  setup: "export CUDA_VISIBLE_DEVICES=0,1"\n  sbatch: "--gres=gpu:2,tmp:10G"\n'
    )
    ex = load_spec(path).executor
    assert ex.setup == ["export CUDA_VISIBLE_DEVICES=0,1"] and ex.sbatch == ["--gres=gpu:2,tmp:10G"]
    path.write_text("name: s\nexecutor:\n  setup: [module load cuda, export A=1]\n")
    assert load_spec(path).executor.setup == ["module load cuda", "export A=1"]


def test_a_data_root_for_bundled_data_is_refused_before_any_cell_starts(tmp_path):
    """The trainer refuses `data.root` for digits/photos (a forgotten `data.name`); a sweep passed it to
    every cell, each of which then failed when it started, after the launch and its dry run said yes."""
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ndata: {name: digits, root: /data/imagenet}\n")
    with pytest.raises(
        ValueError, match=r"data.root: 'digits' is bundled and reads no folder; drop data.root"
    ):
        load_spec(path)
    path.write_text("name: s\ndata: {name: imagefolder, root: /data/imagenet, in_channels: 3}\n")
    assert load_spec(path).data.root == "/data/imagenet"
