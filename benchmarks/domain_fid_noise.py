"""Is ``fid_photos`` usable for a scaling study? Noise floor, seed-to-seed spread, cost per evaluation.

    python benchmarks/domain_fid_noise.py [--train-steps 300 --checkpoints 50,300 --samples 200,500
                                           --ddim-steps 10,25 --seeds 0,1 --out /tmp/domain_fid]

1. Noise floor: FID of the reference (the first 2 000 held-out crops, the ``photos`` reference)
   against other held-out crops (indices from 2 000 on, disjoint sets), n = each ``--samples`` and 2 000.
2. Trains a tiny DiT on ``photos`` (the demo's S shape: depth 3, width 48, 6 heads, patch 2; batch
   16, lr 1e-3 cosine with warmup, EMA 0.9 as the demo) and keeps checkpoints at ``--checkpoints``.
3. For each checkpoint, sample count, DDIM steps and seed: ``fid_photos`` of the EMA model's samples
   (cfg 1, as the demo), with the seconds spent sampling and scoring.
Prints one JSON line per measurement and a summary table; writes ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def parse_ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument(
        "--checkpoints", type=parse_ints, default=[50, 300], help="steps whose EMA model is scored"
    )
    p.add_argument("--samples", type=parse_ints, default=[200, 500])
    p.add_argument("--ddim-steps", type=parse_ints, default=[10, 25])
    p.add_argument("--seeds", type=parse_ints, default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/domain_fid")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dit_core.checkpoint import load_checkpoint
    from dit_core.config import (
        BudgetConfig,
        CheckpointConfig,
        EvalConfig,
        ModelConfig,
        OptimConfig,
        TrackingConfig,
        TrainConfig,
    )
    from dit_core.data import DataConfig, default_reference
    from dit_core.data.photos import PhotoOptions, photo_crops
    from dit_core.diffusion import create_diffusion
    from dit_core.evaluate import SampleSettings, evaluate_samples, generate_images
    from dit_core.models import DiT
    from dit_core.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    data = DataConfig(name="photos", image_size=16, channels=3)
    reference = default_reference(data)
    crops = photo_crops(PhotoOptions(channels=3))
    t = time.perf_counter()
    evaluate_samples(crops.sample(np.arange(2), "val", 16, flip=False)[0], reference, metrics=("fid_photos",))
    emit({"what": "classifier+reference (first use, then cached)", "seconds": time.perf_counter() - t})

    # 1. noise floor: disjoint sets of held-out crops against the reference
    for n in sorted({*args.samples, 2000}):
        fids = []
        for k in range(3 if n < 2000 else 1):
            x, _ = crops.sample(np.arange(2000 + k * n, 2000 + (k + 1) * n), "val", 16, flip=False)
            fids.append(evaluate_samples(x, reference, metrics=("fid_photos",))["fid_photos"])
        emit({"what": "noise floor", "n": n, "fid_photos": fids})

    # 2. a tiny DiT on photos, checkpoints kept
    steps = args.train_steps
    cfg = TrainConfig(
        model=ModelConfig(name=None, depth=3, hidden_size=48, num_heads=6, patch_size=2),
        data=data,
        budget=BudgetConfig(max_steps=steps, global_batch_size=16),
        optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=20, ema_decay=0.9),
        eval=EvalConfig(),
        tracking=TrackingConfig(enabled=False),
        checkpoint=CheckpointConfig(every=min(args.checkpoints), keep_last=0),
        out=str(out / "run"),
        log_every=50,
    )
    t = time.perf_counter()
    res = train(cfg, resume="auto", progress_bar=False)
    emit(
        {"what": "train", "steps": res.step, "seconds": time.perf_counter() - t, "train_loss": res.train_loss}
    )

    # 3. the same checkpoint under two sampling seeds
    for step in args.checkpoints:
        ckpt = load_checkpoint(str(out / "run" / "checkpoints" / f"step_{step:07d}.pt"), map_location="cpu")
        tcfg = TrainConfig.from_flat_dict(ckpt["config"])
        model = DiT.from_config(tcfg.model.to_dit_config())
        model.load_state_dict(ckpt["ema"])
        model.eval()
        diffusion = create_diffusion(tcfg.diffusion)
        dit = model.config
        for n in args.samples:
            for ddim in args.ddim_steps:
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    x = generate_images(
                        model, diffusion, range(n), SampleSettings("ddim", ddim, cfg_scale=1.0, seed=seed),
                        batch_size=n, num_classes=dit.num_classes, image_size=dit.input_size,
                        channels=dit.in_channels,
                    )  # fmt: skip
                    t1 = time.perf_counter()
                    fid = evaluate_samples(x, reference, metrics=("fid_photos",))["fid_photos"]
                    t2 = time.perf_counter()
                    emit({"what": "checkpoint", "step": step, "n": n, "ddim": ddim, "seed": seed,
                          "fid_photos": fid, "sample_s": t1 - t0, "score_s": t2 - t1})  # fmt: skip
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\nstep  n  ddim  " + "  ".join(f"seed{s}" for s in args.seeds) + "  |diff|  sample_s  score_s")
    for step in args.checkpoints:
        for n in args.samples:
            for ddim in args.ddim_steps:
                r = [x for x in rows if x.get("step") == step and x.get("n") == n and x.get("ddim") == ddim]
                f = [x["fid_photos"] for x in r]
                cost = np.mean([x["sample_s"] for x in r]), np.mean([x["score_s"] for x in r])
                vals = "  ".join(f"{v:6.2f}" for v in f)
                spread = max(f) - min(f)
                print(f"{step:4d} {n:4d} {ddim:4d}  {vals}  {spread:6.2f}  {cost[0]:7.2f}  {cost[1]:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
