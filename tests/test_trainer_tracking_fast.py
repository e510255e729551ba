"""What the trainer reports, on the tiny DiT of `test_trainer_lifecycle_fast.py`: MLflow metrics,
params and tags against values recomputed independently (per-step losses, the lr closed form,
FLOPs), the validation loss against a per-example hand computation with the same fixed draws, and
the sample evaluation and grid against direct calls with the run's settings."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _train_helpers import evaluate_checkpoint, one_thread
from _train_helpers import metric_history as _history
from mlflow import MlflowClient
from test_trainer_lifecycle_fast import COSINE, _closed_lr, _per_step_losses, tiny

from dit_core.checkpoint import load_checkpoint
from dit_core.data import build_dataset, data_accounting, unique_images
from dit_core.diffusion import create_diffusion, sample
from dit_core.diffusion.validation import example_noise, example_uniforms
from dit_core.evaluate import SampleSettings, evaluate_model
from dit_core.models import DiT
from dit_core.spec import (
    DiTConfig,
    forward_gflops,
    non_embedding_param_count,
    param_count,
    train_flops_per_image,
)
from dit_core.tracking import FEATURE_SPACE_TAG, FIXED_COST_METRICS, executor_tags, format_param, git_commit
from dit_core.train import Trainer, train
from dit_core.trainer.evaluation import clip_denoised, evaluate_samples, guidance_scale, sample_grid
from dit_core.trainer.loop import process_start_time
from dit_core.trainer.validation import Validator


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ------------------------------------------------------------------------------------ MLflow


def test_mlflow_metrics_params_and_tags_of_a_preempted_then_resumed_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dit_core.train")
    client = MlflowClient()
    name = f"fast-lifecycle-{uuid.uuid4().hex[:8]}"  # a store kept across sessions stays valid
    exp_id = client.create_experiment(name)
    parent = client.create_run(exp_id).info.run_id
    track = {
        "tracking.enabled": True,
        "tracking.experiment": name,
        "tracking.sweep": "sw",
        "tracking.grid_cell": "c1",
        "tracking.tags": {"k": "v"},
        "tracking.parent_run_id": parent,
    }
    opts = {**COSINE, "eval.val_every": 3, "eval.val_ema": True}
    loss = _per_step_losses(tmp_path, **opts)
    # log every 2 steps, validate every 3: each metric's steps show who logged it
    cfg = tiny(tmp_path / "run", log_every=2, **opts, **track)
    first = train(cfg, stop_at_step=2)
    assert first.status == "preempted" and first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "KILLED" and run.data.tags["status"] == "preempted"
    assert load_checkpoint(first.checkpoint)["mlflow_run_id"] == first.run_id
    res = train(cfg)
    assert res.run_id == first.run_id and res.status == "finished"
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"

    tr = Trainer(cfg)  # resumes the finished run: its final weights, nothing trained
    assert tr.step == 6
    fpi = train_flops_per_image(tr.dit_cfg)
    h = lambda key: _history(client, res.run_id, key)  # noqa: E731
    logged, either = (2, 4, 6), (0, 2, 3, 4, 6)  # log steps; log or validation steps
    assert h("train/loss") == {s: pytest.approx((loss[s - 2] + loss[s - 1]) / 2, rel=1e-6) for s in logged}
    assert h("lr") == {s: pytest.approx(_closed_lr(s - 1, 1e-3, 2, 6, 1e-4)) for s in logged}
    assert h("compute/train_flops") == {s: pytest.approx(fpi * 4 * s) for s in either}
    assert h("data/images_seen") == {s: 4.0 * s for s in either}
    for key in data_accounting(tr.train_set, 24):
        assert h(key) == {s: pytest.approx(data_accounting(tr.train_set, 4 * s)[key]) for s in either}, key
    assert set(h("perf/images_per_s")) == set(logged) and min(h("perf/images_per_s").values()) > 0
    val, val_ema = h("val/loss"), h("val/loss_ema")
    assert set(val) == set(val_ema) == {0, 3, 6} and val[0] == val_ema[0]  # EMA == weights at step 0
    now = tr.validator({"raw": tr.model, "ema": tr.ema.model})
    assert val[6] == pytest.approx(now["raw"], rel=1e-6) and val_ema[6] == pytest.approx(now["ema"], rel=1e-6)
    assert res.val_loss == pytest.approx(val[6], rel=1e-6) and val[6] != val_ema[6]
    perf = {k: h(k) for k in FIXED_COST_METRICS}
    assert all(set(v) == {6} for v in perf.values()), perf
    # the resumed process trained steps 3-6 in two log intervals of 8 images: the same seconds
    ips = h("perf/images_per_s")
    assert 8 / ips[4] + 8 / ips[6] == pytest.approx(perf["perf/train_s"][6], rel=1e-9)
    assert perf["perf/startup_s"][6] <= time.time() - process_start_time()
    text = [r.getMessage() for r in caplog.records]  # whole messages
    assert f"step 6: val/loss {val[6]:.4f}, val/loss_ema {val_ema[6]:.4f}" in text
    assert (
        perf["perf/eval_s"][6] == 0.0 and min(perf[k][6] for k in FIXED_COST_METRICS if "eval" not in k) > 0
    )

    params = run.data.params
    for key, value in tr.flat.items():
        assert params[key] == format_param(value), key
    dit = tr.dit_cfg
    derived = {"model.params": param_count(dit), "model.params_non_embedding": non_embedding_param_count(dit),
               "model.forward_gflops": forward_gflops(dit), "model.train_flops_per_image": fpi,
               "optim.lr_effective": 1e-3, "optim.warmup_steps_effective": 2,
               "data.train_size": len(tr.train_set), "world_size": 1}  # fmt: skip
    for key, value in derived.items():
        assert params[key] == format_param(value), key
    commit = git_commit()
    assert params.get("git.commit") == (str(commit) if commit else None)
    tags = run.data.tags
    assert (tags["sweep"], tags["grid_cell"], tags["k"], tags["mlflow.parentRunId"]) == (
        "sw",
        "c1",
        "v",
        parent,
    )
    assert tags["data.unique_images"] == str(unique_images(tr.train_set))
    assert all(tags[k] == v for k, v in executor_tags().items())
    art = client.download_artifacts(res.run_id, "config.json", str(tmp_path / "dl"))
    assert json.loads(Path(art).read_text()) == json.loads(
        json.dumps(dataclasses.asdict(tr.cfg), default=str)
    )


def test_a_run_without_sweep_or_parent_has_no_such_tags_and_a_failure_is_recorded(tmp_path):
    cfg = tiny(
        tmp_path,
        20,
        log_every=1,
        **{
            "tracking.enabled": True,
            "tracking.experiment": f"fast-fail-{uuid.uuid4().hex[:8]}",
            "optim.lr": 1e30,
            "optim.warmup_steps": 0,
            "optim.warmup_frac": 0.0,
        },
    )
    with pytest.raises(FloatingPointError):
        train(cfg)
    client = MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    run_id = found.info.run_id
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert run.data.tags["error"].startswith("FloatingPointError: non-finite")
    assert not {"sweep", "grid_cell", "mlflow.parentRunId"} & set(run.data.tags)


def test_eval_every_logs_the_ema_models_metrics_and_its_sample_grid(tmp_path, caplog):
    """eval_every 2 of 3 steps: at step 2 and at the last step."""
    caplog.set_level(logging.INFO, logger="dit_core.train")
    opts = {"tracking.enabled": True, "eval.eval_every": 2, "eval.num_samples": 8, "eval.steps": 2,
            "eval.batch_size": 8, "eval.grid_images": 4, "eval.metrics": ["fid_digits"]}  # fmt: skip
    cfg = tiny(tmp_path / "run", 3, **opts)
    res = train(cfg)
    tr = Trainer(cfg)  # the final weights and EMA
    spaces: dict[str, str] = {}
    expected = evaluate_samples(tr.ema.model, tr.diffusion, tr.cfg, tr.dit_cfg, tr.acc, spaces)
    assert set(res.eval) == set(expected) and res.eval == pytest.approx(expected, rel=1e-5)
    client = MlflowClient()
    # the run names the features its FIDs are in: the digits classifier, down to its weights' digest
    assert list(spaces) == ["digits"] and spaces["digits"].startswith("digitscnn-digits")
    assert client.get_run(res.run_id).data.tags[FEATURE_SPACE_TAG] == f"digits: {spaces['digits']}"
    fid = _history(client, res.run_id, "eval/fid_digits")
    assert set(fid) == {2, 3} and fid[3] == pytest.approx(expected["fid_digits"], rel=1e-5)
    assert _history(client, res.run_id, "perf/eval_s")[3] > 0
    assert f"step 3: eval {res.eval}" in [r.getMessage() for r in caplog.records]
    from PIL import Image

    names = [a.path for a in client.list_artifacts(res.run_id, "samples")]
    assert names == ["samples/step_0000002.png", "samples/step_0000003.png"]
    png = client.download_artifacts(res.run_id, "samples/step_0000003.png", str(tmp_path / "dl"))
    grid = sample_grid(tr.ema.model, tr.diffusion, tr.cfg, tr.dit_cfg, 4, tr.device)
    assert np.array_equal(np.asarray(Image.open(png)), grid)

    none = train(tiny(tmp_path / "nogrid", 2, **{**opts, "eval.grid_images": 0}))
    assert client.list_artifacts(none.run_id, "samples") == []
    assert set(_history(client, none.run_id, "eval/fid_digits")) == {2}


def test_a_run_continues_a_given_run_id_under_its_name(tmp_path):
    client = MlflowClient()
    name = f"fast-given-id-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    given = client.create_run(exp_id).info.run_id
    track = {"tracking.enabled": True, "tracking.experiment": name, "tracking.run_id": given,
             "tracking.run_name": "cell-7"}  # fmt: skip
    res = train(tiny(tmp_path, 2, **track))
    assert res.run_id == given and load_checkpoint(res.checkpoint)["mlflow_run_id"] == given
    run = client.get_run(given)
    assert run.info.status == "FINISHED" and len(_history(client, given, "train/loss")) == 1
    named = train(tiny(tmp_path / "named", 2, **{**track, "tracking.run_id": None}))
    assert client.get_run(named.run_id).info.run_name == "cell-7" and named.run_id != given


# ----------------------------------------------------------------------------------- validation


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere: DiT's zero-initialised output layers would predict 0 for any input."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _hand_val(model, diffusion, x, y, seed: int, first: int) -> list[float]:
    """The loss of each example alone (batch 1): example i's timestep and noise from (seed, i)."""
    out = []
    model.eval()
    with torch.no_grad():
        for k in range(len(x)):
            idx = torch.tensor([first + k])
            t = diffusion.timesteps_from_uniform(example_uniforms(seed, idx))
            noise = example_noise(seed, idx, tuple(x.shape[1:]))
            out.append(
                float(
                    diffusion.training_losses(model, x[k : k + 1], t, {"y": y[k : k + 1]}, noise=noise)[
                        "loss"
                    ]
                )
            )
    return out


