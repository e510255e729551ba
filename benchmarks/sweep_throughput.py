"""Where a demo sweep's wall time goes: a fixed mini-sweep through the real launcher, repeated.

    python benchmarks/sweep_throughput.py                      # S,XL x 1.5e11,4e11, --parallel 2, 3 repeats
    python benchmarks/sweep_throughput.py --grid S,B,L,XL --budgets 4e11 --repeats 5 --json out.json
    python benchmarks/sweep_throughput.py --paths warm,plain   # warm workers vs a python per cell

Each repeat launches a bundled sweep (``--config``; default ``digits``, the demo before issue 11 and the
one the figures in docs/training.md were measured on: 16 px digits, patch 2, batch 16,
final validation and 200-sample evaluation) restricted to ``--grid`` x ``--budgets`` with
`sweeps.runner.launch` on the local executor (``--parallel`` slots, one torch thread per slot on a
machine with as many cores; ``--paths``: warm workers, `sweeps.warm`, and/or a python per cell,
alternated within each repeat), in a temporary folder with its own sqlite MLflow store (created before
the clock starts: a store's tables are made once, not per sweep). From the cells' MLflow runs
(`dit_core.trainer.loop.FIXED_COST_METRICS`) and the launcher's `LaunchResult.timings` it reports:

- train share: seconds in training steps (``perf/train_s``) summed over cells / (wall x slots);
- per model, true training FLOP/s (``compute/train_flops`` / ``perf/train_s``) and its fraction of an
  fp32 GEMM roof measured in this process at the cells' thread count (cores / --parallel: 1 on 2
  cores) right after the sweep: ``(B*T) x D x 4D``
  (the model's MLP GEMM) and 512^3;
- per cell, the fixed cost: start-up (process start until the trainer's run begins: interpreter,
  imports, data, model), MLflow (run start, params, final flush), validation, evaluation, and
  "other" = the launcher's submit-to-done seconds minus all of the above and training (job
  submission, the submitit wrapper, checkpoint, process exit, the launcher's 50 ms poll);
- the busy slots (`LaunchResult.busy_slots`) and the total wall time.

Medians over ``--repeats`` are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_core.tracking import GRID_CELL_TAG, IMAGES_SEEN, PERF_PREFIX, SWEEP_TAG, TRAIN_FLOPS  # noqa: E402
from sweeps.grid import load_spec, parse_budget  # noqa: E402
from sweeps.runner import launch  # noqa: E402
from sweeps.state import ensure_experiment  # noqa: E402

PHASES = ("startup_s", "mlflow_s", "val_s", "eval_s")
CELL_KEYS = (*PHASES, "other_s", "train_s", "wall_s")


def gemm_gflops(m: int, k: int, n: int, min_s: float = 0.3) -> float:
    """fp32 GFLOP/s of ``(m x k) @ (k x n)`` in this process (best of repeated timings)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best, spent = float("inf"), 0.0
    while spent < min_s:
        t0 = time.perf_counter()
        torch.mm(a, b)
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return 2 * m * k * n / best / 1e9


