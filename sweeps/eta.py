"""The time a launch takes and has left: each cell's work in FLOP-equivalents (training and evaluation
FLOPs, `sweeps.cost`, plus a fixed cost per step and per cell, fitted on the demo: docs/sweeps.md), a
rate (before the launch: the demo's measured on CPU; during it: learned from the cells that finished),
and the cells placed on the free slots as the local executor places them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sweeps.cost import bill_table, cell_eval_flops
from sweeps.grid import Cell

STEP_FLOPS = 2e8  # an optimizer step's fixed cost (Python, optimizer, logging), in FLOP-equivalents
CELL_FLOPS = 1.2e11  # a cell's fixed cost (start-up, MLflow, reference features), in FLOP-equivalents
#: FLOP-equivalents per second of one cell per CPU thread: the default demo's 14 cells (1.61e13 of work)
#: took 1,631 and 776 slot-seconds, 2 at a time with 1 thread each, on the slowest and the fastest
#: 2-core hosts measured (an AVX2 EPYC and an AVX-512 one; docs/study.md, sessions 48 and 28). A dry
#: run prices a local CPU sweep at both.
CPU_RATES = (9.88e9, 2.08e10)


def _work(cell: Cell, eval_flops: float) -> float:
    return cell.train_flops + eval_flops + cell.steps * STEP_FLOPS + CELL_FLOPS


def cell_work(cell: Cell, overrides: Mapping[str, object], fresh: bool = True) -> float:
    """FLOP-equivalents of one cell: training + validation + sampling FLOPs + the fixed costs
    (``fresh``: as in `sweeps.cost.cell_eval_flops`)."""
    return _work(cell, cell_eval_flops(cell, dict(overrides), fresh))


def finish_time(free: list[float], durations: Iterable[float]) -> float:
    """When the last job ends: ``durations`` in order, each on the slot that frees first; ``free``:
    when each slot frees (reordered in place)."""
    heapq.heapify(free)
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free, default=0.0)


def time_left(
    work: Mapping[str, float],
    spans: Mapping[str, tuple[float, float | None]],
    pending: Sequence[str],
    now: float,
    slots: int,
) -> tuple[float, float] | None:
    """(fraction of the work done, seconds left), or None before any cell has finished.

    ``work``: each cell's FLOP-equivalents; ``spans``: ``{cell: (start, end or None)}`` in seconds
    for the cells submitted so far (None: still running); ``pending``: the cells not yet submitted,
    in submission order; ``slots``: how many cells run at once. The rate is the finished cells' work
    over their time; a running cell has ``work - rate x elapsed`` left (at least 0); the pending
    cells go, in order, to the slot that frees first, and the answer is when the last one ends.
    """
    done = {c: (a, b) for c, (a, b) in spans.items() if b is not None}
    busy = sum(b - a for a, b in done.values())
    if not done or busy <= 0:
        return None
    rate = sum(work[c] for c in done) / busy
    running = [max(work[c] - rate * (now - a), 0.0) for c, (a, b) in spans.items() if b is None]
    total = sum(work[c] for c in spans) + sum(work[c] for c in pending)
    left = sum(running) + sum(work[c] for c in pending)
    free = [r / rate for r in running] + [0.0] * max(slots - len(running), 0)
    return 1.0 - left / total, finish_time(free, (work[c] / rate for c in pending))


@dataclass(frozen=True)
class CpuEstimate:
    """A CPU sweep's bill (locally its wall time here, on SLURM its core-hours): ``cells`` with their
    validation + sampling ``eval_flops``, ``slots`` at a time with ``threads`` torch threads each (all
    of a cell's processes), started longest first."""

    cells: tuple[Cell, ...]
    eval_flops: tuple[float, ...]
    slots: int
    threads: int

    @property
    def work(self) -> list[float]:
        return [_work(c, ev) for c, ev in zip(self.cells, self.eval_flops)]

    def wall_s(self, rate: float) -> float:
        """Seconds from the first cell's start to the last one's end at ``rate`` per thread."""
        from sweeps.runner import longest_first

        work = {c.cell_id: w for c, w in zip(self.cells, self.work)}
        order = longest_first(list(self.cells))
        return finish_time([0.0] * self.slots, (work[c.cell_id] / (rate * self.threads) for c in order))

    def _bill(self, estimate: str, note: str) -> str:
        """The table (each cell's work and minutes on its threads, a range), then the ``estimate`` line,
        the work model's line and the ``note``."""
        lo, hi = min(CPU_RATES) * self.threads, max(CPU_RATES) * self.threads
        minutes = [f"{w / hi / 60:.2g}-{w / lo / 60:.2g}" for w in self.work]
        table = bill_table(
            list(zip(self.cells, self.eval_flops)),
            {"work": [f"{w:.3g}" for w in self.work], "min": minutes},
            [f"{sum(self.work):.3g}", ""],
        )
        work = (
            f"  work = train + eval FLOPs + {STEP_FLOPS:g} per step + {CELL_FLOPS:g} per cell "
            f"(FLOP-equivalents, sweeps/eta.py), at {min(CPU_RATES):.3g} to {max(CPU_RATES):.3g} per "
            "second per thread: the default demo's rates on two 2-core hosts (docs/sweeps.md)"
        )
        return "\n".join([table, "", estimate, work, note])

    def summary(self, cores: int) -> str:
        """The table, the estimate and its inputs; ``cores``: this machine's, as the launcher counts them."""
        fast, slow = (self.wall_s(r) / 60 for r in (max(CPU_RATES), min(CPU_RATES)))
        return self._bill(
            f"estimate: {fast:.1f} to {slow:.1f} min wall on this machine's CPU ({cores} cores) for "
            f"{len(self.cells)} cells, {self.slots} at a time (--parallel), {self.threads} thread"
            f"{'s' if self.threads > 1 else ''} each, the longest first",
            "  a launch learns this machine's rate from its first finished cells and shows the time "
            "left; a GPU cluster's bill in GPU-hours: --device H100 (or A100, ...)",
        )

    def slurm_summary(self) -> str:
        """A SLURM sweep on CPU nodes (no GPU requested): the table, its CPU core-hours (one core per
        thread), their inputs."""
        lo, hi = (sum(self.work) / r / 3600 for r in (max(CPU_RATES), min(CPU_RATES)))  # threads cancel
        return self._bill(
            f"estimate: {lo:.3g} to {hi:.3g} CPU core-hours on SLURM for {len(self.cells)} cells "
            f"(gpus_per_node 0: no GPU requested), {self.threads} core{'s' if self.threads > 1 else ''}"
            " each (nodes x tasks_per_node x cpus_per_task)",
            "  min: a cell's wall time on its cores (the rate assumed linear in them); the cluster's "
            "cores may be faster than these hosts'; in GPU-hours: --device H100 (or A100, ...)",
        )