def _val_set(cfg, n: int):
    val = build_dataset(cfg.data, "val")
    items = [val[i] for i in range(n)]
    return torch.stack([a for a, _ in items]), torch.tensor([int(b) for _, b in items])


def test_validation_loss_is_the_mean_of_the_hand_computed_per_example_losses(tmp_path):
    tr = Trainer(tiny(tmp_path, 2, **{"eval.val_examples": 6, "eval.val_seed": 3, "eval.batch_size": 4}))
    tr.train_step()
    x, y = _val_set(tr.cfg, 6)
    hand = _hand_val(tr.model, tr.diffusion, x, y, seed=3, first=0)
    out = tr.validator({"val/loss": tr.model, "other": tr.ema.model})
    assert out["val/loss"] == pytest.approx(sum(hand) / 6, rel=1e-5)
    assert out["other"] == pytest.approx(sum(_hand_val(tr.ema.model, tr.diffusion, x, y, 3, 0)) / 6, rel=1e-5)
    assert out["val/loss"] != out["other"]
    xs, ys, lo = tr.validator.data()
    assert torch.equal(xs, x) and torch.equal(ys, y) and lo == 0


def test_validation_runs_in_batches_of_eval_batch_size(tmp_path):
    tr = Trainer(tiny(tmp_path, 2, **{"eval.val_examples": 6, "eval.batch_size": 4}))
    sizes = []
    h = tr.model.register_forward_hook(lambda m, args, out: sizes.append(len(args[0])))
    try:
        batched = tr.validator({"v": tr.model})["v"]
        assert sizes == [4, 2]
        sizes.clear()
        whole = Validator(tr.cfg.replace(**{"eval.batch_size": 0}), tr.diffusion, tr.acc, tr.autocast)
        assert whole({"v": tr.model})["v"] == pytest.approx(batched, rel=1e-5) and sizes == [6]
    finally:
        h.remove()


