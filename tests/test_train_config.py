"""Unit tests of the training pieces: config, CLI, lr schedules, data stream, EMA, RNG state."""

from __future__ import annotations

import io
import math

import pytest
import torch
from _train_helpers import IndexedDataset, tiny_config

from dit_core.config import (
    BudgetConfig,
    ConfigError,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    read_yaml_config,
)
from dit_core.configio import check_keys
from dit_core.ema import EMA
from dit_core.spec import DiTConfig, resolve_budget_steps
from dit_core.tracking import format_param
from dit_core.train import build_parser, config_from_args, main, resolve_config
from dit_core.trainer.data_stream import DataStream
from dit_core.trainer.lr_schedule import lr_at
from dit_core.trainer.rng import StepRandom, get_rng_state, set_rng_state


class _Data:
    resolution, channels, num_classes = 16, 1, 10


# ---------------------------------------------------------------------- config
def test_flat_dict_round_trip_through_mlflow_strings(tmp_path):
    cfg = tiny_config(tmp_path, **{"tracking.tags": {"a": "b"}, "eval.metrics": ["fid_digits"],
                                   "diffusion.objective": "v", "optim.grad_clip": 1.0})  # fmt: skip
    cfg = resolve_config(cfg, _Data)
    flat = cfg.to_flat_dict()
    assert flat["model.depth"] == 2 and flat["model.input_size"] == 16 and flat["model.learn_sigma"] is True
    assert flat["budget.train_flops"] > 0 and flat["budget.max_steps"] == 40
    as_params = {k: format_param(v) for k, v in flat.items()}
    as_params |= {"model.params": "123", "git.commit": "abc"}  # derived params are skipped
    back = TrainConfig.from_flat_dict(as_params)
    assert back == cfg
    assert resolve_config(back, _Data) == cfg  # resolution is idempotent


