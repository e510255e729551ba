"""Review of the dit_core command lines (train, extract_latents, convert): each test is a defect found
by using them, fixed, and checked here against what the user sees."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from dit_core.config import ModelConfig, TrainConfig
from dit_core.configio import ConfigError
from dit_core.data import DataConfig
from dit_core.spec import DiTConfig
from dit_core.train import build_parser, config_from_args, main, resolve_config

DIGITS_8PX = SimpleNamespace(resolution=8, channels=1, num_classes=10)


def _custom(**kw) -> ModelConfig:
    return ModelConfig(**{"name": None, "depth": 1, "hidden_size": 16, "num_heads": 1, "patch_size": 2, **kw})


def test_fewer_model_classes_than_the_data_has_is_refused_before_training():
    """--set model.num_classes=3 on digits (10 classes) crashed in the first step with IndexError."""
    cfg = TrainConfig(model=_custom(num_classes=3)).replace(**{"budget.max_steps": 1})
    with pytest.raises(ConfigError) as e:
        resolve_config(cfg, DIGITS_8PX)
    assert str(e.value) == (
        "model.num_classes: 3 but the data has 10 classes; leave model.num_classes unset to take it "
        "from the data, or set it >= 10"
    )
    more = resolve_config(cfg.replace(**{"model.num_classes": 12}), DIGITS_8PX)  # unused rows are fine
    assert more.model.num_classes == 12


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_size": 0}, "model.hidden_size: must be >= 1, got 0"),
        ({"num_heads": 3}, "model.num_heads: hidden_size=16 is not divisible by num_heads=3; pick a width "
         "(model.hidden_size) that is a multiple of the head count"),
        ({"patch_size": 3}, "model.patch_size: patch_size=3 does not divide input_size=8; "),
        ({"num_heads": 8, "pos_embed": "rope"}, "model.pos_embed: pos_embed='rope' needs head_dim = "
         "hidden_size/num_heads divisible by 4 (even per axis), got 16/8 = 2; change model.hidden_size "
         "or model.num_heads"),
        ({"mlp_ratio": 0.01}, "model.mlp_ratio: hidden_size=16 x mlp_ratio=0.01 leaves the MLP no hidden "
         "unit"),
        ({"class_dropout_prob": 1.0}, "model.class_dropout_prob: must be in [0, 1), got 1.0"),
    ],
)  # fmt: skip
def test_model_shape_errors_name_the_trainer_keys(fields, message):
    """The trainer said DiTConfig.hidden_size (a key no flag or --set takes) or no key at all."""
    with pytest.raises(ConfigError) as e:
        _custom(**fields).resolve(input_size=8, in_channels=1, num_classes=10, learn_sigma=True)
    assert str(e.value).startswith(message), str(e.value)
    with pytest.raises(ConfigError, match=r"^DiTConfig\.num_heads: hidden_size=16 is not divisible"):
        DiTConfig(hidden_size=16, num_heads=3)  # the library's own name for the same field


def test_an_unknown_model_name_is_refused_with_the_config(capsys):
    """--print-config printed --model DiT-Q/2 as a valid config; the name was checked only once data
    was built, with no key and a fix (--depth ... without --model none) that did not work."""
    with pytest.raises(ConfigError, match=r"^model\.name: unknown model name 'DiT-Q/2'; valid names:"):
        ModelConfig(name="DiT-Q/2")
    assert main(["--print-config", "--model", "dit-s/2"]) == 2
    err = capsys.readouterr().err
    assert "--model none --depth D --width W --heads H --patch-size P" in err
    shape = ["--model", "none", "--depth", "1", "--width", "16", "--heads", "1", "--patch-size", "2"]
    assert main([*shape, "--print-config", "--no-mlflow"]) == 0  # the fix the message gives works


def test_a_custom_model_without_its_shape_names_what_is_missing():
    with pytest.raises(ConfigError) as e:
        ModelConfig(name=None, depth=2, num_heads=2)
    assert str(e.value).startswith("model.hidden_size: a custom model (model.name none) needs depth, ")
    assert "hidden_size, patch_size unset" in str(e.value)


def test_config_layers_are_merged_before_they_are_checked(tmp_path, capsys):
    """docs/data.md's `--data photos --set data.channels=1` was refused: --set was checked against
    the default digits data before the flags applied; so was a YAML custom model shaped by flags."""
    cfg = config_from_args(build_parser().parse_args(["--data", "photos", "--set", "data.channels=1"]))
    assert (cfg.data.name, cfg.data.channels) == ("photos", 1)
    y = tmp_path / "m.yaml"
    y.write_text("model: {name: null, depth: 1}\n")
    argv = ["--config", str(y), "--width", "16", "--heads", "1", "--patch-size", "2"]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert (cfg.model.name, cfg.model.depth, cfg.model.hidden_size) == (None, 1, 16)
    y.write_text("optim: {lrr: 1.0e-3}\n")  # a key only the file gives is still blamed on the file
    assert main(["--config", str(y), "--print-config"]) == 2
    assert capsys.readouterr().err.startswith(f"error: config file {y}: optim.lrr: OptimConfig has no field")


def test_a_yaml_field_given_twice_is_refused(tmp_path):
    """`model.depth: 2` and `model: {depth: 3}` in one file: the later one won silently."""
    y = tmp_path / "twice.yaml"
    y.write_text("model.depth: 2\nmodel:\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"model\.depth given twice \(dotted and under its section\)"):
        config_from_args(build_parser().parse_args(["--config", str(y)]))


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("lr", "optim.lr"),
        ("depth", "model.depth"),
        ("batch_size", "budget.global_batch_size or eval.batch_size"),
    ],
)
def test_a_field_without_its_section_suggests_the_dotted_key(key, field):
    """`--set lr=3e-4` listed 90 keys with no suggestion."""
    with pytest.raises(
        ConfigError, match=rf"^{key}: TrainConfig has no field '{key}' \(did you mean {field}\?\)"
    ):
        TrainConfig().replace(**{key: "1"})


@pytest.mark.parametrize("name", ["digits", "photos"])
def test_a_data_root_for_bundled_data_is_refused_before_training(name):
    """`--data-root /data/imagenet` without `--data imagefolder` trained on the digits."""
    cfg = TrainConfig(model=_custom()).replace(**{"data.name": name, "budget.max_steps": 1})
    with pytest.raises(ConfigError, match=rf"^data\.root: '{name}' is bundled and reads no folder; unset"):
        resolve_config(cfg.replace(**{"data.root": "/data/imagenet"}), DIGITS_8PX)
    with pytest.raises(ConfigError, match=r"^data\.val_root: "):
        resolve_config(cfg.replace(**{"data.val_root": "/data/val"}), DIGITS_8PX)
    assert DataConfig(name=name, root="/x").root == "/x"  # a saved config that has one still loads


def test_extract_latents_output_that_is_not_a_folder_is_an_error(tiny_vae, tmp_path, capsys):
    """--output naming a file (or a path under one) ended in a FileExistsError traceback, exit 1."""
    from dit_core.extract_latents import main as extract_main

    vae = tmp_path / "vae"
    tiny_vae.save_pretrained(vae)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / "a" / "0.png")
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["--data-path", str(tmp_path / "imgs"), "--vae", str(vae), "--device", "cpu", "--num-workers", "0"]
    assert extract_main([*base, "--output", str(afile)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: --output '{afile}' is a file; give a folder (a new one, or one to resume)\n"
    )
    assert extract_main([*base, "--output", str(afile / "sub"), "--image-size", "16"]) == 2
    assert (
        f"error: --output '{afile / 'sub'}': cannot create the folder (Not a directory)"
        in capsys.readouterr().err
    )


def test_python_m_dit_core_convert_says_it_is_a_library():
    """`python -m dit_core.convert ...` printed nothing and exited 0, having converted nothing."""
    out = subprocess.run(
        [sys.executable, "-m", "dit_core.convert", "ckpt.pt"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(
        "error: dit_core.convert is a library, not a command (nothing was converted)"
    )
