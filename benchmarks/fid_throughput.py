"""Throughput of evaluation: Inception feature extraction (ours vs clean-fid's own) and DDIM-50 sampling.

    python benchmarks/fid_throughput.py [--images 64] [--repeats 5] [--resolution 32] [--device cpu]

Feature extraction: the same uint8 images and the same weights (resolved like the CLI), clean-fid's
"clean" resize, same batch size. clean-fid's side is its own folder path
(``cleanfid.fid.get_folder_features`` on PNGs of the images, ``num_workers=0``); ours is
``InceptionExtractor.extract`` on the in-memory array. Timings are medians over ``--repeats``, run
alternately so machine load hits both sides alike; the script also checks the features are equal.
Sampling: ``generate_images`` with DDIM-50 and guidance (cfg 1.5) on a small DiT, images/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
from PIL import Image


def _images(n: int, resolution: int) -> np.ndarray:
    """n digits at ``resolution`` as uint8 (n, 3, R, R) (tiled if n > 1797)."""
    from dit_core.data import digits_images

    x = digits_images("all", resolution)[0].numpy()
    x = np.concatenate([x] * (n // len(x) + 1))[:n]
    return np.repeat(x, 3, axis=1)


def bench_features(n: int, repeats: int, resolution: int, device: str, batch: int, weights: str | None):
    from cleanfid import fid as cfid

    from dit_core.evaluate import InceptionExtractor

    ext = InceptionExtractor(weights, device=device, batch_size=batch)
    x = _images(n, resolution)
    with tempfile.TemporaryDirectory() as d:
        for i, img in enumerate(x):
            Image.fromarray(img.transpose(1, 2, 0)).save(f"{d}/{i:05d}.png")

        def net(t: torch.Tensor) -> torch.Tensor:  # clean-fid's InceptionV3W.forward on the same file
            return ext.module((t - 128) / 128).reshape(len(t), 2048)

        def theirs() -> np.ndarray:
            return cfid.get_folder_features(
                d, net, num_workers=0, batch_size=batch,
                device=torch.device(device), mode="clean", verbose=False,
            )  # fmt: skip

        def ours() -> np.ndarray:
            return ext(x)

        ours(), theirs()  # warm-up (JIT profiling runs)
        t_ours, t_theirs = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fo = ours()
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ft = theirs()
            t_theirs.append(time.perf_counter() - t0)
    diff = float(np.abs(fo - ft).max())
    ips_o, ips_t = n / statistics.median(t_ours), n / statistics.median(t_theirs)
    print(f"features  ({n} images {resolution}px -> 299, batch {batch}, {device}, {ext.path.name})")
    print(f"  ours       {ips_o:8.2f} img/s   (median of {repeats}: {[round(t, 2) for t in t_ours]})")
    print(f"  clean-fid  {ips_t:8.2f} img/s   (median of {repeats}: {[round(t, 2) for t in t_theirs]})")
    print(f"  ratio ours/clean-fid = {ips_o / ips_t:.3f}x   max |feature diff| = {diff:.3g}")


def bench_sampling(n: int, repeats: int, device: str, model_name: str, resolution: int):
    from dit_core.diffusion import DiffusionConfig, create_diffusion
    from dit_core.evaluate import SampleSettings, generate_images
    from dit_core.models import DiT_models

    torch.manual_seed(0)
    model = DiT_models[model_name](input_size=resolution, in_channels=1, num_classes=10).to(device).eval()
    diffusion = create_diffusion(DiffusionConfig())
    drawn = SampleSettings("ddim", steps=50, cfg_scale=1.5, seed=0)
    kw = dict(batch_size=n, num_classes=10, image_size=resolution, channels=1)
    run = lambda: generate_images(model, diffusion, range(n), drawn, **kw)
    run()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    print(f"sampling  ({model_name}, {resolution}px x1, DDIM-50, cfg 1.5, batch {n}, {device})")
    print(f"  {n / statistics.median(ts):8.2f} img/s   (median of {repeats}: {[round(t, 2) for t in ts]})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--sample-images", type=int, default=32)
    p.add_argument("--model", default="DiT-S/4")
    p.add_argument("--skip-sampling", action="store_true")
    p.add_argument("--skip-features", action="store_true")
    a = p.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not a.skip_features:
        bench_features(a.images, a.repeats, a.resolution, a.device, a.batch_size, a.inception_weights)
    if not a.skip_sampling:
        bench_sampling(a.sample_images, a.repeats, a.device, a.model, a.resolution)


if __name__ == "__main__":
    main()
