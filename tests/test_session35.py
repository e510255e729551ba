"""Session 35: what the first GPU run showed (benchmarks/gpu_check.sh on an H200).

The trainer's sample grid of a 200-step DiT-B/2 run was pure noise: sampling uses the EMA weights,
and at DiT's decay 0.9999 the EMA after 200 steps is still 98% the random initialisation. Nothing said
so. And compiling paid 1.6x on the GPU while `compile` auto never compiled there.
"""

from __future__ import annotations

import logging
import math
import sys

import pytest
from _train_helpers import one_thread, tiny_config

from dit_core.checkpoint import latest_checkpoint, load_model_from_checkpoint
from dit_core.ema import STALE_EMA_SHARE, ema_init_share, stale_ema_warning
from dit_core.train import train
from dit_core.trainer import loop

TINY = {"model.depth": 1, "model.hidden_size": 16, "data.image_size": 8, "tracking.enabled": False}


def test_the_ema_share_of_the_initial_weights_is_decay_to_the_steps():
    assert ema_init_share(0.9999, 0) == 1.0
    assert ema_init_share(0.5, 3) == 0.125
    # DiT's 0.9999 halves the initial share after ln 2 / -ln 0.9999 = 6,931 steps
    half = math.log(2) / -math.log(0.9999)
    assert ema_init_share(0.9999, math.floor(half)) > 0.5 > ema_init_share(0.9999, math.ceil(half))


def test_the_stale_ema_warning_names_the_share_and_a_decay_that_would_do():
    msg = stale_ema_warning(0.9999, 200)
    assert msg.startswith("the EMA weights (optim.ema_decay 0.9999) after 200 steps are still 98% the random")
    assert ": a run of 200 steps needs --ema-decay below " in msg
    below = float(msg.split("--ema-decay below ")[1])
    # the decay offered is rounded down, so it does halve the initial share in 200 steps
    assert below**200 <= STALE_EMA_SHARE < (below + 1e-4) ** 200
    assert stale_ema_warning(below, 200) is None
    assert "--raw-weights" not in msg and "--raw-weights" in stale_ema_warning(0.9999, 200, raw_weights=True)
    assert stale_ema_warning(0.95, 69) is None  # the demo: XL's 69 steps at 1e11 leave 3 %
    assert stale_ema_warning(0.9999, 7000) is None
    assert stale_ema_warning(0.0, 1) is None


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("s35") / "run"
    with one_thread():
        train(tiny_config(out, steps=1, batch=4, **{**TINY, "checkpoint.every": 1}))
    return latest_checkpoint(out)


def test_sampling_a_stale_ema_warns_and_the_raw_weights_do_not(one_step_run, caplog):
    with caplog.at_level(logging.WARNING, logger="dit_core.checkpoint"):
        load_model_from_checkpoint(one_step_run)
    [rec] = caplog.records
    assert str(one_step_run) in rec.getMessage() and "100% the random initial weights" in rec.getMessage()
    assert "--raw-weights" in rec.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dit_core.checkpoint"):
        load_model_from_checkpoint(one_step_run, use_ema=False)
    assert caplog.records == []


def test_a_run_whose_evaluation_would_sample_a_stale_ema_says_so_at_the_start(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(loop, "evaluate_samples", lambda *a, **k: {})  # the warning, not the FID, is tested
    cfg = tiny_config(
        tmp_path / "a", steps=2, batch=4, **{**TINY, "eval.eval_every": 2, "checkpoint.every": 0}
    )
    with one_thread(), caplog.at_level(logging.WARNING, logger="dit_core.train"):
        train(cfg)
        [rec] = [r for r in caplog.records if "EMA" in r.getMessage()]
        assert rec.getMessage().startswith(
            "evaluation samples the EMA model: the EMA weights (optim.ema_decay"
        )
        assert "--raw-weights" not in rec.getMessage()  # the trainer has no such flag
        caplog.clear()
        train(cfg.replace(**{"out": str(tmp_path / "b"), "optim.ema_decay": 0.5}))
        train(cfg.replace(**{"out": str(tmp_path / "c"), "eval.eval_every": 0}))
    assert [r for r in caplog.records if "EMA" in r.getMessage()] == []


def _gpu_train():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.py"
    spec = importlib.util.spec_from_file_location("gpu_train", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up
    spec.loader.exec_module(mod)
    return mod


def test_the_gpu_benchmark_runs_its_modes_and_ratios_on_cpu(capsys, monkeypatch):
    """`benchmarks/gpu_train.py` ran for the first time on a GPU in session 35; its code paths (eager
    and fp32 modes, the ratio lines, per-mode warm-up) stay runnable on CPU with a tiny model."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # the path, not a 35 s CPU compile
    with one_thread():
        _gpu_train().main(
            ["--model", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--fp32-steps", "1",
             "--modes", "ours-bf16-compile,ours-bf16,fp32-nocompile", "--batch-size", "4", "--profile", "1"]
        )  # fmt: skip
    out = capsys.readouterr().out
    assert "ours-bf16: top operators by self time over 1 steps" in out and "aten::addmm" in out
    for mode in ("ours-bf16-compile", "ours-bf16", "fp32-nocompile"):
        assert f"{mode}: " in out and "warm-up" in out
    assert (
        "ratio ours-bf16-compile / ours-bf16: " in out and "ratio ours-bf16-compile / fp32-nocompile: " in out
    )


def test_flash_attention_check_compares_the_kernels_for_both_position_embeddings():
    import torch

    from dit_core.spec import model_config

    cfg = model_config(None, depth=1, hidden_size=32, num_heads=2, patch_size=2, input_size=8)
    with one_thread():
        lines = _gpu_train().flash_check(cfg, torch.device("cpu")).splitlines()
    assert [ln.split(")")[0] for ln in lines] == ["flash SDPA (sincos", "flash SDPA (rope"]
    for ln in lines:  # bf16 rounding apart, the flash and math kernels agree
        assert float(ln.split("max |flash - math| ")[1].split(" ")[0]) < 0.05
