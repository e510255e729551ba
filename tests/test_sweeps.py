"""Unit tests of the sweep: families, compute, grid expansion, validation, CLI dry run, relaunch plan."""

from __future__ import annotations

import math
import re
import socket
from dataclasses import dataclass, field, replace

import pytest
from _sweep_specs import cell_states

from dit_core.configio import apply_flat
from sweeps import launch as cli
from sweeps.executor import (
    check_slurm_signal,
    make_executor,
    parse_sbatch_lines,
    resolve_executor_kind,
    shield_requeue_from_sigterm,
)
from sweeps.families import FAMILIES, Scale, family_shape
from sweeps.grid import (
    DataSpec,
    ExecutorSpec,
    SweepSpec,
    expand,
    format_budget,
    load_spec,
    parse_budget,
    read_spec_record,
    spec_from_dict,
    write_spec_record,
)
from sweeps.state import CellState, check_resumable_cell, check_tracking_uri, config_hash, plan

# Peebles & Xie, Table 4: forward Gflops on 256 px images (32x32x4 latents).
PAPER_GFLOPS = {
    ("S", 8): 0.36, ("S", 4): 1.41, ("S", 2): 6.06,
    ("B", 8): 1.42, ("B", 4): 5.56, ("B", 2): 23.01,
    ("L", 8): 5.01, ("L", 4): 19.70, ("L", 2): 80.71,
    ("XL", 8): 7.39, ("XL", 4): 29.05, ("XL", 2): 118.64,
}  # fmt: skip
PAPER_PARAMS_M = {"S": 33, "B": 130, "L": 458, "XL": 675}  # Table 1 (DiT-*/2), millions


@pytest.mark.parametrize(("fam", "patch"), sorted(PAPER_GFLOPS))
def test_cell_compute_matches_the_paper(fam, patch):
    paper_data = DataSpec(input_size=32, in_channels=4, num_classes=1000)
    (mc,) = expand(SweepSpec(families=[fam], patch_sizes=[patch], budgets=[1e18], data=paper_data))
    assert mc.forward_gflops == pytest.approx(PAPER_GFLOPS[fam, patch], rel=3e-3, abs=0.006)
    assert mc.train_flops_per_image == pytest.approx(6e9 * mc.forward_gflops)
    if patch == 2:
        assert mc.params / 1e6 == pytest.approx(PAPER_PARAMS_M[fam], abs=0.6)  # fmt: skip


def test_demo_scale_keeps_the_family_ratios():
    scale = Scale(width_div=8, depth_div=4)
    demo = {f: family_shape(f, scale) for f in FAMILIES}
    assert [(s.depth, s.hidden_size, s.num_heads) for s in demo.values()] == [
        (3, 48, 6), (3, 96, 12), (6, 128, 16), (7, 144, 16),
    ]  # fmt: skip
    for f, s in demo.items():
        paper = FAMILIES[f]
        assert s.hidden_size * 8 == paper.hidden_size and s.depth * 4 == paper.depth
        assert s.num_heads == paper.num_heads
    with pytest.raises(ValueError, match="not divisible by 5"):
        Scale(width_div=5).apply(FAMILIES["S"])


def test_family_names_custom_shapes_and_scale_factors_by_hand():
    """Family names as users write them (``s``, ``DiT-XL``; the paper's Table 1 unscaled), a custom
    shape's name and fields, and the errors that name the bad field: a bool is not a factor, a depth
    factor that does not divide, a custom shape with a bad width or heads that do not divide it."""
    from sweeps.families import ModelShape, custom_shape

    assert family_shape("s") == FAMILIES["S"] == ModelShape("S", 12, 384, 6)
    assert family_shape(" DiT-XL ") == FAMILIES["XL"] == ModelShape("XL", 28, 1152, 16)
    assert family_shape("dit-b", Scale(8, 4)) == ModelShape("B", 3, 96, 12)
    with pytest.raises(ValueError, match="unknown model family 'DiT-Q'; known families: S, B, L, XL"):
        family_shape("DiT-Q")
    assert custom_shape(4, 64, 4) == ModelShape("d4w64h4", 4, 64, 4)
    assert custom_shape(4, 64, 4).describe() == "d4 w64 h4"
    with pytest.raises(ValueError, match="custom shape: hidden_size must be a positive integer, got 0"):
        custom_shape(4, 0, 4)
    with pytest.raises(ValueError, match="hidden_size 64 is not divisible by num_heads 5"):
        custom_shape(4, 64, 5)
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match=f"scale.width_div must be a positive integer, got {bad!r}"):
            Scale(width_div=bad)
    with pytest.raises(ValueError, match="scale: depth 28 of DiT-XL is not divisible by 3; pick factors"):
        Scale(depth_div=3).apply(FAMILIES["XL"])