def test_validation_uses_at_most_the_whole_val_split(tmp_path):
    tr = Trainer(tiny(tmp_path, 2, **{"eval.val_examples": 10**6}))
    xs, ys, lo = tr.validator.data()
    assert len(xs) == len(ys) == len(build_dataset(tr.cfg.data, "val")) and lo == 0


def _rank(tr, rank: int, world: int, others: torch.Tensor | None = None):
    """This process as rank `rank` of `world`; `reduce` adds the other ranks' (sum, count)."""

    def reduce(t, reduction):
        assert reduction == "sum"
        assert t.dtype == others.dtype == torch.float64  # an all-reduce needs one dtype on every rank
        return t + others

    acc = SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu"), reduce=reduce)
    return Validator(tr.cfg, tr.diffusion, acc, tr.autocast)


def test_photos_validation_set_is_rendered_in_one_batch_and_equals_the_items(tmp_path, monkeypatch):
    """The photos val split is rendered by one batched call per rank (1 s -> 0.07 s for 2,048 crops),
    and the images are exactly the item-by-item ones."""
    photos = {"data.name": "photos", "data.channels": 1, "data.image_size": 8, "model.num_classes": 10}
    tr = Trainer(tiny(tmp_path, 2, **{**photos, "eval.val_examples": 7}))
    val = build_dataset(tr.cfg.data, "val")
    x, y = _val_set(tr.cfg, 7)
    calls = []
    render = type(val.crops).render
    monkeypatch.setattr(
        type(val.crops), "render", lambda self, *a, **k: calls.append(1) or render(self, *a, **k)
    )
    for rank, (lo, hi) in enumerate([(0, 3), (3, 7)]):
        calls.clear()
        xs, ys, first = _rank(tr, rank, 2).data()
        assert first == lo and torch.equal(xs, x[lo:hi]) and torch.equal(ys, y[lo:hi]) and len(calls) == 1


