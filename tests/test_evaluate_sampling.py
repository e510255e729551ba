"""Sampling glue of dit_core.evaluate: seeding, sharding, guidance, the trainer API and the CLI."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _image_helpers import RandomConvExtractor
from _train_helpers import evaluate_checkpoint

from dit_core.checkpoint import save_checkpoint
from dit_core.config import ModelConfig, TrainConfig
from dit_core.diffusion import DiffusionConfig, create_diffusion
from dit_core.evaluate import (
    SampleSettings,
    evaluate_model,
    generate_images,
    log_metrics,
    shard,
)
from dit_core.evaluate.__main__ import main as cli_main
from dit_core.models import DiT
from dit_core.tracking import FEATURE_SPACE_TAG

REPO = Path(__file__).resolve().parents[1]
KW = dict(num_classes=10, image_size=16, channels=1)


def _settings(cfg_scale: float, sampler: str = "ddim") -> SampleSettings:
    """4 steps of ``sampler`` from seed 3 at guidance scale ``cfg_scale``."""
    return SampleSettings(sampler, steps=4, cfg_scale=cfg_scale, seed=3)


def _train_config() -> TrainConfig:
    model = ModelConfig(
        name=None, depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=16, in_channels=1,
        num_classes=10, learn_sigma=True,
    )  # fmt: skip
    return TrainConfig(model=model)


@pytest.fixture(scope="module")
def tiny():
    """A 1-block DiT whose zero-initialised layers are perturbed, so outputs depend on x, t and y."""
    cfg = _train_config()
    model = DiT.from_config(cfg.model.to_dit_config())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval(), create_diffusion(DiffusionConfig()), cfg


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DITSCALE_CACHE", str(tmp_path_factory.getbasetemp() / "ditscale-cache"))


def test_cfg_scale_changes_samples_and_seed_reproduces(tiny):
    model, diffusion, _ = tiny
    a = generate_images(model, diffusion, range(6), _settings(1.0), batch_size=6, **KW)
    b = generate_images(model, diffusion, range(6), _settings(4.0), batch_size=6, **KW)
    again = generate_images(model, diffusion, range(6), _settings(4.0), batch_size=6, **KW)
    assert a.dtype == torch.uint8 and a.shape == (6, 1, 16, 16)
    assert torch.equal(b, again)
    assert (a.int() - b.int()).abs().float().mean() > 1.0  # guidance moves the samples


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float round-off of different batch shapes: <= 1 grey level, nearly all exact."""
    d = (a.int() - b.int()).abs()
    assert d.max() <= 1 and (d == 0).float().mean() > 0.99


def test_sample_set_independent_of_batch_size_and_process_count(tiny):
    model, diffusion, _ = tiny
    n = 7
    full = generate_images(model, diffusion, range(n), _settings(2.0), batch_size=n, **KW)
    _close(generate_images(model, diffusion, range(n), _settings(2.0), batch_size=3, **KW), full)
    for world in (2, 3):  # what each rank of a world-size run would draw, in index order
        parts = [generate_images(model, diffusion, shard(n, r, world), _settings(2.0), batch_size=2, **KW)
                 for r in range(world)]  # fmt: skip
        joined = torch.cat(parts)
        assert len(joined) == n
        _close(joined, full)


def test_evaluate_model_exact_count_and_mlflow_logging(tiny, tmp_path):
    import mlflow

    model, diffusion, _ = tiny
    out = tmp_path / "s.npz"
    ext = {"inception": RandomConvExtractor(dim=8)}
    m = evaluate_model(
        model, diffusion, _settings(1.5), num_samples=11, batch_size=4, reference="digits",
        metrics=("fid", "sfid", "precision", "recall"), extractors=ext, save_samples=str(out), **KW,
    )  # fmt: skip
    saved = np.load(out)
    assert saved["arr_0"].shape == (11, 16, 16, 1) and list(saved["labels"]) == [i % 10 for i in range(11)]
    assert set(m) == {"fid", "sfid", "precision", "recall"} and m["fid"] > 0 and 0 <= m["recall"] <= 1
    with mlflow.start_run() as run:
        log_metrics(m, step=42)
    hist = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "eval/fid")
    assert [(h.step, h.value) for h in hist] == [(42, pytest.approx(m["fid"]))]
    with pytest.raises(ValueError, match="num_samples"):
        evaluate_model(model, diffusion, _settings(1.5), num_samples=1, batch_size=4, **KW)


