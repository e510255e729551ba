"""The sweep's bill before the run (sweeps/cost.py): closed forms from the DiT paper's numbers."""

from __future__ import annotations

import re

import pytest

from dit_core.spec import forward_macs, model_config
from sweeps.cost import DEFAULT_MFU, cell_eval_flops, estimate
from sweeps.grid import SweepSpec, expand, load_spec


def _xl2_cell(steps: int):
    spec = SweepSpec(
        families=["XL"],
        patch_sizes=[2],
        budgets=[6 * forward_macs(model_config("DiT-XL/2")) * 256 * steps],
        batch_size=256,
    )
    spec = spec.replace(data={"name": "latents", "input_size": 32, "in_channels": 4, "num_classes": 1000})
    (cell,) = expand(spec)
    return spec, cell


def test_paper_xl2_run_costs_what_the_closed_form_says():
    """DiT-XL/2, 400K steps at batch 256: 6 x 118.64 GFLOPs x 1.024e8 images = 7.29e19 true FLOPs;
    on an H100 (989.4 TFLOP/s dense bf16) at 40% MFU that is 7.29e19 / 3.958e14 / 3600 = 51.2 h."""
    _, cell = _xl2_cell(400_000)
    assert cell.steps == 400_000
    macs = forward_macs(model_config("DiT-XL/2"))
    bill = estimate([cell], device_name="H100", mfu=0.4)
    assert bill.train_flops == pytest.approx(6 * macs * 256 * 400_000, rel=1e-12)
    assert bill.gpu_hours == pytest.approx(6 * macs * 256 * 400_000 / (989.4e12 * 0.4) / 3600, rel=1e-12)
    assert 50.5 < bill.gpu_hours < 52.0
    # the A100's 312 TFLOP/s peak makes the same run 989.4 / 312 times longer
    a100 = estimate([cell], device_name="a100", mfu=0.4)
    assert a100.gpu_hours / bill.gpu_hours == pytest.approx(989.4 / 312.0)


def test_eval_flops_count_validation_and_guided_sampling():
    spec, cell = _xl2_cell(1000)
    fwd = 2 * forward_macs(model_config("DiT-XL/2"))
    ov = {"eval.val_every": 300, "eval.val_examples": 100, "eval.eval_every": 1000}
    ov |= {"eval.num_samples": 50, "eval.steps": 25, "eval.cfg_scale": 1.5}
    # validation at step 0, 300, 600, 900 and the last step; sampling once, guided (2 forward passes)
    assert cell_eval_flops(cell, ov) == pytest.approx(5 * 100 * fwd + 50 * 25 * 2 * fwd)
    # a ladder cell forks from its trunk at a later step: no validation at step 0
    assert cell_eval_flops(cell, ov, fresh=False) == pytest.approx(4 * 100 * fwd + 50 * 25 * 2 * fwd)
    no_guidance = cell_eval_flops(cell, ov | {"eval.cfg_scale": 1.0})
    assert no_guidance == pytest.approx(5 * 100 * fwd + 50 * 25 * fwd)
    assert cell_eval_flops(cell, {}) == 0.0  # evaluation off by default
    # validating the EMA weights as well doubles the validation passes
    with_ema = cell_eval_flops(cell, ov | {"eval.val_ema": True, "eval.val_every": 300})
    assert with_ema == pytest.approx(2 * 5 * 100 * fwd + 50 * 25 * 2 * fwd)


def test_eval_flops_of_a_flow_model_count_two_model_calls_per_heun_step():
    """A flow-matching cell sampled with Heun (two model calls a step) or Euler (one): the estimate
    keeps the cell's diffusion settings (it raised ConfigError, an eps objective's sampler check, and
    stopped `launch.py --dry-run`), and counts the calls the sampler makes."""
    import torch

    from dit_core.diffusion import DiffusionConfig, create_diffusion, sample
    from dit_core.models import DiT

    spec, cell = _xl2_cell(1000)
    fwd = 2 * forward_macs(model_config("DiT-XL/2"))
    ov = {"diffusion.objective": "flow", "eval.eval_every": 1000, "eval.num_samples": 50, "eval.steps": 10}
    ov |= {"eval.cfg_scale": 1.0}
    euler = cell_eval_flops(cell, ov | {"eval.sampler": "euler"})
    heun = cell_eval_flops(cell, ov | {"eval.sampler": "heun"})
    assert euler == pytest.approx(50 * 10 * fwd) and heun == pytest.approx(2 * 50 * 10 * fwd)
    # the counts are the sampler's: model calls of a tiny flow DiT over 10 steps
    model = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=8, depth=1, num_heads=2, num_classes=2,
                learn_sigma=False).eval()  # fmt: skip
    diffusion = create_diffusion(DiffusionConfig(objective="flow"))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    for sampler, want in (("euler", 10), ("heun", 20)):
        calls.clear()
        with torch.no_grad():
            sample(model, diffusion, (1, 1, 8, 8), torch.tensor([0]), sampler=sampler, steps=10)
        assert len(calls) == want, sampler


