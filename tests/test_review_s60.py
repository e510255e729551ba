"""Faults found by session 60's reviews of evaluation and data, each checked against what it must equal."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from dit_core.checkpoint import save_checkpoint
from dit_core.config import ModelConfig, TrainConfig
from dit_core.data.imagefolder import scan_image_folder
from dit_core.data.photo_options import PhotoOptions
from dit_core.data.photos import PhotoCrops, parse_photos_reference, photos_reference
from dit_core.diffusion import DiffusionConfig, create_diffusion
from dit_core.evaluate import SampleSettings, generate_images
from dit_core.evaluate.checkpoint_eval import (
    CheckpointEvalConfig,
    prepare_checkpoint_eval,
    protocol_departures,
)
from dit_core.evaluate.features import FeatureExtractor
from dit_core.evaluate.metrics import IS_SPLIT_SIZE, evaluate_samples, inception_score
from dit_core.evaluate.sampling import NonFiniteSamples
from dit_core.models import DiT


def _adm_inception_score(p: np.ndarray, split_size: int) -> float:
    """ADM's evaluator (guided-diffusion evaluations/evaluator.py): consecutive chunks of split_size."""
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i : i + split_size]
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


class _ClassFromPixel(FeatureExtractor):
    """Class probabilities 0.9 one-hot (+0.1 spread) on the class written in the image's first pixel."""

    name = "class-from-pixel"
    outputs = ("pool", "probs")

    def _extract_batch(self, x, outputs):
        c = np.minimum(x[:, 0, 0, 0].astype(int), 3)
        p = np.full((len(x), 4), 0.1 / 4)
        p[np.arange(len(x)), c] += 0.9
        return {"pool": p, "probs": p}


def test_the_inception_score_of_many_samples_is_the_mean_over_adms_chunks_of_5000():
    """12,000 samples, each 5,000-sample chunk of one class: ADM's IS is exp(0) = 1 in every chunk; one
    chunk over all (the fault) gives exp(H(5/12, 5/12, 2/12)) of the mixed classes, 2.18."""
    assert IS_SPLIT_SIZE == 5000
    x = np.zeros((12000, 1, 8, 8), np.uint8)
    x[:, :] = (np.arange(12000) // 5000)[:, None, None, None]
    got = evaluate_samples(x, "digits", metrics=("is",), extractors={"inception": _ClassFromPixel()})
    assert got["is"] == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(7, 0.3), size=12_345)
    want = _adm_inception_score(p, 5000)  # chunks of 5,000, 5,000 and 2,345
    assert inception_score(p, split_size=5000) == pytest.approx(want, rel=1e-12)
    assert abs(inception_score(p, splits=3) - want) > 1e-6  # near-equal thirds are another estimate
    with pytest.raises(ValueError, match="split_size must be >= 1"):
        inception_score(p, split_size=0)


def _checkpoint(tmp_path, reference: str | None) -> tuple[str, TrainConfig]:
    model = ModelConfig(
        name=None, depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=16, in_channels=1,
        num_classes=10, learn_sigma=True,
    )  # fmt: skip
    cfg = TrainConfig(model=model)
    cfg = replace(cfg, eval=replace(cfg.eval, reference=reference, num_samples=12, steps=3))
    out = tmp_path / f"ckpt-{reference}"
    sd = DiT.from_config(cfg.model.to_dit_config()).state_dict()
    save_checkpoint(str(out), {"model": sd, "ema": sd, "config": cfg.to_flat_dict(), "step": 7})
    return str(out), cfg


