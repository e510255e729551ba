"""Where a run continues from, and the one check that a checkpoint's settings allow it.

``resume``: "auto" (the newest checkpoint in the run folder, if any), "never" (the folder must
hold none) or a checkpoint file / run folder. A checkpoint of another run folder than ``out``
(`is_own_checkpoint`) is a fork: its training state continues in a new MLflow run, and the other
folder's run is left as it is; a fork into an ``out`` that holds checkpoints of its own is refused. A
run may only continue with the settings it was started with, except those in `RESUMABLE_CHANGES`
(budget, eval, checkpointing, tracking and speed settings, e.g. to extend a run); `check_resumable` is
that rule, for the trainer and the sweeps alike. A fork may also change the lr schedule
(`LR_SCHEDULE_FIELDS`) where the lr of every step its checkpoint trained stays the same: a cooldown
branched from a constant-lr trunk (`dit_core.trainer.lr_schedule.first_lr_change`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import checkpoint_dir, latest_checkpoint, list_checkpoints, load_checkpoint
from ..configio import ConfigError

__all__ = ["FORK_AS_SAVED", "LR_SCHEDULE_FIELDS", "RESUMABLE_CHANGES", "RESUME_KEYS", "START_OVER",
           "check_resumable", "config_changes", "find_checkpoint", "is_own_checkpoint",
           "load_resume_checkpoint"]  # fmt: skip

#: What the trainer reads from a checkpoint to continue a run.
RESUME_KEYS = ("model", "ema", "optimizer", "data_position", "rng", "step", "ledger", "config")

#: Dotted fields (or prefixes ending in ".") that may change when a run is resumed.
#: ``data.root`` / ``data.val_root``: a moved dataset; `DataStream.load_state_dict` still refuses one
#: of another size, and MLflow keeps the first value (with a warning naming both).
RESUMABLE_CHANGES = ("tracking.", "checkpoint.", "eval.", "budget.max_steps", "budget.train_flops",
                     "num_workers", "log_every", "dist_timeout_s", "out", "compile", "grad_checkpointing",
                     "data.root", "data.val_root")  # fmt: skip
#: The fields that set the lr of each step (`dit_core.trainer.lr_schedule`): a fork may change them
#: where the lr of every step its checkpoint trained is unchanged (a cooldown branch; the trainer checks).
LR_SCHEDULE_FIELDS = ("optim.lr", "optim.lr_scaling", "optim.lr_base_width", "optim.lr_flops_ref",
                      "optim.lr_flops_exponent", "optim.warmup_steps", "optim.warmup_frac", "optim.schedule",
                      "optim.cooldown_frac", "optim.min_lr_ratio")  # fmt: skip


def config_changes(saved_flat: dict[str, Any], new_flat: dict[str, Any], keys=None) -> list[str]:
    """``["model.depth: '2' -> '3'", ...]``: the fields ``keys`` (None: all outside `RESUMABLE_CHANGES`)
    whose values differ, compared as MLflow param strings (so a flat config read back from MLflow
    compares equal)."""
    from ..tracking import format_param

    if keys is None:
        keys = [k for k in dict.fromkeys([*saved_flat, *new_flat]) if not k.startswith(RESUMABLE_CHANGES)]
    old = {k: format_param(saved_flat.get(k)) for k in keys}
    new = {k: format_param(new_flat.get(k)) for k in keys}
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in keys if old[k] != new[k]]


#: What to do instead, for `check_resumable`'s refusal of a run folder's own checkpoint.
START_OVER = (
    "use a new --out for a new run, or, to start over in this folder, delete its checkpoints/ and run "
    "with --resume never"
)
#: The same for a fork (``--resume`` of another folder's checkpoint): its --out is already a new one.
FORK_AS_SAVED = (
    "a fork continues that checkpoint's settings exactly: drop the changed settings to fork it, or drop "
    "--resume to start a new run from step 0 in this --out"
)


def check_resumable(
    saved_flat: dict[str, Any],
    new_flat: dict[str, Any],
    where: str = "checkpoint",
    advice: str = START_OVER,
    also: tuple[str, ...] = (),
) -> None:
    """ConfigError naming the differences and ``advice`` if a run saved with ``saved_flat`` may not
    continue with ``new_flat`` (both flat dotted configs, e.g. ``TrainConfig.to_flat_dict()``); ``also``:
    fields allowed to change beside `RESUMABLE_CHANGES` (a fork's `LR_SCHEDULE_FIELDS`)."""
    keys = [k for k in dict.fromkeys([*saved_flat, *new_flat]) if not k.startswith(RESUMABLE_CHANGES + also)]
    diff = config_changes(saved_flat, new_flat, keys)
    if diff:
        raise ConfigError(f"{where}: was written by a different config ({'; '.join(diff[:8])}); {advice}")


def find_checkpoint(out: Path, resume: str) -> Path | None:
    """The checkpoint to continue from (None = start at step 0); see the module docstring."""
    if resume == "auto":
        return latest_checkpoint(out)
    if resume == "never":
        if latest_checkpoint(out) is not None:
            raise ConfigError(
                f"--resume: {out} already holds checkpoints and --resume never was given; "
                "use a new --out, or --resume auto to continue that run"
            )
        return None
    p = Path(resume)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise ConfigError(f"--resume: no checkpoint in {p}; give a folder with checkpoints/")
        p = found  # a run folder's newest checkpoint: refused below like that file, if a fork
    elif not p.is_file():
        raise ConfigError(
            f"--resume: must be 'auto', 'never' or a checkpoint file/run folder; {p} does not exist"
        )
    own = latest_checkpoint(out)
    if own is not None and not is_own_checkpoint(out, p):  # two lineages in one folder: refused
        raise ConfigError(
            f"--resume: {p} is another run folder's checkpoint, and --out {out} already holds checkpoints "
            f"of its own (latest {own.name}); use a new --out to fork {p}, or --resume auto to continue "
            f"{out}'s own run"
        )
    return p


def is_own_checkpoint(out: Path, path: Path) -> bool:
    """Whether checkpoint ``path`` is one of run folder ``out``'s own (in ``<out>/checkpoints``, or
    directly in ``out``): its MLflow run is continued. Any other is another run's, and is forked."""
    return Path(path).resolve().parent in (checkpoint_dir(out).resolve(), Path(out).resolve())


def load_resume_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, holding `RESUME_KEYS`; else a ConfigError naming the file, what is
    wrong with it, and the other checkpoints of its folder that ``--resume PATH`` can continue from."""
    try:
        ckpt = load_checkpoint(path)
        if missing := sorted(set(RESUME_KEYS) - set(ckpt)):
            raise ValueError(f"checkpoint {path} is not a dit_core training checkpoint (missing {missing})")
    except ValueError as e:
        others = [p for p in list_checkpoints(path.parent) if p.resolve() != path.resolve()]
        if others:
            names = ", ".join(p.name for p in others)
            hint = (
                f"; its folder also holds {names}: continue from one with --resume {others[-1]} (the newest)"
            )
        else:
            hint = "; start a new run with a new --out"
        raise ConfigError(f"{e}{hint}") from None
    return ckpt
