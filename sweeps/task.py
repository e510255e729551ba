"""What one job runs: a `CellTask` (picklable) and the `TrainConfig` it becomes inside the job.

A task carries dotted `TrainConfig` overrides (``{"model.depth": 3, ...}``) that are applied inside the
job with `build_config`; the launcher builds and checks each cell's config first (`check_trainer`).
"""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dit_core.configio import apply_flat
from sweeps.grid import DEFAULT_TRAINER, Cell, SweepSpec, cell_model_fields

if TYPE_CHECKING:
    from sweeps.ladder import Trunk


@dataclass(frozen=True)
class CellTask:
    """Everything a job needs: the cell id, its run folder (checkpoints + MLflow run id, stable
    across requeues and relaunches), the dotted `TrainConfig` overrides and, in a cooldown ladder, the
    trunk it forks from (`sweeps.ladder.Trunk`)."""

    sweep: str
    cell_id: str
    run_dir: str
    overrides: dict[str, Any] = field(default_factory=dict)
    trainer: str = DEFAULT_TRAINER
    threads: int = 0
    trunk: Trunk | None = None


#: `TrainConfig` fields the sweep sets for some cells or the launcher for every one, besides those
#: `cell_overrides` sets for each: `SweepSpec.train` may set none of them
ALSO_OWNED = frozenset({"data.root", "data.image_size", "tracking.enabled", "tracking.run_id"})


