"""``python -m dit_core.sample``: a PNG grid of a checkpoint's samples, the labels asked for, at
another resolution for a rotary-position model, and exit 2 on what it cannot do."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from _train_helpers import one_thread, tiny_config
from PIL import Image

from dit_core.checkpoint import load_checkpoint, model_from_checkpoint
from dit_core.diffusion import sample
from dit_core.evaluate.features import to_uint8
from dit_core.evaluate.sampling import SampleSettings, example_noise, example_seed, generate_images
from dit_core.sample import image_grid, main
from dit_core.train import train

STEPS = 4  # sampler steps: enough to exercise the sampler, cheap on CPU


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs of 3 steps on 16 px digits, sin-cos positions and rotary ones, each also as
    ``<pos>.pt``: its last checkpoint with random weights (3 steps leave adaLN-Zero's class and
    timestep paths near zero, so the labels would not show in the images)."""
    root = tmp_path_factory.mktemp("sample")
    gen = torch.Generator().manual_seed(0)
    with one_thread():
        for pos in ("sincos", "rope"):
            cfg = tiny_config(
                root / pos, steps=3, batch=4, **{"model.pos_embed": pos, "tracking.enabled": False}
            )
            train(cfg)
            ckpt = load_checkpoint(root / pos)
            for key in ("model", "ema"):
                sd = ckpt[key]
                ckpt[key] = {k: 0.3 * torch.randn(v.shape, generator=gen) if k != "pos_embed" else v
                             for k, v in sd.items()}  # fmt: skip
            torch.save(ckpt, root / f"{pos}.pt")
    return root


def _load(npz):
    with np.load(npz) as z:
        return z["arr_0"], z["labels"]


def test_the_grid_holds_the_samples_evaluate_would_save(runs, tmp_path):
    """Default labels 0, 1, ... and the run's sampler: the images `generate_images` gives (what
    `python -m dit_core.evaluate --save-samples` writes), tiled row-major into the PNG."""
    out, npz = tmp_path / "g.png", tmp_path / "g.npz"
    cmd = [sys.executable, "-m", "dit_core.sample", "--checkpoint", str(runs / "sincos.pt"),
           "--out", str(out), "--npz", str(npz), "--num-samples", "5", "--steps", str(STEPS),
           "--batch-size", "2", "--zoom", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: 5 images of 16x16 px" in done.stdout
    images, labels = _load(npz)
    assert images.shape == (5, 16, 16, 1) and images.dtype == np.uint8 and labels.tolist() == [0, 1, 2, 3, 4]

    model, diffusion, tcfg = model_from_checkpoint(load_checkpoint(runs / "sincos.pt"))
    with one_thread():
        drawn = SampleSettings(tcfg.eval.sampler, STEPS, tcfg.eval.cfg_scale, tcfg.seed, clip_denoised=True)
        want = generate_images(
            model, diffusion, range(5), drawn, batch_size=5, num_classes=10, image_size=16, channels=1
        )  # fmt: skip
    assert np.array_equal(images, want.permute(0, 2, 3, 1).numpy())  # the batch size does not matter

    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 17 + 1, 3 * 17 + 1)  # ceil(sqrt(5)) = 3 columns, 2 rows, 1 px padding
    for i in range(5):
        r, c = divmod(i, 3)
        assert np.array_equal(grid[1 + 17 * r : 17 * (r + 1), 1 + 17 * c : 17 * (c + 1)], images[i, ..., 0])
    assert (grid[-17:, -17:] == 255).all()  # the sixth cell is empty


