"""Session 38: tests that kill mutants that survived in `dit_core/device.py`, `dit_core/sample.py` and
`dit_core/evaluate/__main__.py` (samples drawn with seed 38). Each test names the mutants it kills.

This machine has no GPU: the device tests stand one in by patching `torch.cuda`'s two counts (the only
mock here); everything else runs the real CLIs on tiny checkpoints.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from dit_core import sample as sample_cli
from dit_core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from dit_core.config import ModelConfig, TrainConfig
from dit_core.configio import ConfigError
from dit_core.device import resolve_device
from dit_core.evaluate import __main__ as evaluate_cli
from dit_core.evaluate.__main__ import _check_run
from dit_core.models import DiT
from dit_core.sample import SampleConfig, input_size
from dit_core.sample import main as sample_main

# ------------------------------------------------------------------ dit_core/device.py


def _gpus(monkeypatch, available: bool, count: int) -> None:
    """What `torch.cuda` reports: whether the CUDA runtime works, and how many GPUs NVML sees."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("count", [1, 2])
def test_auto_and_cuda_indices_on_a_machine_with_gpus(monkeypatch, count):
    """auto is the first GPU; cuda, cuda:0 .. cuda:{count-1} are accepted and cuda:{count} refused.
    Kills x_resolve_device__mutmut_4, 6, 7 (auto not "cuda"), 22 (GPUs counted as 0), 25 (`and`),
    26 (`n != 0`), 27 (`n == 1`), 28 (`index and 0`), 29 (`index or 1`), 30 (`>` for `>=`)."""
    _gpus(monkeypatch, True, count)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    for i in range(count):
        assert resolve_device(f"cuda:{i}") == torch.device("cuda", i)
    with pytest.raises(ValueError) as e:
        resolve_device(f"cuda:{count}")
    assert str(e.value) == (
        f"--device cuda:{count}: this machine has {count} CUDA GPU(s); use --device cpu (or auto)"
    )
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_the_cuda_runtime_cannot_use_is_not_offered(monkeypatch):
    """NVML may see a GPU that CUDA cannot initialise (a driver too old): `is_available()` is False
    while `device_count()` is 1. auto is then the CPU, and --device cuda is refused at once, not
    accepted and failing at the first tensor. Kills x_resolve_device__mutmut_23 (`or True`: the
    device count asked even when CUDA is unavailable)."""
    _gpus(monkeypatch, False, 1)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(
        ValueError, match=r"^--device cuda: this machine has 0 CUDA GPU\(s\); use --device cpu"
    ):
        resolve_device("cuda")


# ------------------------------------------------------------------ dit_core/sample.py


@pytest.fixture(scope="module")
def rope_ckpt(tmp_path_factory):
    """A random-weight 16 px rotary-position DiT (patch 4) whose run samples with ddim, 2 steps, seed 7."""
    shape = dict(depth=1, hidden_size=16, num_heads=2, patch_size=4, frequency_embedding_size=32)
    data = dict(input_size=16, in_channels=1, num_classes=10, learn_sigma=True)
    cfg = TrainConfig(model=ModelConfig(name=None, pos_embed="rope", **shape, **data), seed=7)
    cfg = replace(cfg, eval=replace(cfg.eval, sampler="ddim", steps=2, cfg_scale=1.0))
    torch.manual_seed(0)
    sd = DiT.from_config(cfg.model.to_dit_config()).state_dict()
    out = tmp_path_factory.mktemp("rope") / "rope.pt"
    save_checkpoint(out, {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 3})
    return out


def test_a_rope_model_samples_at_one_patch(rope_ckpt):
    """The smallest size a model samples at is one patch: 4 px for pixels, 8 x 4 px for latents.
    Kills x_input_size__mutmut_23 (`<=` for `<`: one patch refused)."""
    dit = model_from_checkpoint(load_checkpoint(rope_ckpt, map_location="cpu"), True, str(rope_ckpt))[
        0
    ].config
    assert input_size(SampleConfig(str(rope_ckpt), "x.png", image_size=4), dit, "digits") == 1 * 4
    assert input_size(SampleConfig(str(rope_ckpt), "x.png", image_size=32), dit, "latents", 8) == 32 // 8
    with pytest.raises(
        ConfigError, match=r"^image_size: 3 px is not a positive multiple of the model's patch 4"
    ):
        input_size(SampleConfig(str(rope_ckpt), "x.png", image_size=3), dit, "digits")