def test_summary_prints_the_inputs_and_the_total():
    spec = load_spec("imagenet256")
    cells = expand(spec)
    bill = estimate(cells, {c.cell_id: 1e15 for c in cells}, device_name="H100", gpus_per_cell=8)
    text = bill.summary()
    assert "989.4 TFLOP/s" in text and f"MFU: {DEFAULT_MFU:g}" in text and "assumed" in text
    assert f"{bill.gpu_hours:.4g} GPU-hours on H100 for {len(cells)} cells" in text
    assert bill.eval_flops == pytest.approx(1e15 * len(cells))
    assert bill.gpu_hours == pytest.approx((bill.train_flops + bill.eval_flops) / (989.4e12 * 0.4) / 3600)
    # the table, read back: one row per cell and a total; wall h = GPU-hours / 8 GPUs per cell
    lines = text.splitlines()
    header = ["cell", "steps", "images", "train FLOPs", "eval FLOPs", "GPU-hours", "wall h"]
    assert re.split(r"\s{2,}", lines[0]) == header
    rows = [line.split() for line in lines[2 : 3 + len(cells)]]
    assert [r[0] for r in rows] == [c.cell_id for c in cells] + ["total"] and lines[3 + len(cells)] == ""
    for r, c in zip(rows, bill.cells):
        assert r[1:] == [str(c.steps), str(c.images)] + [
            f"{v:.3g}" for v in (c.train_flops, c.eval_flops, c.gpu_hours, c.gpu_hours / 8)
        ]
    assert rows[-1][1:] == [str(sum(c.steps for c in cells)), str(sum(c.images for c in cells))] + [
        f"{v:.3g}" for v in (bill.train_flops, bill.eval_flops, bill.gpu_hours)
    ]
    total = bill.train_flops + bill.eval_flops
    assert f"= {total:.4g} / (9.894e+14 x 0.4) / 3600" in text and "true FLOPs (2 x multiply-adds)" in text
    assert "(given)" in estimate(cells, mfu=0.5).summary()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"device_name": "TPU9"}, "unknown accelerator 'TPU9'"), ({"mfu": 1.5}, "--mfu 1.5 must be in"),
     ({"mfu": 0}, "must be in (0, 1]"), ({"gpus_per_cell": 0}, "gpus per cell")],
)  # fmt: skip
def test_bad_inputs_are_named(kwargs, message):
    _, cell = _xl2_cell(10)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        estimate([cell], **kwargs)


def test_dry_run_prints_the_bill_with_its_assumptions(capsys, tmp_path, monkeypatch):
    """`-c imagenet256 --dry-run --device H100` answers "what will this study cost" without data."""
    from sweeps import launch

    monkeypatch.chdir(tmp_path)
    assert launch.main(["-c", "imagenet256", "--dry-run", "--device", "h100", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    cells = expand(load_spec("imagenet256"))
    train = sum(c.train_flops for c in cells)
    assert f"{train:.3g}" in out and f"GPU-hours on H100 for {len(cells)} cells" in out
    hours = float(out.split("estimate: ")[1].split(" GPU-hours")[0])
    assert hours > train / (989.4e12 * 0.5) / 3600 * 0.999  # eval adds to training, never subtracts
    assert "MFU: 0.5 (given)" in out and "data.root is not set" in out
    assert not (tmp_path / "sweep_runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert launch.main(["--dry-run", "--device", "tpu"]) == 2  # argparse names the valid choices
    assert "invalid choice: 'TPU'" in capsys.readouterr().err
