"""Tests of dit_core.extract_latents and the latents dataset, with a tiny random AutoencoderKL."""

from __future__ import annotations

import json
import logging
import os

import diffusers  # a [test] dependency: without it this module errors instead of skipping
import numpy as np
import pytest
import torch
from PIL import Image

from dit_core import extract_latents as ex
from dit_core.data import DataConfig, build_dataset, center_crop_arr, flip_decision
from dit_core.extract_latents import ExtractConfig, extract_latents, main

SCALE = 0.18215


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir()
        for i in range(6):
            w, h = (24, 18) if i % 2 else (16, 20)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "dog" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root


def _cfg(image_dir, vae_dir, out, **kw):
    base = dict(
        data_path=str(image_dir),
        output=str(out),
        vae=str(vae_dir),
        image_size=16,
        batch_size=4,
        shard_size=5,
        posterior="mean",
        num_workers=0,
        device="cpu",
    )
    return ExtractConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def extracted(image_dir, vae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lat")
    manifest = extract_latents(_cfg(image_dir, vae_dir, out))
    return out, manifest


def _encode_mean(vae_dir, x):
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean


def test_manifest_and_shards(extracted, image_dir):
    out, manifest = extracted
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert manifest["classes"] == ["cat", "dog"]
    assert manifest["num_items"] == 12
    assert [s["count"] for s in manifest["shards"]] == [5, 5, 2]
    assert sorted(os.listdir(out)) == [
        "latents_00000.safetensors",
        "latents_00001.safetensors",
        "latents_00002.safetensors",
        "manifest.json",
    ]
    assert manifest["skipped"] == [str(image_dir / "dog" / "corrupt.png")]
    assert manifest["latent_shape"] == [4, 8, 8] and manifest["scale_factor"] == SCALE
    assert manifest["version"] == 1 and manifest["format"] == "ditscale-latents"
    assert not {"rank", "world_size", "progress"} & set(manifest["config"])  # not the run's settings
    assert manifest["config"]["shard_size"] == 5 and manifest["config"]["posterior"] == "mean"


def test_latents_dataset_shapes_labels_and_encodings(extracted, image_dir, vae_dir):
    out, _ = extracted
    ds = build_dataset(DataConfig(name="latents", root=str(out), random_flip=False))
    assert (ds.name, ds.num_classes, ds.channels, ds.resolution, len(ds)) == ("latents", 2, 4, 8, 12)
    assert ds.scale_factor == SCALE and ds.vae == str(vae_dir) and ds.image_size == 16
    labels = [int(ds[i][1]) for i in range(12)]
    assert labels == [0] * 6 + [1] * 6
    x, y = ds[0]
    assert x.shape == (4, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64

    # reference: encode the files ourselves (mean of the posterior), image and flipped image
    files = [image_dir / c / f"{i}.png" for c in ("cat", "dog") for i in range(6)]
    imgs = torch.stack(
        [
            torch.from_numpy(center_crop_arr(Image.open(f).convert("RGB"), 16).astype(np.float32))
            .permute(2, 0, 1)
            .div(127.5)
            .sub(1)
            for f in files
        ]
    )
    raw = _encode_mean(vae_dir, imgs)
    raw_flip = _encode_mean(vae_dir, imgs.flip(-1))
    pairs = torch.stack([ds.pair(i)[0] for i in range(12)])
    torch.testing.assert_close(pairs[:, 0], raw * SCALE, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pairs[:, 1], raw_flip * SCALE, rtol=1e-4, atol=1e-5)
    # scale applied (not the raw latents), and the flipped latent is a real encoding, not a mirror
    assert not torch.allclose(pairs[:, 0], raw, atol=1e-3)
    assert not torch.allclose(pairs[:, 1], pairs[:, 0].flip(-1), atol=1e-3)


def test_latents_flip_picks_stored_flipped_latent(extracted):
    out, _ = extracted
    ds = build_dataset(DataConfig(name="latents", root=str(out), seed=5))
    ds.set_epoch(2)
    n_flipped = 0
    for i in range(len(ds)):
        pair, _ = ds.pair(i)
        f = flip_decision(5, 2, i)
        n_flipped += f
        torch.testing.assert_close(ds[i][0], pair[1 if f else 0], rtol=0, atol=0)
    assert 0 < n_flipped < len(ds)
    val = build_dataset(DataConfig(name="latents", root=str(out), seed=5), "val")
    torch.testing.assert_close(val[3][0], val.pair(3)[0][0], rtol=0, atol=0)


def test_latents_dataset_works_in_workers(extracted):
    out, _ = extracted
    ds = build_dataset(DataConfig(name="latents", root=str(out)))
    ds[0]  # opens a handle in this process; it must not be pickled to workers
    a = torch.cat([x for x, _ in torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)])
    b = torch.cat([x for x, _ in torch.utils.data.DataLoader(ds, batch_size=5, num_workers=0)])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_keeps_finished_shards(image_dir, vae_dir, tmp_path, monkeypatch):
    out = tmp_path / "lat"
    first = extract_latents(_cfg(image_dir, vae_dir, out, posterior="sample", seed=3))
    os.remove(out / "latents_00001.safetensors")
    os.remove(out / "manifest.json")
    before = (out / "latents_00000.safetensors").stat().st_mtime_ns
    written = []
    real = ex._write_shard

    def spy(*args, **kw):
        written.append(args[3])
        return real(*args, **kw)

    monkeypatch.setattr(ex, "_write_shard", spy)
    second = extract_latents(_cfg(image_dir, vae_dir, out, posterior="sample", seed=3))
    assert written == [1]
    assert (out / "latents_00000.safetensors").stat().st_mtime_ns == before
    assert second["num_items"] == first["num_items"] == 12
    # the rewritten shard is identical: posterior noise is seeded per (seed, shard)
    ds = build_dataset(DataConfig(name="latents", root=str(out)))
    assert not any(f.endswith(".tmp") or ".tmp-" in f for f in os.listdir(out))
    fresh = extract_latents(_cfg(image_dir, vae_dir, tmp_path / "fresh", posterior="sample", seed=3))
    ds2 = build_dataset(DataConfig(name="latents", root=str(tmp_path / "fresh")))
    assert fresh["fingerprint"] == second["fingerprint"]
    for i in range(12):
        torch.testing.assert_close(ds.pair(i)[0], ds2.pair(i)[0], rtol=0, atol=0)
    # other settings refuse to mix with these shards
    with pytest.raises(ValueError, match="different extraction"):
        extract_latents(_cfg(image_dir, vae_dir, out, posterior="sample", seed=4))


def fail_to_load(monkeypatch, bad: str) -> None:
    """`load_rgb` raises OSError("disk hiccup") for the file ``bad`` alone (read at encode time)."""
    real = ex.load_rgb

    def flaky(path):
        if path == bad:
            raise OSError("disk hiccup")
        return real(path)

    monkeypatch.setattr(ex, "load_rgb", flaky)


def test_unreadable_at_encode_time_is_skipped(image_dir, vae_dir, tmp_path, monkeypatch, caplog):
    bad = str(image_dir / "cat" / "2.png")
    fail_to_load(monkeypatch, bad)
    with caplog.at_level(logging.WARNING, logger="dit_core"):
        m = extract_latents(_cfg(image_dir, vae_dir, tmp_path / "lat"))
    assert m["num_items"] == 11 and bad in m["skipped"] and len(m["skipped"]) == 2
    assert any(bad in r.getMessage() and "disk hiccup" in r.getMessage() for r in caplog.records)
    assert any("skipped 2 unreadable image(s)" in r.getMessage() for r in caplog.records)
    ds = build_dataset(DataConfig(name="latents", root=str(tmp_path / "lat")))
    assert len(ds) == 11 and [int(ds[i][1]) for i in range(11)] == [0] * 5 + [1] * 6


def test_cli_end_to_end_and_errors(image_dir, vae_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "--data-path", str(image_dir), "--output", str(out), "--image-size", "16", "--vae", str(vae_dir),
            "--batch-size", "8", "--device", "cpu", "--num-workers", "0", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0 and (out / "manifest.json").is_file()
    assert len(build_dataset(DataConfig(name="latents", root=str(out)))) == 12

    rc = main(
        ["--data-path", str(image_dir), "--output", str(tmp_path / "x"), "--vae", str(tmp_path / "novae")]
    )
    assert rc == 2 and "has no config.json" in capsys.readouterr().err
    rc = main(["--data-path", str(tmp_path / "none"), "--output", str(tmp_path / "x"), "--vae", str(vae_dir)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(
        [
            "--data-path",
            str(image_dir),
            "--output",
            str(tmp_path / "y"),
            "--vae",
            str(vae_dir),
            "--image-size",
            "15",
        ]
    )
    assert rc == 2 and "multiple of the VAE's downsampling factor 2" in capsys.readouterr().err


def test_latents_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_dataset(DataConfig(name="latents", root=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match=r"no manifest.json .*extract_latents"):
        build_dataset(DataConfig(name="latents", root=str(tmp_path)))


def test_latents_dataset_pickles_without_its_handles_and_refuses_bad_folders(extracted, tmp_path):
    """A dataset that has read an item holds an open shard; its pickle (what DataLoader workers get)
    must not, and must read the same items. Out-of-range indices, an empty manifest and a missing
    shard are errors that say what is wrong."""
    import pickle
    import shutil

    from dit_core.data.latents import LatentsDataset

    out, _ = extracted
    ds = LatentsDataset(str(out), random_flip=False)
    first = ds[0][0]
    assert ds._handles
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._handles == {} and ds._handles  # the original keeps its handle
    torch.testing.assert_close(copy[0][0], first, rtol=0, atol=0)
    torch.testing.assert_close(copy[11][0], ds[11][0], rtol=0, atol=0)
    with pytest.raises(IndexError, match=r"^index 12 out of range for 12 latents$"):
        ds.pair(12)
    with pytest.raises(IndexError, match=r"^index -1 out of range"):
        ds.pair(-1)
    empty = tmp_path / "empty"
    shutil.copytree(out, empty)
    manifest = json.loads((empty / "manifest.json").read_text())
    (empty / "manifest.json").write_text(json.dumps({**manifest, "shards": [], "num_items": 0}))
    with pytest.raises(ValueError, match=r"holds no items \(manifest lists 0\)"):
        LatentsDataset(str(empty))
    (empty / "manifest.json").write_text(json.dumps(manifest))
    (empty / "latents_00001.safetensors").unlink()
    with pytest.raises(ValueError, match=r"lists shard latents_00001.safetensors but the file is missing"):
        LatentsDataset(str(empty))
    (empty / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "vae"}))
    with pytest.raises(ValueError, match=r"missing keys: \['vae'\]"):
        LatentsDataset(str(empty))


def test_extract_config_validation():
    with pytest.raises(ValueError, match=r"posterior: 'mode' is unknown; choose one of \['sample', 'mean'\]"):
        ExtractConfig(data_path="a", output="b", vae="c", posterior="mode")
    with pytest.raises(ValueError, match="batch_size: must be >= 1, got 0"):
        ExtractConfig(data_path="a", output="b", vae="c", batch_size=0)


def test_hub_id_offline_fails_fast_with_a_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"hub is not reachable.*--vae ./vae"):
        ex.load_vae("nobody-here/no-such-vae")


def test_a_vae_name_is_local_when_it_looks_like_a_path_or_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myvae").mkdir()
    assert ex._is_local("./missing") and ex._is_local("~/missing") and ex._is_local(str(tmp_path / "x"))
    assert ex._is_local("myvae")  # a relative folder that exists
    assert not ex._is_local("stabilityai/sd-vae-ft-ema")  # a hub id


def test_hub_reachability_reads_the_endpoint_and_the_offline_switch(monkeypatch):
    """`HF_ENDPOINT` names the host tried (here a real local socket); `HF_HUB_OFFLINE` in any of its
    spellings means unreachable without a connection; a closed port is unreachable."""
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert ex._hub_reachable(timeout=5.0)
        for on in ("1", "true", "YES", "on"):
            monkeypatch.setenv("HF_HUB_OFFLINE", on)
            assert not ex._hub_reachable(timeout=5.0)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        assert ex._hub_reachable(timeout=5.0)
    assert not ex._hub_reachable(timeout=5.0)  # the port is closed now


def test_shards_split_over_ranks_match_single_process(extracted, image_dir, vae_dir, tmp_path):
    out = tmp_path / "ranks"
    part = extract_latents(_cfg(image_dir, vae_dir, out, rank=1, world_size=2))
    assert not part["complete"] and not (out / "manifest.json").exists()
    assert sorted(os.listdir(out)) == ["latents_00001.safetensors"]
    full = extract_latents(_cfg(image_dir, vae_dir, out, rank=0, world_size=2, num_workers=2))
    assert full["complete"] and (out / "manifest.json").is_file()
    _, single = extracted
    assert full["fingerprint"] == single["fingerprint"] and full["shards"] == single["shards"]
    a = build_dataset(DataConfig(name="latents", root=str(out)))
    b = build_dataset(DataConfig(name="latents", root=str(extracted[0])))
    for i in range(len(b)):
        torch.testing.assert_close(a.pair(i)[0], b.pair(i)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="rank < world_size"):
        _cfg(image_dir, vae_dir, out, rank=2, world_size=2)


def test_cli_defaults_are_the_config_defaults():
    """The CLI's defaults come from `ExtractConfig` alone: a flag-free parse builds the default config,
    and the help shows the dataclass's values."""
    args = ex.build_parser().parse_args(["--data-path", "d", "--output", "o", "--vae", "v"])
    assert ex.ExtractConfig(**vars(args)) == ex.ExtractConfig("d", "o", "v")
    text = ex.build_parser().format_help()
    assert "(default 10000)" in text and "(default 0.18215" in text and "(default sample)" in text