def test_each_rank_scores_its_share_and_the_sums_are_all_reduced(tmp_path):
    tr = Trainer(tiny(tmp_path, 2, **{"eval.val_examples": 8}))
    x, y = _val_set(tr.cfg, 8)
    for rank, (lo, hi) in enumerate([(0, 2), (2, 5), (5, 8)]):
        xs, ys, first = _rank(tr, rank, 3).data()
        assert first == lo and torch.equal(xs, x[lo:hi]) and torch.equal(ys, y[lo:hi])
    hand = _hand_val(tr.model, tr.diffusion, x, y, 0, 0)
    others = torch.tensor([sum(hand[4:]), 4.0], dtype=torch.float64)  # rank 1 of 2 holds examples 4..7
    assert _rank(tr, 0, 2, others)({"v": tr.model})["v"] == pytest.approx(sum(hand) / 8, rel=1e-5)
    # one example on two ranks: rank 0 has none, rank 1 has example 0
    tr1 = Trainer(tiny(tmp_path / "one", 2, **{"eval.val_examples": 1}))
    xs0, ys0, lo0 = _rank(tr1, 0, 2).data()
    assert (xs0.shape[0], ys0.shape, lo0) == (0, (0,), 0)
    one = _hand_val(tr1.model, tr1.diffusion, x[:1], y[:1], 0, 0)[0]
    got = _rank(tr1, 0, 2, torch.tensor([one, 1.0], dtype=torch.float64))({"v": tr1.model})["v"]
    assert got == pytest.approx(one, rel=1e-5)