def test_evaluate_model_passes_its_sampler_decodes_latents_and_gathers_through_accelerate(
    tiny, tiny_vae, tmp_path
):
    """The samples `evaluate_model` scores are `generate_images`' for the same sampler (DDPM here, not
    the default DDIM); through a one-process `Accelerator` they are the same; latents go through
    `tiny_vae.decode(z / 0.18215)` (Stable Diffusion's latent scale) before scoring."""
    from accelerate import Accelerator

    model, diffusion, _ = tiny
    ext = {"inception": RandomConvExtractor(dim=8)}
    ddpm = _settings(1.5, sampler="ddpm")
    run = dict(num_samples=6, batch_size=3, reference="digits", metrics=("fid",), extractors=ext)
    m = evaluate_model(model, diffusion, ddpm, save_samples=str(tmp_path / "a.npz"), **run, **KW)
    want = generate_images(model, diffusion, range(6), ddpm, batch_size=3, **KW)
    saved = torch.from_numpy(np.load(tmp_path / "a.npz")["arr_0"]).permute(0, 3, 1, 2)
    assert torch.equal(saved, want)
    assert not torch.equal(
        want, generate_images(model, diffusion, range(6), _settings(1.5), batch_size=3, **KW)
    )
    acc = Accelerator(cpu=True)
    m_acc = evaluate_model(
        model, diffusion, ddpm, save_samples=str(tmp_path / "b.npz"), accelerator=acc, **run, **KW
    )
    assert m_acc == m and np.array_equal(
        np.load(tmp_path / "b.npz")["arr_0"], np.load(tmp_path / "a.npz")["arr_0"]
    )

    latent = DiT.from_config(
        replace(_train_config().model, input_size=8, in_channels=4).to_dit_config()
    ).eval()
    lkw = {**KW, "image_size": 8, "channels": 4}
    rgb = _rgb_reference(tmp_path / "rgb.npz")  # decoded samples are RGB: not scored against grey digits
    evaluate_model(
        latent,
        diffusion,
        _settings(1.5),
        vae=tiny_vae,
        save_samples=str(tmp_path / "c.npz"),
        **{**run, "reference": rgb},
        **lkw,
    )
    with torch.no_grad():
        decoded = generate_images(
            latent, diffusion, range(6), _settings(1.5), batch_size=3,
            decode=lambda z: tiny_vae.decode(z / 0.18215).sample, **lkw,
        )  # fmt: skip
    saved = np.load(tmp_path / "c.npz")["arr_0"]
    assert saved.shape == (6, 16, 16, 3) and np.array_equal(saved, decoded.permute(0, 2, 3, 1).numpy())


_EVERY_RANK = """
import json, sys
import torch
from accelerate import Accelerator
from dit_core.diffusion import DiffusionConfig, create_diffusion
from dit_core.evaluate import SampleSettings, evaluate_model
from dit_core.models import DiT
from _image_helpers import RandomConvExtractor
from _train_helpers import evaluate_checkpoint

from datetime import timedelta
from accelerate.utils import InitProcessGroupKwargs
from dit_core.evaluate.sampling import SamplingStopped

torch.manual_seed(0)
model = DiT(input_size=16, patch_size=4, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=10)
acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
kw = dict(num_samples=5, batch_size=2, num_classes=10, image_size=16, channels=1, metrics=("fid",),
          extractors={"inception": RandomConvExtractor(dim=8)}, accelerator=acc)
drawn = SampleSettings(steps=2, cfg_scale=1.5)
m = evaluate_model(model.eval(), create_diffusion(DiffusionConfig()), drawn, **kw)
calls = []

def stop():  # a collective, as the trainer's: rank 0 asks to stop at its 2nd batch, rank 1 has only 1
    calls.append(1)
    flag = torch.tensor([1.0 if acc.process_index == 0 and len(calls) == 2 else 0.0])
    return bool(acc.reduce(flag, reduction="sum").item() > 0)

try:
    evaluate_model(model.eval(), create_diffusion(DiffusionConfig()), drawn, stop=stop, **kw)
    stopped = False
except SamplingStopped:
    stopped = True
json.dump({"metrics": m, "stop_calls": len(calls), "stopped": stopped},
          open(f"{sys.argv[1]}/rank{acc.process_index}.json", "w"))
acc.wait_for_everyone()
acc.end_training()  # destroys the process group: a gloo rank that exits without it can abort
"""


