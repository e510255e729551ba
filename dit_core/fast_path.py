"""The training fast path: `torch.compile` where it pays, decided by one rule the trainer calls.

`compile_for_training(model, mode, ...)` returns the module the training step should call: the
model itself (eager) or `torch.compile(model)`. `mode` is the trainer's `compile` setting:

- `True` / `"on"`: always compile; `False` / `"off"`: never;
- `"auto"` (or `None`): compile when the run is long enough that the compile time is paid back:
  on a GPU runs of at least `GPU_COMPILE_MIN_STEPS` steps, on CPU runs planned over
  `CPU_COMPILE_MIN_EAGER_S` eager seconds (`cpu_compile_pays`).

Compiling changes float rounding only (fused kernels); on CPU the inductor is told to use the eager
RNG (`fallback_random`), so random ops in the model draw what eager draws. The thresholds come from
the measurements in docs/training.md ("CPU speed", and "GPU" for an H200).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

__all__ = [
    "COMPILE_MODES", "GPU_COMPILE_MIN_STEPS", "compile_for_training", "compile_mode", "cpu_compile_pays",
    "cpu_eager_seconds", "resolve_compile",
]  # fmt: skip

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
#: CPU `"auto"` compiles when the planned eager training time exceeds this many seconds.
CPU_COMPILE_MIN_EAGER_S = 600.0
#: Rough eager CPU training rate (true FLOP/s per thread) used by `cpu_compile_pays` to turn a
#: planned FLOP count into seconds; the demo's shapes run at 10-40 GFLOP/s per core.
CPU_EAGER_FLOPS_PER_THREAD = 20e9
#: Eager seconds per training step per DiT block beyond the FLOPs (op dispatch, autograd, small
#: kernels): ~4 ms at 1 thread, fitted to the default demo's S and L and the digits demo's S
#: (their step times are within ~10 % of steps x (depth x 4 ms + FLOPs / 20 GFLOP/s), docs/training.md).
CPU_EAGER_STEP_S_PER_BLOCK = 4e-3
#: GPU `"auto"` compiles runs of at least this many training steps: compiling paid back its cost after
#: ~650 steps (DiT-B/2, 32 px) and ~1,600 steps (DiT-XL/2, 256 px) on an H200 (docs/training.md, "GPU").
GPU_COMPILE_MIN_STEPS = 5000


def compile_mode(mode: Any) -> str:
    """`"auto"`, `"on"` or `"off"` from a `compile` setting (None -> auto, True/False, any case);
    `ValueError` otherwise. For validating the trainer's config field."""
    if mode is None:
        return "auto"
    if isinstance(mode, bool):
        return "on" if mode else "off"
    if isinstance(mode, str) and mode.lower() in COMPILE_MODES + ("true", "false"):
        m = mode.lower()
        return {"true": "on", "false": "off"}.get(m, m)
    raise ValueError(f"compile must be one of {COMPILE_MODES} (or True/False), got {mode!r}")


def cpu_eager_seconds(train_flops: float, threads: int = 1, steps: int = 0, depth: int = 0) -> float:
    """Planned eager CPU training seconds: FLOPs at `CPU_EAGER_FLOPS_PER_THREAD` per thread, plus
    `CPU_EAGER_STEP_S_PER_BLOCK` per step and block (what dominates tiny models' steps)."""
    flops_s = train_flops / (CPU_EAGER_FLOPS_PER_THREAD * max(1, threads))
    return flops_s + steps * depth * CPU_EAGER_STEP_S_PER_BLOCK


def cpu_compile_pays(
    train_flops: float | None, threads: int | None = None, *, steps: int = 0, depth: int = 0
) -> bool:
    """Whether compiling pays on CPU for a run of `train_flops` true FLOPs over `steps` steps of a
    `depth`-block model (None FLOPs: unknown, no).

    A cold compile costs 30-130 s and saves ~10-25% of the step time, so it pays after roughly
    10 minutes of eager training: runs planned longer than `CPU_COMPILE_MIN_EAGER_S` compile.
    """
    if train_flops is None or train_flops <= 0:
        return False
    eager_s = cpu_eager_seconds(train_flops, threads or torch.get_num_threads(), steps, depth)
    return eager_s > CPU_COMPILE_MIN_EAGER_S


def resolve_compile(
    mode: Any, device: torch.device | str, *, train_flops: float | None = None, steps: int = 0, depth: int = 0
) -> bool:
    """The decision of `compile_for_training`: True to compile. See the module docstring.

    `train_flops`: the run's planned training FLOPs (steps x batch x train_flops_per_image), and
    `steps`, `depth` its step count and DiT blocks, used by `"auto"` (on CPU by `cpu_compile_pays`).
    `TORCHDYNAMO_DISABLE=1` in the environment always means no.
    """
    m = compile_mode(mode)
    if m == "off" or os.environ.get("TORCHDYNAMO_DISABLE") == "1":
        return False
    if m == "on":
        return True
    if torch.device(device).type == "cpu":
        return cpu_compile_pays(train_flops, steps=steps, depth=depth)
    return steps >= GPU_COMPILE_MIN_STEPS


def compile_for_training(
    model: nn.Module, mode: Any = "auto", *, device: torch.device | str | None = None,
    train_flops: float | None = None, steps: int = 0, depth: int = 0,
) -> nn.Module:  # fmt: skip
    """`model` or `torch.compile(model)` per `resolve_compile` (compiled keys gain `_orig_mod.`).

    The trainer calls it once on the module its step runs (one line, in place of `torch.compile`):
    `self.train_model = compile_for_training(self.train_model, cfg.compile, device=self.device,
    train_flops=self.total * self.batch * self.fpi, steps=self.total, depth=self.dit_cfg.depth)`.
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    if not resolve_compile(mode, device, train_flops=train_flops, steps=steps, depth=depth):
        return model
    kind = torch.device(device).type
    log.info("torch.compile of the training model on %s (compile=%r)", kind, mode)
    if kind != "cpu":
        return torch.compile(model)  # the GPU path exactly as before
    return torch.compile(model, dynamic=False, options={"fallback_random": True})