def test_expand_steps_images_and_stable_ids():
    spec = SweepSpec(
        families=["S", "XL"], patch_sizes=[2, 4], budgets=[1e12, 3e11], batch_size=32, scale=Scale(8, 4)
    )
    cells = expand(spec)
    assert [c.cell_id for c in cells] == [
        "S-2-3e11", "S-4-3e11", "XL-2-3e11", "XL-4-3e11", "S-2-1e12", "S-4-1e12", "XL-2-1e12", "XL-4-1e12",
    ]  # fmt: skip
    for c in cells:
        step_flops = c.batch_size * c.train_flops_per_image
        assert c.steps == math.floor(c.budget / step_flops) and c.steps >= 1
        assert c.train_flops <= c.budget < c.train_flops + step_flops  # as many whole steps as fit
        assert c.images == c.steps * 32
    assert [c.cell_id for c in expand(spec)] == [c.cell_id for c in cells]  # deterministic


def test_budget_format_round_trips():
    for b in (1e15, 3e15, 1.5e15, 2.6e9, 1e18):
        assert parse_budget(format_budget(b)) == pytest.approx(b)
    assert format_budget(1e15) == "1e15" and format_budget(1.5e15) == "1.5e15"
    with pytest.raises(ValueError, match="not a number"):
        parse_budget("lots")


def test_isoflop_design_spans_several_models_within_the_step_window():
    spec = load_spec("imagenet256")
    cells = expand(spec)
    by_budget: dict[float, list] = {}
    for c in cells:
        by_budget.setdefault(c.budget, []).append(c)
        assert spec.fewest_steps() <= c.steps <= spec.isoflop_max_steps
    assert sorted(by_budget) == sorted(spec.budgets)
    assert all(len({c.params for c in v}) >= 2 for v in by_budget.values())
    with pytest.raises(ValueError, match="spans 0 model size"):
        expand(spec.replace(min_steps=10**8, isoflop_max_steps=10**9))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"families": ["S", "XXL"]}, "unknown model family 'XXL'"),
        ({"patch_sizes": [3]}, "patch size 3 does not divide the input size 16"),
        ({"budgets": [-1.0]}, "positive number of training FLOPs"),
        ({"shapes": [[4, 60, 8]]}, "not divisible by num_heads 8"),
        ({"design": "random"}, "design: 'random' is unknown"),
        ({"executor": {"name": "kubernetes"}}, "executor.name: 'kubernetes' is unknown"),
        ({"batch_size": 30, "executor": {"tasks_per_node": 4}}, "not divisible by the 4 processes"),
    ],
)
def test_bad_input_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_spec("digits").replace(**overrides)


def test_budget_below_one_step_is_an_error():
    msg = (
        r"budget 5e9 is smaller than one training step of DiT-d6-w128/2 \(16 x 4.96e\+08 FLOPs\), "
        r"DiT-d7-w144/2"
    )
    with pytest.raises(ValueError, match=msg):
        expand(load_spec("digits").replace(budgets=[1e12, 5e9]))  # demo: batch 16


def test_yaml_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['familes'\]"):
        spec_from_dict({"familes": ["S"]})
    with pytest.raises(ValueError, match="executor: unknown key"):
        spec_from_dict({"executor": {"partiton": "gpu"}})
    with pytest.raises(ValueError, match="not found; bundled configs"):
        load_spec(tmp_path / "nope.yaml")


def test_bundled_configs_load():
    demo = load_spec()
    assert demo.name == "demo" and demo.scale == Scale(36, 4, 4, round_width=True)
    assert (demo.data.name, demo.data.input_size, demo.data.in_channels) == ("photos", 16, 1)
    assert demo.executor.name == "auto" and demo.tracking_uri is None
    digits = load_spec("digits")
    assert digits.name == "digits" and digits.scale == Scale(8, 4) and digits.data.name == "digits"
    big = load_spec("imagenet256")
    assert big.scale == Scale() and big.data.in_channels == 4 and big.patch_sizes == [2, 4, 8]


