"""The demo's end-of-cell evaluation at several ``eval.batch_size`` values: time, and equality.

    python benchmarks/eval_batch.py                              # S, B, L, XL; batches 256, 128, 64
    python benchmarks/eval_batch.py --shapes XL --batches 256,128 --rounds 5 --samples 512

Per family of the default demo (``sweeps/configs/demo.yaml``: 16 px grey photos, patch 2, 10 classes,
``frequency_embedding_size`` 32; weights drawn at random so that outputs are not all zero) it times
what a cell's last step runs with ``eval.batch_size``: ``generate_images`` (``--samples`` DDIM
samples of ``--steps`` steps, the FID's sampling) and ``validation_losses`` on ``--val`` held-out
crops (the validation loss). Batch sizes alternate within each round, so machine load hits all alike;
1 thread, as each local sweep slot. It checks that every batch size gives bitwise the same images
and per-example losses as the first, and prints medians and the ratio to the first batch size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

#: the default demo's families (sweeps/configs/demo.yaml): depth, width, heads
SHAPES = {"S": (3, 12, 3), "B": (3, 20, 5), "L": (6, 28, 7), "XL": (7, 32, 8)}


def _model(depth: int, width: int, heads: int) -> torch.nn.Module:
    from dit_core.models import DiT
    from dit_core.spec import DiTConfig

    cfg = DiTConfig(
        input_size=16, patch_size=2, in_channels=1, hidden_size=width, depth=depth, num_heads=heads,
        num_classes=10, learn_sigma=True, frequency_embedding_size=32,
    )  # fmt: skip
    model = DiT.from_config(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def main() -> None:
    from dit_core.config import TrainConfig
    from dit_core.data import DataConfig, build_dataset
    from dit_core.diffusion import create_diffusion, validation_losses
    from dit_core.evaluate.sampling import SampleSettings, generate_images

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="S,B,L,XL", help="demo families, comma-separated")
    p.add_argument("--batches", default="256,128,64", help="eval batch sizes; the first is the reference")
    p.add_argument("--samples", type=int, default=256, help="sampled images per timing")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps per sample (the demo: 50)")
    p.add_argument("--val", type=int, default=2048, help="validation crops (the demo: 2048)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    diffusion = create_diffusion(TrainConfig().diffusion)
    val = build_dataset(DataConfig(name="photos", image_size=16, channels=1), "val")
    items = val.__getitems__(list(range(args.val)))
    x = torch.stack([a for a, _ in items])
    y = torch.stack([torch.as_tensor(b) for _, b in items])
    print(f"{args.samples} DDIM-{args.steps} samples and {args.val} validation crops, 1 thread, "
          f"medians of {args.rounds} rounds")  # fmt: skip
    for name in args.shapes.split(","):
        model = _model(*SHAPES[name])
        times: dict[tuple[str, int], list[float]] = {}
        ref: dict[str, torch.Tensor] = {}
        for r in range(args.rounds):
            order = batches if r % 2 == 0 else batches[::-1]
            for bs in order:
                t = time.perf_counter()
                images = generate_images(
                    model, diffusion, range(args.samples), SampleSettings(steps=args.steps), batch_size=bs,
                    num_classes=10, image_size=16, channels=1,
                )  # fmt: skip
                times.setdefault(("sample", bs), []).append(time.perf_counter() - t)
                t = time.perf_counter()
                with torch.no_grad():
                    losses = validation_losses(diffusion, model, x, y, seed=0, index_offset=0, batch_size=bs)
                times.setdefault(("val", bs), []).append(time.perf_counter() - t)
                for key, out in (("sample", images), ("val", losses)):
                    if bs == batches[0]:
                        ref.setdefault(key, out)
                    elif not torch.equal(out, ref.setdefault(key, out)):
                        raise SystemExit(f"{name}: {key} at batch {bs} differs from batch {batches[0]}")
        for key in ("sample", "val"):
            med = {bs: statistics.median(times[(key, bs)]) for bs in batches}
            cells = [f"{bs}: {med[bs]:.2f} s ({med[batches[0]] / med[bs]:.2f}x)" for bs in batches]
            print(f"{name:>2} {key:<6} " + ", ".join(cells) + "  [bitwise equal]")


if __name__ == "__main__":
    main()