def test_class_labels_and_another_resolution_for_a_rope_model(runs, tmp_path):
    """Sample i has label class_labels[i] and noise seeded by (seed, i): equal to sampling that by
    hand; a rope model trained at 16 px samples at 24 px."""
    npz = tmp_path / "r.npz"
    argv = ["--checkpoint", str(runs / "rope.pt"), "--out", str(tmp_path / "r.png"), "--npz", str(npz),
            "--class-labels", "7,3", "--image-size", "24", "--steps", str(STEPS), "--seed", "5",
            "--cfg-scale", "1"]  # fmt: skip
    with one_thread():
        assert main(argv) == 0
    images, labels = _load(npz)
    assert images.shape == (2, 24, 24, 1) and labels.tolist() == [7, 3]
    # the PNG: 24 px enlarged 3x (the smallest zoom to 64 px tiles), pixel for pixel, 2 columns
    grid = np.asarray(Image.open(tmp_path / "r.png"))
    assert grid.shape == (72 + 2, 2 * 73 + 1)
    assert np.array_equal(grid[1:73, 74:146], images[1, ..., 0].repeat(3, 0).repeat(3, 1))

    model, diffusion, tcfg = model_from_checkpoint(load_checkpoint(runs / "rope.pt"))
    noise = example_noise(5, torch.arange(2), (1, 24, 24))
    g = torch.Generator().manual_seed(example_seed(5, 0, 1))
    with one_thread():
        x = sample(model, diffusion, noise.shape, torch.tensor([7, 3]), sampler=tcfg.eval.sampler,
                   steps=STEPS, cfg_scale=1.0, generator=g, noise=noise, clip_denoised=True)  # fmt: skip
    assert np.array_equal(images, to_uint8(x).permute(0, 2, 3, 1).numpy())
    assert len(np.unique(images)) > 50  # not a blank or saturated image
    with one_thread():  # and the labels show: other labels, other images
        assert main([*argv[:7], "0,1", *argv[8:]]) == 0
    assert not np.array_equal(_load(npz)[0], images)