def test_dry_run_prints_the_table_and_submits_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["-c", "digits", "--grid", "S,B", "--patch", "2,4", "--budgets", "3e11,1e12", "--dry-run"]
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0 and "nothing submitted" in out
    spec = load_spec("digits").replace(families=["S", "B"], patch_sizes=[2, 4], budgets=[3e11, 1e12])
    for c in expand(spec):
        row = next(line for line in out.splitlines() if line.startswith(c.cell_id + " "))
        assert row.split()[1] == c.model_name and row.split()[-2:] == [str(c.steps), str(c.images)]
    assert not (tmp_path / "sweep_runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_sweep_and_the_analysis_name_a_cell_alike(tmp_path):
    """One name per shape (`dit_core.spec.model_label`): the sweep's tables name a cell as the
    analysis names the run it logs, from the params the trainer records: the paper's name for its
    shapes, ``DiT-d{depth}-w{width}/{patch}`` for the demo's scaled families."""
    import dit_core.config as trainer
    from analysis.runs import model_label_of_params  # what the analysis names a run by
    from sweeps.task import build_config, cell_overrides

    demo = load_spec()
    paper = load_spec("digits").replace(
        families=["S", "XL"], scale=Scale(1, 1), patch_sizes=[2, 8], budgets=[1e18], min_steps=1
    )
    names = {}
    for spec in (demo, paper):
        for c in expand(spec):
            cfg = build_config(trainer, cell_overrides(spec, c, tmp_path / c.cell_id, "sqlite:///x.db"))
            logged = {k: str(v) for k, v in cfg.to_flat_dict().items()}  # MLflow keeps params as strings
            assert model_label_of_params(logged) == c.model_name
            names[c.model.name, c.patch_size, spec.name] = c.model_name
    assert names["S", 2, "demo"] == "DiT-d3-w12/2" and names["XL", 2, "demo"] == "DiT-d7-w32/2"
    assert names["S", 2, "digits"] == "DiT-S/2" and names["XL", 8, "digits"] == "DiT-XL/8"


def test_the_trainer_and_every_cells_config_are_checked_before_anything_is_submitted(tmp_path):
    from sweeps.task import check_trainer, make_task

    spec = load_spec()
    tasks = [make_task(spec, c, tmp_path, "sqlite:///x.db") for c in expand(spec)]
    check_trainer("dit_core.train", tasks)  # the real trainer builds every cell's config
    with pytest.raises(ValueError, match=r"trainer module 'no_such_trainer' cannot be imported \(No module"
                       r" named 'no_such_trainer'\); check `trainer:` in the sweep"):  # fmt: skip
        check_trainer("no_such_trainer", tasks)
    for module, missing in (("json", "TrainConfig"), ("dit_core.config", "train")):
        with pytest.raises(ValueError, match=rf"trainer module '{module}' has no {missing}; it must provide "
                           r"TrainConfig and train\(cfg\)"):  # fmt: skip
            check_trainer(module, tasks)
    for key, value in (("optim.lrr", 1e-3), ("optim.lr", "fast")):
        bad = replace(tasks[1], overrides={**tasks[1].overrides, key: value})
        with pytest.raises(ValueError, match=rf"^cell {tasks[1].cell_id}: .*optim\.lr") as e:
            check_trainer("dit_core.train", [tasks[0], bad])
        assert isinstance(e.value.__cause__, (TypeError, ValueError))


def test_a_cells_task_runs_in_its_own_folder_with_its_threads(tmp_path):
    from types import SimpleNamespace

    from sweeps.task import build_config, cell_overrides, make_task

    spec = load_spec()
    cell = expand(spec)[0]
    task = make_task(spec, cell, tmp_path / "sweep", "sqlite:///x.db", threads=3)
    run_dir = str((tmp_path / "sweep" / "cells" / cell.cell_id).resolve())
    assert (task.sweep, task.cell_id, task.run_dir, task.threads) == (spec.name, cell.cell_id, run_dir, 3)
    assert task.overrides["out"] == run_dir and task.trainer == spec.trainer
    assert make_task(spec, cell, tmp_path, "sqlite:///x.db").threads == 0  # torch's default
    owned = r"^train: model\.depth, out set per cell by the sweep, so an override would be ignored; "
    with pytest.raises(ValueError, match=owned + r"use the sweep's own options instead \(--grid"):
        cell_overrides(spec.replace(train={"out": "x", "model.depth": 2}), cell, tmp_path, "sqlite:///x.db")
    # a folder dataset names its root; latents take their size from the manifest, not data.image_size
    for name, size in (("imagefolder", 16), ("latents", None)):
        data = DataSpec(name=name, input_size=16, in_channels=3, num_classes=2, root="/data/x")
        o = cell_overrides(spec.replace(data=data), cell, tmp_path, "sqlite:///x.db")
        assert (o["data.name"], o["data.root"], o.get("data.image_size")) == (name, "/data/x", size)
    assert "data.root" not in task.overrides and task.overrides["data.image_size"] == spec.data.input_size

    @dataclass
    class Optim:
        lr: float = 1e-3

    @dataclass
    class Plain:  # a trainer's config without `replace`: dotted overrides through apply_flat
        optim: Optim = field(default_factory=Optim)

    assert build_config(SimpleNamespace(TrainConfig=Plain), {"optim.lr": "3e-4"}) == Plain(Optim(3e-4))


def test_cli_custom_shapes_and_overrides():
    args = cli.build_parser().parse_args(
        [
            "--depths",
            "2,4",
            "--widths",
            "64,128",
            "--head-dim",
            "32",
            "--set",
            "optim.lr=3e-4",
            "--parallel",
            "1",
        ]
    )
    spec = cli.spec_from_args(args)
    assert spec.families == [] and spec.shapes == [[2, 64, 2], [2, 128, 4], [4, 64, 2], [4, 128, 4]]
    assert spec.train["optim.lr"] == pytest.approx(3e-4) and spec.executor.local_parallelism == 1
    assert [m.name for m in spec.models()] == ["d2w64h2", "d2w128h4", "d4w64h2", "d4w128h4"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", "S,Q"], "unknown model family 'Q'"),
        (["--patch", "5"], "patch size 5 does not divide"),
        (["--budgets", "1e6"], "budget 1e6 gives no model min_steps 50 steps"),
        (["--depths", "2"], "--depths and --widths go together"),
    ],
)
def test_cli_bad_input_exits_2_with_the_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep_runs").exists()