def cell_overrides(spec: SweepSpec, cell: Cell, run_dir: Path, tracking_uri: str) -> dict[str, Any]:
    """Dotted `dit_core.train.TrainConfig` fields for ``cell``; ``spec.train`` is applied first.

    The model is given by its shape (``model.name`` None; the trainer names official shapes itself,
    and sets ``model.learn_sigma`` from the diffusion as `sweeps.grid.model_learns_sigma` does);
    both ``budget.max_steps`` and ``budget.train_flops`` are set and agree (``steps`` whole steps fit).
    """
    own: dict[str, Any] = {
        "model.name": None,
        **{f"model.{k}": v for k, v in cell_model_fields(spec, cell.model, cell.patch_size).items()},
        "data.name": spec.data.name,
        "budget.global_batch_size": cell.batch_size,
        "budget.max_steps": cell.steps,
        "budget.train_flops": cell.budget,
        "out": str(run_dir),
        "tracking.uri": tracking_uri,
        "tracking.experiment": spec.experiment,
        "tracking.sweep": spec.name,
        "tracking.grid_cell": cell.cell_id,
        "tracking.run_name": cell.cell_id,
    }
    owned = sorted(k for k in spec.train if k in own.keys() | ALSO_OWNED)
    if "tracking.enabled" in owned:  # without it the cell's run, its only record, is never trained into
        raise ValueError(
            f"train: tracking.enabled={spec.train['tracking.enabled']!r}: a sweep's cells are always "
            "tracked (each cell's MLflow run is its record, which status and relaunch read); drop it"
        )
    if owned:
        raise ValueError(
            f"train: {', '.join(owned)} set per cell by the sweep, so an override would be ignored; "
            "use the sweep's own options instead (--grid/--shapes/--patch for the model, --budgets and "
            "--batch-size for the budget, data: in the YAML, --experiment/--tracking-uri/--output-dir)"
        )
    out = {**spec.train, **own}
    if cell.seed:  # seed 0 is the trainer's default: its cells' settings stay as before seeds existed
        out["seed"] = cell.seed
    if cell.lr is not None:  # the lrs axis replaces the train section's optim.lr
        out["optim.lr"] = cell.lr
    if spec.final_eval:
        out.setdefault("eval.val_every", -(-cell.steps // max(1, spec.val_points)))
        out.setdefault("eval.eval_every", cell.steps)
    if spec.data.root is not None:
        out["data.root"] = spec.data.root
    if spec.data.name != "latents":
        out["data.image_size"] = spec.data.input_size
    return out


def cell_dir(sweep_dir: str | Path, cell_id: str) -> Path:
    """The run folder of the cell ``cell_id``: ``<sweep folder>/cells/<cell_id>``."""
    return Path(sweep_dir) / "cells" / cell_id


def make_task(spec: SweepSpec, cell: Cell, sweep_dir: Path, tracking_uri: str, threads: int = 0) -> CellTask:
    """The task of ``cell``; ``threads``: torch CPU threads per process (0 = torch's default)."""
    run_dir = cell_dir(sweep_dir, cell.cell_id).resolve()
    overrides = cell_overrides(spec, cell, run_dir, tracking_uri)
    return CellTask(spec.name, cell.cell_id, str(run_dir), overrides, spec.trainer, threads)


def make_tasks(
    spec: SweepSpec, cells: list[Cell], sweep_dir: Path, tracking_uri: str, threads: int = 0
) -> dict[str, CellTask]:
    """``{cell_id: task}`` of ``cells``; with ``spec.ladder``, a cooldown ladder's (`sweeps.ladder`)."""
    tasks = {c.cell_id: make_task(spec, c, sweep_dir, tracking_uri, threads) for c in cells}
    if not spec.ladder:
        return tasks
    from sweeps.ladder import ladder_tasks

    return ladder_tasks(spec, cells, tasks, sweep_dir)


def build_config(trainer: Any, overrides: dict[str, Any]) -> Any:
    """``trainer.TrainConfig()`` with the dotted overrides (its own ``replace`` if it has one, else
    `dit_core.configio.apply_flat`)."""
    cfg = trainer.TrainConfig()
    if callable(getattr(cfg, "replace", None)):
        return cfg.replace(**overrides)
    return apply_flat(cfg, overrides)


def check_trainer(module: str, tasks: list[CellTask], resolve: bool = True) -> dict[str, Any]:
    """Import the trainer here and build every task's config, so a wrong module or an override
    naming no `TrainConfig` field fails before anything is submitted; ``{cell_id: config}``. The bundled
    trainer's configs are checked as it would resolve them (`check_resolves`; ``resolve`` False: only its
    torch-free part, for a dry run that imports no torch)."""
    try:
        trainer = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(
            f"trainer module {module!r} cannot be imported ({e}); check `trainer:` in the sweep"
        ) from e
    for name in ("TrainConfig", "train"):
        if not hasattr(trainer, name):
            raise ValueError(
                f"trainer module {module!r} has no {name}; it must provide TrainConfig and train(cfg)"
            )
    built = {}
    for t in tasks:
        try:
            built[t.cell_id] = build_config(trainer, t.overrides)
            if module == DEFAULT_TRAINER:
                check_resolves(built[t.cell_id], resolve)
        except (TypeError, ValueError) as e:
            raise ValueError(f"cell {t.cell_id}: {e}") from e
    return built


def check_resolves(cfg: Any, resolve: bool = True) -> None:
    """What `dit_core.trainer.resolve.resolve_config` would refuse in the job (the model against the
    data and the diffusion, the validation and evaluation settings), told here against a stand-in of
    the data: a bundled dataset's channels and classes, else the model's own (a folder's are read in the
    job). A cell refused there would leave a failed MLflow run, and a relaunch fail the same way.
    ``resolve`` False: the data's channels and classes only (`resolve_config` imports torch)."""
    m = cfg.model
    channels, classes = cfg.data.bundled_shape() or (m.in_channels, m.num_classes)
    if channels != m.in_channels:
        raise ValueError(
            f"{cfg.data.name} images have {channels} channel(s) (data.channels={cfg.data.channels}) but the "
            f"sweep's models take {m.in_channels} (data.in_channels in the sweep YAML's data:); make the two "
            "agree"
        )
    if classes > m.num_classes:
        raise ValueError(
            f"{cfg.data.name} has {classes} classes (data.num_photos) but the sweep's models have "
            f"{m.num_classes} (data.num_classes in the sweep YAML's data:); make the two agree"
        )
    if resolve:
        from dit_core.trainer.resolve import resolve_config

        data = types.SimpleNamespace(resolution=m.input_size, channels=channels, num_classes=classes)
        resolve_config(cfg, data)