def test_validation_runs_under_the_trainers_autocast(tmp_path):
    tr = Trainer(tiny(tmp_path, 2, **{"eval.val_examples": 4}))
    x, y = _val_set(tr.cfg, 4)
    model = _perturbed(DiT.from_config(tr.dit_cfg))  # not wrapped by the trainer's bf16 forward
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    acc = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))
    got = Validator(tr.cfg, tr.diffusion, acc, bf16)({"v": model})["v"]
    with bf16():
        hand = sum(_hand_val(model, tr.diffusion, x, y, 0, 0)) / 4
    fp32 = sum(_hand_val(model, tr.diffusion, x, y, 0, 0)) / 4
    assert got == pytest.approx(hand, rel=1e-3) and abs(got - fp32) > 1e-7


# ----------------------------------------------------------------------------------- evaluation


def test_guidance_and_clipping_defaults(tmp_path):
    c = tiny(tmp_path, **{"eval.cfg_scale": 2.5})
    assert guidance_scale(c.replace(**{"model.class_dropout_prob": 0.1})) == 2.5
    assert guidance_scale(c.replace(**{"model.class_dropout_prob": 0.0})) == 1.0
    assert clip_denoised(c) is True  # pixels
    assert clip_denoised(c.replace(**{"data.name": "latents", "data.root": str(tmp_path)})) is False
    assert clip_denoised(c.replace(**{"eval.clip_denoised": False})) is False
    assert (
        clip_denoised(c.replace(**{"data.name": "latents", "data.root": "x", "eval.clip_denoised": True}))
        is True
    )


def test_evaluate_samples_skips_latents_and_data_without_a_reference(tmp_path, caplog):
    tr = Trainer(tiny(tmp_path, 2))
    caplog.set_level(logging.WARNING, logger="dit_core.trainer.evaluation")
    lat = tr.cfg.replace(**{"data.name": "latents", "data.root": str(tmp_path)})
    assert evaluate_samples(tr.ema.model, tr.diffusion, lat, tr.dit_cfg, tr.acc) == {}
    folder = tr.cfg.replace(**{"data.name": "imagefolder", "data.root": str(tmp_path)})
    assert evaluate_samples(tr.ema.model, tr.diffusion, folder, tr.dit_cfg, tr.acc) == {}
    assert [r.getMessage() for r in caplog.records] == [
        "eval: latent runs are scored from checkpoints with a VAE (dit_core.evaluate); skipped",
        "eval: no eval.reference set for imagefolder data; sample metrics skipped: name the real images "
        "to score against (--reference FOLDER, e.g. the training folder; in a sweep "
        "--set eval.reference=FOLDER), or set --eval-every 0",
    ]


def test_evaluate_samples_is_evaluate_model_with_the_runs_settings(tmp_path):
    """Default metrics of the digits reference (no Inception), guidance because of label dropout."""
    cfg = tiny(
        tmp_path,
        2,
        seed=5,
        **{
            "eval.num_samples": 6,
            "eval.steps": 3,
            "eval.batch_size": 4,
            "eval.cfg_scale": 3.0,
            "eval.sampler": "ddpm",
            "model.class_dropout_prob": 0.2,
        },
    )
    tr = Trainer(cfg)
    tr.train_step()
    got = evaluate_samples(tr.model, tr.diffusion, tr.cfg, tr.dit_cfg, tr.acc)
    from dit_core.evaluate.metrics import default_metrics

    names = default_metrics("digits", inception=False)
    drawn = SampleSettings("ddpm", steps=3, cfg_scale=3.0, seed=5, clip_denoised=True)
    want = evaluate_model(tr.model, tr.diffusion, drawn, num_samples=6, batch_size=4, num_classes=10,
                          image_size=8, channels=1, reference="digits", metrics=names)  # fmt: skip
    assert set(got) == set(want) and got == pytest.approx(want, rel=1e-5)