def test_unreachable_tracking_server_fails_before_submitting(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ValueError, match="unreachable"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout_s=2)
    assert cli.main(["--executor", "local", "--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "is unreachable" in err and "--app-name basic-auth" in err and "MLFLOW_TRACKING_PASSWORD" in err
    assert "0.0.0.0" not in err  # never advise a server open to every interface without auth
    assert not (tmp_path / "sweep_runs").exists()


def test_slurm_requested_where_there_is_none(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ValueError, match="`sbatch` is not on PATH"):
        resolve_executor_kind("slurm")
    assert resolve_executor_kind("auto") == "local"
    assert cli.main(["--executor", "slurm"]) == 2
    assert "sbatch" in capsys.readouterr().err and not (tmp_path / "sweep_runs").exists()


def test_slurm_executor_settings_reach_the_sbatch_script(monkeypatch, tmp_path):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    spec = load_spec("digits").replace(
        executor={
            "name": "slurm",
            "partition": "gpu",
            "gpus_per_node": 2,
            "tasks_per_node": 2,
            "timeout_min": 30,
            "array_parallelism": 3,
            "signal_delay_s": 45,
            "sbatch": ["--qos=high", "#SBATCH --exclusive"],
            "setup": ["module load cuda"],
        }  # fmt: skip
    )
    ex = make_executor(spec.executor, "slurm", tmp_path, job_name="ditscale-demo")
    text = ex._make_submission_file_text("python -c pass", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=2", "--ntasks-per-node=2", "--time=30", "--requeue",
                 "--signal=USR2@45", "--qos=high", "--exclusive", "--job-name=ditscale-demo"):  # fmt: skip
        assert f"#SBATCH {line}" in text
    assert "module load cuda" in text
    assert parse_sbatch_lines(["--mem-per-gpu=10G", "constraint=a100"]) == {
        "mem_per_gpu": "10G",
        "constraint": "a100",
    }
    with pytest.raises(ValueError, match="--key=value"):
        parse_sbatch_lines(["--qos high"])


def test_local_executor_gets_the_spec_s_limits_and_a_folder_per_job(tmp_path):
    """What `make_executor` hands submitit's local executor (plain local processes, no warm worker)."""
    spec = ExecutorSpec(
        name="local", timeout_min=7, tasks_per_node=2, gpus_per_node=1, signal_delay_s=30, max_num_timeout=4,
        setup=["export A=1"],
    )  # fmt: skip
    ex = make_executor(spec, "local", tmp_path, job_name="unused-locally")
    assert ex.folder == (tmp_path / "%j").resolve() and ex.max_num_timeout == 4
    # no setup lines: the launcher sets each job's own (`local_job_setup`: the cell lock, then the spec's)
    assert ex.parameters == {"timeout_min": 7, "tasks_per_node": 2, "gpus_per_node": 1, "signal_delay_s": 30}
    with pytest.raises(ValueError, match="unknown executor kind 'pbs'"):
        make_executor(spec, "pbs", tmp_path, job_name="x")


def test_a_warning_signal_that_may_land_during_start_up_is_refused(monkeypatch, tmp_path, capsys):
    """SLURM may send USR2 up to 60 s before ``signal_delay_s`` asks (sbatch --signal); a job that
    gets it before submitit's handler is installed dies unrequeued (it failed CI once at --time 1)."""
    ok, bad = ExecutorSpec(timeout_min=2, signal_delay_s=50), ExecutorSpec(timeout_min=2, signal_delay_s=51)
    check_slurm_signal(ok)  # the earliest USR2 lands 10 s after the start
    with pytest.raises(
        ValueError, match=r"9 s after a job starts.*at least 3 min or a --signal-delay of at most 50 s"
    ):
        check_slurm_signal(bad)
    with pytest.raises(ValueError, match=r" 0 s after a job starts.*at least 2 min$"):
        check_slurm_signal(ExecutorSpec(timeout_min=1, signal_delay_s=45))
    check_slurm_signal(ExecutorSpec())  # the defaults: 60 min, 90 s
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sweeps.executor.slurm_status", lambda: "")  # as if a controller answered
    assert cli.main(["--executor", "slurm", "--time", "1", "--signal-delay", "45"]) == 2
    assert "--signal-delay of at most" not in (err := capsys.readouterr().err) and "--time 1 min" in err
    # the local executor's own time limit sends USR2 at the delay: 90 s (the default) from a 1 min limit
    # is at once, every try; refused, in a dry run too
    for dry in ([], ["--dry-run"]):
        assert cli.main(["--executor", "local", "--time", "1", "--grid", "S", *dry]) == 2
        err = capsys.readouterr().err
        assert "the local executor sends USR2 at the delay, 0 s after a job starts" in err, err
    assert cli.main(["--executor", "local", "--time", "1", "--signal-delay", "30", "--dry-run"]) == 0
    assert not (tmp_path / "sweep_runs").exists()


def test_the_requeue_handler_survives_the_sigterm_slurm_sends_when_it_requeues():
    """submitit's USR2 handler runs ``scontrol requeue``, and SLURM's answer (SIGTERM to every process
    of the job) once killed that child first: CalledProcessError, the cell recorded as failed
    (docs/testing.md, session 22). Here the child sends itself SIGTERM; wrapped, it inherits SIG_IGN
    and exits 0."""
    import signal
    import subprocess
    import sys

    term_self = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    calls = []

    def requeue(signum, frame):  # as submitit's: a child process, check_call
        calls.append(signum)
        subprocess.check_call(term_self, timeout=60)

    def bypass(signum, frame):  # submitit's SIGTERM handler logs and returns
        pass

    old = {s: signal.signal(s, h) for s, h in ((signal.SIGUSR2, requeue), (signal.SIGTERM, bypass))}
    try:
        with pytest.raises(subprocess.CalledProcessError, match="died with <Signals.SIGTERM"):
            signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)  # the race CI lost
        shield_requeue_from_sigterm()
        wrapped = signal.getsignal(signal.SIGUSR2)
        assert wrapped is not requeue
        shield_requeue_from_sigterm()  # idempotent: one wrapper, not two
        assert signal.getsignal(signal.SIGUSR2) is wrapped
        signal.raise_signal(signal.SIGUSR2)
        assert calls == [signal.SIGUSR2, signal.SIGUSR2]
        assert signal.getsignal(signal.SIGTERM) is bypass  # restored after the handler
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"budgets": []}, r"^budgets is empty; give e\.g\. --budgets 1e12,3e12 \(training FLOPs\)$"),
        ({"families": [], "shapes": []}, r"^the grid has no models: give --grid S,B,L,XL and/or custom"),
        ({"budgets": [True]}, r"budget True must be a positive number of training FLOPs"),
        ({"size_spread": "4"}, r"size_spread must be a finite number > 1 \(e\.g\. --spread 4\), got '4'$"),
        ({"size_spread": 1.0}, r"size_spread must be a finite number > 1 \(e\.g\. --spread 4\), got 1\.0$"),
        (
            {"tokens_per_param": 0},
            r"tokens_per_param must be a finite number > 0 \(e\.g\. --tokens-per-param 20\), got 0$",
        ),
        ({"isoflop_centres": {1e11: -5}}, r"^isoflop_centres: 100000000000\.0: -5 must map a budget"),
        ({"patch_sizes": [3]}, r"size 16 \(data\.input_size\); choose from \[1, 2, 4, 8, 16\]$"),
    ],
)  # fmt: skip
def test_spec_validation_names_the_bad_field(changes, message):
    with pytest.raises(ValueError, match=message):
        load_spec("demo").replace(**changes)


