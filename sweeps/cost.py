"""The bill before the run: training and evaluation FLOPs of every cell, and GPU-hours on a device.

GPU-hours = FLOPs / (peak x MFU) / 3600, with the device's dense bf16 peak (true FLOPs/s, no
sparsity) and an assumed model FLOPs utilisation. Both inputs are printed with the estimate.

- training FLOPs: the cell's whole steps, ``steps x batch x train_flops_per_image`` (`dit_core.spec`);
- validation: ``val_examples`` forward passes each time validation runs (2 x forward multiply-adds);
- sample evaluation: ``num_samples x sampler steps`` forward passes each time it runs, doubled with
  classifier-free guidance (the conditional and unconditional halves of one batch). Inception, the
  VAE decoder and data loading are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sweeps.grid import Cell


@dataclass(frozen=True)
class Device:
    """An accelerator: ``peak_tflops`` is its dense bf16 tensor-core peak in true TFLOP/s."""

    name: str
    peak_tflops: float
    source: str


#: Dense (not sparse) bf16 peaks from the vendors' datasheets (SXM / OAM parts).
DEVICES = {
    d.name: d
    for d in (
        Device("H100", 989.4, "NVIDIA H100 SXM datasheet: 1,979 TFLOPS bf16 with sparsity, /2 dense"),
        Device("H200", 989.4, "NVIDIA H200 SXM datasheet: same tensor cores as H100 SXM"),
        Device("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense"),
        Device("L40S", 362.05, "NVIDIA L40S datasheet: 733 TFLOPS bf16 with sparsity, /2 dense"),
        Device("MI300X", 1307.4, "AMD MI300X datasheet: 1,307.4 TFLOPS bf16 dense"),
    )
}

#: MFU assumed when none is given. Measured once (docs/training.md, "GPU"): 0.39 for DiT-XL/2 at 256 px
#: and 0.36 for DiT-B/2 at 32 px, bf16 + compile on one H200; smaller models and eager runs get less.
#: `bash benchmarks/gpu_check.sh` prints the MFU of DiT-XL/2 on the machine it runs on.
DEFAULT_MFU = 0.40
#: The accelerator a dry run prices the study on when none is given (``--device``).
DEFAULT_DEVICE = "H100"


@dataclass(frozen=True)
class CellCost:
    """One cell's bill: FLOPs (true) for training and for validation + sample evaluation."""

    cell_id: str
    steps: int
    images: int
    train_flops: float
    eval_flops: float
    gpu_hours: float


@dataclass(frozen=True)
class StudyCost:
    """The whole study's bill on ``device`` at ``mfu``; `summary()` prints it with its inputs."""

    device: Device
    mfu: float
    gpus_per_cell: int
    cells: tuple[CellCost, ...]

    @property
    def gpu_hours(self) -> float:
        return sum(c.gpu_hours for c in self.cells)

    @property
    def train_flops(self) -> float:
        return sum(c.train_flops for c in self.cells)

    @property
    def eval_flops(self) -> float:
        return sum(c.eval_flops for c in self.cells)

    def summary(self) -> str:
        n = self.gpus_per_cell
        table = bill_table(
            [(c, c.eval_flops) for c in self.cells],
            {
                "GPU-hours": [f"{c.gpu_hours:.3g}" for c in self.cells],
                "wall h": [f"{c.gpu_hours / n:.3g}" for c in self.cells],
            },
            [f"{self.gpu_hours:.3g}", ""],
        )
        peak = self.device.peak_tflops * 1e12
        mfu_source = "(given)"
        if self.mfu == DEFAULT_MFU:
            mfu_source = (
                "(assumed: one H200 measured 0.39 for DiT-XL/2 and 0.36 for DiT-B/2 at 32 px, bf16 + "
                "compile; measure yours with `bash benchmarks/gpu_check.sh`, then --mfu)"
            )
        return "\n".join(
            [
                table,
                "",
                f"estimate: {self.gpu_hours:.4g} GPU-hours on {self.device.name} for {len(self.cells)} cells",
                f"  = (train + eval FLOPs) / (peak x MFU) / 3600 = {self.train_flops + self.eval_flops:.4g}"
                f" / ({peak:.4g} x {self.mfu:g}) / 3600",
                f"  peak: {self.device.peak_tflops:g} TFLOP/s dense bf16 ({self.device.source})",
                f"  MFU: {self.mfu:g} {mfu_source}",
                f"  wall h: per cell on {self.gpus_per_cell} GPU(s) (nodes x gpus_per_node); FLOPs are true"
                " FLOPs (2 x multiply-adds); eval = validation + sampling forward passes (no Inception/VAE)",
            ]
        )