def test_every_rank_returns_rank_0s_metrics_and_asks_stop_as_often(tmp_path):
    """Rank 0 scores the gathered samples and broadcasts the dict: both ranks of a 2-process run
    return it (the trainer's ranks all read it). 5 samples in batches of 2 give rank 0 two batches and
    rank 1 one: a collective ``stop`` is still called twice on each, and both stop at the second."""
    script = tmp_path / "every_rank.py"
    script.write_text(_EVERY_RANK)
    tests = os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", DITSCALE_CACHE=str(tmp_path / "cache"), PYTHONPATH=tests)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              str(script)]  # fmt: skip
    r = subprocess.run(
        launch + [str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0] == ranks[1] and set(ranks[0]["metrics"]) == {"fid"} and ranks[0]["metrics"]["fid"] > 0
    assert (
        ranks[0]["stop_calls"] == ranks[1]["stop_calls"] == 2 and ranks[0]["stopped"] and ranks[1]["stopped"]
    )


def test_log_metrics_needs_a_run():
    import mlflow

    assert mlflow.active_run() is None
    with pytest.raises(ValueError, match="^no active MLflow run: start one or pass run_id$"):
        log_metrics({"fid": 1.0}, step=0)


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    model, _, cfg = tiny
    out = tmp_path_factory.mktemp("run")
    sd = model.state_dict()
    save_checkpoint(out, {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 7})
    return out


@pytest.fixture(scope="module")
def checkpoint_own_eval(tiny, tmp_path_factory):
    """The tiny model's checkpoint whose run scored itself with 12 DDIM-3 samples on fid/is_digits."""
    model, _, cfg = tiny
    own = replace(cfg, eval=replace(cfg.eval, num_samples=12, steps=3, metrics=("fid_digits", "is_digits")))
    out = tmp_path_factory.mktemp("run_own_eval")
    sd = model.state_dict()
    save_checkpoint(out, {"model": sd, "ema": sd, "config": own.to_flat_dict(), "step": 7})
    return out


def _rgb_reference(path, n: int = 6, size: int = 16) -> str:
    """An ``.npz`` reference of ``n`` random RGB ``size`` px images (arr_0 NHWC uint8)."""
    rng = np.random.default_rng(0)
    np.savez(path, arr_0=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return str(path)


def test_a_latent_runs_checkpoint_needs_a_reference_and_a_local_vae(tiny_vae, tmp_path):
    """A run on VAE latents has no reference of its own and samples latents: its evaluation asks for a
    reference and a local VAE folder, by name, then scores the VAE's decoded RGB images."""
    from dit_core.evaluate.checkpoint_eval import CheckpointEvalConfig

    cfg = _train_config()
    cfg = replace(cfg, model=replace(cfg.model, input_size=8, in_channels=4),
                  data=replace(cfg.data, name="latents", root=str(tmp_path / "latents")),
                  eval=replace(cfg.eval, num_samples=4, steps=2))  # fmt: skip
    sd = DiT.from_config(cfg.model.to_dit_config()).state_dict()
    save_checkpoint(tmp_path / "run", {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 3})
    run = CheckpointEvalConfig(checkpoint=str(tmp_path / "run"), batch_size=2)
    no_vae = r"^vae: checkpoint .*run is of a run trained on VAE latents, whose samples are latents to decode"
    with pytest.raises(ValueError, match=no_vae + r": pass --vae PATH \(a local AutoencoderKL folder"):
        evaluate_checkpoint(run)  # the VAE first: without it nothing can be scored, whatever the reference
    with pytest.raises(ValueError, match="trained on 'latents' data: pass --reference FOLDER_OR_NPZ"):
        evaluate_checkpoint(replace(run, vae=str(tmp_path / "novae")))
    scored = replace(run, reference=_rgb_reference(tmp_path / "rgb.npz"), metrics=("fid",))
    with pytest.raises(ValueError, match="--vae .*novae is not a folder; give a local diffusers"):
        evaluate_checkpoint(replace(scored, vae=str(tmp_path / "novae")))
    tiny_vae.save_pretrained(tmp_path / "vae")
    out = tmp_path / "s.npz"
    got, step = evaluate_checkpoint(replace(scored, vae=str(tmp_path / "vae"), save_samples=str(out)))
    assert step == 3 and got["fid"] > 0 and "is" not in got  # Inception features of the decoded RGB
    assert np.load(out)["arr_0"].shape == (4, 16, 16, 3)  # 4 x 8 x 8 latents decoded to 16 px RGB


def test_a_checkpoint_without_ema_weights_is_named_and_scored_with_raw_weights(tiny, tmp_path):
    from dit_core.evaluate.checkpoint_eval import CheckpointEvalConfig

    model, _, cfg = tiny
    own = replace(cfg, eval=replace(cfg.eval, num_samples=4, steps=2, metrics=("fid_digits",)))
    save_checkpoint(tmp_path, {"model": model.state_dict(), "config": own.to_flat_dict(), "step": 2})
    run = CheckpointEvalConfig(checkpoint=str(tmp_path), batch_size=4)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))} is not a dit_core training "
                       r"checkpoint \(missing \['ema'\]\)$"):  # fmt: skip
        evaluate_checkpoint(run)
    got, step = evaluate_checkpoint(replace(run, use_ema=False))
    assert step == 2 and got["fid_digits"] > 0


