"""How noisy are the demo's validation loss and FID, next to the differences a sweep measures?

    python benchmarks/eval_noise.py                                   # S, XL x 1.5e11, 4e11
    python benchmarks/eval_noise.py --cells S:4e11,B:4e11 --fid-n 50,100,200 --fid-seeds 4

Trains each cell of the digits demo (``sweeps/configs/digits.yaml``, the default before issue 11:
16 px digits, patch 2, batch 16) in this process with the sweep's own settings (tracking, validation
and evaluation off), then:

- validation loss (``val/loss``: common random numbers, a fixed timestep and noise per held-out
  image): the per-image losses on the whole "val" split; the standard error of a cell's loss
  from its first n images, sd / sqrt(n), and of the *difference* between two cells (same images,
  same draws: sd of the per-image differences / sqrt(n)), next to that difference;
- FID (the demo's ``eval/fid_digits``, DDIM with the sweep's steps): each cell's EMA model sampled
  with ``--fid-seeds`` seeds at each ``--fid-n``; the seed-to-seed standard deviation next to the
  differences between cells' mean FIDs, and the seconds per evaluation.

Prints one table per quantity (``--json`` keeps the figures). One torch thread by default.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_core.diffusion import validation_losses  # noqa: E402
from dit_core.evaluate import evaluate_model  # noqa: E402
from dit_core.train import TrainConfig, Trainer  # noqa: E402
from dit_core.trainer.evaluation import sampling_settings  # noqa: E402
from sweeps.grid import expand, load_spec, parse_budget  # noqa: E402
from sweeps.task import cell_overrides  # noqa: E402


def train_cell(spec, cell, out: Path) -> Trainer:
    """Train ``cell`` as the sweep would (no tracking, no validation or evaluation) and return it."""
    o = cell_overrides(spec, cell, out / cell.cell_id, tracking_uri="")
    o.update({"tracking.enabled": False, "eval.val_every": 0, "eval.eval_every": 0})
    cfg = TrainConfig().replace(**o)
    trainer = Trainer(cfg, resume="never")
    trainer.run(progress_bar=False)
    return trainer


def val_losses(trainer: Trainer) -> torch.Tensor:
    """Per-image validation losses ``(n_val,)`` of the trained (not EMA) model, as ``val/loss``."""
    x, y, lo = trainer.validator.data()
    e = trainer.cfg.eval
    return validation_losses(
        trainer.diffusion, trainer.model, x, y, seed=e.val_seed, index_offset=lo, batch_size=e.batch_size
    )


def fid(trainer: Trainer, n: int, seed: int) -> tuple[float, float]:
    """(``fid_digits`` of ``n`` EMA samples drawn with ``seed``, seconds)."""
    cfg, dit = trainer.cfg, trainer.dit_cfg
    t0 = time.perf_counter()
    m = evaluate_model(
        trainer.ema.model, trainer.diffusion, replace(sampling_settings(cfg), seed=seed), num_samples=n,
        batch_size=cfg.eval.batch_size, num_classes=dit.num_classes, image_size=dit.input_size,
        channels=dit.in_channels, reference="digits", metrics=("fid_digits",),
    )  # fmt: skip
    return m["fid_digits"], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="S:1.5e11,S:4e11,XL:1.5e11,XL:4e11", help="FAMILY:BUDGET,...")
    p.add_argument("--val-n", default="32,64,128", help="validation sizes (plus the whole split)")
    p.add_argument("--fid-n", default="50,100,200")
    p.add_argument("--fid-seeds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/tmp/eval_noise"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    wanted = [(f, parse_budget(b)) for f, b in (c.split(":") for c in args.cells.split(","))]
    spec = load_spec(ROOT / "sweeps" / "configs" / "digits.yaml").replace(
        families=sorted({f for f, _ in wanted}), budgets=sorted({b for _, b in wanted})
    )
    cells = {c.cell_id: c for c in expand(spec) if (c.model.name, c.budget) in wanted}
    trainers, losses, fids, fid_s = {}, {}, {}, {}
    for cid, cell in cells.items():
        t0 = time.perf_counter()
        trainers[cid] = train_cell(spec, cell, args.out)
        losses[cid] = val_losses(trainers[cid])
        print(f"{cid}: trained {cell.steps} steps in {time.perf_counter() - t0:.1f} s, "
              f"val/loss {losses[cid].mean():.4f} over {len(losses[cid])} images", flush=True)  # fmt: skip
    n_val = len(next(iter(losses.values())))
    sizes = [int(n) for n in args.val_n.split(",") if int(n) < n_val] + [n_val]
    out: dict = {"val": {}, "fid": {}}
    print(f"\nval/loss standard errors (sd/sqrt(n)) at n = {sizes}")
    print("cell | loss | " + " | ".join(f"SE n={n}" for n in sizes))
    for cid, v in losses.items():
        se = [float(v[:n].std() / n**0.5) for n in sizes]
        out["val"][cid] = {"loss": float(v.mean()), "se": dict(zip(sizes, se))}
        print(f"{cid} | {v.mean():.4f} | " + " | ".join(f"{s:.4f}" for s in se))
    print("pair | difference (all images) | " + " | ".join(f"SE of diff n={n}" for n in sizes))
    for a, b in itertools.combinations(losses, 2):
        d = losses[a] - losses[b]
        se = [float(d[:n].std() / n**0.5) for n in sizes]
        out["val"][f"{a} - {b}"] = {"diff": float(d.mean()), "se": dict(zip(sizes, se))}
        print(f"{a} - {b} | {d.mean():+.4f} | " + " | ".join(f"{s:.4f}" for s in se))

    fid_sizes = [int(n) for n in args.fid_n.split(",")]
    for cid, tr in trainers.items():
        for n in fid_sizes:
            vals = [fid(tr, n, seed) for seed in range(args.fid_seeds)]
            fids[(cid, n)] = [v for v, _ in vals]
            fid_s[(cid, n)] = statistics.median(s for _, s in vals)
            print(f"{cid} n={n}: fid_digits {[round(v, 3) for v, _ in vals]} "
                  f"({fid_s[(cid, n)]:.1f} s each)", flush=True)  # fmt: skip
    print(f"\nfid_digits over {args.fid_seeds} sampling seeds: mean, seed-to-seed sd, s per evaluation")
    print("cell | " + " | ".join(f"n={n}" for n in fid_sizes))
    for cid in trainers:
        row = []
        for n in fid_sizes:
            v = fids[(cid, n)]
            out["fid"].setdefault(cid, {})[n] = {"mean": statistics.mean(v), "sd": statistics.stdev(v),
                                                 "s": fid_s[(cid, n)], "values": v}  # fmt: skip
            row.append(f"{statistics.mean(v):.3f} +- {statistics.stdev(v):.3f} ({fid_s[(cid, n)]:.1f} s)")
        print(f"{cid} | " + " | ".join(row))
    print("pair | " + " | ".join(f"mean difference n={n}" for n in fid_sizes))
    for a, b in itertools.combinations(trainers, 2):
        diffs = [statistics.mean(fids[(a, n)]) - statistics.mean(fids[(b, n)]) for n in fid_sizes]
        print(f"{a} - {b} | " + " | ".join(f"{d:+.3f}" for d in diffs))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