def test_the_batch_size_leaves_the_images_as_they_are(rope_ckpt, tmp_path, caplog):
    """Sample i is seeded by (seed, i): batches of 1 or 3 give the same 5 images as the default 64,
    and the log line names the run's own sampler, steps, guidance and seed. --batch-size 0 is a usage
    error. Kills x_build_parser__mutmut_156 (`int_at_least(None)`: every --batch-size refused) and
    x_sample_checkpoint__mutmut_116 (the seed logged as None)."""
    base = ["--checkpoint", str(rope_ckpt), "--num-samples", "5", "--device", "cpu"]
    arrays = []
    for extra in ([], ["--batch-size", "1"], ["--batch-size", "3"]):
        npz = tmp_path / f"b{len(arrays)}.npz"
        with caplog.at_level(logging.INFO, logger="dit_core.sample"):
            assert sample_main([*base, *extra, "--out", str(tmp_path / "g.png"), "--npz", str(npz)]) == 0
        with np.load(npz) as z:
            arrays.append((z["arr_0"], z["labels"]))
    for images, labels in arrays[1:]:
        np.testing.assert_array_equal(images, arrays[0][0])
        np.testing.assert_array_equal(labels, arrays[0][1])
    logged = [r.getMessage() for r in caplog.records if r.name == "dit_core.sample"]
    assert logged == ["sampled 5 images at 16 px (ddim-2, cfg 1.00, seed 7)"] * 3
    with pytest.raises(SystemExit) as e:
        sample_main([*base, "--out", str(tmp_path / "h.png"), "--batch-size", "0"])
    assert e.value.code == 2


def test_out_of_memory_at_the_training_size_says_so(rope_ckpt, tmp_path, capsys):
    """Without --image-size, the out-of-memory error names the training size (not "None px").
    Kills x_main__mutmut_83 (`or True`)."""
    out = tmp_path / "x.png"
    argv = ["--checkpoint", str(rope_ckpt), "--out", str(out), "--num-samples", "1", "--zoom", "1000000"]
    assert sample_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: out of memory sampling at the training size (--batch-size 64, --zoom 1000000): "
    )
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ dit_core/evaluate/__main__.py

_WHERE = (
    "give the id in the run folder's mlflow_run_id file, and set MLFLOW_TRACKING_URI to the store the "
    "run is in"
)


def test_a_run_id_not_in_the_store_says_where_to_find_the_right_one(tmp_path, monkeypatch):
    """An unknown run id, and a store file that does not exist, both end on how to find the run's id
    and store. Kills x__check_run__mutmut_1 (the hint None) and x__check_run__mutmut_2 (its text)."""
    import mlflow

    with mlflow.start_run():  # the (real, sqlite) store exists, without that run
        pass
    with pytest.raises(ValueError) as e:
        _check_run("0123456789abcdef0123456789abcdef")
    assert str(e.value).startswith(
        "--mlflow-run-id 0123456789abcdef0123456789abcdef: no such run in the MLflow"
    )
    assert str(e.value).endswith(f"); {_WHERE}")
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ValueError) as e:
        _check_run("abc")
    assert str(e.value) == f"--mlflow-run-id abc: the MLflow tracking store {uri} does not exist; {_WHERE}"
    assert not (tmp_path / "none.db").exists()  # read only: no empty store made to look


@pytest.mark.parametrize("module", [sample_cli, evaluate_cli])
def test_the_sampling_and_evaluation_help_describes_the_tool_and_every_option(module):
    """`--help` opens on what the tool does (its docstring's second paragraph) and gives every option
    more than its default (the rule `test_bad_input.py` checks for the other CLIs, which left out the
    sampling CLI). Kills x_build_parser__mutmut_28 of sample.py (--checkpoint's help None) and
    x_build_parser__mutmut_5 of evaluate/__main__.py (no description)."""
    parser = module.build_parser()
    assert parser.format_help().split("\n\n")[1].startswith("Samples with the checkpoint's EMA weights")
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    bare = [a.dest for a in options if not re.sub(r"\(default: [^)]*\)", "", a.help or "").strip()]
    assert len(options) >= 14 and bare == []