def test_spec_yaml_lists_file_names_adaptive_cells_and_the_spec_record(tmp_path, monkeypatch, caplog):
    demo = load_spec("demo")
    demo.replace(tokens_per_param=0.5)  # any positive ratio is a prior
    assert demo.replace(size_spread=1.5, sizes_per_budget=3).size_spread == 1.5  # sizes 1.5x apart
    bare = demo.replace(min_steps=None)
    assert (bare.fewest_steps(), bare.replace(design="isoflop").fewest_steps()) == (1, 20)
    centres = spec_from_dict({"design": "isoflop", "isoflop_centres": {"1e11": 30000}}).isoflop_centres
    assert centres == {1e11: 30000.0}
    for key, value in (("families", "S"), ("seeds", 0)):
        with pytest.raises(
            ValueError, match=rf"^sweep config: {key} must be a list, e\.g\. `{key}: \[{value}\]`"
        ):
            spec_from_dict({key: value})
    bad = tmp_path / "bad.yaml"
    bad.write_text("famlies: [S]\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: unknown key\(s\) \['famlies'\]"):
        load_spec(str(bad))
    # the adaptive design's cells, before any budget has run, are the isoflop design's (not the grid's)
    kw = {"budgets": [1e11, 3e11], "min_steps": 50}
    adaptive, isoflop = (
        [c.cell_id for c in expand(demo.replace(design=d, **kw))] for d in ("adaptive", "isoflop")
    )
    assert adaptive == isoflop != [c.cell_id for c in expand(demo.replace(**kw))]
    # the spec record keeps the launch (a relative prior made absolute) and reads back equal
    monkeypatch.chdir(tmp_path)
    spec = demo.replace(design="isoflop", prior="fit.json", budgets=[1e11])
    write_spec_record(spec, tmp_path)
    assert read_spec_record(tmp_path) == spec.replace(prior=str(tmp_path / "fit.json"))
    (tmp_path / "sweep.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="sweeps.grid"):
        assert read_spec_record(tmp_path) is None
    assert f"{tmp_path / 'sweep.json'} does not read as a sweep (" in caplog.text
    assert "showing the command line's cells instead" in caplog.text


@dataclass
class _Inner:
    depth: int = 1
    lr: float = 0.1


@dataclass
class _Outer:
    model: _Inner = field(default_factory=_Inner)
    steps: int = 5


def test_apply_overrides_sets_nested_fields_and_names_unknown_ones():
    cfg = apply_flat(_Outer(), {"model.depth": 3, "steps": 7})
    assert cfg == _Outer(_Inner(3, 0.1), 7)
    cfg = apply_flat(_Outer(), {"model.lr": "3e-4", "steps": "9"})  # YAML 1.1 strings
    assert cfg.model.lr == 3e-4 and cfg.steps == 9
    with pytest.raises(ValueError, match="cannot use 'fast'"):
        apply_flat(_Outer(), {"model.lr": "fast"})
    with pytest.raises(ValueError, match="has no field 'dept'"):
        apply_flat(_Outer(), {"model.dept": 3})
    with pytest.raises(ValueError, match="not a nested config"):
        apply_flat(_Outer(), {"steps.x": 1})


def test_relaunch_plan():
    # rows (cell, state, attempts, interrupts): submissions stopped by a Ctrl-C of their launcher are not
    # tries (g: 4 - 2 = 2 tries)
    st = cell_states(
        ("a", "finished", 1), ("b", "running", 1), ("c", "missing"), ("d", "failed", 1), ("e", "failed", 3),
        ("f", "interrupted", 2), ("g", "failed", 4, 2), ("h", "interrupted", 2, 2),
    )  # fmt: skip
    assert (st["g"].tries, st["h"].tries) == (2, 0)
    p = plan(st, max_retries=2)
    assert p.finished == ["a"] and p.running == ["b"]
    assert p.submit == ["c", "d", "f", "g", "h"] and p.exhausted == ["e"]
    assert plan(st, max_retries=0).submit == ["c", "h"]
    assert plan(st, max_retries=1).exhausted == ["e", "f", "g"]


def test_sweep_lock_refuses_a_second_holder_names_the_first_and_is_freed_on_exit(tmp_path):
    """flock locks belong to an open file, so a second `sweep_lock` in this same process is refused
    like another launcher would be; the message names the holder's pid and the way out."""
    import fcntl
    import os

    from sweeps.lock import sweep_lock

    sdir = tmp_path / "not" / "yet" / "made"
    with sweep_lock(sdir):
        assert (sdir / ".launch.lock").read_text() == str(os.getpid())
        with pytest.raises(RuntimeError) as err, sweep_lock(sdir):
            pass
        assert f"(pid {os.getpid()}, lock {sdir / '.launch.lock'})" in str(err.value)
        assert "python sweeps/launch.py status" in str(err.value)
    with sweep_lock(sdir):  # released on exit; the pid is rewritten, not appended
        assert (sdir / ".launch.lock").read_text() == str(os.getpid())
    with open(sdir / ".launch.lock", "w") as f:  # a holder that never wrote its pid
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match=r"\(pid \?, lock"), sweep_lock(sdir):
            pass