@pytest.mark.parametrize(
    ("run", "extra", "phrase"),
    [
        ("sincos", ["--image-size", "24"], "image_size: the model was trained at 16 px with a fixed sin-cos"),
        ("sincos", ["--image-size", "15"], "image_size: the model was trained at 16 px with a fixed sin-cos"),
        (
            "rope",
            ["--image-size", "15"],
            "image_size: 15 px is not a positive multiple of the model's patch 2",
        ),
        ("rope", ["--class-labels", "3,10"], "class_labels: [3, 10] must be one or more labels in 0..9"),
        ("rope", ["--class-labels", "-1,2"], "class_labels: [-1, 2] must be one or more labels in 0..9"),
        ("rope", ["--class-labels", "1", "--num-samples", "4"], "drop --num-samples"),
        ("rope", ["--vae", "."], "vae: --vae . was given, but checkpoint"),
        ("rope", ["--sampler", "euler"], "euler"),
        ("rope", ["--seed", "-1"], "seed: must be >= 0"),
        ("rope", ["--device", "bogus"], "--device 'bogus' is not a device"),
        ("missing", [], "missing"),
    ],
)
def test_what_it_cannot_do_exits_2_and_writes_nothing(runs, tmp_path, capsys, run, extra, phrase):
    out = tmp_path / "x.png"
    code = main(["--checkpoint", str(runs / run), "--out", str(out), "--steps", "2", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and phrase in err, err
    assert not out.exists()


def test_an_out_in_a_missing_folder_is_refused_before_sampling(runs, tmp_path, capsys):
    code = main(["--checkpoint", str(runs / "rope"), "--out", str(tmp_path / "no" / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {tmp_path / 'no' / 'x.png'}: its folder does not exist" in err, err
    assert not (tmp_path / "no").exists()


def test_image_grid_is_row_major_with_padding():
    tiles = np.arange(4 * 2 * 3 * 1, dtype=np.uint8).reshape(4, 2, 3, 1)
    grid = image_grid(tiles, nrow=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    assert np.array_equal(grid[1:3, 5:8], tiles[1]) and np.array_equal(grid[4:6, 1:4], tiles[3])
    assert (grid[4:6, 5:] == 255).all() and (grid[0] == 255).all()


def test_it_samples_on_the_device_asked_for(runs, tmp_path, monkeypatch):
    """The model and the sampling go to --device (``meta`` stands in for a GPU, which this machine
    lacks); without the flag, to the CPU here."""
    import dit_core.evaluate.sampling as sampling

    seen = []

    def record(model, diffusion, indices, settings, *, device, image_size, channels, **kwargs):
        seen.append((next(model.parameters()).device.type, torch.device(device).type))
        return torch.zeros(len(indices), channels, image_size, image_size, dtype=torch.uint8)

    monkeypatch.setattr(sampling, "generate_images", record)
    monkeypatch.setattr("dit_core.device.DEVICE_TYPES", ("cpu", "cuda", "meta"))  # refused as a real device
    for extra in (["--device", "meta"], []):
        assert main(["--checkpoint", str(runs / "rope.pt"), "--out", str(tmp_path / "m.png"), *extra]) == 0
    assert seen == [("meta", "meta"), ("cpu", "cpu")]


def test_a_failed_write_exits_2_and_leaves_neither_file(runs, tmp_path, capsys, monkeypatch):
    """A disk that fills while the --npz is written: exit 2 naming the flag, and neither the PNG nor a
    temporary file is left (they are renamed into place only once both are written)."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    out, npz = tmp_path / "x.png", tmp_path / "x.npz"
    with one_thread():
        code = main(["--checkpoint", str(runs / "rope.pt"), "--out", str(out), "--npz", str(npz),
                     "--steps", "1", "--num-samples", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --npz {npz}: cannot be written (No space left"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--out", "--npz"])
def test_an_unwritable_path_is_refused_before_sampling(runs, tmp_path, capsys, monkeypatch, flag):
    import dit_core.sample as sample_cli

    monkeypatch.setattr(sample_cli, "sample_checkpoint", lambda cfg: pytest.fail("sampled"))
    paths = {"--out": str(tmp_path / "x.png"), "--npz": str(tmp_path / "x.npz"), flag: "/proc/x.bin"}
    code = main(["--checkpoint", str(runs / "rope.pt"), *(a for kv in paths.items() for a in kv)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {flag} /proc/x.bin: cannot be written"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB"),
     RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 40000000000 bytes")],
)  # fmt: skip
def test_running_out_of_memory_exits_2_with_what_to_lower(runs, tmp_path, capsys, monkeypatch, error):
    """E.g. --image-size 100000 on a rope model: no traceback, but what to make smaller."""
    import dit_core.evaluate.sampling as sampling

    def oom(*args, **kwargs):
        raise error

    monkeypatch.setattr(sampling, "generate_images", oom)
    out = tmp_path / "x.png"
    code = main(["--checkpoint", str(runs / "rope.pt"), "--out", str(out), "--image-size", "1000"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: out of memory sampling at 1000 px"), err
    assert "give a smaller --image-size, --batch-size or --zoom" in err and not out.exists()


def test_a_zoom_too_large_for_memory_exits_2(runs, tmp_path, capsys):
    with one_thread():
        code = main(["--checkpoint", str(runs / "rope.pt"), "--out", str(tmp_path / "x.png"),
                     "--steps", "1", "--num-samples", "1", "--zoom", "1000000"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "out of memory" in err and "--zoom 1000000" in err, err
    assert list(tmp_path.iterdir()) == []


def test_guidance_asked_of_a_model_without_label_dropout_exits_2(runs, tmp_path, capsys):
    """A model trained with class_dropout_prob 0 has no null class to guide from: --cfg-scale 4 is
    refused before sampling (it used to sample at 1 with a warning); --cfg-scale 1 samples."""
    ckpt = torch.load(runs / "rope.pt", weights_only=False)
    assert ckpt["config"]["model.class_dropout_prob"] > 0
    ckpt["config"]["model.class_dropout_prob"] = 0.0
    for key in ("model", "ema"):  # the null class's embedding row goes with the dropout
        ckpt[key]["y_embedder.embedding_table.weight"] = ckpt[key]["y_embedder.embedding_table.weight"][:10]
    torch.save(ckpt, tmp_path / "nodrop.pt")
    out = tmp_path / "x.png"
    argv = [
        "--checkpoint",
        str(tmp_path / "nodrop.pt"),
        "--out",
        str(out),
        "--steps",
        "2",
        "--num-samples",
        "2",
    ]
    assert main([*argv, "--cfg-scale", "4"]) == 2
    err = capsys.readouterr().err
    assert "--cfg-scale 4: this model was trained without label dropout" in err and not out.exists()
    with one_thread():
        assert main([*argv, "--cfg-scale", "1"]) == 0
    assert out.exists()


def test_a_latent_run_without_vae_exits_2_before_the_model_is_built(runs, tmp_path, capsys, monkeypatch):
    """Latents need the VAE they were made with; told before anything is built or sampled."""
    import dit_core.checkpoint

    ckpt = torch.load(runs / "rope.pt", weights_only=False)
    ckpt["config"]["data.name"] = "latents"
    torch.save(ckpt, tmp_path / "latent.pt")
    monkeypatch.setattr(dit_core.checkpoint, "model_from_checkpoint", lambda *a, **k: 1 / 0)
    code = main(["--checkpoint", str(tmp_path / "latent.pt"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "trained on VAE latents, whose samples are latents to decode: pass --vae PATH" in err
