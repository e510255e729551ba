"""Does a cooldown ladder give one seed's fit more to stand on, at the demo's cost?

    python benchmarks/cooldown_ladder.py --out /tmp/ladder --seed 0
    python analysis/fit_scaling.py --tracking-uri sqlite:////tmp/ladder/mlflow.db \\
        --experiment ladder --holdout largest

The demo trains each (family, budget) cell from step 0 with its own cosine schedule. A ladder (Hagele et
al. 2024, arXiv:2405.18392) trains one constant-lr trunk per family and forks a linear cooldown (the
last ``--cooldown-frac`` of the steps, to 0) from the trunk's checkpoint at each budget: every budget's
point costs its cooldown only, so one seed gets more budgets for about the demo's training FLOPs.

For each family of the demo's grid (`sweeps/configs/demo.yaml`: shapes, data, batch, validation on
2,048 held-out crops; no FID) and each ``--budgets`` cell with at least ``--min-steps`` steps: the
trunk is trained (no MLflow run) to the fork step ``T - ceil(frac x T)`` of each budget's ``T`` steps
in turn, and each fork (`dit_core.trainer.resume`: a new MLflow run, tagged like a sweep cell of sweep
``ladder``) trains the cooldown to step ``T``, where it logs its validation loss. One family per
process, ``--parallel`` at a time, one torch thread each. Prints a line per cell, the table of
final validation losses, and the ladder's training FLOPs against the demo's grid's (the peer: its cells
trained from step 0) as a ratio; writes ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sweeps.grid import load_spec

BUDGETS = "3e10,6e10,1.2e11,2.5e11,5e11,1e12"


def ladder_cells(budgets: list[float], min_steps: int):
    """``{family: [cell, ...]}``: the demo's cells at ``budgets`` with at least ``min_steps`` steps."""
    from sweeps.grid import expand

    spec = load_spec().replace(budgets=budgets, name="ladder", experiment="ladder")
    out: dict[str, list] = {}
    for cell in sorted(expand(spec), key=lambda c: c.budget):
        if cell.steps >= min_steps:
            out.setdefault(cell.model.name, []).append(cell)
    return spec, out


def training_flops(cells: dict[str, list], cooldown_frac: float) -> tuple[float, float]:
    """(the ladder's training FLOPs: each trunk to its last fork plus every cooldown, the same cells
    trained from step 0 as the grid does)."""
    ladder = grid = 0.0
    for chain in cells.values():
        cool = [math.ceil(cooldown_frac * c.steps) for c in chain]
        steps = chain[-1].steps - cool[-1] + sum(cool)
        ladder += steps * chain[0].batch_size * chain[0].train_flops_per_image
        grid += sum(c.train_flops for c in chain)
    return ladder, grid