def test_cell_lock_is_held_by_a_live_job_and_freed_by_sigkill(tmp_path):
    """The lines a local job's shell runs hold the cell's lock for the job's life; SIGKILL frees it."""
    import os
    import signal
    import subprocess

    from sweeps.executor import JobRef, job_liveness
    from sweeps.lock import cell_job_lock_lines, cell_lock_held

    assert not cell_lock_held(tmp_path)  # no lock file: no job ever ran
    lines = cell_job_lock_lines(tmp_path)
    job = subprocess.Popen(" && ".join([*lines, "echo locked", "exec sleep 60"]), shell=True,
                           stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert job.stdout.readline().strip() == "locked"
        assert cell_lock_held(tmp_path) and cell_lock_held(tmp_path)  # checking does not take it
        ref = JobRef("local", str(job.pid), "", str(tmp_path))
        assert job_liveness({"c": ref}) == {"c": "running"}
        # a second job of the same cell cannot start while the first is alive
        second = subprocess.run(" && ".join([*lines, "echo second"]), shell=True, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert second.returncode != 0
        assert f"{tmp_path / '.job.lock'}: another job of this cell is alive" in second.stderr  # names it
        assert "second" not in second.stdout
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        assert not cell_lock_held(tmp_path)
        assert job_liveness({"c": ref}) == {}
        assert job_liveness({"d": ref._replace(executor="debug")}) == {}  # ran in its launcher
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def test_changed_settings_are_refused_by_one_rule():
    old = {"model.depth": 3, "optim.lr": 1e-3, "out": "/r", "tracking.run_id": "abc"}
    h = config_hash(old)
    assert config_hash({**old, "tracking.run_id": "other"}) == h and len(h) == 16
    assert config_hash({**old, "optim.lr": 2e-3}) != h
    st = CellState("S-2-1e12", "running", run_id="abc", config_hash=h,
                   params={"model.depth": "3", "optim.lr": "0.001", "out": "/r"})  # fmt: skip
    check_resumable_cell("demo", st, old)  # same hash: nothing to compare
    check_resumable_cell("demo", st, {**old, "optim.lr": "1e-3"})  # other hash, same values (YAML 1.1)
    msg = r"cell S-2-1e12 of sweep 'demo' was launched with other settings \(optim.lr: '0.001' -> '0.002'\); "
    with pytest.raises(ValueError, match=msg + "start a new sweep with --name"):
        check_resumable_cell("demo", st, {**old, "optim.lr": 2e-3})
    check_resumable_cell("demo", CellState("x", "missing"), old)  # no run yet: nothing to resume


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_unknown_train_field_fails_before_submitting(dry, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--executor", "local", "--set", "optim.lrr=1e-3", *dry]) == 2
    err = capsys.readouterr().err
    assert "lrr" in err and "cell S-2-3e10" in err
    assert not (tmp_path / "sweep_runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_dry_run_checks_override_values(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--dry-run", "--set", "optim.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "fast" in err and "nothing submitted" not in err


def test_progress_line_separates_queued_from_running_jobs(capsys):
    from sweeps.executor import SLURM_PENDING, slurm_state
    from sweeps.launch import _progress_printer
    from sweeps.runner import Progress

    class Job:  # submitit's SlurmJob as `slurm_state` reads it: its watcher's state of its id
        def __init__(self, state):
            self.job_id, self.watcher = "7", self
            self.get_state = lambda job_id, mode: state if job_id == "7" else "UNKNOWN"

    class Broken(Job):
        def __init__(self):
            super().__init__("")
            self.get_state = lambda job_id, mode: 1 / 0  # sacct's state cannot be read

    queued = [slurm_state(Job(s)) in SLURM_PENDING for s in ("PENDING", "RUNNING", "COMPLETED", "requeued")]
    assert queued == [1, 0, 0, 1]
    assert slurm_state(Broken()) == "UNKNOWN"  # cosmetic: never breaks the wait loop
    _progress_printer()(Progress(total=12, done=3, running=2, queued=7, elapsed_s=75.0))
    assert capsys.readouterr().err.strip() == "[01:15] 3/12 done, 2 running, 7 queued, 0 failed"


def test_grid_min_steps_leaves_out_the_cells_below_it_and_says_which():
    """A grid with ``min_steps`` keeps, per budget, exactly the cells that make that many steps
    (`make_cell`'s whole-step count); the rest are `left_out`, and a budget keeping none is an error."""
    from sweeps.grid import left_out, make_cell

    spec = load_spec("demo").replace(budgets=[3e10, 1e11], min_steps=50)
    cells, out = expand(spec), left_out(spec)
    every = [make_cell(spec, m, 2, b) for b in (3e10, 1e11) for m in spec.models()]
    assert {c.cell_id for c in cells} == {c.cell_id for c in every if c.steps >= 50}
    assert {c.cell_id for c in out} == {c.cell_id for c in every if c.steps < 50}
    assert {c.cell_id for c in out} == {"L-2-3e10", "XL-2-3e10"}  # 30 and 20 steps at batch 32
    assert left_out(spec.replace(min_steps=None)) == []
    assert len(expand(spec.replace(min_steps=None))) == 8  # without min_steps every cell runs
    with pytest.raises(ValueError, match=r"budget 1e9 gives no model min_steps 50 steps \(the most: 8\)"):
        expand(spec.replace(budgets=[1e9, 1e11]))
    with pytest.raises(ValueError, match=r"need min_steps >= 1 \(--min-steps\)"):
        spec.replace(min_steps=0)
    # a grid has no maximum step count: a min_steps above isoflop_max_steps was refused (session 60)
    (big,) = expand(spec.replace(families=["S"], budgets=[1e15], min_steps=150_000))
    assert big.steps == 1e15 // (32 * 3_868_128) and big.steps > spec.isoflop_max_steps
    with pytest.raises(ValueError, match=r"need min_steps <= isoflop_max_steps"):
        spec.replace(design="isoflop", min_steps=150_000)