def test_model_resolution_names_and_shapes():
    m = ModelConfig(name="DiT-S/2").resolve(input_size=16, in_channels=1, num_classes=10, learn_sigma=True)
    assert (m.name, m.depth, m.hidden_size, m.num_heads, m.patch_size) == ("DiT-S/2", 12, 384, 6, 2)
    # explicit shape overrides the name; an official shape gets its official name
    m = ModelConfig(name="DiT-S/2", depth=12, hidden_size=768, num_heads=12, patch_size=4)
    assert m.resolve(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True).name == "DiT-B/4"
    m = ModelConfig(name="DiT-S/2", depth=3)
    assert m.resolve(input_size=16, in_channels=1, num_classes=10, learn_sigma=False).name is None
    with pytest.raises(ValueError, match="custom model .* needs depth"):
        ModelConfig(name=None, depth=2)
    with pytest.raises(ValueError, match="patch_size=8 does not divide input_size=12"):
        ModelConfig(name="DiT-S/8").resolve(input_size=12, in_channels=1, num_classes=10, learn_sigma=True)


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match=r"optim.schedule: 'linear' is unknown"):
        OptimConfig(schedule="linear")
    with pytest.raises(ConfigError, match=r"optim.lr: cannot use 'fast' as float"):
        TrainConfig().replace(**{"optim.lr": "fast"})
    with pytest.raises(ConfigError, match="has no field 'optimizer'"):
        TrainConfig().replace(**{"optimizer.lr": 1.0})
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    # strings from YAML/MLflow are parsed by type
    cfg = TrainConfig().replace(**{"optim.lr": "3e-4", "budget.max_steps": "1e3", "compile": "true"})
    assert (cfg.optim.lr, cfg.budget.max_steps, cfg.compile) == (3e-4, 1000, True)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim.grad_clip", -1.0, "optim.grad_clip: must be >= 0 (0 = off), got -1.0"),
        ("budget.max_steps", 0, "budget.max_steps: must be >= 1, got 0"),
        ("budget.global_batch_size", 0, "budget.global_batch_size: must be >= 1, got 0"),
        ("checkpoint.every", -1, "checkpoint.every: must be >= 0 (0 = end only), got -1"),
        ("checkpoint.keep_last", -2, "checkpoint.keep_last: must be >= 0 (0 = all), got -2"),
    ],
)
def test_each_bound_is_named_with_its_meaning(key, value, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig().replace(**{key: value})
    assert str(e.value) == message


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_yaml_config(tmp_path / "nope.yaml")
    assert (
        str(e.value)
        == f"--config: the file {tmp_path / 'nope.yaml'} does not exist; give a YAML file of fields"
    )


def test_the_model_config_carries_gradient_checkpointing_into_the_dit():
    m = ModelConfig(name="DiT-S/2").resolve(input_size=16, in_channels=1, num_classes=10, learn_sigma=True)
    assert m.to_dit_config(grad_checkpointing=True).grad_checkpointing is True
    assert m.to_dit_config().grad_checkpointing is False


def test_sample_metrics_need_two_samples_before_training_starts():
    # found when a sweep with eval.num_samples=0 trained every cell, then failed in its final FID
    with pytest.raises(ConfigError, match=r"eval.num_samples: must be >= 2 when eval.eval_every > 0"):
        EvalConfig(eval_every=100, num_samples=0)
    with pytest.raises(ConfigError, match="set eval.eval_every=0 to turn sample metrics off"):
        EvalConfig(eval_every=1, num_samples=1)
    assert EvalConfig(eval_every=0, num_samples=0).num_samples == 0  # no sample metrics: nothing to fit
    assert EvalConfig(eval_every=1, num_samples=2).num_samples == 2


def test_the_eval_sampler_is_checked_against_the_objective_before_training_starts():
    """A sampler that does not exist, or does not apply to the objective, used to fail only at the
    run's first sample evaluation, after training."""
    with pytest.raises(ConfigError, match=r"eval.sampler: 'dpm' is unknown; choose one of .*'dpmpp_2m'"):
        EvalConfig(sampler="dpm")
    with pytest.raises(
        ConfigError, match=r"eval.sampler: 'dpmpp_2m' does not apply to diffusion.objective 'flow'"
    ):
        TrainConfig().replace(**{"diffusion.objective": "flow", "eval.sampler": "dpmpp_2m"})
    with pytest.raises(ConfigError, match=r"valid choices: \['ddpm', 'ddim', 'dpmpp_2m'\]"):
        TrainConfig().replace(**{"eval.sampler": "heun"})
    both = TrainConfig().replace(**{"diffusion.objective": "flow", "eval.sampler": "heun"})  # one step, valid
    assert both.eval.sampler == "heun" and TrainConfig().replace(**{"eval.sampler": "dpmpp_2m"})


def test_budget_steps_closed_form():
    b = BudgetConfig(train_flops=1e12, global_batch_size=32)
    assert resolve_budget_steps(b, 1e9) == math.floor(1e12 / (1e9 * 32)) == 31
    assert resolve_budget_steps(BudgetConfig(train_flops=32e9, global_batch_size=32), 1e9) == 1
    assert resolve_budget_steps(BudgetConfig(max_steps=10, train_flops=1e12, global_batch_size=32), 1e9) == 10
    with pytest.raises(ValueError) as e:
        resolve_budget_steps(BudgetConfig(train_flops=31e9, global_batch_size=32), 1e9)
    assert str(e.value) == (
        "budget smaller than one step: train_flops=3.1e+10 but one step of 32 images costs 3.2e+10 FLOPs;"
        " raise --train-flops or lower the batch (--global-batch-size)"
    )
    with pytest.raises(ValueError, match="no stop condition"):
        resolve_budget_steps(BudgetConfig(), 1e9)


def test_yaml_config_nested_and_dotted(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "optim:\n  lr: 3e-4\n  schedule: cosine\nbudget.max_steps: 7\ntracking:\n  tags: {team: x}\n"
    )
    cfg = config_from_args(build_parser().parse_args(["--config", str(p)]))
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.budget.max_steps) == (3e-4, "cosine", 7)
    assert cfg.tracking.tags == {"team": "x"}


