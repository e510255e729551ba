"""The time a launch has left: each cell's work in FLOP-equivalents (training and evaluation FLOPs,
`sweeps.cost`, plus a fixed cost per step and per cell, fitted on the demo: docs/sweeps.md), a rate
learned from the cells that finished, and the remaining cells placed on the free slots as the local
executor places them.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from sweeps.cost import cell_eval_flops
from sweeps.grid import Cell

STEP_FLOPS = 2e8  # an optimizer step's fixed cost (Python, optimizer, logging), in FLOP-equivalents
CELL_FLOPS = 1.2e11  # a cell's fixed cost (start-up, MLflow, reference features), in FLOP-equivalents


def cell_work(cell: Cell, overrides: Mapping[str, object]) -> float:
    """FLOP-equivalents of one cell: training + validation + sampling FLOPs + the fixed costs."""
    return cell.train_flops + cell_eval_flops(cell, dict(overrides)) + cell.steps * STEP_FLOPS + CELL_FLOPS


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
    heapq.heapify(free)
    for c in pending:
        heapq.heappush(free, heapq.heappop(free) + work[c] / rate)
    return 1.0 - left / total, max(free, default=0.0)