def test_a_checkpoint_without_label_dropout_refuses_guidance_and_samples_at_scale_1(tiny, tmp_path):
    """No unconditional branch to guide with: a guidance scale given is refused before sampling,
    naming the flag and the fix; scale 1 (and the run's own setting, which is 1) samples."""
    from dit_core.evaluate.checkpoint_eval import CheckpointEvalConfig

    model, _, cfg = tiny
    cfg = replace(cfg, model=replace(cfg.model, class_dropout_prob=0.0))
    plain = DiT.from_config(cfg.model.to_dit_config())
    sd = {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}
    # the perturbed weights, less the null class's embedding row
    sd["y_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"][:10]
    save_checkpoint(tmp_path, {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 1})
    kw = dict(checkpoint=str(tmp_path), num_samples=4, steps=2, batch_size=4, metrics=("fid_digits",))
    with pytest.raises(ValueError, match=r"--cfg-scale 4: .*without label dropout.*use --cfg-scale 1"):
        evaluate_checkpoint(CheckpointEvalConfig(cfg_scale=4.0, save_samples=str(tmp_path / "4.npz"), **kw))
    assert not (tmp_path / "4.npz").exists()
    samples = {}
    for scale in (1.0, None):
        out = tmp_path / f"{scale}.npz"
        evaluate_checkpoint(CheckpointEvalConfig(cfg_scale=scale, save_samples=str(out), **kw))
        samples[scale] = np.load(out)["arr_0"]
    assert np.array_equal(samples[1.0], samples[None])


def test_a_reference_given_is_scored_on_its_own_default_metrics():
    """The run's own metrics (eval.metrics) belong to its own reference; another reference gets that
    reference's defaults; --metrics overrides both."""
    from dit_core.evaluate.checkpoint_eval import CheckpointEvalConfig, chosen_metrics
    from dit_core.evaluate.metrics import default_metrics

    cfg = _train_config()
    own = replace(cfg, eval=replace(cfg.eval, metrics=("is_digits",)))
    plain = CheckpointEvalConfig(checkpoint="c")
    assert chosen_metrics(plain, own, "digits") == ("is_digits",)
    assert chosen_metrics(plain, cfg, "digits") == default_metrics("digits", inception=False)
    photos = "photos:n=200,channels=1"
    given = replace(plain, reference=photos)
    assert chosen_metrics(given, own, photos) == default_metrics(photos) != ("is_digits",)
    assert chosen_metrics(replace(given, metrics=["fid"]), own, photos) == ("fid",)


