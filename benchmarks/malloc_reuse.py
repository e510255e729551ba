"""Page faults and time of the demo's sampling forward with glibc's malloc defaults and with
`dit_core.memory.keep_freed_memory`, in alternating fresh interpreters.

    python benchmarks/malloc_reuse.py                         # the demo's S, B, L, XL at batch 256
    python benchmarks/malloc_reuse.py --shapes XL --batch 512 --rounds 7
    python benchmarks/malloc_reuse.py --checkpoint sweep_runs/demo/cells/L-2-1e12   # the whole CLI

Forwards: each round starts one interpreter per path (``DITSCALE_MALLOC_DEFAULTS=1`` or ``0``, order
alternating between rounds, so machine load hits both alike); it builds the DiT, warms up, then
times ``--calls`` no-grad forwards at the evaluation batch (what DDIM sampling and validation call)
and counts its minor page faults. Printed per shape: medians of ms per forward and of faults per
forward, and the ratio default / kept (of the medians, and the median of the per-round ratios).
``--checkpoint``: instead, the wall time and page faults of ``python -m dit_core.evaluate
--checkpoint PATH`` (the run's own evaluation settings) per path, and the FIDs, which must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the default demo's families (sweeps/configs/demo.yaml): depth, width, heads
SHAPES = {"S": (3, 12, 3), "B": (3, 20, 5), "L": (6, 28, 7), "XL": (7, 32, 8)}

_CHILD = """
import json, resource, statistics, sys, time, torch
from dit_core.memory import keep_freed_memory
from dit_core.models import DiT
from dit_core.spec import DiTConfig
keep_freed_memory()
torch.set_num_threads(1)
depth, width, heads, batch, calls = map(int, sys.argv[1:6])
cfg = DiTConfig(depth=depth, hidden_size=width, num_heads=heads, patch_size=2, input_size=16,
                in_channels=1, num_classes=10, frequency_embedding_size=32)
torch.manual_seed(0)
model = DiT.from_config(cfg).eval()
x, t, y = torch.randn(batch, 1, 16, 16), torch.randint(0, 1000, (batch,)), torch.arange(batch) % 10
times = []
with torch.no_grad():
    for _ in range(2):
        model(x, t, y)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        t0 = time.perf_counter()
        model(x, t, y)
        times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps([statistics.median(times) * 1e3, faults / calls]))
"""


def _env(keep: bool) -> dict[str, str]:
    return {**os.environ, "DITSCALE_MALLOC_DEFAULTS": "0" if keep else "1", "OMP_NUM_THREADS": "1"}


def forwards(shape: str, batch: int, calls: int, keep: bool) -> tuple[float, float]:
    """(median ms per forward, page faults per forward) in a fresh interpreter."""
    argv = [str(v) for v in (*SHAPES[shape], batch, calls)]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], env=_env(keep), capture_output=True, text=True, check=True
    )
    ms, faults = json.loads(out.stdout.strip().splitlines()[-1])
    return ms, faults


def evaluate_cli(checkpoint: str, keep: bool) -> tuple[float, float, float]:
    """(wall s, page faults, fid) of ``python -m dit_core.evaluate --checkpoint``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "dit_core.evaluate", "--checkpoint", checkpoint, "--output", f.name]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=_env(keep), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed")
        metrics = json.loads(Path(f.name).read_text())
    fid = next(
        (v for k, v in metrics.items() if k.startswith("eval/fid_") and not k.endswith("_se")), float("nan")
    )
    return wall, usage.ru_minflt, fid


def _alternate(rounds: int, measure) -> dict[bool, list[tuple]]:
    runs: dict[bool, list[tuple]] = {False: [], True: []}
    for i in range(rounds):
        for keep in (i % 2 == 1, i % 2 == 0):
            runs[keep].append(measure(keep))
    return runs


def _ratios(runs: dict[bool, list[tuple]]) -> tuple[float, float, dict[bool, float]]:
    med = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    paired = statistics.median(a[0] / b[0] for a, b in zip(runs[False], runs[True]))
    return med[False] / med[True], paired, med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--batch", type=int, default=256, help="the demo's eval.batch_size")
    ap.add_argument("--calls", type=int, default=8, help="timed forwards per interpreter")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are printed")
    ap.add_argument("--checkpoint", help="time the evaluation CLI on this run folder or checkpoint instead")
    args = ap.parse_args()
    if args.checkpoint:
        runs = _alternate(args.rounds, lambda keep: evaluate_cli(args.checkpoint, keep))
        ratio, paired, med = _ratios(runs)
        for keep in (False, True):
            flt = statistics.median(r[1] for r in runs[keep])
            fids = sorted({round(r[2], 6) for r in runs[keep]})
            print(
                f"{'kept' if keep else 'default':8} wall {med[keep]:7.1f} s  faults {flt:10.0f}  fid {fids}"
            )
        print(f"default / kept: {ratio:.2f}x (medians), {paired:.2f}x (median of paired rounds)")
        return
    print(f"1 thread, batch {args.batch}, {args.calls} forwards x {args.rounds} rounds, fresh interpreters")
    print(
        f"{'shape':6} {'default ms':>11} {'kept ms':>8} {'faults default':>15} {'faults kept':>12} "
        f"{'ratio':>7} {'paired':>7}"
    )
    for shape in args.shapes:
        runs = _alternate(
            args.rounds, lambda keep, shape=shape: forwards(shape, args.batch, args.calls, keep)
        )
        ratio, paired, med = _ratios(runs)
        flt = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
        print(
            f"{shape:6} {med[False]:11.1f} {med[True]:8.1f} {flt[False]:15.0f} {flt[True]:12.0f} "
            f"{ratio:6.2f}x {paired:6.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
