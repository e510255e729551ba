"""GPU training-step benchmark: images/s, model TFLOP/s and MFU for a DiT training step.

Compares, in one process and on identical random latents:
  ours-bf16-compile   bf16 autocast, flash SDPA, torch.compile, fused AdamW (the ditscale GPU recipe)
  ours-bf16-ckpt      bf16, eager, with activation checkpointing (peak memory vs step time; compared
                      with eager ours-bf16 where measured, else with the compiled path, said so)
  diffusers-bf16      diffusers.DiTTransformer2DModel, same shape, bf16 autocast, fused AdamW
  fp32-nocompile      the original DiT recipe: fp32, no compile, plain AdamW

MFU = true training FLOPs per second (2 x 3 x forward multiply-adds, `dit_core.spec`) / the card's dense bf16
peak. Run on a GPU with `bash benchmarks/gpu_check.sh`; `--device cpu --model tiny` smoke-tests the code.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dit_core.models import DiT
from dit_core.spec import model_config, train_flops_per_image

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0}


def bf16_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name:
        if "PCIe" in name:
            return BF16_PEAK_TFLOPS["H100 PCIe"]
        if "NVL" in name:
            return BF16_PEAK_TFLOPS["H100 NVL"]
        return BF16_PEAK_TFLOPS["H100 SXM"]
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


@dataclass
class Result:
    name: str
    images_per_s: float
    step_ms: float
    peak_mem_gb: float
    warmup_s: float  # the untimed warm-up steps, compilation included
    profile: str = ""  # with --profile: the top operators by self time over that many steps


def _diffusers_model(cfg, device):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels,
        out_channels=2 * cfg.in_channels,
        num_layers=cfg.depth,
        sample_size=cfg.input_size,
        patch_size=cfg.patch_size,
        num_embeds_ada_norm=cfg.num_classes,
        norm_type="ada_norm_zero",
    ).to(device)


def run_mode(name, cfg, args, device) -> Result:
    """Time `args.steps` optimizer steps after `args.warmup` untimed ones; medians over windows."""
    torch.manual_seed(0)
    is_diffusers = name.startswith("diffusers")
    bf16 = "bf16" in name
    if is_diffusers:
        model = _diffusers_model(cfg, device)
    else:
        model = DiT.from_config(cfg).to(device)
        model.grad_checkpointing = "ckpt" in name
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing("ckpt" in name)
    fused = device.type == "cuda" and name != "fp32-nocompile"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused or None)
    step_model = model
    if "compile" in name and "nocompile" not in name:
        step_model = torch.compile(model)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    b, c, s = args.batch_size, cfg.in_channels, cfg.input_size
    x = torch.randn(b, c, s, s, device=device)
    t = torch.randint(0, 1000, (b,), device=device)
    y = torch.randint(0, cfg.num_classes, (b,), device=device)
    noise = torch.randn_like(x)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if is_diffusers:
                out = step_model(x, timestep=t, class_labels=y).sample
            else:
                out = step_model(x, t, y)
            loss = F.mse_loss(out[:, :c].float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_warm = time.perf_counter()
    for _ in range(args.warmup if name != "fp32-nocompile" else min(args.warmup, 3)):
        step()
    sync()
    warmup_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = args.fp32_steps if name == "fp32-nocompile" and args.fp32_steps else args.steps
    window = max(1, steps // 5)
    times = []
    for _ in range(max(1, steps // window)):
        t0 = time.perf_counter()
        for _ in range(window):
            step()
        sync()
        times.append((time.perf_counter() - t0) / window)
    step_s = statistics.median(times)
    profile = _profile(step, sync, device, args.profile) if getattr(args, "profile", 0) else ""
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Result(name, b / step_s, step_s * 1e3, peak, warmup_s, profile)


def _profile(step, sync, device, steps: int, rows: int = 15) -> str:
    """The ``rows`` operators with the most self time over ``steps`` steps (device time on CUDA): where an
    eager step's time goes, to compare ours with the peer operator by operator."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def flash_check(cfg, device) -> str:
    """Forward the model in bf16 with SDPA restricted to the flash kernel, for sin-cos and rotary
    positions, against the math kernel: the max |difference| of the outputs, or the error if flash refuses
    the model's attention inputs (head dim, layout)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    lines = []
    for pos in ("sincos", "rope"):
        torch.manual_seed(0)
        model = DiT.from_config(cfg.replace(pos_embed=pos)).to(device)
        model.eval()
        for p_ in model.parameters():  # adaLN-Zero starts at 0: give the blocks weight so attention matters
            p_.data.normal_(0, 0.02)
        x = torch.randn(4, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
        t, y = (
            torch.randint(0, 1000, (4,), device=device),
            torch.randint(0, cfg.num_classes, (4,), device=device),
        )
        outs = {}
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
            try:
                with (
                    torch.no_grad(),
                    sdpa_kernel([backend]),
                    torch.autocast(device.type, dtype=torch.bfloat16),
                ):
                    outs[name] = model(x, t, y).float()
            except RuntimeError as e:
                outs[name] = f"refused: {str(e).splitlines()[0][:120]}"
        if all(isinstance(o, torch.Tensor) for o in outs.values()):
            diff = (outs["flash"] - outs["math"]).abs().max().item()
            scale = outs["math"].abs().max().item()
            lines.append(f"flash SDPA ({pos}): runs; max |flash - math| {diff:.3g} (output max {scale:.3g})")
        else:
            lines.append(
                f"flash SDPA ({pos}): {outs['flash'] if isinstance(outs['flash'], str) else outs['math']}"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DiT-XL/2", help="official name, or 'tiny' for a CPU smoke test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument(
        "--fp32-steps", type=int, default=None, help="timed steps for fp32-nocompile (default: --steps)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--modes",
        default="ours-bf16-compile,ours-bf16-ckpt,diffusers-bf16,fp32-nocompile",
        help="comma-separated modes; also ours-bf16 (eager, to measure what compiling gains)",
    )
    p.add_argument(
        "--profile", type=int, default=0, metavar="STEPS",
        help="also profile STEPS steps of each mode and print its top operators (e.g. ours-bf16 against "
        "diffusers-bf16, both eager, to find where ours loses)",
    )  # fmt: skip
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.model == "tiny":
        cfg = model_config(None, depth=2, hidden_size=64, num_heads=2, patch_size=2, input_size=8)
    else:
        cfg = model_config(args.model, input_size=32)
    flops_img = train_flops_per_image(cfg)
    peak = bf16_peak_tflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; model {args.model} (latent 32x32x4), batch {args.batch_size}")
    print(f"train FLOPs/image (true): {flops_img / 1e9:.1f} GFLOP; bf16 peak: {peak} TFLOP/s")
    if device.type == "cuda":
        print(flash_check(cfg, device), flush=True)
    results = {}
    for mode in args.modes.split(","):
        r = run_mode(mode.strip(), cfg, args, device)
        results[r.name] = r
        tflops = r.images_per_s * flops_img / 1e12
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
        print(
            f"{r.name:>18}: {r.images_per_s:8.1f} img/s  {r.step_ms:8.1f} ms/step  "
            f"{tflops:7.1f} TFLOP/s  MFU {mfu:>6}  peak mem {r.peak_mem_gb:6.2f} GiB  "
            f"warm-up {r.warmup_s:5.1f} s",
            flush=True,
        )
        if r.profile:
            print(f"{r.name}: top operators by self time over {args.profile} steps\n{r.profile}", flush=True)
    base = results.get("ours-bf16-compile")
    if base:
        for other in ("ours-bf16", "diffusers-bf16", "fp32-nocompile"):
            if other in results:
                ratio = base.images_per_s / results[other].images_per_s
                print(f"ratio ours-bf16-compile / {other}: {ratio:.2f}x")
    ck = results.get("ours-bf16-ckpt")  # eager: compared with the eager path where it was measured
    ref = results.get("ours-bf16") or base
    if ck and ref:
        against = (
            "eager ours-bf16"
            if ref is results.get("ours-bf16")
            else "ours-bf16-compile (compile's effect included)"
        )
        mem, slower = ref.peak_mem_gb / ck.peak_mem_gb, 100 * (ck.step_ms / ref.step_ms - 1)
        print(
            f"activation checkpointing vs {against}: peak memory {mem:.2f}x lower, step {slower:+.1f}% time"
        )


if __name__ == "__main__":
    main()
