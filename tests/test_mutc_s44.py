"""Session 44 (mutc): tests that kill the hand-placed mutants of the training loop, the data pipeline
and the config layers (`tests/hand_mutants.txt`, "session 44 (mutc)") that the older tests let live.
Each checks a closed form, a reference computation or the documented rule, on a DiT of depth 1, width 16,
on 8 px digits (where a model is needed)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _train_helpers import one_thread, tiny_config

from dit_core.checkpoint import load_checkpoint
from dit_core.train import TrainConfig, Trainer, train

TINY = {"model.depth": 1, "model.hidden_size": 16, "model.num_heads": 2, "data.image_size": 8,
        "eval.val_examples": 8, "tracking.enabled": False, "checkpoint.every": 0, "log_every": 2,
        "compile": False}  # fmt: skip


def tiny(out, steps: int = 4, **overrides) -> TrainConfig:
    return tiny_config(out, steps=steps, batch=4, **{**TINY, **overrides})


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ---------------------------------------------------------------------------------------- the loop
def test_the_last_step_is_validated_even_off_the_interval(tmp_path):
    """val_every 3 over 4 steps: validations at steps 3 and 4 (the last); the run's val loss is the
    loss of the final weights, recomputed by a trainer resumed from the final checkpoint."""
    cfg = tiny(tmp_path / "r", 4, **{"eval.val_every": 3})
    res = train(cfg)
    again = Trainer(cfg)  # resumes the final checkpoint: nothing left to train
    assert again.step == 4
    assert res.val_loss == pytest.approx(again.validator({"v": again.model})["v"], rel=1e-6)
    at3 = Trainer(tiny(tmp_path / "s", 4, **{"eval.val_every": 3}))
    for _ in range(3):
        at3.train_step()
    assert res.val_loss != pytest.approx(at3.validator({"v": at3.model})["v"], rel=1e-6)


def test_a_resume_restores_the_global_rngs_of_its_checkpoint(tmp_path):
    """torch, NumPy and Python's generators continue from the checkpoint's states, whatever this
    process drew before (DataLoader workers take their base seed from torch's)."""
    cfg = tiny(tmp_path / "r", 4)
    stopped = train(cfg, stop_at_step=2)
    saved = load_checkpoint(stopped.checkpoint)["rng"]
    torch.rand(7), np.random.rand(3), random.random()  # this process moves on
    tr = Trainer(cfg)
    assert tr.step == 2
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    assert np.array_equal(np.random.get_state()[1], saved["numpy"]["keys"].numpy().astype(np.uint32))
    assert list(random.getstate()[1]) == list(saved["python"]["state"])


def test_adamw_takes_every_optimizer_setting_of_the_config(tmp_path):
    """betas, eps and weight decay reach AdamW as given (defaults would hide a dropped one: eps 1e-8
    is torch's default too)."""
    tr = Trainer(tiny(tmp_path / "r", 2, **{"optim.beta1": 0.5, "optim.beta2": 0.75, "optim.eps": 0.125,
                                              "optim.weight_decay": 0.25}))  # fmt: skip
    (group,) = tr.optimizer.param_groups
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.5, 0.75), 0.125, 0.25)


# ---------------------------------------------------------------------------------------- data
def _latents_folder(root, classes, labels, shards, flip_sign=-1.0):
    """A hand-written latents folder: item i's latents are [i, flip_sign * i] (C=1, 2x2), label
    ``labels[i]``, split into shards of the sizes ``shards``."""
    import json

    from safetensors.torch import save_file

    root.mkdir()
    n, files, start = len(labels), [], 0
    for k, count in enumerate(shards):
        idx = torch.arange(start, start + count, dtype=torch.float32)
        lat = torch.stack([idx, flip_sign * idx], 1)[:, :, None, None, None].expand(count, 2, 1, 2, 2)
        name = f"latents_{k:05d}.safetensors"
        save_file({"latents": lat.contiguous(), "labels": torch.tensor(labels[start : start + count])},
                  str(root / name))  # fmt: skip
        files.append({"file": name, "count": count})
        start += count
    manifest = {"format": "ditscale-latents", "version": 1, "vae": "v", "scale_factor": 0.5, "image_size": 16,
                "latent_shape": [1, 2, 2], "classes": classes, "num_items": n, "shards": files,
                "skipped": []}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_latents_items_across_shards_flips_and_val_labels(tmp_path):
    """Item i (shards of 2, 3, 1) is its own latent, or the stored flipped one where the flip hash says
    so; a val folder's labels are mapped to the training folder's classes by name."""
    from dit_core.data import LatentsDataset, flip_decision

    train_root = _latents_folder(tmp_path / "t", ["a", "b", "c"], [0, 0, 1, 1, 2, 2], [2, 3, 1])
    ds = LatentsDataset(str(train_root), random_flip=True, seed=3)
    flips = []
    for i in range(6):
        x, y = ds[i]
        flips.append(flip_decision(3, 0, i))
        assert x.shape == (1, 2, 2) and float(x[0, 0, 0]) == (-i if flips[-1] else i), i
        assert int(y) == [0, 0, 1, 1, 2, 2][i]
    assert any(flips[1:]) and not all(flips[1:])  # both kinds of item among the nonzero ones
    val_root = _latents_folder(tmp_path / "v", ["b", "c"], [0, 1, 1], [3])  # "b" is label 1 in training
    val = LatentsDataset(str(val_root), random_flip=False, like=str(train_root))
    assert [int(val[i][1]) for i in range(3)] == [1, 2, 2] and val.classes == ["a", "b", "c"]