def test_cli_evaluates_checkpoint_and_logs_to_mlflow(checkpoint_own_eval, tmp_path, capsys):
    import mlflow

    with mlflow.start_run() as run:
        pass
    args = ["--checkpoint", str(checkpoint_own_eval), "--batch-size", "5", "--seed", "1",
            "--mlflow-run-id", run.info.run_id, "--output", str(tmp_path / "m.json")]  # fmt: skip
    assert cli_main(args) == 0
    out = json.loads((tmp_path / "m.json").read_text())
    assert out["step"] == 7 and out["num_samples"] == 12 and out["eval/fid_digits"] > 0
    assert 1.0 <= out["eval/is_digits"] <= 10.0
    client = mlflow.tracking.MlflowClient()
    hist = client.get_metric_history(run.info.run_id, "eval/is_digits")
    assert [(h.step, h.value) for h in hist] == [(7, pytest.approx(out["eval/is_digits"]))]
    space = client.get_run(run.info.run_id).data.tags[FEATURE_SPACE_TAG]
    assert space.startswith("digits: digitscnn-digits") and "-w" in space
    # a run whose FIDs are in another feature space (another training of the classifier) refuses
    with mlflow.start_run() as other:
        mlflow.set_tag(FEATURE_SPACE_TAG, space[:-1] + ("0" if space[-1] != "0" else "1"))
    args[args.index("--mlflow-run-id") + 1] = other.info.run_id
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "in the feature space" in err and "Nothing was logged; keep the result with --output" in err
    assert client.get_run(other.info.run_id).data.metrics == {}
    assert json.loads((tmp_path / "m.json").read_text()) == out  # the scores are kept


def test_cli_shows_a_sampling_bar_on_a_terminal_only(checkpoint_own_eval, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    args = [
        "--checkpoint",
        str(checkpoint_own_eval),
        "--batch-size",
        "5",
        "--output",
        str(tmp_path / "m.json"),
    ]
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert cli_main(args) == 0
    shown = sys.stderr.getvalue()
    assert re.search(r"sampling: +\d+%\|.*\| \d+/12 ", shown), shown  # the run's 12 samples, in images
    assert shown.endswith("\r")  # cleared when done (leave=False): the JSON on stdout follows clean
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe: no bar
    assert cli_main(args) == 0
    assert "sampling" not in sys.stderr.getvalue()


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--steps", "5"], "steps 5 (run: 3)"),
        (["--num-samples", "20", "--sampler", "ddpm"], "num_samples 20 (run: 12); sampler ddpm (run: ddim)"),
        (["--raw-weights"], "--raw-weights (run: the EMA weights)"),
        (["--cfg-scale", "4"], "cfg_scale 4.0 (run: 1.5)"),
        (["--metrics", "fid_digits"], "metrics fid_digits (run: its own)"),
        (["--metrics", "is_digits,fid_digits"], "metrics is_digits,fid_digits (run: its own)"),
    ],
)
def test_cli_will_not_log_another_protocol_into_the_run(checkpoint_own_eval, tmp_path, capsys, extra, named):
    """A score under other sampling settings would sit in the run's eval/* beside the sweep's other
    runs, which the analysis compares only under one protocol: refused before sampling, nothing logged."""
    import mlflow

    with mlflow.start_run() as run:
        pass
    args = ["--checkpoint", str(checkpoint_own_eval), "--mlflow-run-id", run.info.run_id,
            "--output", str(tmp_path / "m.json"), *extra]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert named in err and "drop --mlflow-run-id" in err
    assert "--mlflow-run-id logs into the run's eval/* metrics, which the analysis compares" in err
    assert "only under one protocol, and these settings depart from the run's own: " in err
    assert not (tmp_path / "m.json").exists()
    assert mlflow.tracking.MlflowClient().get_run(run.info.run_id).data.metrics == {}
    # the same settings without --mlflow-run-id are a free rescoring
    assert (
        cli_main(["--checkpoint", str(checkpoint_own_eval), "--output", str(tmp_path / "m.json"), *extra])
        == 0
    )


def test_cli_bad_input_exits_nonzero(checkpoint, tmp_path, capsys):
    assert cli_main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["--checkpoint", str(checkpoint), "--metrics", "fidd"]) == 2
    assert "unknown metrics" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_give_the_same_samples(checkpoint, tmp_path):
    """accelerate launch with 2 CPU processes: N=7 (odd) samples, identical to one process."""
    common = ["--checkpoint", str(checkpoint), "--num-samples", "7", "--batch-size", "3", "--steps", "3",
              "--metrics", "fid_digits"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "dit_core.evaluate"]  # fmt: skip
    r = subprocess.run(launch + common + ["--save-samples", str(tmp_path / "two.npz")],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert cli_main(common + ["--save-samples", str(tmp_path / "one.npz")]) == 0
    two, one = np.load(tmp_path / "two.npz")["arr_0"], np.load(tmp_path / "one.npz")["arr_0"]
    assert two.shape == one.shape == (7, 16, 16, 1)
    _close(torch.from_numpy(two), torch.from_numpy(one))
