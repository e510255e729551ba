"""Training-step throughput of dit_core's DiT against diffusers' DiTTransformer2DModel, in one process.

One step = forward + MSE loss + backward + AdamW step, on random 32x32x4 latents (CPU fp32 by default).
Both models have the same depth, width, heads and patch size, get the same optimizer settings, and
are timed alternately (A, B, A, B, ...) so load from other processes hits both alike; the medians of
the per-step times give images/s and the ratio ours / diffusers.

    python benchmarks/model_throughput.py                       # DiT-S/2 and DiT-B/4, batch 8
    python benchmarks/model_throughput.py --models DiT-S/4 --rounds 9 --batch 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from dit_core.models import DiT, model_config


def build_ours(name: str, input_size: int) -> nn.Module:
    return DiT.from_config(model_config(name, input_size=input_size))


def build_diffusers(name: str, input_size: int) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    cfg = model_config(name, input_size=input_size)
    return DiTTransformer2DModel(
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        num_layers=cfg.depth,
        sample_size=input_size,
        patch_size=cfg.patch_size,
        num_embeds_ada_norm=cfg.num_classes,
        norm_type="ada_norm_zero",
    )


OPTIMIZERS = {"fused": dict(fused=True), "foreach": dict(foreach=True), "plain": dict(foreach=False)}


def make_step(
    model: nn.Module, call: Callable, batch: int, input_size: int, seed: int, optimizer: str = "fused"
) -> Callable[[], None]:
    """A closure running one optimizer step (AdamW, `OPTIMIZERS[optimizer]`) on fixed random data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, input_size, input_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    target = torch.randn(batch, 8, input_size, input_size, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **OPTIMIZERS[optimizer])
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (call(model, x, t, y) - target).square().mean()
        loss.backward()
        opt.step()

    return step


def ours_call(model, x, t, y):
    return model(x, t, y)


def diffusers_call(model, x, t, y):
    return model(x, timestep=t, class_labels=y).sample


def time_pair(
    steps: dict[str, Callable[[], None]], warmup: int, rounds: int, iters: int
) -> dict[str, list[float]]:
    """Alternate the contenders round by round; return seconds per step for every timed step."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for key in order:
            for _ in range(iters):
                t0 = time.perf_counter()
                steps[key]()
                times[key].append(time.perf_counter() - t0)
    return times


def run(
    name: str, batch: int, input_size: int, warmup: int, rounds: int, iters: int, optimizer: str = "fused"
) -> dict[str, float]:
    torch.manual_seed(0)
    ours = build_ours(name, input_size)
    peer = build_diffusers(name, input_size)
    steps = {
        "ditscale": make_step(ours, ours_call, batch, input_size, 1, optimizer),
        "diffusers": make_step(peer, diffusers_call, batch, input_size, 1, optimizer),
    }
    times = time_pair(steps, warmup, rounds, iters)
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    return {
        "ours_img_s": ips["ditscale"],
        "diffusers_img_s": ips["diffusers"],
        "ratio": ips["ditscale"] / ips["diffusers"],
        "ours_params": sum(p.numel() for p in ours.parameters()),
        "diffusers_params": sum(p.numel() for p in peer.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["DiT-S/2", "DiT-B/4"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=32, help="latent side (32 = 256 px images)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds (A,B / B,A ...)")
    ap.add_argument("--iters", type=int, default=2, help="timed steps per contender per round")
    ap.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="fused",
        help="AdamW implementation for both models (fused runs on CPU since torch 2.4)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers is not installed: pip install 'diffusers>=0.30'", file=sys.stderr)
        return 2
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32, batch {args.batch}, "
        f"latent {args.input_size}x{args.input_size}x4, AdamW({args.optimizer}), median of "
        f"{args.rounds * args.iters} steps"
    )
    print(f"{'model':10s} {'ditscale img/s':>15s} {'diffusers img/s':>16s} {'ratio':>7s}")
    for name in args.models:
        r = run(name, args.batch, args.input_size, args.warmup, args.rounds, args.iters, args.optimizer)
        print(
            f"{name:10s} {r['ours_img_s']:15.2f} {r['diffusers_img_s']:16.2f} {r['ratio']:6.2f}x", flush=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