def test_a_checkpoint_is_rescored_against_the_reference_the_run_itself_used(tmp_path, monkeypatch):
    """The run scored itself against its eval.reference (digits:val), so the evaluate CLI without
    --reference does too; and naming the reference the run used by default (digits) is no departure."""
    monkeypatch.setenv("DITSCALE_CACHE", str(tmp_path / "cache"))
    own = prepare_checkpoint_eval(CheckpointEvalConfig(checkpoint=_checkpoint(tmp_path, "digits:val")[0]))
    assert (own.reference.spec, own.reference.split) == ("digits:val", "val")
    plain, run_cfg = _checkpoint(tmp_path, None)
    cfg = CheckpointEvalConfig(checkpoint=plain, reference="digits", log_to_run=True)
    assert prepare_checkpoint_eval(cfg).reference.spec == "digits"
    assert protocol_departures(cfg, run_cfg) == []
    assert protocol_departures(replace(cfg, reference="digits:val"), run_cfg) == [
        "reference digits:val (run: digits)"
    ]


def test_a_decoder_that_gives_non_finite_pixels_stops_the_evaluation():
    """Finite latents, a decoder returning NaN: NonFiniteSamples, not black uint8 images scored as results."""
    m = ModelConfig(
        name=None, depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=8, in_channels=4,
        num_classes=10, learn_sigma=True,
    )  # fmt: skip
    model = DiT.from_config(m.to_dit_config()).eval()
    nan = lambda z: torch.nn.functional.interpolate(z[:, :3], scale_factor=2) * float("nan")  # noqa: E731
    kw = dict(batch_size=4, num_classes=10, image_size=8, channels=4)
    with pytest.raises(NonFiniteSamples, match="the VAE decoder gave non-finite pixels"):
        generate_images(
            model, create_diffusion(DiffusionConfig()), range(4), SampleSettings(steps=2), decode=nan, **kw
        )
    ok = lambda z: torch.nn.functional.interpolate(z[:, :3], scale_factor=2).clamp(-1, 1)  # noqa: E731
    imgs = generate_images(
        model, create_diffusion(DiffusionConfig()), range(4), SampleSettings(steps=2), decode=ok, **kw
    )
    assert imgs.shape == (4, 3, 16, 16) and imgs.dtype == torch.uint8


def test_photo_crops_stay_inside_their_region_when_the_holdout_is_half_of_an_odd_width():
    """An 11-column photo, holdout 0.5: 5 training columns, sides up to 0.5 x 11 = 5.5. Every crop
    fits its region, so a constant photo renders as that constant (a crop past the region was
    clamped but divided by its full area: darker edge columns)."""
    crops = PhotoCrops([np.full((11, 11, 1), 200.0)], channels=1, crop_scale=(0.4, 0.5), holdout=0.5)
    for split in ("train", "val"):
        b = crops.boxes(np.arange(4000), split)
        assert (b["x0"] >= b["x_lo"]).all() and (b["x0"] + b["side"] <= b["x_hi"] + 1e-9).all(), split
        x, _ = crops.sample(np.arange(4000), split, resolution=4)
        assert (x == 200).all(), split


def test_a_photos_reference_name_reads_back_as_the_runs_own_options():
    """Options that :g would round (holdout 0.2500001 -> 0.25 moves the held-out strip by a column at
    512 px) are written exactly; the default names stay as they were (the reference cache's keys)."""
    odd = PhotoOptions(channels=1, num_photos=3, crop_scale=(0.0800001, 0.2), holdout=0.2500001)
    assert parse_photos_reference(photos_reference(odd, 8)) == (odd, 8)
    tiny = PhotoOptions(crop_scale=(1e-05, 2e-05))  # exponents: their minus is no range separator
    assert parse_photos_reference(photos_reference(tiny)) == (tiny, 2000)
    assert photos_reference(PhotoOptions()) == (
        "photos:channels=3,num_photos=10,crop_scale=0.08-0.2,holdout=0.25,n=2000"
    )