def test_validation_needs_an_example_and_a_seed_of_at_least_0(tmp_path):
    """With validation on, 0 examples (a mean over nothing: NaN) and a negative seed are refused before
    training; 1 example and seed 0 are the smallest allowed."""
    from dit_core.configio import ConfigError
    from dit_core.trainer.validation import check_validation

    on = {"eval.val_every": 1}
    check_validation(tiny(tmp_path, 2, **on, **{"eval.val_examples": 1, "eval.val_seed": 0}))
    check_validation(tiny(tmp_path, 2, **{"eval.val_every": 0, "eval.val_examples": 0}))  # off: not checked
    with pytest.raises(ConfigError, match="eval.val_examples: must be >= 1 .* got 0"):
        check_validation(tiny(tmp_path, 2, **on, **{"eval.val_examples": 0}))
    with pytest.raises(ConfigError, match="eval.val_seed: must be >= 0, got -1"):
        check_validation(tiny(tmp_path, 2, **on, **{"eval.val_seed": -1}))


# ---------------------------------------------------------------------------------------- config layers
@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [("1e3", int, 1000), ("", int | None, None), (" null ", float | None, None),
     ("1,,2, ", tuple[int, ...], (1, 2)), ("off", bool, False), ("Yes", bool, True), (2, float, 2.0)],
)  # fmt: skip
def test_parse_value_reads_what_it_documents(value, hint, expected):
    from dit_core.configio import parse_value

    got = parse_value(value, hint, "f")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("value", "hint"), [("2.5", int), (2.5, int), ("maybe", bool), ("", bool),
                                             (True, float), ("x", float)])  # fmt: skip
def test_parse_value_refuses_what_is_not_of_its_type(value, hint):
    from dit_core.configio import ConfigError, parse_value

    with pytest.raises(ConfigError, match="f: cannot use"):
        parse_value(value, hint, "f")


def test_bounds_are_the_ones_their_names_say():
    from dit_core.config import BudgetConfig, OptimConfig
    from dit_core.configio import ConfigError

    OptimConfig(beta1=0.0, ema_decay=0.0, lr=1e-9)
    for bad, match in [({"beta2": 1.0}, r"optim.beta2: must be in \[0, 1\)"),
                       ({"lr": float("inf")}, "optim.lr: must be a finite number > 0")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            OptimConfig(**bad)
    BudgetConfig(global_batch_size=1, max_steps=None)  # None = unset, where the type allows it
    none = r"BudgetConfig.global_batch_size: must be set, got null"  # refused where parsed (session 60)
    for bad, match in [
        ({"global_batch_size": 0}, "must be >= 1, got 0"),
        ({"global_batch_size": None}, none),
    ]:
        with pytest.raises(ConfigError, match=match):
            BudgetConfig(**bad)


def test_a_section_mapping_and_dotted_keys_of_it_merge(tmp_path):
    """``{"optim.lr": x, "optim": {...}}`` (a YAML file's section and a --set of the same section) sets
    both; a key given both ways in one YAML file is refused."""
    from dit_core.configio import ConfigError, apply_flat, yaml_to_flat

    cfg = apply_flat(TrainConfig(), {"optim.lr": 3e-4, "optim": {"beta2": 0.95}})
    assert (cfg.optim.lr, cfg.optim.beta2) == (3e-4, 0.95)
    with pytest.raises(ConfigError, match="optim.lr given twice"):
        yaml_to_flat(TrainConfig, {"optim.lr": 1, "optim": {"lr": 2}}, "f.yaml")
