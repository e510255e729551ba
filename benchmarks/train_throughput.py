"""Images/s of the full training step against the bare model step, to show the loop's overhead.

    python benchmarks/train_throughput.py                      # DiT-S/2, batch 8, 32x32x4 latents
    python benchmarks/train_throughput.py --model DiT-B/2 --batch 16 --rounds 5 --steps 10

full: `dit_core.train`'s loop (`Trainer.run_loop`): data stream from an in-memory dataset of random
    latents, per-step random draws, forward, backward, AdamW, EMA, lr schedule, preemption check,
    and MLflow logging every ``--log-every`` steps (to a temporary sqlite store).
bare: the same model, diffusion loss and AdamW on one pre-made batch (forward, backward, step).

Rounds alternate between the two; the medians of the per-round images/s are printed with the
overhead ``1 - full / bare`` (target: under 10 % at DiT-S/2 on CPU).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset


class RandomLatents(Dataset):
    """``n`` random latents ``(C, S, S)`` with labels, all in memory."""

    def __init__(self, n: int, channels: int, size: int, num_classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, channels, size, size, generator=g)
        self.y = torch.randint(0, num_classes, (n,), generator=g)
        self.resolution, self.channels, self.num_classes = size, channels, num_classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def bare_step_fn(model, diffusion, batch: int, channels: int, size: int, lr: float):
    """A closure running one bare step: loss, backward, AdamW step (same settings as the trainer), on
    the model's device."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)
    dev = next(model.parameters()).device
    x = torch.randn(batch, channels, size, size, device=dev)
    y = torch.randint(0, model.num_classes, (batch,), device=dev)
    t = torch.randint(0, diffusion.num_timesteps, (batch,), device=dev)
    noise = torch.randn_like(x)

    def step() -> None:
        loss = diffusion.training_losses(model, x, t, {"y": y}, noise=noise)["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="latent side (default 32, i.e. 256 px images)")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from accelerate import Accelerator

    from dit_core.config import BudgetConfig, ModelConfig, TrackingConfig, TrainConfig
    from dit_core.models import DiT
    from dit_core.tracking import STATUS_FINISHED
    from dit_core.train import Trainer
    from dit_core.trainer.progress import Progress
    from dit_core.trainer.signals import PreemptionGuard

    tmp = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    from mlflow.tracking import MlflowClient

    # artifacts beside the temporary store, not in ./mlruns of wherever the benchmark is run from
    MlflowClient(f"sqlite:///{tmp}/mlflow.db").create_experiment("throughput", str(tmp / "artifacts"))
    data = RandomLatents(max(64, 4 * args.batch), args.channels, args.size, 1000)
    cfg = TrainConfig(
        model=ModelConfig(name=args.model),
        budget=BudgetConfig(max_steps=10**9, global_batch_size=args.batch),
        tracking=TrackingConfig(uri=f"sqlite:///{tmp}/mlflow.db", experiment="throughput"),
        out=str(tmp / "run"),
        log_every=args.log_every,
        compile=False,  # the bare path is eager: "auto" compiled this long a run (session 60)
    )
    cfg.checkpoint.every = 0
    tr = Trainer(
        cfg, accelerator=Accelerator(cpu=not torch.cuda.is_available()), resume="never", train_set=data
    )
    tr.start_tracking()
    torch.manual_seed(0)
    bare_model = DiT.from_config(tr.dit_cfg).to(tr.device).train()
    bare = bare_step_fn(bare_model, tr.diffusion, args.batch, args.channels, args.size, cfg.optim.lr)
    progress = Progress(tr.total, 0, enabled=False)

    print(
        f"{args.model} on {args.channels}x{args.size}x{args.size}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, device {tr.device}; {args.rounds} rounds of {args.steps} steps"
    )
    with PreemptionGuard() as guard:
        tr.run_loop(guard, progress, stop_at_step=2)  # warm-up
        for _ in range(2):
            bare()
        full_ips, bare_ips = [], []
        sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)  # queued work: billed
        for r in range(args.rounds):
            sync()
            t0 = time.perf_counter()
            tr.run_loop(guard, progress, stop_at_step=tr.step + args.steps)
            sync()
            full_ips.append(args.steps * args.batch / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for _ in range(args.steps):
                bare()
            sync()
            bare_ips.append(args.steps * args.batch / (time.perf_counter() - t0))
            print(f"round {r}: full {full_ips[-1]:.2f} img/s, bare {bare_ips[-1]:.2f} img/s")
    parts = loop_parts_ms(tr, args.steps)
    tr.tracker.finish(STATUS_FINISHED)
    f, b = statistics.median(full_ips), statistics.median(bare_ips)
    print(
        f"median: full training step {f:.2f} img/s, bare model step {b:.2f} img/s, overhead {1 - f / b:+.1%}"
    )
    step_ms = 1000 * args.batch / b
    print(f"loop parts per step (bare step {step_ms:.1f} ms; less sensitive to machine load than the ratio):")
    for name, ms in parts.items():
        print(f"  {name:<28s} {ms:8.3f} ms  ({ms / step_ms:.2%} of the bare step)")
    return 0


def loop_parts_ms(tr, n: int) -> dict[str, float]:
    """Median milliseconds per step of what the full step adds to the bare one, each timed alone."""
    from dit_core.tracking import IMAGES_SEEN, LR, TRAIN_FLOPS, TRAIN_LOSS

    x, _ = tr.stream.next_batch()

    def timed(fn, reps: int) -> float:
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            out.append(1000 * (time.perf_counter() - t0))
        return statistics.median(out)

    metrics = {TRAIN_LOSS: 1.0, LR: 1e-4, TRAIN_FLOPS: 1.0, IMAGES_SEEN: 1.0}
    return {
        "data batch": timed(tr.stream.next_batch, n),
        "step random draws": timed(lambda: tr.random.draw(tr.step, x), n),
        "EMA update": timed(tr.ema.update, n),
        "lr schedule": timed(lambda: tr.lr(tr.step), n),
        f"MLflow log / {tr.cfg.log_every} steps": timed(lambda: tr.tracker.log_metrics(metrics, tr.step), 3)
        / tr.cfg.log_every,
    }


if __name__ == "__main__":
    sys.exit(main())