def test_a_link_into_another_class_folder_leaves_those_images_in_their_own_class(tmp_path):
    """a/link -> b/sub: b/sub's image keeps label b (it was labelled a, and b's real folder dropped)."""
    from PIL import Image

    for d in ("a", "b/sub"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("a/a0.png", "b/sub/b1.png", "b/b0.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f)
    (tmp_path / "a" / "link_to_b_sub").symlink_to(tmp_path / "b" / "sub")
    (tmp_path / "b" / "twin").symlink_to(tmp_path / "b" / "sub")  # a second link to one folder: once
    scan = scan_image_folder(str(tmp_path))
    got = sorted((os.path.relpath(p, tmp_path), scan.classes[y]) for p, y in scan.samples)
    assert got == [("a/a0.png", "a"), ("b/b0.png", "b"), ("b/sub/b1.png", "b")]


@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 1.0)])
def test_stochastic_samplers_give_each_sample_the_same_images_in_any_batch(sampler, eta):
    """A sample's per-step noise comes from its own (seed, i): batches of 7, 3 and 1 give one set (to a
    grey level of round-off), as DDIM eta=0 always did; another seed gives another."""
    m = ModelConfig(
        name=None, depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=8, in_channels=1,
        num_classes=10, learn_sigma=True,
    )  # fmt: skip
    model, diffusion = DiT.from_config(m.to_dit_config()).eval(), create_diffusion(DiffusionConfig())
    kw = dict(num_classes=10, image_size=8, channels=1)
    settings = SampleSettings(sampler=sampler, steps=4, eta=eta)
    sets = [
        generate_images(model, diffusion, range(7), settings, batch_size=b, **kw).int() for b in (7, 3, 1)
    ]
    assert all((s - sets[0]).abs().max() <= 1 for s in sets[1:])
    other = generate_images(model, diffusion, range(7), replace(settings, seed=1), batch_size=7, **kw).int()
    assert (other - sets[0]).abs().max() > 16


_OPEN_STORE = """
import sys, time
from dit_core.tracking import get_or_create_experiment, interrupt_safe_client
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
get_or_create_experiment(interrupt_safe_client("sqlite:///" + sys.argv[1]), "e")
"""


def test_processes_opening_a_new_sqlite_store_together_migrate_it_one_at_a_time(tmp_path):
    """Three processes open one fresh store at the same instant: MLflow's schema migrations run under a
    lock on the store's folder, so every one succeeds (without it two of three died with alembic errors,
    "table ... already exists", in each of three trials)."""
    import subprocess
    import sys
    import time

    db = tmp_path / "fresh.db"
    start = str(time.time() + 8)  # after the imports of all three
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STORE, str(db), start], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert list(tmp_path.iterdir()) == [db]  # the lock is on the folder: no file left beside the store