# ---------------------------------------------------------------------- CLI
def test_cli_flags_map_to_fields(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("optim: {lr: 5.0e-4, warmup_steps: 3}\nseed: 9\n")
    args = build_parser().parse_args(
        ["--config", str(y), "--model", "DiT-B/4", "--data", "digits", "--image-size", "32",
         "--max-steps", "200", "--train-flops", "1e13", "--global-batch-size", "16", "--lr", "1e-4",
         "--out", str(tmp_path / "o"), "--tracking-uri", "http://127.0.0.1:5000", "--experiment", "e",
         "--tag", "k=v", "--set", "optim.beta2=0.95", "--no-flip", "--grad-checkpointing"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.model.name == "DiT-B/4" and cfg.data.image_size == 32 and not cfg.data.random_flip
    assert (cfg.budget.max_steps, cfg.budget.train_flops, cfg.budget.global_batch_size) == (200, 1e13, 16)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.beta2, cfg.seed) == (1e-4, 3, 0.95, 9)
    assert cfg.tracking.uri == "http://127.0.0.1:5000" and cfg.tracking.tags == {"k": "v"}
    assert cfg.grad_checkpointing and cfg.out == str(tmp_path / "o")
    custom = config_from_args(build_parser().parse_args(["--model", "none", "--depth", "2", "--width", "32",
                                                         "--heads", "2", "--patch-size", "2"]))  # fmt: skip
    assert custom.model.name is None and custom.model.hidden_size == 32


def test_cli_help_teaches_and_bad_input_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--train-flops" in out and "examples:" in out and "accelerate launch" in out and "143" in out
    assert main(["--set", "optim.lr=fast"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main(["--max-steps", "3", "--print-config"]) == 0
    assert "budget.max_steps = 3" in capsys.readouterr().out


# ---------------------------------------------------------------------- lr schedules
def test_lr_schedules_closed_forms():
    c = OptimConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(s, 100, c) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = OptimConfig(lr=1.0, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, 11, cos) == 1.0 and lr_at(10, 11, cos) == pytest.approx(0.1)
    assert lr_at(5, 11, cos) == pytest.approx(0.55)  # half way: the mean of lr and the floor
    wsd = OptimConfig(lr=2.0, schedule="constant_cooldown", cooldown_frac=0.25)
    assert [lr_at(s, 8, wsd) for s in range(8)] == [2.0] * 6 + [1.0, 0.0]


# ---------------------------------------------------------------------- data stream
def test_data_stream_resumes_at_its_position_and_splits_ranks():
    ds = IndexedDataset(10)
    full = DataStream(ds, 4, seed=3)
    ref = [full.next_batch()[0] for _ in range(7)]  # 2 batches per epoch (2 images skipped)
    part = DataStream(ds, 4, seed=3)
    got = [part.next_batch()[0] for _ in range(3)]
    state = part.state_dict()
    again = DataStream(ds, 4, seed=3)
    again.load_state_dict(state)
    got += [again.next_batch()[0] for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    first_epoch = torch.cat(ref[:2])[:, 0]
    assert len(set(first_epoch.tolist())) == 8 and (torch.cat(ref[:2])[:, 1] == 0).all()
    assert (ref[2][:, 1] == 1).all()  # set_epoch reached the dataset
    r0, r1 = DataStream(ds, 4, seed=3, rank=0, world_size=2), DataStream(ds, 4, seed=3, rank=1, world_size=2)
    assert torch.equal(torch.cat([r0.next_batch()[0], r1.next_batch()[0]]), ref[0])
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        DataStream(ds, 4, seed=0, world_size=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DataStream(ds, 11, seed=0)


def test_data_stream_with_workers_matches_in_process():
    ds = IndexedDataset(12)
    a, b = DataStream(ds, 4, seed=1), DataStream(ds, 4, seed=1, num_workers=1)
    for _ in range(4):
        assert torch.equal(a.next_batch()[0][:, :2], b.next_batch()[0][:, :2])  # [:, 2] is the reading pid


# ---------------------------------------------------------------------- EMA and RNG
def test_ema_update_closed_form():
    m = torch.nn.Linear(3, 2)
    ema = EMA(m, decay=0.9)
    e0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update()
    torch.testing.assert_close(ema.model.weight, 0.9 * e0 + 0.1 * m.weight.detach())
    assert not ema.model.weight.requires_grad


def test_ema_decay_must_be_in_the_half_open_unit_interval():
    """decay 0 (a copy) is allowed; 1 (never moves) and negative decays are not; the default is DiT's
    0.9999."""
    m = torch.nn.Linear(3, 2)
    assert EMA(m).decay == 0.9999 and EMA(m, 0.0).decay == 0.0
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"EMA decay must be in \[0, 1\)"):
            EMA(m, bad)


def test_ema_state_dict_round_trip():
    """An EMA's state_dict holds its averaged weights and loads (strictly) into another EMA."""
    m = torch.nn.Linear(3, 2)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update()
    state = ema.state_dict()
    torch.testing.assert_close(state["weight"], m.weight.detach() - 1.0)  # halfway to the +2 step
    other = EMA(torch.nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(state)
    for k, v in state.items():
        assert torch.equal(other.model.state_dict()[k], v), k
    with pytest.raises(RuntimeError, match="bias"):
        other.load_state_dict({"weight": state["weight"]})


def test_step_randomness_depends_only_on_seed_and_step_and_splits_ranks():
    x, cpu = torch.zeros(4, 1, 2, 2), torch.device("cpu")
    r = StepRandom(0, cpu, 0.5)
    a = r.draw(7, x)
    r.draw(8, x)
    b = r.draw(7, x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[1], r.draw(8, x)[1])
    halves = [StepRandom(0, cpu, 0.5, rank=k, world_size=2).draw(7, x[:2]) for k in (0, 1)]
    for i in range(3):  # two ranks draw exactly the single process's rows
        assert torch.equal(torch.cat([halves[0][i], halves[1][i]]), a[i])


def test_rng_state_survives_weights_only_load():
    import random

    import numpy as np

    state = get_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    want = (torch.rand(2), np.random.rand(2), random.random())
    set_rng_state(loaded)
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_progress_bar_and_eta(capsys):
    from dit_core.trainer.progress import Progress, format_eta

    assert [format_eta(s) for s in (5, 65, 3725, float("inf"))] == ["5s", "1m05s", "1h02m05s", "?"]
    p = Progress(total=10, start=0, use_bar=True)
    p.update(5, 0.5, images_per_s=100.0, steps_per_s=12.5)
    p.close()
    err = capsys.readouterr().err
    assert "5/10" in err and "loss=0.5000" in err and "img_s=100.0" in err
    quiet = Progress(total=10, start=0, enabled=False)
    quiet.update(5, 0.5, 100.0, 12.5)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------- one config mechanism
def test_every_field_has_a_flag_in_help_and_flags_round_trip_the_defaults(capsys):
    """Each leaf field of TrainConfig has ``--<dotted.key>`` in --help; giving every field its
    default as a string (MLflow's format) through the real parser rebuilds the default config."""
    from dit_core.configio import iter_fields

    keys = [k for k, _, _ in iter_fields(TrainConfig)]
    assert len(keys) > 80 and "optim.warmup_frac" in keys and "tracking.tags" in keys
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    missing = [k for k in keys if f"--{k} " not in out and f"--{k}," not in out and f"--{k}\n" not in out]
    assert not missing
    argv = [a for k, v in TrainConfig().to_flat_dict().items() for a in (f"--{k}", format_param(v))]
    assert config_from_args(build_parser().parse_args(argv)) == TrainConfig()
    # the aliases users know still set their fields
    cfg = config_from_args(build_parser().parse_args(["--optim.lr", "2e-4", "--width", "64", "--compile"]))
    assert (cfg.optim.lr, cfg.model.hidden_size, cfg.compile) == (2e-4, 64, True)


def test_help_text_comes_from_the_docstrings_of_the_trainer_configs():
    from dit_core.config import CheckpointConfig, EvalConfig, TrackingConfig
    from dit_core.configio import field_help

    for cls in (OptimConfig, BudgetConfig, EvalConfig, CheckpointConfig, TrackingConfig, TrainConfig):
        docs = field_help(cls)
        nested = {"model", "diffusion", "data", "optim", "budget", "eval", "checkpoint", "tracking"}
        undocumented = [f for f in cls.__dataclass_fields__ if f not in docs and f not in nested]
        assert not undocumented, (cls.__name__, undocumented)
    assert field_help(OptimConfig)["beta2"].startswith("AdamW's moment decays")


def test_unknown_keys_name_the_valid_ones_everywhere(tmp_path, capsys):
    with pytest.raises(
        ConfigError,
        match=r"optim.lrr: OptimConfig has no field 'lrr' \(did you mean optim.lr\?\); valid keys: optim.lr,",
    ):
        TrainConfig().replace(**{"optim.lrr": 1e-3})
    with pytest.raises(ConfigError, match=r"has no field 'train' \(did you mean optim.lr\?\)"):
        TrainConfig().replace(**{"train.optim.lr": 1e-3})  # the sweep YAML's prefix, given to the trainer
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['dpeth'\] \(did you mean depth for dpeth\?\)"):
        check_keys(DiTConfig, {"dpeth": 3}, "DiTConfig")  # the sweeps' shape check
    with pytest.raises(ConfigError, match=r"has no field 'zzz'; valid keys"):  # nothing close: no guess
        TrainConfig().replace(**{"zzz": 1})
    with pytest.raises(ConfigError, match=r"valid keys: model.name, .* out, seed"):
        TrainConfig.from_flat_dict({"optimizer.lr": "1"})
    y = tmp_path / "c.yaml"
    y.write_text("optim: {lrr: 1.0e-3}\n")
    with pytest.raises(ConfigError, match=r"config file .*c.yaml: optim.lrr: .*valid keys: optim.lr"):
        config_from_args(build_parser().parse_args(["--config", str(y)]))
    assert main(["--set", "optim.lrr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "optim.warmup_frac" in err
    with pytest.raises(ConfigError, match="optim.warmup_frac: must be in"):
        OptimConfig(warmup_frac=1.5)


def test_precedence_defaults_yaml_set_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("optim: {lr: 1.0e-3, beta2: 0.9}\nseed: 4\nlog_every: 7\n")
    args = build_parser().parse_args(
        ["--config", str(y), "--set", "optim.lr=2e-3", "--set", "seed=5", "--lr", "3e-3"]
    )
    cfg = config_from_args(args)
    assert (cfg.optim.lr, cfg.seed, cfg.optim.beta2, cfg.log_every, cfg.optim.eps) == (3e-3, 5, 0.9, 7, 1e-8)


def test_the_custom_model_message_names_flags_and_keys_that_exist():
    from dit_core.configio import iter_fields

    with pytest.raises(ValueError) as e:
        ModelConfig(name=None, depth=2)
    words = str(e.value).replace(",", " ").split()
    flags = [w for w in words if w.startswith("--")]
    keys = [w.partition("=")[0] for w in words if "=" in w and "." in w.partition("=")[0]]
    assert flags or keys
    assert set(flags) <= {s for a in build_parser()._actions for s in a.option_strings}, flags
    assert set(keys) <= {k for k, _, _ in iter_fields(TrainConfig)}, keys


# ---------------------------------------------------------------------- lr protocol
def test_warmup_scales_with_the_run_and_has_a_floor():
    from dit_core.trainer.lr_schedule import warmup_steps

    assert warmup_steps(OptimConfig(warmup_steps=3, warmup_frac=0.1), 100) == 10
    assert warmup_steps(OptimConfig(warmup_steps=20, warmup_frac=0.1), 100) == 20  # the floor
    assert warmup_steps(OptimConfig(warmup_frac=0.05), 1000) == 50
    c = OptimConfig(lr=1.0, warmup_frac=0.1)  # 40 steps -> warmup 4
    assert [lr_at(s, 40, c) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_and_cooldown_end_at_the_floor_for_any_run_length():
    for total in (7, 50, 333):
        cos = OptimConfig(lr=1.0, schedule="cosine", min_lr_ratio=0.1, warmup_frac=0.1)
        wsd = OptimConfig(lr=1.0, schedule="constant_cooldown", min_lr_ratio=0.1, cooldown_frac=0.2)
        for c in (cos, wsd):
            assert lr_at(total - 1, total, c) == pytest.approx(0.1)
            assert lr_at(total - 2, total, c) > 0.1 + 1e-9


def test_lr_rule_across_widths():
    from dit_core.trainer.lr_schedule import peak_lr

    inv = OptimConfig(lr=1e-3, lr_scaling="inverse_width", lr_base_width=128)
    assert [peak_lr(inv, w) for w in (64, 128, 512)] == pytest.approx([2e-3, 1e-3, 2.5e-4])
    assert peak_lr(OptimConfig(lr=1e-3), 64) == 1e-3  # "none"
    with pytest.raises(ConfigError, match="optim.lr_scaling: 'muP' is unknown"):
        OptimConfig(lr_scaling="muP")
    half = OptimConfig(lr=1.0, warmup_steps=2)
    assert lr_at(0, 10, half, peak=0.5) == 0.25 and lr_at(5, 10, half, peak=0.5) == 0.5


def test_check_resumable_is_the_one_rule():
    from dit_core.trainer.resume import check_resumable, config_changes

    saved = TrainConfig().to_flat_dict()
    as_params = {k: format_param(v) for k, v in saved.items()}
    check_resumable(as_params, saved)  # MLflow strings compare equal to values
    check_resumable(
        saved, TrainConfig().replace(**{"budget.max_steps": 9, "eval.val_every": 3}).to_flat_dict()
    )
    new = TrainConfig().replace(**{"optim.lr": 3e-4, "seed": 1}).to_flat_dict()
    assert config_changes(saved, new) == ["optim.lr: '0.0001' -> '0.0003'", "seed: '0' -> '1'"]
    with pytest.raises(ConfigError, match=r"different config \(optim.lr: '0.0001' -> '0.0003'; seed"):
        check_resumable(saved, new)


def test_model_section_defaults_are_the_dit_spec_defaults():
    """`ModelConfig`'s model fields default to `DiTConfig`'s (one source: dit_core.spec)."""
    import dataclasses

    from dit_core.config import ModelConfig
    from dit_core.spec import DiTConfig

    spec = {f.name: f.default for f in dataclasses.fields(DiTConfig)}
    shared = [f for f in dataclasses.fields(ModelConfig) if f.default is not None and f.name in spec]
    assert {f.name for f in shared} >= {
        "class_dropout_prob",
        "mlp_ratio",
        "pos_embed",
        "frequency_embedding_size",
    }
    assert all(f.default == spec[f.name] for f in shared)