def bill_table(cells: Sequence[tuple[Any, float]], more: dict[str, list[str]], total: list[str]) -> str:
    """The table of a bill: per (cell or `CellCost`, eval FLOPs) its steps, images, training and eval
    FLOPs and the columns ``more`` ({header: a text per cell}), then a total row ending in ``total``."""
    from sweeps.table import render

    rows = [
        [c.cell_id, str(c.steps), str(c.images), f"{c.train_flops:.3g}", f"{ev:.3g}", *extra]
        for (c, ev), *extra in zip(cells, *more.values())
    ]
    sums = [sum(c.steps for c, _ in cells), sum(c.images for c, _ in cells)]
    flops = [sum(c.train_flops for c, _ in cells), sum(ev for _, ev in cells)]
    rows.append(["total", *map(str, sums), *(f"{v:.3g}" for v in flops), *total])
    return render(["cell", "steps", "images", "train FLOPs", "eval FLOPs", *more], rows)


def _times_run(steps: int, every: int) -> int:
    """How often a periodic job runs in ``steps`` steps: every ``every`` steps and at the last step."""
    return -(-steps // every) if every > 0 else 0


def cell_eval_flops(cell: Cell, overrides: dict[str, Any], fresh: bool = True) -> float:
    """Validation + sampling FLOPs of ``cell`` under its dotted `TrainConfig` overrides. ``fresh``: the
    run starts at step 0 and validates there too (a ladder cell forks from its trunk: False)."""
    from dit_core.config import TrainConfig

    keep = ("eval.", "model.", "diffusion.")  # the sampler must suit the diffusion's objective
    cfg = TrainConfig().replace(**{k: v for k, v in overrides.items() if k.startswith(keep)})
    e = cfg.eval
    forward = 2e9 * cell.forward_gflops  # true FLOPs of one forward pass of one image
    vals = _times_run(cell.steps, e.val_every) + int(fresh and e.val_every > 0)
    val = vals * e.val_examples * forward * (2 if e.val_ema else 1)
    guided = 2 if (e.cfg_scale != 1.0 and cfg.model.class_dropout_prob > 0) else 1
    calls = e.steps * (2 if e.sampler == "heun" else 1)  # Heun: a second model call per step
    samples = _times_run(cell.steps, e.eval_every) * e.num_samples * calls * guided * forward
    return float(val + samples)


def estimate(
    cells: Sequence[Cell],
    eval_flops: dict[str, float] | None = None,
    *,
    device_name: str = DEFAULT_DEVICE,
    mfu: float = DEFAULT_MFU,
    gpus_per_cell: int = 1,
) -> StudyCost:
    """GPU-hours of ``cells`` on ``device_name`` at ``mfu`` (0 < mfu <= 1)."""
    if not 0 < mfu <= 1:  # NaN and inf too
        raise ValueError(f"--mfu {mfu} must be in (0, 1], e.g. 0.4 for 40% of the bf16 peak")
    if gpus_per_cell < 1:
        raise ValueError(f"gpus per cell must be >= 1, got {gpus_per_cell}")
    dev = DEVICES.get(device_name.strip().upper())
    if dev is None:
        raise ValueError(
            f"unknown accelerator {device_name!r}; choose one of {', '.join(DEVICES)} (--device)"
        )
    rate = dev.peak_tflops * 1e12 * mfu
    out = []
    for c in cells:
        ev = (eval_flops or {}).get(c.cell_id, 0.0)
        hours = (c.train_flops + ev) / rate / 3600
        out.append(CellCost(c.cell_id, c.steps, c.images, c.train_flops, ev, hours))
    return StudyCost(dev, mfu, gpus_per_cell, tuple(out))