def test_a_launch_from_another_output_dir_sees_the_live_job_of_a_cell_and_refuses(tmp_path):
    """Launch A made the cell's run for folder A and its job holds the cell's lock there, before the
    trainer logged its ``out``. A launch of the same sweep from folder B read the job as dead (its lock
    looked for in B), failed the run and trained it a second time; it now sees it alive and refuses,
    naming A's --output-dir. A record from another folder (the sweep folder moved) moves the tag."""
    import fcntl

    from sweeps.executor import JobRef
    from sweeps.lock import CELL_LOCK
    from sweeps.state import (
        RUN_DIR_TAG,
        Submission,
        check_cell_folder,
        config_hash,
        create_cell_runs,
        read_states,
        record_submissions,
    )

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a, b = tmp_path / "A" / "s" / "cells" / "c1", tmp_path / "B" / "s" / "cells" / "c1"
    a.mkdir(parents=True)
    h = config_hash({"x": 1})
    (run_id,) = create_cell_runs(uri, "exp", "s", {"c1": h}, {"c1": str(a)}).values()
    fd = os.open(a / CELL_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # A's job, alive, its submission not recorded yet
    try:
        st = read_states(uri, "exp", "s", {"c1": str(b)})["c1"]
        assert (st.state, st.run_dir) == ("queued", str(a))  # alive, its trainer not started (SCHEDULED)
        with pytest.raises(
            ValueError, match=rf"trains in {a}, not in {b}; relaunch with --output-dir {tmp_path / 'A'}"
        ):
            check_cell_folder("s", st, b, "exp", uri)
        record_submissions(
            uri, [Submission(run_id, JobRef("local", "123", str(tmp_path / "jobs"), str(a)), 1, h, False)]
        )
        assert read_states(uri, "exp", "s", {"c1": str(b)})["c1"].state == "queued"  # recorded, run SCHEDULED
    finally:
        os.close(fd)
    assert read_states(uri, "exp", "s", {"c1": str(b)})["c1"].state == "failed"  # the job gone
    c = tmp_path / "C" / "s" / "cells" / "c1"
    record_submissions(
        uri, [Submission(run_id, JobRef("local", "124", str(tmp_path / "jobs"), str(c)), 2, h, True)]
    )
    from mlflow import MlflowClient

    assert MlflowClient(uri).get_run(run_id).data.tags[RUN_DIR_TAG] == str(c)


def test_a_fork_stopped_before_its_first_checkpoint_is_not_restarted_from_step_0(tmp_path):
    """B forks A's step-4 checkpoint and dies before a checkpoint of its own (its checkpoints removed:
    a SIGKILL). ``--resume auto`` trained B from step 0 in the fork's run; it is refused, naming the
    source to fork again. A start from step 0 (--resume never) clears the mark."""
    import shutil
    import uuid

    from _train_helpers import one_thread
    from test_resume_fork import _cfg

    from dit_core.configio import ConfigError
    from dit_core.train import train
    from dit_core.trainer.loop import FORK_FILE

    experiment = f"fork-s60-{uuid.uuid4().hex[:8]}"
    with one_thread():
        train(_cfg(tmp_path / "a", experiment), stop_at_step=4)
        a4 = (tmp_path / "a" / "checkpoints" / "step_0000004.pt").resolve()
        cfg_b, b = _cfg(tmp_path / "b", experiment), tmp_path / "b"
        train(cfg_b, resume=str(a4), stop_at_step=5)
        assert (b / FORK_FILE).read_text() == str(a4)
        shutil.rmtree(b / "checkpoints")
        with pytest.raises(ConfigError, match=rf"is a fork of {a4} that stopped before .* --resume {a4} "):
            train(cfg_b)
        again = train(cfg_b, resume=str(a4))
        assert again.status == "finished" and again.step == 6
        shutil.rmtree(b / "checkpoints")
        fresh = train(cfg_b, resume="never")
        assert fresh.status == "finished" and not (b / FORK_FILE).exists()


def test_seeds_without_steps_are_averaged_only_where_each_run_has_one_point(tmp_path):
    """A CSV with a seed column and no step: two seeds of a model, three rows (data sizes) each, were
    averaged into one point of all six rows (its n_seeds 6); rows that no step pairs stay apart. Runs
    of one row each are still one point per cell, the mean of its seeds."""
    import pandas as pd

    from analysis.runs import average_seeds, load_csv

    many = [
        {"run_id": f"m{n:g}-s{s}", "seed": s, "N": n, "D": d, "loss": 1 + 100 / n + 10 / d + 0.01 * s}
        for n in (1e3, 1e4)
        for s in (0, 1)
        for d in (1e2, 1e3, 1e4)
    ]
    pd.DataFrame(many).to_csv(tmp_path / "many.csv", index=False)
    out, _ = average_seeds(load_csv(str(tmp_path / "many.csv")))
    assert len(out) == 12 and set(out["n_seeds"]) == {1}
    assert sorted(out["D"].unique()) == [1e2, 1e3, 1e4]
    one = [r for r in many if r["D"] == 1e3]  # one row per run: the seeds pair
    pd.DataFrame(one).to_csv(tmp_path / "one.csv", index=False)
    out, _ = average_seeds(load_csv(str(tmp_path / "one.csv")))
    assert len(out) == 2 and set(out["n_seeds"]) == {2}
    want = {1e3: 1 + 0.1 + 0.01 + 0.005, 1e4: 1 + 0.01 + 0.01 + 0.005}
    assert {n: pytest.approx(v, rel=1e-12) for n, v in want.items()} == dict(zip(out["N"], out["loss"]))


def test_an_adaptive_refit_centres_on_the_priors_own_parameter_axis():
    """A prior fitted on non-embedding parameters places sizes on that axis, so the refit must read the
    IsoFLOP minimum there too: a parabola whose minimum is at N_non_embedding = 2e4 (total N = 4e4, the
    embeddings half) centres at 2e4, not at the total 4e4 read as non-embedding."""
    import numpy as np
    import pandas as pd

    from sweeps.design import FitPrior, refit_centre
    from sweeps.grid import load_spec

    spec = load_spec("demo").replace(budgets=[1e11, 1e12], design="adaptive")
    prior = FitPrior("fit.json", "frontier", {"A": 30341 / 1e11**0.5, "alpha": -0.5}, "non_embedding")
    n_ne = 2e4 * np.logspace(-0.6, 0.6, 5)
    pts = pd.DataFrame(
        {"N": 2 * n_ne, "N_non_embedding": n_ne, "D": 1e11 / (264.0 * 2 * n_ne), "C": 1e11,
         "loss": 0.1 + np.log(n_ne / 2e4) ** 2}
    )  # fmt: skip
    centre = refit_centre(spec, prior, pts, [1e11], 1e11, 2)  # the target is the budget done: no growth
    assert centre.n == pytest.approx(2e4, rel=1e-9)


def test_a_ladder_trunk_trains_every_step_before_a_fork_at_the_cells_own_lr(tmp_path):
    """S at 1.5e9 (12 steps, fork 9) and 1e10 (80 steps, fork 64), warmup 10: the trunk, grown as runs
    of 9 and 64 steps, capped its warmup at 9 - 2 = 7 while the cells' schedules kept 10, so every
    cell's first steps were trained at other lrs (and the smallest fork was refused). The shared warmup
    is now at most the first fork - 2: trunk and cells agree at every step before each fork."""
    from dit_core.config import TrainConfig
    from dit_core.trainer.lr_schedule import first_lr_change, lr_at, peak_lr
    from sweeps.grid import expand, load_spec
    from sweeps.task import make_tasks

    spec = load_spec("demo").replace(families=["S"], budgets=[1.5e9, 1e10], min_steps=10, ladder=True)
    cells = expand(spec)
    tasks = make_tasks(spec, cells, tmp_path / "demo", f"sqlite:///{tmp_path / 'x.db'}")
    trunk = max((t.trunk for t in tasks.values()), key=lambda tr: tr.fork_step)
    assert trunk.fork_steps == (9, 64)
    trunk_lr, prev = {}, 0
    for f in trunk.fork_steps:  # as `grow_trunk` trains it: a run of f steps from the last fork on
        o = TrainConfig().replace(**trunk.overrides_to(f))
        p = peak_lr(o.optim, o.model.hidden_size, f * trunk.flops_per_step)
        trunk_lr |= {s: lr_at(s, f, o.optim, p) for s in range(prev, f)}
        prev = f
    for c in cells:
        t, per_step = tasks[c.cell_id], c.batch_size * c.train_flops_per_image
        o = TrainConfig().replace(**t.overrides)
        assert o.optim.warmup_steps == 7
        p = peak_lr(o.optim, o.model.hidden_size, c.steps * per_step)
        own = [lr_at(s, c.steps, o.optim, p) for s in range(t.trunk.fork_step)]
        assert own == pytest.approx([trunk_lr[s] for s in range(t.trunk.fork_step)], rel=1e-12)
        saved = TrainConfig().replace(**t.trunk.overrides_to(t.trunk.fork_step)).optim
        kw = dict(hidden_size=o.model.hidden_size, flops_per_step=per_step)
        assert first_lr_change(saved, t.trunk.fork_step, o.optim, c.steps, t.trunk.fork_step, **kw) is None


def test_latents_stored_at_another_scale_are_decoded_at_that_scale(tmp_path, vae_dir, tiny_vae):
    """Latents extracted with --scale-factor 0.5 were decoded as z / 0.18215 by sample and evaluate
    (their pixels off by up to 1.2 in [-1, 1]); the run's manifest now gives the scale. And a sampled
    posterior's noise depends on the batch it was drawn in, so a resume at another --batch-size is
    refused (it wrote shards a fresh run would not)."""
    from _image_helpers import image_folder

    from dit_core.data.config import DataConfig
    from dit_core.data.latents import SD_VAE_SCALE, LatentsDataset, latent_scale
    from dit_core.evaluate.sampling import vae_decoder
    from dit_core.extract_latents import ExtractConfig, extract_latents

    root = image_folder(tmp_path / "imgs", per_class=2, size=(16, 16))
    kw = dict(vae=str(vae_dir), image_size=16, shard_size=4, num_workers=0, device="cpu")
    out = tmp_path / "lat"
    extract_latents(
        ExtractConfig(str(root), str(out), scale_factor=0.5, posterior="mean", batch_size=2, **kw)
    )
    assert latent_scale(DataConfig(name="latents", root=str(out))) == 0.5
    assert latent_scale(DataConfig(name="latents", root=str(tmp_path / "gone"))) == SD_VAE_SCALE  # warned
    z = LatentsDataset(str(out), random_flip=False)[0][0][None]
    with torch.no_grad():
        want = tiny_vae.decode(z / 0.5).sample
        assert torch.equal(
            vae_decoder(tiny_vae, latent_scale(DataConfig(name="latents", root=str(out))))(z), want
        )
    sampled = tmp_path / "sampled"
    extract_latents(ExtractConfig(str(root), str(sampled), posterior="sample", batch_size=2, **kw))
    with pytest.raises(ValueError, match="comes from a different extraction"):
        extract_latents(ExtractConfig(str(root), str(sampled), posterior="sample", batch_size=4, **kw))


def test_a_budget_one_flop_short_of_k_steps_makes_k_minus_1_and_exact_multiples_make_k():
    """S at batch 32 costs 32 x 3,868,128 FLOPs a step: a budget one FLOP short of 267,460 steps fits
    267,459 (a 1e-12 slack made it 267,460, over the budget); k steps' cost, however the floats
    multiply it, stays k."""
    import random

    from dit_core.spec import budget_steps

    fpi, batch = 3_868_128, 32
    assert budget_steps(fpi * batch * 267_460 - 1, fpi, batch) == 267_459
    assert budget_steps(float(fpi * batch * 267_460), fpi, batch) == 267_460
    rng = random.Random(0)
    for _ in range(20_000):
        k, f, b = rng.randint(1, 10**9), rng.randint(10**5, 10**9), rng.choice([1, 16, 32, 256, 1024])
        assert budget_steps(float(k) * f * b, f, b) == k and budget_steps(k * (f * b) * 1.0, f, b) == k


def test_a_store_on_a_file_system_without_flock_still_opens(tmp_path, monkeypatch):
    """flock failing (ENOLCK: Lustre without -o flock) leaves the store unlocked, as the out folder's lock
    does, rather than stopping every trainer and launcher on such a file system."""
    import errno
    import fcntl

    from dit_core.tracking import get_or_create_experiment, interrupt_safe_client

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    client = interrupt_safe_client(f"sqlite:///{tmp_path / 'lustre.db'}")
    assert get_or_create_experiment(client, "e") == client.get_experiment_by_name("e").experiment_id