def run_family(family: str, args: argparse.Namespace) -> list[dict]:
    """Train ``family``'s trunk and forks; one dict per fork."""
    import torch

    from dit_core.train import train
    from sweeps.task import cell_overrides

    torch.set_num_threads(1)
    spec, cells = ladder_cells(args.budgets, args.min_steps)
    root, uri = Path(args.out), f"sqlite:///{Path(args.out).resolve()}/mlflow.db"
    lr = {"optim.lr": args.lr, "optim.lr_flops_ref": 0.0, "optim.warmup_frac": 0.0,
          "optim.warmup_steps": args.warmup, "optim.min_lr_ratio": 0.0, "seed": args.seed}  # fmt: skip
    rows = []
    for cell in cells[family]:
        fork = cell.steps - math.ceil(args.cooldown_frac * cell.steps)
        base = cell_overrides(spec, cell, root / "cells" / cell.cell_id, uri)
        flops = fork * cell.batch_size * cell.train_flops_per_image
        trunk = {**base, **lr, "optim.schedule": "constant", "out": str(root / "trunks" / family),
                 "budget.max_steps": fork, "budget.train_flops": flops,
                 "tracking.enabled": False, "eval.val_every": 0, "eval.eval_every": 0,
                 "checkpoint.every": 0, "checkpoint.keep_last": 0}  # fmt: skip
        t0 = time.monotonic()
        train(_config(trunk), progress_bar=False)
        t1 = time.monotonic()
        branch = {**base, **lr, "optim.schedule": "constant_cooldown",
                  "optim.cooldown_frac": args.cooldown_frac, "eval.val_every": cell.steps,
                  "eval.eval_every": 0, "checkpoint.every": 0, "checkpoint.keep_last": 1}  # fmt: skip
        ckpt = root / "trunks" / family / "checkpoints" / f"step_{fork:07d}.pt"
        res = train(_config(branch), resume=str(ckpt), progress_bar=False)
        row = {"cell": cell.cell_id, "family": family, "budget": cell.budget, "steps": cell.steps,
               "fork_step": fork, "val_loss": res.val_loss, "trunk_s": t1 - t0,
               "cooldown_s": time.monotonic() - t1}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _config(flat: dict):
    from dit_core.config import TrainConfig

    return TrainConfig().replace(**flat)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a new folder for the trunks, forks and mlflow.db")
    p.add_argument("--budgets", default=BUDGETS, help=f"training FLOPs per fork (default {BUDGETS})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lr",
        type=float,
        default=1e-2,
        help="the constant peak of every trunk (default: about the demo's lr rule at 1e12)",
    )
    p.add_argument("--warmup", type=int, default=20, help="warmup steps of every trunk")
    p.add_argument("--cooldown-frac", type=float, default=0.2)
    p.add_argument("--min-steps", type=int, default=50)
    p.add_argument("--parallel", type=int, default=2)
    args = p.parse_args(argv)
    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        p.error(f"--out {args.out} is not empty; give a new folder (this script does not resume a ladder)")
    args.budgets = [float(b) for b in args.budgets.split(",")]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _, cells = ladder_cells(args.budgets, args.min_steps)
    _, demo = ladder_cells(load_spec().budgets, args.min_steps)  # the peer: the demo's grid
    ladder_flops, _ = training_flops(cells, args.cooldown_frac)
    demo_flops = training_flops(demo, args.cooldown_frac)[1]
    n, n_demo = (sum(map(len, c.values())) for c in (cells, demo))
    from mlflow import MlflowClient

    Path(args.out).mkdir(parents=True, exist_ok=True)  # the store, made once: not by two processes at once
    client = MlflowClient(f"sqlite:///{Path(args.out).resolve()}/mlflow.db")
    if client.get_experiment_by_name("ladder") is None:
        client.create_experiment("ladder")
    t0 = time.monotonic()
    with ProcessPoolExecutor(args.parallel) as pool:
        rows = [r for rs in pool.map(run_family, cells, [args] * len(cells)) for r in rs]
    wall = time.monotonic() - t0
    flops = {"ladder": ladder_flops, "demo_grid": demo_flops}
    Path(args.out, "results.json").write_text(
        json.dumps({"args": vars(args), "wall_s": wall, "train_flops": flops, "rows": rows})
    )
    budgets = sorted({r["budget"] for r in rows})
    print(f"\nval/loss, seed {args.seed} ({wall:.0f} s wall, {args.parallel} processes)")
    print("budget   " + "".join(f"{f:>9}" for f in cells))
    for b in budgets:
        got = {r["family"]: r["val_loss"] for r in rows if r["budget"] == b}
        print(f"{b:<9.3g}" + "".join(f"{got[f]:9.4f}" if f in got else f"{'':>9}" for f in cells))
    print(f"training: ladder {ladder_flops:.3g} FLOPs for {n} points; the demo's grid {demo_flops:.3g} for "
          f"{n_demo}: {ladder_flops / demo_flops:.2f}x the FLOPs, {n / n_demo:.2f}x the points")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
