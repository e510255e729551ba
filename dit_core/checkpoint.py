"""Training checkpoints: atomic writes, a ``latest.json`` pointer, and loading for evaluation.

Layout: ``<out>/checkpoints/step_0001000.pt`` (``torch.save`` of a dict of tensors, numbers, strings,
lists and dicts only, so ``torch.load(weights_only=True)`` reads it) and ``<out>/checkpoints/latest.json``
``{"step": 1000, "file": "step_0001000.pt"}``. Keys: ``model`` and ``ema`` (DiT state dicts),
``optimizer``, ``scheduler``, ``rng``, ``data_position``, ``ledger``, ``step``, ``config`` (the flat
`TrainConfig` dict), ``mlflow_run_id``, ``folder`` (the run folder's absolute path), plus ``loop``
(the partial log interval, the metric points not yet sent to MLflow, and ``due``: the validation /
evaluation of this step still to be done, as the last step is checkpointed before them) and ``format``.

A write goes to a temporary file in the same folder, is fsynced and renamed over the target, and the
folder is fsynced: a job killed at any moment (SIGKILL included) leaves either the old or the new
checkpoint, never a torn one. The temporary files such a kill leaves behind are removed by the next
`save_checkpoint` (`remove_partial_writes`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write

if TYPE_CHECKING:  # torch is imported where a checkpoint is written or read: naming files needs none
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_STEP_FILE = re.compile(r"^step_(\d{7,})\.pt$")
_PARTIAL_FILE = re.compile(r"^\.(step_\d{7,}\.pt|latest\.json)\..+\.tmp$")


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """``<out>/checkpoints`` (``out`` may already be that folder)."""
    p = Path(out)
    return p if p.name == "checkpoints" else p / "checkpoints"


def checkpoint_path(out: str | os.PathLike, step: int) -> Path:
    """The checkpoint file of ``step`` in run folder ``out``: ``<out>/checkpoints/step_{step:07d}.pt``."""
    return checkpoint_dir(out) / f"step_{int(step):07d}.pt"


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a checkpoint file (``step_0001000.pt`` -> 1000); ValueError for another name."""
    if not (m := _STEP_FILE.match(Path(path).name)):
        raise ValueError(f"{path} is not a checkpoint file (step_NNNNNNN.pt)")
    return int(m.group(1))


