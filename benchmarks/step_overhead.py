"""Step cost of tiny DiTs on CPU: the trainer's step before and after the step-cost changes, in one process.

    python benchmarks/step_overhead.py                          # 4 photo-study shapes + demo S, XL
    python benchmarks/step_overhead.py --shapes d3w8 d7w24 --rounds 9 --grad-clip 1.0

Shapes: the photo study's tiny cells (grey 16 px photos, patch 2, batch 32, frequency_embedding_size
32, cosine lr, EMA 0.99): d3 w8 h2, d3 w16 h4, d6 w20 h5, d7 w24 h6; and the demo's S (d3 w48 h6)
and XL (d7 w144 h16) on 16 px digits at batch 16.

Paths, each a real `Trainer` calling `Trainer.train_step` (tracking off):
  old  Accelerate's backward / clip_grad_norm_ / optimizer step and zero_grad
       (`update_ops(..., direct=False)`), photo batches fetched one batch per call through
       ``__getitems__`` and re-stacked (the data path before, reproduced here by `OldDataStream`),
       and the hybrid loss's decoder NLL evaluated on every row and selected with `torch.where`
       (`old_vb_terms`; the trainer now evaluates it on CPU for the t = 0 rows only);
  new  the trainer as it is (direct calls on one process, photo batches rendered several at a time).
Both use fused AdamW and the foreach EMA (already the trainer's before these changes).
  compiled (``--compiled``) new with ``compile: true`` (`dit_core.fast_path`; its compile time is
       printed; a cold inductor cache costs 30-130 s per shape).

Rounds alternate old/new (old new / new old / ...) so machine load hits both alike. Printed per
shape: medians of steps/s, the ratio new/old (of the medians, and the median of the per-round
ratios), true training GFLOP/s, and the split of one step into parts (means over the timed steps
of a step written out part by part, the same calls as `Trainer.train_step`).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
import types
from collections import defaultdict

import torch

from dit_core.config import TrainConfig
from dit_core.diffusion.base import mean_flat
from dit_core.diffusion.gaussian import decoder_nll_bits, normal_kl
from dit_core.train import Trainer
from dit_core.trainer.data_stream import DataStream, _collate
from dit_core.trainer.update import update_ops

#: name -> (depth, width, heads, data, batch)
SHAPES = {
    "d3w8": (3, 8, 2, "photos", 32),
    "d3w16": (3, 16, 4, "photos", 32),
    "d6w20": (6, 20, 5, "photos", 32),
    "d7w24": (7, 24, 6, "photos", 32),
    "dS": (3, 12, 3, "photos", 32),  # the default demo's families (sweeps/configs/demo.yaml)
    "dB": (3, 20, 5, "photos", 32),
    "dL": (6, 28, 7, "photos", 32),
    "dXL": (7, 32, 8, "photos", 32),
    "S": (3, 48, 6, "digits", 16),
    "XL": (7, 144, 16, "digits", 16),
}
PARTS = ("data", "random+lr", "forward+loss", "backward", "clip", "optimizer", "zero_grad", "ema", "total")


class OldDataStream(DataStream):
    """The data path before: one ``__getitems__`` call per batch, its items re-stacked."""

    def _start_epoch(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        batches = self._local_batches(self.epoch, self.index)
        fetch = getattr(self.dataset, "__getitems__", None)
        self._iter = (_collate(fetch(idx) if fetch else [self.dataset[i] for i in idx]) for idx in batches)


def old_vb_terms(self, out, x0, x_t, t):
    """`GaussianDiffusion.vb_terms` before: the decoder NLL of every row, then `torch.where`."""
    true_mean, _, true_logvar = self.q_posterior_mean_variance(x0, x_t, t)
    p = self.p_mean_variance(out, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])) / math.log(2.0)
    return torch.where(t == 0, decoder_nll_bits(x0, p["mean"], p["log_variance"]), kl)


def shape_config(name: str, grad_clip: float, steps: int = 15_000) -> TrainConfig:
    depth, width, heads, data, batch = SHAPES[name]
    flat = {
        "model.name": None, "model.depth": depth, "model.hidden_size": width, "model.num_heads": heads,
        "model.patch_size": 2, "data.name": data, "data.image_size": 16,
        "budget.max_steps": steps, "budget.global_batch_size": batch, "optim.lr": 1e-3,
        "optim.grad_clip": grad_clip, "eval.val_every": 0, "checkpoint.every": 0,
        "tracking.enabled": False, "compile": False, "out": tempfile.mkdtemp(prefix="step-overhead-"),
    }  # fmt: skip
    if data == "photos":  # sweeps/configs/demo.yaml (the default demo)
        flat |= {
            "data.channels": 1, "model.frequency_embedding_size": 32, "optim.schedule": "cosine",
            "optim.min_lr_ratio": 0.1, "optim.warmup_frac": 0.05, "optim.warmup_steps": 10,
            "optim.ema_decay": 0.99, "log_every": 50,
        }  # fmt: skip
    else:  # sweeps/configs/digits.yaml
        flat |= {"optim.ema_decay": 0.9, "log_every": 10}
    return TrainConfig().replace(**flat)


def build(name: str, path: str, grad_clip: float) -> Trainer:
    cfg = shape_config(name, grad_clip)
    tr = Trainer(cfg.replace(compile=True) if path == "compiled" else cfg, resume="never")
    if path == "old":
        tr.update = update_ops(tr.acc, tr.optimizer, tr.model, direct=False)
        s = tr.stream
        tr.stream = OldDataStream(s.dataset, s.global_batch, seed=s.seed, rank=s.rank, world_size=1)
        tr.diffusion.vb_terms = types.MethodType(old_vb_terms, tr.diffusion)
    return tr


def parted_step(tr: Trainer, parts: dict[str, list[float]]) -> None:
    """`Trainer.train_step` (fp32, no scaler) written out with a clock between its parts."""
    c = time.perf_counter
    t0 = c()
    x, y = tr.stream.next_batch()
    t1 = c()
    u, noise, drop = tr.random.draw(tr.step, x)
    t = tr.diffusion.timesteps_from_uniform(u)
    for group in tr.optimizer.param_groups:
        group["lr"] = tr.lr(tr.step)
    kwargs = {"y": y} if drop is None else {"y": y, "force_drop_ids": drop}
    t2 = c()
    loss = tr.diffusion.training_losses(tr.train_model, x, t, kwargs, noise=noise)["loss"].mean()
    t3 = c()
    ops = tr.update
    ops.backward(loss)
    t4 = c()
    if tr.cfg.optim.grad_clip > 0:
        ops.clip_grad_norm_(tr.cfg.optim.grad_clip)
    t5 = c()
    ops.optimizer.step()
    t6 = c()
    ops.optimizer.zero_grad(set_to_none=True)
    t7 = c()
    tr.ema.update()
    t8 = c()
    tr.pending.append(loss.detach())
    tr.step += 1
    tr.images_seen += tr.batch
    for key, a, b in zip(PARTS, (t0, t1, t2, t3, t4, t5, t6, t7, t0), (t1, t2, t3, t4, t5, t6, t7, t8, t8)):
        parts[key].append(b - a)


def measure(name: str, rounds: int, round_s: float, grad_clip: float, compiled: bool = False) -> dict:
    paths = ("old", "new", "compiled") if compiled else ("old", "new")
    trainers = {p: build(name, p, grad_clip) for p in paths}
    compile_s = None
    for path, tr in trainers.items():  # warm-up (and the compile)
        t0 = time.perf_counter()
        tr.train_step()
        if path == "compiled":
            compile_s = time.perf_counter() - t0
            print(f"  [{name}] compile + first step {compile_s:.1f} s", flush=True)
        for _ in range(2):
            tr.train_step()
    t0 = time.perf_counter()
    trainers["new"].train_step()
    iters = max(3, int(round_s / max(time.perf_counter() - t0, 1e-4)))
    rate: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(rounds):
        for path in paths if r % 2 == 0 else paths[::-1]:
            tr = trainers[path]
            t0 = time.perf_counter()
            for _ in range(iters):
                tr.train_step()
            rate[path].append(iters / (time.perf_counter() - t0))
            tr.pending.clear()
    parts: dict[str, dict[str, list[float]]] = {"old": defaultdict(list), "new": defaultdict(list)}
    for r in range(max(2, rounds // 2)):
        for path in ("old", "new") if r % 2 == 0 else ("new", "old"):
            for _ in range(iters):
                parted_step(trainers[path], parts[path])
            trainers[path].pending.clear()
    tr = trainers["new"]
    flops = tr.batch * tr.fpi
    old, new = statistics.median(rate["old"]), statistics.median(rate["new"])
    paired = statistics.median(n / o for n, o in zip(rate["new"], rate["old"]))
    return {
        "shape": name, "params": sum(p.numel() for p in tr.model.parameters()), "batch": tr.batch,
        "iters": iters, "old": old, "new": new, "ratio": new / old, "paired": paired,
        "gflops_old": old * flops / 1e9, "gflops_new": new * flops / 1e9,
        "parts": {p: {k: statistics.fmean(v) for k, v in d.items()} for p, d in parts.items()},
        "compiled": statistics.median(rate["compiled"]) / old if compiled else None, "compile_s": compile_s,
    }  # fmt: skip


def format_row(m: dict) -> str:
    row = (
        f"{m['shape']:6s} {m['params']:>9,d} {m['batch']:>5d} {m['old']:9.1f} {m['new']:9.1f} "
        f"{m['ratio']:6.3f}x {m['paired']:6.3f}x {m['gflops_old']:8.2f} {m['gflops_new']:8.2f}"
    )
    return row + (f"   compiled/old {m['compiled']:.3f}x" if m["compiled"] else "")


HEAD = (
    f"{'shape':6s} {'params':>9s} {'batch':>5s} {'old st/s':>9s} {'new st/s':>9s} {'ratio':>7s} "
    f"{'paired':>7s} {'GF/s old':>8s} {'GF/s new':>8s}"
)


def format_parts(m: dict) -> str:
    lines = [f"  {m['shape']} step split, us (share of the step), old -> new:"]
    old, new = m["parts"]["old"], m["parts"]["new"]
    for k in PARTS:
        lines.append(
            f"    {k:13s} {1e6 * old[k]:9.0f} ({old[k] / old['total']:5.1%}) -> "
            f"{1e6 * new[k]:9.0f} ({new[k] / new['total']:5.1%})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds per shape; medians are printed")
    ap.add_argument("--round-s", type=float, default=0.6, help="seconds per path per round (sets the steps)")
    ap.add_argument("--grad-clip", type=float, default=0.0, help="the study's default is 0 (off)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compiled", action="store_true", help="also time compile: true (slow to start)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), grad_clip {args.grad_clip}; "
        f"medians of {args.rounds} alternating rounds of ~{args.round_s} s per path"
    )
    print(HEAD)
    rows = []
    for name in args.shapes:
        rows.append(measure(name, args.rounds, args.round_s, args.grad_clip, args.compiled))
        print(format_row(rows[-1]), flush=True)
    print("\n" + HEAD)
    print("\n".join(format_row(m) for m in rows))
    print("\n".join(format_parts(m) for m in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
