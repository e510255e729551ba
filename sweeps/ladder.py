"""Cooldown ladders (docs/sweeps.md, "Cooldown ladders"; Hagele et al. 2024, arXiv:2405.18392): the cells
of one model (same shape, patch, seed, lr and settings; budgets differ) share one constant-lr trunk, and
each cell trains only its cooldown, forked from the trunk's checkpoint at step ``T - ceil(cooldown_frac x
T)`` of its ``T`` steps. Every cell is still one job and one MLflow run (its record); its point is the
run's last, as a grid cell's.

`ladder_tasks` turns a sweep's tasks into ladder tasks at launch (torch-free); `grow_trunk` runs in a
cell's job before its fork (`sweeps.executor.run_task`): it trains the trunk on from its newest
checkpoint through every fork step up to the cell's own, under a lock that the jobs of the trunk's
other cells wait on. The local executor starts the largest budgets first, so each trunk is mostly grown
by its largest cell and the others find their checkpoint made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dit_core.configio import stable_hash
from dit_core.trainer.lr_schedule import cooldown_steps
from sweeps.grid import Cell, SweepSpec

log = logging.getLogger(__name__)

#: Dotted fields that differ between the cells of one trunk (or name the cell), left out of its key.
PER_CELL = ("budget.max_steps", "budget.train_flops", "out", "eval.val_every", "eval.eval_every")
#: The trunk's own settings: a constant lr, no MLflow run, no validation, every checkpoint kept
#: (`grow_trunk` deletes those between forks once a fork's is written).
TRUNK_SETTINGS = {
    "optim.schedule": "constant",
    "tracking.enabled": False,
    "eval.val_every": 0,
    "eval.eval_every": 0,
    "checkpoint.keep_last": 0,
}


@dataclass(frozen=True)
class Trunk:
    """A ladder cell's share of its trunk: the trunk's run folder, the dotted overrides of its
    constant-lr run (less the step count), its training FLOPs per step, and the fork steps whose
    checkpoints the cell's job makes sure exist (ascending; the last is the cell's own)."""

    run_dir: str
    overrides: dict[str, Any]
    flops_per_step: float
    fork_steps: tuple[int, ...]

    @property
    def fork_step(self) -> int:
        return self.fork_steps[-1]

    def checkpoint(self, step: int) -> Path:
        """The trunk's checkpoint file of ``step`` (`dit_core.checkpoint.checkpoint_path`)."""
        from dit_core.checkpoint import checkpoint_path

        return checkpoint_path(self.run_dir, step)

    def overrides_to(self, step: int) -> dict[str, Any]:
        """The trunk run's overrides to train up to ``step``."""
        return {**self.overrides, "budget.max_steps": step, "budget.train_flops": step * self.flops_per_step}


def fork_step(steps: int, cooldown_frac: float) -> int:
    """The step a run of ``steps`` steps forks from its trunk: ``steps - ceil(cooldown_frac x steps)``
    (`dit_core.trainer.lr_schedule.cooldown_steps`)."""
    return steps - cooldown_steps(cooldown_frac, steps)


def _per_cell(key: str) -> bool:
    return key in PER_CELL or key.startswith("tracking.")


def trunk_key(overrides: dict[str, Any]) -> str:
    """12 hex digits over the overrides that cells of one trunk share."""
    return stable_hash({k: v for k, v in overrides.items() if not _per_cell(k)}, 12)


def ladder_tasks(spec: SweepSpec, cells: list[Cell], tasks: dict, sweep_dir: Path) -> dict:
    """``tasks`` ({cell_id: `sweeps.task.CellTask`}) as a ladder's: per trunk (cells whose overrides
    agree but for the budget), the peak lr is the lr rule's at its largest cell's planned FLOPs, the
    warmup its smallest cell's, both the same for every cell of it (``optim.lr_flops_ref`` 0,
    ``optim.lr_scaling`` none, ``optim.warmup_frac`` 0); each cell trains ``constant_cooldown`` and
    carries its `Trunk`. Raises ValueError where a cell has no step before its cooldown."""
    from dit_core.config import TrainConfig
    from dit_core.trainer.lr_schedule import peak_lr, warmup_steps

    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(trunk_key(tasks[c.cell_id].overrides), []).append(c)
    out = {}
    for key, group in groups.items():
        base = tasks[group[0].cell_id].overrides
        optim = TrainConfig().replace(**base).optim
        largest, smallest = max(group, key=lambda c: c.steps), min(group, key=lambda c: c.steps)
        forks = sorted(fork_step(c.steps, optim.cooldown_frac) for c in group)
        # the trunk is grown to each fork as a run of that many steps, whose warmup the trainer caps at
        # its steps - 2: a warmup past the first fork - 2 gave the trunk other lrs than the cells' own
        warmup = max(0, min(warmup_steps(optim, smallest.steps), forks[0] - 2))
        shared = {
            "optim.lr": peak_lr(optim, largest.model.hidden_size, largest.train_flops),
            "optim.lr_scaling": "none",
            "optim.lr_flops_ref": 0.0,
            "optim.warmup_steps": warmup,
            "optim.warmup_frac": 0.0,
        }
        folder = Path(sweep_dir).resolve() / "trunks" / f"{largest.model.name}-p{largest.patch_size}-{key}"
        common = {k: v for k, v in base.items() if not _per_cell(k)}
        trunk = {**common, **shared, **TRUNK_SETTINGS, "out": str(folder)}
        for c in group:
            own = fork_step(c.steps, optim.cooldown_frac)
            if own < 1:
                raise ValueError(
                    f"ladder: cell {c.cell_id} makes {c.steps} steps, all in its cooldown "
                    f"(optim.cooldown_frac {optim.cooldown_frac:g}), so it has no trunk step to "
                    "fork from; raise --min-steps or lower optim.cooldown_frac"
                )
            t = tasks[c.cell_id]
            per_step = c.batch_size * c.train_flops_per_image
            plan = Trunk(str(folder), trunk, per_step, tuple(s for s in forks if s <= own))
            ov = {**t.overrides, **shared, "optim.schedule": "constant_cooldown"}
            out[c.cell_id] = dataclasses.replace(t, overrides=ov, trunk=plan)
    return out


