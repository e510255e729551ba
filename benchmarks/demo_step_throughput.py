"""Training-step speed at the demo's shapes on CPU: the plain path against the fast path, in one process.

One step = the trainer's step without the data loader: q_sample, DiT forward, the DiT loss (MSE + vb,
learned sigma), backward, fused AdamW. Shapes: 16 px, 1 channel, patch 2 (64 tokens), 10 classes,
batch 16; models tiny (d2 w32 h2), S (d3 w48 h6), B (d3 w96 h12), L (d6 w128 h16), XL (d7 w144 h16).

Paths (`--paths`):
  plain    eager (the model as written);
  compiled `torch.compile` of the model, as `dit_core.fast_path.compile_for_training` does on CPU.

Per thread count, the paths and two fp32 GEMMs (the roof: (B*T) x D x 4D like the model's MLP, and
512^3) are timed in alternating rounds (A B C / C B A ...) so machine load hits all alike; medians of
the rounds are printed: images/s, true training GFLOP/s (`dit_core.spec.train_flops_per_image`), the
fraction of each GEMM roof, and the ratio to plain. The compiled path's first step (compile time,
with whatever inductor cache `TORCHINDUCTOR_CACHE_DIR` holds) is printed as it happens.

    python benchmarks/demo_step_throughput.py                          # all shapes, 1 and 2 threads
    python benchmarks/demo_step_throughput.py --shapes S XL --threads 1 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dit_core.diffusion import DiffusionConfig, create_diffusion
from dit_core.models import DiT
from dit_core.spec import model_config, train_flops_per_image

#: name -> (depth, hidden_size, num_heads) at the demo's data shape.
SHAPES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 32, 2),
    "S": (3, 48, 6),
    "B": (3, 96, 12),
    "L": (6, 128, 16),
    "XL": (7, 144, 16),
}
PATHS = ("plain", "compiled")


def demo_config(shape: str):
    depth, width, heads = SHAPES[shape]
    return model_config(
        depth=depth, hidden_size=width, num_heads=heads, patch_size=2, input_size=16, in_channels=1,
        num_classes=10,
    )  # fmt: skip


def make_step(path: str, cfg, batch: int, seed: int = 0) -> Callable[[], float]:
    """A closure running one training step on fixed random data via `path`; returns the loss."""
    torch.manual_seed(seed)
    model = DiT(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    diffusion = create_diffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=g)
    drop = (torch.rand(batch, generator=g) < cfg.class_dropout_prob).long()
    noise = torch.randn(x.shape, generator=g)
    call = model
    if path == "compiled":
        call = torch.compile(model, dynamic=False, options={"fallback_random": True})

    def step() -> float:
        kwargs = {"y": y, "force_drop_ids": drop}
        loss = diffusion.training_losses(call, x, t, kwargs, noise=noise)["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def gemm_fn(m: int, k: int, n: int) -> tuple[Callable[[], None], float]:
    """A closure multiplying an (m, k) by a (k, n) fp32 matrix, and its true FLOPs."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    return (lambda: torch.mm(a, b)), 2.0 * m * k * n


def measure(shape: str, threads: int, paths: list[str], batch: int, rounds: int, iters: int) -> list[dict]:
    """Rows of the table for one shape at one thread count."""
    torch.set_num_threads(threads)
    torch._dynamo.reset()
    cfg = demo_config(shape)
    fpi = train_flops_per_image(cfg)
    tokens = cfg.num_tokens()
    jobs: dict[str, tuple[Callable, float]] = {}  # key -> (fn, true FLOPs per call)
    compile_s = None
    for path in paths:
        step = make_step(path, cfg, batch)
        t0 = time.perf_counter()
        step()
        if path == "compiled":
            compile_s = time.perf_counter() - t0
            print(f"  [{shape}, {threads} thr] compile + first step: {compile_s:.1f} s", flush=True)
        for _ in range(2):
            step()
        jobs[path] = (step, batch * fpi)
    d = cfg.hidden_size
    jobs["gemm_model"] = gemm_fn(batch * tokens, d, 4 * d)
    jobs["gemm_512"] = gemm_fn(512, 512, 512)
    reps = {k: iters if k in paths else max(3, int(3e8 / flops)) for k, (_, flops) in jobs.items()}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(rounds):
        order = list(jobs) if r % 2 == 0 else list(reversed(jobs))
        for key in order:
            fn, _ = jobs[key]
            t0 = time.perf_counter()
            for _ in range(reps[key]):
                fn()
            times[key].append((time.perf_counter() - t0) / reps[key])
    rate = {k: jobs[k][1] / statistics.median(v) / 1e9 for k, v in times.items()}
    rows = []
    for path in paths:
        rows.append({
            "shape": shape, "threads": threads, "path": path,
            "img_s": batch / statistics.median(times[path]), "gflops": rate[path],
            "roof_model": rate[path] / rate["gemm_model"], "roof_512": rate[path] / rate["gemm_512"],
            "vs_plain": rate[path] / rate["plain"] if "plain" in rate else float("nan"),
            "gemm_model": rate["gemm_model"], "gemm_512": rate["gemm_512"],
            "compile_s": compile_s if path == "compiled" else None,
        })  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'shape':5s} {'thr':>3s} {'path':8s} {'img/s':>8s} {'GFLOP/s':>8s} {'roof(BTxDx4D)':>13s} "
        f"{'roof(512^3)':>11s} {'vs plain':>8s}   GEMM roofs GFLOP/s"
    )
    body = [
        f"{r['shape']:5s} {r['threads']:3d} {r['path']:8s} {r['img_s']:8.1f} {r['gflops']:8.1f} "
        f"{r['roof_model']:13.0%} {r['roof_512']:11.0%} {r['vs_plain']:7.2f}x   "
        f"{r['gemm_model']:.0f} / {r['gemm_512']:.0f}"
        for r in rows
    ]
    return "\n".join([head, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds; medians are printed")
    ap.add_argument("--iters", type=int, default=3, help="steps per path per round")
    args = ap.parse_args(argv)
    print(
        f"torch {torch.__version__}, CPU fp32, batch {args.batch}, 16 px x 1 channel, patch 2; "
        f"medians of {args.rounds} alternating rounds of {args.iters} steps"
    )
    rows = []
    for threads in args.threads:
        for shape in args.shapes:
            rows += measure(shape, threads, args.paths, args.batch, args.rounds, args.iters)
            print(format_table([r for r in rows if r["shape"] == shape and r["threads"] == threads]))
    print("\nall:")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