def run_once(args: argparse.Namespace, i: int, folder: Path, warm: bool = True) -> dict:
    """One launch of the mini-sweep in ``folder`` (``warm``: cells forked from a warm worker, else a
    fresh python per cell); returns its figures."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec = load_spec(args.config).replace(
        name=f"throughput{i}",
        experiment="sweep-throughput",
        tracking_uri=uri,
        output_dir=str(folder / "runs"),
        families=args.grid,
        budgets=args.budgets,
        executor={
            "name": "local",
            "local_parallelism": args.parallel,
            "max_retries": 0,
            "local_warm": warm,
        },  # fmt: skip
    )
    ensure_experiment(uri, spec.experiment)  # the store's tables, once (not part of a sweep's cost)
    t0 = time.monotonic()
    res = launch(spec, poll_s=1.0)
    wall = time.monotonic() - t0
    if res.errors:
        raise RuntimeError(f"cells failed: {res.errors}")

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(spec.experiment).experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.{SWEEP_TAG} = '{spec.name}'")
    cells, per_model = {}, {}
    for r in runs:
        cid, m, p = r.data.tags[GRID_CELL_TAG], r.data.metrics, r.data.params
        start, end = res.timings[cid]
        c = {k: m.get(PERF_PREFIX + k, float("nan")) for k in (*PHASES, "train_s")}
        c["wall_s"] = end - start
        c["other_s"] = c["wall_s"] - sum(c[k] for k in (*PHASES, "train_s"))
        c["steps"] = int(m[IMAGES_SEEN]) // int(p["budget.global_batch_size"])
        cells[cid] = c
        model = cid.split("-")[0]
        fl = per_model.setdefault(model, {"flops": 0.0, "train_s": 0.0, "width": int(p["model.hidden_size"])})
        fl["flops"] += m[TRAIN_FLOPS]
        fl["train_s"] += c["train_s"]
        fl["tokens"] = (int(p["model.input_size"]) // int(p["model.patch_size"])) ** 2
        fl["batch"] = int(p["budget.global_batch_size"])

    from sweeps.runner import threads_per_process

    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_process(spec.executor, "local"))  # the cells' own thread count
    roof512 = gemm_gflops(512, 512, 512)
    models = {}
    for name, fl in per_model.items():
        bt, d = fl["batch"] * fl["tokens"], fl["width"]
        rate = fl["flops"] / fl["train_s"] / 1e9
        mlp = gemm_gflops(bt, d, 4 * d)
        models[name] = {"gflops": rate, "mlp_roof": mlp, "frac_mlp": rate / mlp, "frac_512": rate / roof512}
    torch.set_num_threads(threads)
    train = sum(c["train_s"] for c in cells.values())
    return {
        "wall_s": wall,
        "train_share": train / (wall * args.parallel),
        "busy_slots": res.busy_slots(),
        "roof512": roof512,
        "models": models,
        "cells": cells,
        "fixed_per_cell": {k: statistics.mean(c[k] for c in cells.values()) for k in CELL_KEYS},
    }


def median(rows: list[dict], *path: str) -> float:
    vals = []
    for r in rows:
        for k in path:
            r = r[k]
        vals.append(r)
    return statistics.median(vals)


def report(rows: list[dict], parallel: int) -> str:
    first = rows[0]
    out = [f"medians of {len(rows)} repeat(s), --parallel {parallel}"]
    out.append(
        f"wall {median(rows, 'wall_s'):.1f} s, train share of wall x {parallel} slots "
        f"{median(rows, 'train_share'):.0%}, busy slots {median(rows, 'busy_slots'):.2f}, "
        f"512^3 roof {median(rows, 'roof512'):.0f} GFLOP/s (the cells' threads)"
    )
    out.append("model | train GFLOP/s | MLP GEMM roof | of MLP roof | of 512^3 roof")
    for name in first["models"]:
        g = [median(rows, "models", name, k) for k in ("gflops", "mlp_roof", "frac_mlp", "frac_512")]
        out.append(f"{name} | {g[0]:.1f} | {g[1]:.0f} | {g[2]:.0%} | {g[3]:.0%}")
    out.append("per cell (mean over cells): " + ", ".join(
        f"{k[:-2]} {median(rows, 'fixed_per_cell', k):.2f} s"
        for k in CELL_KEYS
    ))  # fmt: skip
    fixed = [sum(r["fixed_per_cell"][k] for k in (*PHASES, "other_s")) for r in rows]
    out.append(f"fixed cost per cell (wall - training): {statistics.median(fixed):.2f} s")
    out.append("cell | steps | " + " | ".join(k[:-2] for k in CELL_KEYS))
    for cid in sorted(first["cells"]):
        vals = [median(rows, "cells", cid, k) for k in CELL_KEYS]
        out.append(f"{cid} | {first['cells'][cid]['steps']} | " + " | ".join(f"{v:.2f}" for v in vals))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", default="digits", help="bundled sweep or YAML (default digits: the figures in docs; demo)"
    )
    p.add_argument("--grid", type=lambda s: s.split(","), default=["S", "XL"], help="demo families")
    p.add_argument(
        "--budgets", type=lambda s: [parse_budget(x) for x in s.split(",")], default=[1.5e11, 4e11]
    )
    p.add_argument("--parallel", type=int, default=2, help="local executor slots")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--paths", type=lambda s: s.split(","), default=["warm"],
        help="local executor paths, alternated per repeat: warm (sweeps.warm), plain (a python per cell)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, help="also write every repeat's figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    bad = sorted(set(args.paths) - {"warm", "plain"})
    if bad:
        p.error(f"--paths: unknown {bad}; choose warm, plain")
    rows: dict[str, list[dict]] = {path: [] for path in args.paths}
    for i in range(args.repeats):
        for path in args.paths:
            with tempfile.TemporaryDirectory(prefix="sweep_throughput_") as tmp:
                rows[path].append(run_once(args, i, Path(tmp), warm=path == "warm"))
            r = rows[path][-1]
            print(f"repeat {i + 1} ({path}): wall {r['wall_s']:.1f} s, train share {r['train_share']:.0%}, "
                  f"busy slots {r['busy_slots']:.2f}", flush=True)  # fmt: skip
    for path, path_rows in rows.items():
        print(f"== {path} ==")
        print(report(path_rows, args.parallel))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