def ladder_flops(tasks: dict) -> tuple[float, float]:
    """(the training FLOPs of ``tasks`` as a ladder: each trunk to its last fork plus every cooldown,
    the same cells trained from step 0)."""
    trunks: dict[str, tuple[int, float]] = {}
    ladder = scratch = 0.0
    for t in tasks.values():
        steps, tr = t.overrides["budget.max_steps"], t.trunk
        scratch += steps * tr.flops_per_step
        ladder += (steps - tr.fork_step) * tr.flops_per_step
        last = trunks.get(tr.run_dir, (0, 0.0))
        trunks[tr.run_dir] = max(last, (tr.fork_step, tr.flops_per_step))
    return ladder + sum(s * f for s, f in trunks.values()), scratch


def trained_cells(cells: list[Cell], tasks: dict) -> list[Cell]:
    """``cells`` with the steps their jobs train, for time estimates: a ladder cell its cooldown, and the
    largest cell of each trunk the trunk too (the local executor starts it first); others unchanged."""
    grows = {}
    for c in sorted(cells, key=lambda c: c.steps):
        if (trunk := tasks[c.cell_id].trunk) is not None:
            grows[trunk.run_dir] = c.cell_id
    out = []
    for c in cells:
        if (trunk := tasks[c.cell_id].trunk) is not None:
            own = trunk.fork_step if grows[trunk.run_dir] == c.cell_id else 0
            c = dataclasses.replace(c, steps=c.steps - trunk.fork_step + own)
        out.append(c)
    return out


@contextlib.contextmanager
def trunk_lock(folder: Path) -> Iterator[None]:
    """Hold ``<folder>.lock`` (blocking: a job of the trunk's other cells may be growing it)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.with_name(folder.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("trunk %s: another cell's job is growing it; waiting", folder.name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def trunk_step(trunk: Trunk) -> int:
    """The step of the trunk's newest checkpoint (0: none yet)."""
    from dit_core.checkpoint import checkpoint_step, latest_checkpoint

    newest = latest_checkpoint(trunk.run_dir)
    return 0 if newest is None else checkpoint_step(newest)


def trunk_progress(tasks: dict, cell_ids: list[str]) -> dict[str, str]:
    """``{cell_id: "trunk 3000/6462"}`` for those of ``cell_ids`` that are a ladder's: its trunk's newest
    checkpoint (at most the cell's fork step) and its fork step, for `launch.py status` while the cell's
    job grows the trunk or waits for it."""
    out = {}
    for cid in cell_ids:
        if (trunk := tasks[cid].trunk) is not None:
            out[cid] = f"trunk {min(trunk_step(trunk), trunk.fork_step)}/{trunk.fork_step}"
    return out


def grow_trunk(trunk: Trunk, train: Any, build: Any) -> tuple[Path | None, Any]:
    """Make sure the trunk has a checkpoint at each of ``trunk.fork_steps``, training it on from its newest
    one (``train(build(overrides))``, resumed from the trunk's folder), and deleting the checkpoints
    between forks (``checkpoint.every``'s) once the next fork's is written. Returns (the checkpoint at the
    cell's fork step, None), or (None, the trainer's result) where a signal stopped the trunk. Raises
    RuntimeError where the trunk has gone past a fork step whose checkpoint is gone."""
    from dit_core.checkpoint import checkpoint_step, list_checkpoints

    folder = Path(trunk.run_dir)
    with trunk_lock(folder):
        for step in trunk.fork_steps:
            if trunk.checkpoint(step).is_file():
                continue
            at = trunk_step(trunk)
            if at > step:
                raise RuntimeError(
                    f"trunk {folder} has trained to step {at} but has no checkpoint at step {step}, where "
                    "this cell forks; delete the trunk's folder (its cells' checkpoints are "
                    "theirs) and relaunch to train it again"
                )
            log.info("trunk %s: training steps %d..%d", folder.name, at, step)
            result = train(build(trunk.overrides_to(step)))
            if str(getattr(result, "status", "finished")).lower() != "finished":
                return None, result
            for path in list_checkpoints(folder):  # the periodic ones (checkpoint.every) below this fork
                if checkpoint_step(path) < step and checkpoint_step(path) not in trunk.fork_steps:
                    path.unlink(missing_ok=True)
    return trunk.checkpoint(trunk.fork_step), None