def _tile(imgs: torch.Tensor, nrow: int) -> np.ndarray:
    """Hand-made grid: `nrow` images per row, 1 px of value 0 (-> 128) around and between them."""
    n, c, s, _ = imgs.shape
    rows = math.ceil(n / nrow)
    canvas = torch.zeros(c, rows * (s + 1) + 1, nrow * (s + 1) + 1)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[:, 1 + r * (s + 1) : 1 + r * (s + 1) + s, 1 + col * (s + 1) : 1 + col * (s + 1) + s] = imgs[i]
    img = ((canvas.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return img.repeat(3, axis=2) if c == 1 else img


@pytest.mark.parametrize("channels", [1, 3])
def test_sample_grid_tiles_seeded_samples_with_cycling_labels(tmp_path, channels):
    cfg = tiny(tmp_path, 2, seed=7, **{"eval.steps": 2, "eval.sampler": "ddim", "eval.cfg_scale": 2.0,
                                       "model.class_dropout_prob": 0.1})  # fmt: skip
    dit = DiTConfig(depth=1, hidden_size=16, num_heads=2, patch_size=2, input_size=8, in_channels=channels,
                    num_classes=3)  # fmt: skip
    model = _perturbed(DiT.from_config(dit)).eval()
    diffusion = create_diffusion(cfg.diffusion)
    grid = sample_grid(model, diffusion, cfg, dit, 5, torch.device("cpu"))
    g = torch.Generator().manual_seed(7)
    y = torch.tensor([0, 1, 2, 0, 1])  # 5 labels cycling through 3 classes
    imgs = sample(model, diffusion, (5, channels, 8, 8), y, sampler="ddim", steps=2,
                  cfg_scale=2.0, generator=g, clip_denoised=True)  # fmt: skip
    assert grid.dtype == np.uint8 and grid.shape == (2 * 9 + 1, 3 * 9 + 1, 3)
    assert np.array_equal(grid, _tile(imgs, 3))


def test_a_checkpoint_evaluation_reproduces_the_runs_own_sample_metrics(tmp_path):
    """`python -m dit_core.evaluate` on a run's checkpoint with no sampling flags gives the metrics of
    the run's in-training evaluation: same EMA weights, seed, sampler, steps, guidance, sample count,
    metrics and x0 clipping (pixel data: on). Each flag given departs from the run's setting."""
    from dit_core.evaluate.__main__ import build_parser
    from dit_core.evaluate.checkpoint_eval import CheckpointEvalConfig

    cfg = tiny(tmp_path, 2, seed=5, **{"eval.num_samples": 6, "eval.steps": 3, "eval.batch_size": 4,
                                       "eval.sampler": "ddim", "eval.cfg_scale": 2.0,
                                       "model.class_dropout_prob": 0.1})  # fmt: skip
    tr = Trainer(cfg)
    tr.train_step()
    _perturbed(tr.ema.model)  # predictions beyond [-1, 1] for clipping to act on
    with torch.no_grad():  # classes far apart, so that guidance moves the FID on every CPU's kernels
        tr.ema.model.y_embedder.embedding_table.weight.mul_(20.0)
    path = tr.save()
    in_run = evaluate_samples(tr.ema.model, tr.diffusion, tr.cfg, tr.dit_cfg, tr.acc)
    got, step = evaluate_checkpoint(CheckpointEvalConfig(checkpoint=str(path), batch_size=5))
    assert step == 1 and set(got) == set(in_run) and got == pytest.approx(in_run, rel=1e-6)
    for change in ({"clip_denoised": False}, {"seed": 6}, {"steps": 2}, {"cfg_scale": 1.0}):
        other, _ = evaluate_checkpoint(CheckpointEvalConfig(checkpoint=str(path), **change))
        # the same settings reproduce to 1e-6 (above); each change moves the FID by 0.1-5 % on 2 CPUs
        assert other["fid_digits"] != pytest.approx(in_run["fid_digits"], rel=1e-5), (change, other, in_run)
    args = build_parser().parse_args(["--checkpoint", "x"])
    assert (args.clip_denoised, args.seed, args.steps, args.cfg_scale, args.num_samples) == (None,) * 5
    assert build_parser().parse_args(["--checkpoint", "x", "--no-clip-denoised"]).clip_denoised is False