def remove_partial_writes(out: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of checkpoint writes that never finished (a killed job) in
    ``<out>/checkpoints``; returns them. Only one process may write a run's checkpoints."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    partial = sorted(p for p in folder.iterdir() if _PARTIAL_FILE.match(p.name))
    for p in partial:
        p.unlink(missing_ok=True)
    if partial:
        log.warning("removed %d unfinished checkpoint write(s) of an earlier, killed job: %s",
                    len(partial), ", ".join(p.name for p in partial))  # fmt: skip
    return partial


def save_checkpoint(out: str | os.PathLike, state: dict[str, Any], *, keep_last: int = 0) -> Path:
    """Write ``state`` (must hold ``"step"``) to ``<out>/checkpoints/step_{step:07d}.pt`` atomically,
    point ``latest.json`` at it, and delete all but the newest ``keep_last`` (0 = keep all), and the
    temporary files of earlier writes that were killed."""
    import torch

    folder = checkpoint_dir(out)
    step = int(state["step"])
    path = checkpoint_path(folder, step)
    state = {"format": CHECKPOINT_FORMAT, **state}
    remove_partial_writes(folder)
    atomic_write(path, lambda f: torch.save(state, f))
    pointer = json.dumps({"step": step, "file": path.name}).encode()
    atomic_write(folder / "latest.json", lambda f: f.write(pointer))
    if keep_last > 0:
        for old in list_checkpoints(folder)[:-keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
    due = (state.get("loop") or {}).get("due") or []  # the trainer's checks still to run at this step
    words = " and ".join({"val": "validation", "eval": "evaluation"}.get(d, d) for d in due)
    log.info("checkpoint step %d%s -> %s", step, f" ({words} to follow)" if due else "", path)
    return path


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``<out>/checkpoints``, oldest step first."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run folder (via ``latest.json``, else the highest step file), or None."""
    folder = checkpoint_dir(out)
    pointer = folder / "latest.json"
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["file"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable %s", pointer)
        else:
            if not isinstance(name, str) or not _STEP_FILE.match(name):
                raise ValueError(
                    f"{pointer} names {name!r}, not a step_*.pt file in {folder}; delete it (the newest "
                    "step file is then used) or pass the checkpoint to use with --resume PATH"
                )
            if (folder / name).is_file():
                return folder / name
    files = list_checkpoints(folder)
    return files[-1] if files else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or the latest one of a run folder) with ``weights_only=True``. A run
    folder's newest file that its trainer deletes before it is opened (``checkpoint.keep_last``: a
    newer one was just written) is looked up again, so a running job's folder can be read."""
    p = Path(path)
    if not p.is_dir():
        try:
            return _read_checkpoint(p, map_location)
        except FileNotFoundError:
            raise ValueError(
                f"checkpoint {p} does not exist; pass a run folder or a step_*.pt file in <out>/checkpoints"
            ) from None
    for _ in range(10):
        found = latest_checkpoint(p)
        if found is None:
            raise ValueError(f"no checkpoint in {checkpoint_dir(p)}")
        with contextlib.suppress(FileNotFoundError):
            return _read_checkpoint(found, map_location)
    raise ValueError(f"the checkpoints of {checkpoint_dir(p)} were deleted as they were read; try again")


def _read_checkpoint(p: Path, map_location: str | torch.device) -> dict[str, Any]:
    """`load_checkpoint` of one file; FileNotFoundError if it is gone (once open, it stays readable)."""
    import torch

    try:
        with open(p, "rb") as f:
            ckpt = torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a torn or foreign file fails in torch's reader in many ways
        raise ValueError(
            f"checkpoint {p} is not a checkpoint written by dit_core.train ({type(e).__name__}): it is "
            "truncated, corrupt or another kind of file; pass a run folder or a step_*.pt file in "
            "<out>/checkpoints"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"checkpoint {p} is not a checkpoint written by dit_core.train (it holds a "
            f"{type(ckpt).__name__}, not a dict of the run's state); pass a run folder or a step_*.pt "
            "file in <out>/checkpoints"
        )
    return ckpt


def load_model_from_checkpoint(path: str | os.PathLike, use_ema: bool = True, map_location: str = "cpu"):
    """``(model, diffusion, config)`` from a training checkpoint (file or run folder).

    model: a `dit_core.models.DiT` in eval mode with the EMA weights (``use_ema=False``: the raw
    weights); diffusion: ``create_diffusion(config.diffusion)``; config: the run's `TrainConfig`.
    """
    return model_from_checkpoint(load_checkpoint(path, map_location=map_location), use_ema, str(path))


def model_from_checkpoint(ckpt: dict[str, Any], use_ema: bool = True, name: str = "checkpoint"):
    """`load_model_from_checkpoint` on an already loaded checkpoint; ValueError if it is not one
    written by the trainer."""
    from .config import TrainConfig
    from .diffusion import create_diffusion
    from .ema import stale_ema_warning
    from .models import DiT

    weights = "ema" if use_ema else "model"
    if missing := sorted({"model", "config", "step", weights} - set(ckpt)):
        raise ValueError(f"{name} is not a dit_core training checkpoint (missing {missing})")
    cfg = TrainConfig.from_flat_dict(ckpt["config"])
    model = DiT.from_config(cfg.model.to_dit_config())
    try:
        model.load_state_dict(ckpt[weights])
    except RuntimeError as e:  # weights of another shape than its config: edited or mixed up
        why = " ".join(str(e).split())[:300]
        raise ValueError(
            f"{name}: its {weights!r} weights do not fit the model its config describes ({why}); it was "
            "edited or assembled from two runs: use another checkpoint of the run"
        ) from None
    if use_ema and (stale := stale_ema_warning(cfg.optim.ema_decay, int(ckpt["step"]), raw_weights=True)):
        log.warning("%s: %s", name, stale)
    return model.eval(), create_diffusion(cfg.diffusion), cfg
