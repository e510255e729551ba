"""`Trainer`: one run from start to finish, ``Trainer(cfg).run() -> TrainResult``.

Construction resolves the config, builds the model, EMA, AdamW, diffusion and data stream and
loads the checkpoint to resume from; `Trainer.run` owns the lifecycle (the run folder and its lock,
MLflow run, signals, the loop, the final checkpoint, the MLflow status). Tests may build a `Trainer`
and call `Trainer.train_step` themselves to look at ``trainer.optimizer`` after any step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import tracking
from ..atomic import atomic_write_text
from ..checkpoint import latest_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..configio import ConfigError, yaml_to_flat
from ..data import build_dataset, data_accounting, unique_images
from ..data.config import FOLDER_DATASETS
from ..diffusion import create_diffusion
from ..ema import EMA, stale_ema_warning
from ..evaluate.sampling import SamplingStopped
from ..fast_path import compile_for_training
from ..models import DiT
from ..spec import forward_gflops, non_embedding_param_count, param_count, train_flops_per_image
from .data_stream import DataStream
from .evaluation import evaluate_samples, sample_grid
from .lr_schedule import first_lr_change, lr_at, peak_lr, warmup_steps
from .out_lock import OutFolderBusy, checkpoints_state, out_folder_lock
from .progress import Progress
from .ranklog import (
    PEER_GRACE_S,
    PeerWatch,
    peer_failures,
    process_state,
    publish_failure,
    timeout_explained,
    warnings_muted,
    with_peer_failures,
)
from .resolve import resolve_config
from .resume import (
    FORK_AS_SAVED,
    LR_SCHEDULE_FIELDS,
    START_OVER,
    check_resumable,
    config_changes,
    find_checkpoint,
    is_own_checkpoint,
    load_resume_checkpoint,
)
from .rng import StepRandom, get_rng_state, set_rng_state
from .signals import (
    CTRL_C_SIGNALS,
    INTERRUPT_SIGNALS,
    PREEMPTION_SIGNALS,
    SIGINT_ECHO_S,
    PreemptionGuard,
    SignalSync,
    signals_deferred,
)
from .update import update_ops
from .validation import Validator

log = logging.getLogger("dit_core.train")

__all__ = ["PeerStuck", "StuckHere", "TrainResult", "Trainer", "make_accelerator"]

#: The ``eval.*`` params from which the analysis reads how a run's FIDs were scored
#: (`analysis.runs.fid_protocol`): fixed for the life of its MLflow run. (A moved ``eval.reference``
#: folder may change, as ``data.root`` may.)
EVAL_PROTOCOL = ("eval.num_samples", "eval.sampler", "eval.steps", "eval.cfg_scale")

#: file in a fork's --out naming the checkpoint it forked (`Trainer.check_not_an_unstarted_fork`)
FORK_FILE = "forked_from"

#: What to do instead of restarting, in its MLflow run, a run folder's run with other settings.
RESTART_ANEW = (
    "the run in this folder stopped before its first checkpoint, and starting it again would log these "
    "settings into its MLflow run: use a new --out for a new run, or run with --resume never to start "
    "over in this folder in a new MLflow run"
)


def process_start_time() -> float | None:
    """Wall-clock time (``time.time()``) at which this process started, or None if unknown."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - psutil missing or no access: the start-up time is not logged
        return None


@dataclass
class TrainResult:
    """What a run ended with. status: "finished" or "preempted" (a checkpoint was written and the
    run can be resumed); failures raise instead. signal: the one that stopped the run, else a Ctrl-C
    (SIGINT, SIGHUP) of those it took that came while it was being ended (`Trainer.end_stopped_run`)."""

    status: str
    step: int
    total_steps: int
    out: str
    run_id: str | None
    checkpoint: str | None
    images_seen: int
    train_flops: float
    train_loss: float | None = None
    val_loss: float | None = None
    eval: dict[str, float] = field(default_factory=dict)
    signal: str | None = None


def make_accelerator(cfg: TrainConfig):
    """An `accelerate.Accelerator` for this machine, on `process_state`'s process group (its timeout;
    Accelerate reads an ``InitProcessGroupKwargs`` only to make that state). Its mixed precision is
    always "no": the trainer applies ``cfg.precision`` itself, so runs of any precision can follow
    each other in one process (Accelerate keeps one process-wide state)."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if cfg.precision == "fp16" and not cuda:
        raise ConfigError("precision: fp16 needs a CUDA GPU; use --precision bf16 (or no) on CPU")
    process_state(cfg.dist_timeout_s)
    return Accelerator(cpu=not cuda, mixed_precision="no")


def _autocast_forward(model: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
    """Run ``model``'s forward under autocast and return fp32 outputs (the loss stays in fp32)."""
    forward = model.forward

    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs).float()

    model.forward = autocast_forward


class PeerStuck(RuntimeError):
    """Another rank failed and its process did not end (`dit_core.trainer.ranklog.PeerWatch`)."""


class StuckHere(RuntimeError):
    """Another rank timed out waiting for this one, busy on its own (`dit_core.trainer.ranklog.PeerWatch`)."""


class Trainer:
    """State of one run. ``resume``: "auto" | "never" | PATH (`dit_core.trainer.resume`);
    ``train_set``: a dataset to use instead of ``build_dataset(cfg.data, "train")``;
    ``accelerator``: None = `make_accelerator`."""

    def __init__(self, cfg: TrainConfig, *, resume: str = "auto", accelerator=None, train_set=None):
        if not isinstance(cfg, TrainConfig):
            raise ConfigError(f"config: train() takes a TrainConfig, got {type(cfg).__name__}")
        self.acc = acc = accelerator or make_accelerator(cfg)
        self.rank, self.world, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        self.tracker = None
        #: while the trainer is built and while run() runs, on several processes (`PeerWatch`)
        self.peer_watch: PeerWatch | None = None
        if self.world == 1:
            self.set_up(cfg, resume, train_set)
            return
        # a rank that fails here and does not end: the others, waiting for it in DDP's set-up (a
        # collective in `accelerator.prepare`), are not kept there until gloo's timeout (30 min)
        with PeerWatch(self.rank, self.world, self.stop_for_peers) as watch:
            self.peer_watch = watch
            try:
                self.set_up(cfg, resume, train_set)
            except BaseException as err:  # left for the other ranks, whose watch ends them
                failure = timeout_explained(err, cfg.dist_timeout_s, self.rank, "while setting up the run")
                self.end_run_on_error(failure, local_job=False)
                if failure is err:
                    raise
                raise failure from err
            finally:
                self.peer_watch = None

    def set_up(self, cfg: TrainConfig, resume: str, train_set) -> None:
        """`__init__`'s work, once the accelerator is known: check ``cfg`` against it and ``out``, build
        the data, model, EMA, optimizer, diffusion and data stream, and load the checkpoint to resume."""
        acc = self.acc
        if (k := getattr(acc, "gradient_accumulation_steps", 1)) != 1:
            raise ConfigError(
                f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS: Accelerate is set up to accumulate gradients over "
                f"{k} steps, but the trainer does not accumulate: each optimizer step is one global batch of "
                "budget.global_batch_size images, split over the processes (Accelerate would only divide "
                "each loss by it); unset ACCELERATE_GRADIENT_ACCUMULATION_STEPS (accelerate launch sets it "
                f"from --gradient_accumulation_steps), and raise --global-batch-size {k}x for a larger batch "
                "per step (--grad-checkpointing if it does not fit in memory)"
            )
        self.device = acc.device
        self.out = Path(cfg.out)
        there = next((p for p in (self.out, *self.out.parents) if p.exists()), None)
        if there is not None and not there.is_dir():
            raise ConfigError(
                f"out: {there} is a file, not a folder; give a run folder (new or existing) with --out"
            )
        if self.out.name == "checkpoints":  # its lock and run id would sit apart from the run folder's
            raise ConfigError(
                f"out: {self.out} is the name of a run folder's checkpoints/ subfolder; --out names the run "
                f"folder itself (checkpoints/, config.json, the MLflow run id): give --out {self.out.parent} "
                "to continue that run, or another name for a new one"
            )
        built = train_set is None  # its scan names a folder's unreadable files (rank 0)
        if built:
            with warnings_muted(not self.main):  # a folder's unreadable files: named by rank 0 only
                train_set = build_dataset(cfg.data, "train")
        self.train_set = train_set
        self.cfg = cfg = resolve_config(cfg, self.train_set)
        self.flat = cfg.to_flat_dict()
        #: folder data's class name per label (in checkpoints, ``<out>/classes.json`` and MLflow), else None
        names = getattr(self.train_set, "classes", None) if cfg.data.name in FOLDER_DATASETS else None
        self.classes = None if names is None else list(names)
        self.total = int(cfg.budget.max_steps)
        self.dit_cfg = cfg.model.to_dit_config(grad_checkpointing=cfg.grad_checkpointing)
        self.fpi = train_flops_per_image(self.dit_cfg)
        self.batch = cfg.budget.global_batch_size
        o = cfg.optim
        self.peak_lr = peak_lr(o, self.dit_cfg.hidden_size, self.total * self.batch * self.fpi)
        self.warmup = warmup_steps(o, self.total)

        self.resume = resume
        #: the folder's checkpoints when this trainer read them (`hold_out_folder` compares)
        self.ckpt_state = checkpoints_state(self.out) if self.main else ()
        self.ckpt_path = find_checkpoint(self.out, resume)
        #: a checkpoint of another run folder, resumed into a new MLflow run (a fork), or None
        own = self.ckpt_path is None or is_own_checkpoint(self.out, self.ckpt_path)
        self.forked_from: Path | None = None if own else self.ckpt_path.resolve()
        self.parent_run_id: str | None = None  # the MLflow run of the checkpoint a fork resumed
        ckpt = load_resume_checkpoint(self.ckpt_path) if self.ckpt_path else None
        if ckpt is not None:
            saved = {**TrainConfig().to_flat_dict(), **ckpt["config"]}  # fields added since: defaults
            also, advice = (
                ((), START_OVER) if self.forked_from is None else self.fork_rule(saved, ckpt["step"])
            )
            check_resumable(saved, self.flat, f"checkpoint {self.ckpt_path}", advice, also)
            self.check_continuable(ckpt, saved)
        elif resume == "auto":
            self.check_not_an_unstarted_fork()
            if cfg.tracking.enabled:
                self.check_restartable()

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = DiT.from_config(self.dit_cfg).to(self.device)
        self.ema = EMA(self.model, o.ema_decay)
        # fused AdamW (CUDA, and CPU since torch 2.4): 3-6x faster than foreach on CPU
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.peak_lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay, fused=True,
        )  # fmt: skip
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.diffusion = create_diffusion(cfg.diffusion)
        self.stream = DataStream(
            self.train_set, self.batch, seed=cfg.seed, rank=self.rank, world_size=self.world,
            num_workers=cfg.num_workers,
        )  # fmt: skip
        self.random = StepRandom(cfg.seed, self.device, cfg.model.class_dropout_prob, self.rank, self.world)
        self.step, self.images_seen = 0, 0
        self.pending: list[torch.Tensor] = []  # per-step losses since the last log
        #: those of a resumed checkpoint, averaged over the ranks before it was written (not again)
        self.restored_losses = torch.empty(0)
        self.last_loss: float | None = None
        self.last_val: float | None = None
        self.last_eval: dict[str, float] = {}
        #: this step's validation ("val") / evaluation ("eval") not done yet: the last step is
        #: checkpointed before them, so that a failing one costs no training (a resume runs them)
        self.due: list[str] = []
        #: (step, path) of the last periodic checkpoint: a stop at that step writes no second copy
        self.saved: tuple[int, Path | None] | None = None
        #: with several processes, when the ranks next agree on a signal
        self.signal_sync = SignalSync()
        self.run_id: str | None = None
        #: what `_load` did, logged by `hold_out_folder` (a busy --out is refused without resuming)
        self.resume_notes: list[tuple] = []
        self.unsent_metrics: list[list] = []  # metric points of the checkpoint not yet on the server
        #: the step of a checkpoint of this folder trained without MLflow: the run starts after it
        self.untracked_until: int | None = None
        #: the first step trained with --no-mlflow since the run was last tracked, or None
        self.untracked_from: int | None = None
        if ckpt is not None:
            self._load(ckpt)

        if self.amp_dtype is not None:
            _autocast_forward(self.model, self.device.type, self.amp_dtype)
        self.train_model, self.optimizer = acc.prepare(self.model, self.optimizer)
        #: backward, clipping, step, zero_grad: plain calls on one process (`dit_core.trainer.update`)
        self.update = update_ops(acc, self.optimizer, self.model, scaler=self.scaler)
        self.train_model = compile_for_training(
            self.train_model, cfg.compile, device=self.device, train_flops=self.total * self.batch * self.fpi,
            steps=self.total, depth=self.dit_cfg.depth,
        )  # fmt: skip
        if ckpt is not None and self.world > 1:
            self.settle_gradient_buckets()
        # the val split of folder data without a val_root is the training folder: its scan said it all
        said = built and cfg.data.name in FOLDER_DATASETS and not cfg.data.val_root
        self.validator = Validator(cfg, self.diffusion, acc, self.autocast, quiet=said)
        if cfg.data.val_root and cfg.eval.val_every > 0:  # a bad val folder fails now, not at step val_every
            self.validator.data()
        #: seconds of this process by phase, logged as ``perf/<key>`` (`FIXED_COST_METRICS`)
        self.seconds = dict.fromkeys(("mlflow_s", "val_s", "eval_s", "train_s"), 0.0)

    def settle_gradient_buckets(self) -> None:
        """A resume of several processes: one forward and backward of a zero batch, its gradients
        dropped (and the RNGs as they were), so that DDP rebuilds its gradient buckets before the first
        real step, as the uninterrupted run's did after its step 1. A bucket's layout orders the ranks'
        sum in the all-reduce: with 3 or more ranks, the resumed weights otherwise differed from the
        uninterrupted run's in the last bits."""
        n, c, h = self.batch // self.world, self.dit_cfg.in_channels, self.dit_cfg.input_size
        x = torch.zeros(n, c, h, h, device=self.device)
        t, y = torch.zeros(n, device=self.device), torch.zeros(n, dtype=torch.long, device=self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            out = self.train_model(x, t, y)
            self.update.backward(out.float().sum() * 0.0)
        self.optimizer.zero_grad(set_to_none=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``cfg.precision`` (a no-op for "no")."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def check_continuable(self, ckpt: dict[str, Any], saved: dict[str, Any]) -> None:
        """ConfigError, before any run is touched, when the checkpoint is past the budget or, continued
        in its own MLflow run (not a fork), belongs to another run than ``tracking.run_id``. ``saved``:
        the checkpoint's flat config, fields added since at their defaults."""
        step, given = int(ckpt["step"]), self.cfg.tracking.run_id
        if step > self.total:
            raise ConfigError(
                f"budget.max_steps: checkpoint {self.ckpt_path} is already at step {step}, above the "
                f"requested total of {self.total} steps; give a budget of at least {step} steps to "
                "continue it, or a new --out for a new run"
            )
        own = ckpt.get("mlflow_run_id") or None
        if self.cfg.tracking.enabled and given and own and given != own and self.forked_from is None:
            raise ConfigError(
                f"tracking.run_id: --run-id {given} was given, but checkpoint {self.ckpt_path} belongs to "
                f"MLflow run {own}; drop --run-id (or pass --run-id {own}) to continue that run, or use "
                f"a new --out to train into run {given}"
            )
        self.check_eval_protocol(saved)
        self.check_not_a_copy(ckpt)
        self.check_classes(ckpt)
        if self.cfg.tracking.enabled and given and given == own and self.forked_from is not None:
            ckpts = self.forked_from.parent
            home = ckpts.parent if ckpts.name == "checkpoints" else ckpts
            raise ConfigError(
                f"tracking.run_id: --run-id {given} is the MLflow run of {self.ckpt_path}, which this resume "
                f"forks into a new run (the checkpoint is another folder's); drop --run-id (or give a run of "
                f"its own) for the fork, or resume with --out {home} to continue that run"
            )

    def fork_rule(self, saved: dict[str, Any], step: int) -> tuple[tuple[str, ...], str]:
        """What a fork of a checkpoint at ``step`` with config ``saved`` may change beside
        `RESUMABLE_CHANGES`, and the advice of its refusal: `LR_SCHEDULE_FIELDS` where every trained
        step keeps its lr under this config (`first_lr_change`: a cooldown branched from a constant-lr
        trunk); else none, and the advice names the first trained step whose lr would change."""
        if not config_changes(saved, self.flat, LR_SCHEDULE_FIELDS):
            return (), FORK_AS_SAVED
        try:
            old = TrainConfig.from_flat_dict({k: v for k, v in saved.items() if k.startswith("optim.")}).optim
            old_total = int(saved["budget.max_steps"])
        except (ConfigError, KeyError, TypeError, ValueError):  # a checkpoint of another version
            return (), FORK_AS_SAVED
        change = first_lr_change(
            old, old_total, self.cfg.optim, self.total, int(step), hidden_size=self.dit_cfg.hidden_size,
            flops_per_step=self.batch * self.fpi,
        )  # fmt: skip
        if change is None:
            return LR_SCHEDULE_FIELDS, FORK_AS_SAVED
        at, a, b = change
        return (), (
            f"{FORK_AS_SAVED}. A fork may change the lr schedule only where every step it has trained keeps "
            f"its lr, and step {at} (the checkpoint is at step {step}) was trained at lr {a:.6g}, which this "
            f"schedule would make {b:.6g}; for a cooldown branch, fork a constant-lr checkpoint at or "
            "before the cooldown's first step (ceil(cooldown_frac x steps) before the end) with "
            "--schedule constant_cooldown and the same peak lr and warmup"
        )

    def check_classes(self, ckpt: dict[str, Any]) -> None:
        """ConfigError when folder data's classes (name per label) are not the checkpoint's: a renamed,
        added or removed class folder would give the trained labels to other classes."""
        saved = ckpt.get("classes")
        if saved is None or self.classes is None or saved == self.classes:
            return
        i = next(i for i, (a, b) in enumerate(itertools.zip_longest(saved, self.classes)) if a != b)
        was, now = (repr(names[i]) if i < len(names) else "none" for names in (saved, self.classes))
        raise ConfigError(
            f"data.root: {self.cfg.data.root} has {len(self.classes)} classes, checkpoint {self.ckpt_path} "
            f"was trained on {len(saved)}, and label {i} is {now} here but {was} there, so the trained "
            "labels would name other classes; give the data it was trained on (its classes are in the run "
            "folder's classes.json), or a new --out for a new run"
        )

    def check_not_a_copy(self, ckpt: dict[str, Any]) -> None:
        """ConfigError when ``out`` is a copy (``cp -r``) of the folder its checkpoint was trained in,
        and that folder is still there, naming the same MLflow run: continued in both, one run would be
        trained from two folders. A moved folder (the old one gone, or the same folder under another
        path) continues as before."""
        own, home = ckpt.get("mlflow_run_id"), Path(ckpt.get("folder") or self.out)
        if not (self.cfg.tracking.enabled and own and self.forked_from is None):
            return
        try:
            if home.samefile(self.out) or (home / tracking.RUN_ID_FILE).read_text().strip() != own:
                return
        except OSError:  # the old folder (or its run id file) is gone: a move
            return
        raise ConfigError(
            f"out: {self.out} is a copy of {home}, where checkpoint {self.ckpt_path} was trained and which "
            f"still continues MLflow run {own}: trained here too, one run would have two folders. Continue "
            f"it with --out {home}; or branch a new run from this copy with --resume {self.ckpt_path} and a "
            "new --out; or, to move the run here, delete the old folder first"
        )

    def check_eval_protocol(self, saved: dict[str, Any]) -> None:
        """ConfigError when a run continued in its own MLflow run, with evaluations on, would score
        them under other `EVAL_PROTOCOL` settings than its params (write-once in MLflow, ``saved``:
        the checkpoint's flat config) record: the analysis reads how a run's FIDs were scored from
        those params."""
        if not (self.cfg.tracking.enabled and self.cfg.eval.eval_every) or self.forked_from is not None:
            return
        if diff := config_changes(saved, self.flat, EVAL_PROTOCOL):
            raise ConfigError(
                f"checkpoint {self.ckpt_path}: the run's FID protocol changed ({'; '.join(diff)}), but "
                "MLflow keeps a run's first params, so the analysis would read the new scores as made the "
                "first way; keep the run's evaluation settings, or add --eval-every 0, or fork it into a "
                "new run with --resume PATH and a new --out"
            )

    def check_not_an_unstarted_fork(self) -> None:
        """ConfigError when ``out`` holds no checkpoint but is a fork (`FORK_FILE`) stopped before its
        first one: ``--resume auto`` would train from step 0 what the fork was to continue from its
        source checkpoint."""
        if not (self.out / FORK_FILE).is_file():
            return
        src = (self.out / FORK_FILE).read_text().strip()
        raise ConfigError(
            f"--resume auto: {self.out} is a fork of {src} that stopped before its first checkpoint, so "
            f"it holds no training state to continue; start the fork again with --resume {src} (a new "
            "MLflow run; the stopped start's run is ended), or give --resume never to train from step 0 "
            "in this folder"
        )

    def check_restartable(self) -> None:
        """ConfigError, before any run is touched, when ``out`` holds no checkpoint but names the MLflow
        run of an earlier start (killed before its first checkpoint) whose ``config.json`` has other
        settings: restarting from step 0 in that run would log this config's losses under its params."""
        saved_file = self.out / "config.json"
        if not saved_file.is_file() or not any(
            (self.out / f).is_file() for f in (tracking.RUN_ID_FILE, tracking.RUN_KEY_FILE)
        ):
            return
        try:
            saved = yaml_to_flat(TrainConfig, json.loads(saved_file.read_text()), str(saved_file))
        except (OSError, ValueError):  # not the trainer's file: nothing to compare with
            return
        check_resumable({**TrainConfig().to_flat_dict(), **saved}, self.flat, str(saved_file), RESTART_ANEW)

    def _load(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.stream.load_state_dict(ckpt["data_position"])
        set_rng_state(ckpt["rng"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.images_seen = int(ckpt["ledger"]["images_seen"])
        loop = ckpt.get("loop", {})
        self.restored_losses = torch.tensor(loop.get("pending_losses", []), dtype=torch.float32)
        self.last_loss, self.last_val = loop.get("last_loss"), loop.get("last_val")
        self.unsent_metrics = loop.get("unsent_metrics", [])
        self.due = list(loop.get("due", []))
        self.untracked_from = loop.get("untracked_from")
        self.run_id = ckpt.get("mlflow_run_id") or None
        if self.run_id is None and self.step > 0 and self.forked_from is None:
            self.untracked_until = self.step  # its steps so far were trained with --no-mlflow
        self.resume_notes.append(
            ("resumed from %s at step %d (%d images seen)", self.ckpt_path, self.step, self.images_seen)
        )
        if self.forked_from is not None:  # the other folder's run is left alone, its points too
            self.parent_run_id, self.run_id, self.unsent_metrics = self.run_id, None, []
            self.untracked_from = None
            self.resume_notes.append(("%s is another run folder's checkpoint: continuing it in a new MLflow "
                                      "run (its own run %s is left as it is)", self.ckpt_path,
                                      self.parent_run_id or "none"))  # fmt: skip

    # ------------------------------------------------------------------ lifecycle
    def run(
        self,
        stop_at_step: int | None = None,
        progress_bar: bool | None = None,
        signals: tuple[int, ...] = PREEMPTION_SIGNALS,
        *,
        local_job: bool = False,
    ) -> TrainResult:
        """Train to the budget, one of ``signals`` or ``stop_at_step`` (which behaves like a
        signal); end with a checkpoint and the MLflow status. Raises on failure (run FAILED), and
        `OutFolderBusy` (a ConfigError), before anything is written, when another trainer holds
        ``out``. The folder's lock is held until this returns or raises.

        ``local_job``: a sweep's local job (`dit_core.trainer.signals.in_local_job`), which a
        terminal's Ctrl-C reaches: SIGINT and SIGHUP (its terminal closed) are among the signals,
        SIGINTs within `SIGINT_ECHO_S` of the first are that same Ctrl-C (submitit's local controller
        forwards it; the launcher passes a SIGHUP on as one), and a run a Ctrl-C (or SIGHUP)
        stopped ends KILLED with the ``status`` tag ``interrupted`` (as the launcher ends those of
        the jobs it stopped before their trainer could), checkpointed or, stopped at once by a later
        Ctrl-C, not."""
        echo_s = 0.0
        if local_job:
            signals, echo_s = tuple(dict.fromkeys((*signals, *CTRL_C_SIGNALS))), SIGINT_ECHO_S
        with contextlib.ExitStack() as held:
            if self.world > 1:  # a rank that fails and does not end: this one ends (exit 1), not in 30 min
                self.peer_watch = held.enter_context(PeerWatch(self.rank, self.world, self.stop_for_peers))
            # entered on every rank before the out folder's broadcast: a signal to any one rank from here on
            # stops the run at the step-0 agreement (its MLflow run KILLED), never a rank by its default
            # action (its peers then fail on the lost connection, the run FAILED), and the deferral that ends
            # the run takes the guard's signals over (`signals_deferred`)
            guard = held.enter_context(PreemptionGuard(signals, sigint_echo_s=echo_s))
            self.hold_out_folder(held)
            try:
                return self._run(guard, stop_at_step, progress_bar, signals, local_job)
            finally:
                self.peer_watch = None
                if self.main:  # its own checkpoints, for a later run() of this trainer
                    self.ckpt_state = checkpoints_state(self.out)

    def hold_out_folder(self, stack: contextlib.ExitStack) -> None:
        """Take ``out``'s lock (`out_folder_lock`) into ``stack`` and check that no other trainer
        wrote checkpoints there since this one read them; `OutFolderBusy` otherwise.

        Only the main process takes the lock (one lock per trainer, however many ranks; only rank 0
        writes to ``out``). With several processes rank 0 then broadcasts its outcome, so that all
        ranks raise together instead of the others waiting forever in the next collective for a
        rank 0 that gave up; like the trainer's other collectives, every rank must call this."""
        failure: Exception | None = None
        if self.main:
            try:
                stack.enter_context(out_folder_lock(self.out))
                if checkpoints_state(self.out) != self.ckpt_state:
                    raise OutFolderBusy(
                        f"out: another trainer wrote checkpoints to {self.out} while this one was "
                        "starting (it has finished since); start this one again to continue from them"
                    )
            except Exception as e:  # noqa: BLE001 - any failure is sent to the other ranks first
                failure = e
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            box = [None if failure is None else (isinstance(failure, ConfigError), str(failure))]
            broadcast_object_list(box, from_process=0)
            if failure is None and box[0] is not None:
                is_config, message = box[0]
                failure = ConfigError(message) if is_config else RuntimeError(f"rank 0: {message}")
        if failure is not None:
            raise failure
        for note in self.resume_notes:  # said once the folder is this trainer's, not before a refusal
            log.info(*note)
        self.resume_notes = []

    def _run(
        self,
        guard: PreemptionGuard,
        stop_at_step: int | None,
        progress_bar: bool | None,
        signals: tuple[int, ...],
        local_job: bool,
    ) -> TrainResult:
        cfg = self.cfg
        started = process_start_time()
        if started is not None:
            self.seconds["startup_s"] = time.time() - started
        if self.main:
            # written whole or not at all (a job may be SIGKILLed)
            atomic_write_text(
                self.out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2, default=str)
            )
            if self.forked_from is not None:  # until its first checkpoint, what --resume auto cannot continue
                atomic_write_text(self.out / FORK_FILE, str(self.forked_from))
            elif self.ckpt_path is None:  # a start from step 0 in this folder: no fork's any more
                (self.out / FORK_FILE).unlink(missing_ok=True)
            if self.classes is not None:
                atomic_write_text(self.out / "classes.json", json.dumps(self.class_index(), indent=2))
        self.signal_sync = SignalSync()  # a later run() of this trainer times its steps afresh
        # the guard (`run`) takes the signals: one while the MLflow run is started stops it like one in
        # training, and the deferral that ends the run takes the guard's signals over
        t0 = time.perf_counter()
        try:
            self.start_tracking()
        except BaseException as err:  # a Ctrl-C that stops at once, a store error: not left RUNNING
            self.end_run_on_error(err, local_job)
            raise
        self.seconds["mlflow_s"] += time.perf_counter() - t0
        log.info(
            "training %s (%s params, %.3g train FLOPs/image, peak lr %.3g) for %d steps of %d images "
            "on %d process(es), from step %d", cfg.model.name or "custom DiT",
            f"{param_count(self.dit_cfg):,}", self.fpi, self.peak_lr, self.total, self.batch, self.world,
            self.step,
        )  # fmt: skip
        # a warning from the config is the same on every rank: said once (rank-specific ones by each)
        stale = stale_ema_warning(cfg.optim.ema_decay, self.total) if cfg.eval.eval_every else None
        if self.main and stale:
            log.warning("evaluation samples the EMA model: %s", stale)
        progress = Progress(self.total, self.step, enabled=self.main, use_bar=progress_bar)
        try:
            if cfg.eval.val_every and self.step == 0:
                self.validate()
            try:
                status = self.run_loop(guard, progress, stop_at_step)
            except SamplingStopped:  # a signal during an evaluation: its step saved with `due`
                status = tracking.STATUS_PREEMPTED
            periodic = status == tracking.STATUS_PREEMPTED and self.saved and self.saved[0] == self.step
            ckpt_path = self.saved[1] if periodic else self.save()
            signum = guard.received if status == tracking.STATUS_PREEMPTED else None
            handler = guard.previous_handler(signum) if signum is not None else None
        except BaseException as err:
            failure = timeout_explained(
                err, cfg.dist_timeout_s, self.rank, f"after step {self.step} of {self.total}"
            )
            self.end_run_on_error(failure, local_job)
            if failure is err:
                raise
            raise failure from err
        finally:
            progress.close()
        late = self.end_stopped_run(status, signum, local_job, signals)
        signum = late if signum is None else signum
        signame = signal.Signals(signum).name if signum is not None else None
        if status == tracking.STATUS_PREEMPTED:
            if self.main:  # the others wrote no checkpoint: their "checkpoint None" would read as lost
                reached = stop_at_step is not None and self.step >= stop_at_step
                why = signame or ("stop_at_step" if reached else "a signal to another rank")
                log.warning("stopped at step %d/%d (%s); checkpoint %s; resume with the same --out",
                            self.step, self.total, why, ckpt_path)  # fmt: skip
            if handler is not None:
                log.info("handing %s on to the previously installed handler", signame)
                handler(signum, None)
        else:
            log.info("finished %d steps; train/loss %s, checkpoint %s", self.step, self.last_loss, ckpt_path)
        return TrainResult(
            status=status, step=self.step, total_steps=self.total, out=str(self.out), run_id=self.run_id,
            checkpoint=str(ckpt_path) if ckpt_path else None, images_seen=self.images_seen,
            train_flops=self.fpi * self.images_seen, train_loss=self.last_loss, val_loss=self.last_val,
            eval=self.last_eval, signal=signame,
        )  # fmt: skip

    def run_loop(self, guard: PreemptionGuard, progress: Progress, stop_at_step: int | None = None) -> str:
        """Step until the budget (-> "finished"), a signal or ``stop_at_step`` (-> "preempted"), with
        logging, validation, evaluation and periodic checkpoints at their intervals. The last step, and
        a step a signal stops at, are checkpointed before their validation and evaluation (`due`); a
        resume from that checkpoint runs those still enabled first."""
        cfg = self.cfg
        train_time, interval_images = 0.0, 0
        if self.due:  # resumed from a step checkpointed before its validation / evaluation
            self.run_due(guard, resumed=True)
        while self.step < self.total:
            if self.preempt_requested(guard) or (stop_at_step is not None and self.step >= stop_at_step):
                return tracking.STATUS_PREEMPTED
            t0 = time.perf_counter()
            self.train_step()
            dt = time.perf_counter() - t0
            train_time += dt
            self.seconds["train_s"] += dt
            interval_images += self.batch
            s, last = self.step, self.step == self.total
            if s % cfg.log_every == 0 or last:
                self.log_interval(train_time, interval_images, progress)
                train_time, interval_images = 0.0, 0
            self.due = [k for k, n in self.check_intervals().items() if n and (s % n == 0 or last)]
            if self.due and self.preempt_requested(guard):  # stop now, not after a long evaluation in
                return tracking.STATUS_PREEMPTED  # the grace period: run() checkpoints this step with `due`
            if last and self.due:
                self.save()  # records `due`: a failure below keeps the steps trained
            self.run_due(guard)
            if cfg.checkpoint.every and s % cfg.checkpoint.every == 0 and not last:
                self.saved = (s, self.save())
                # a signal during the write (torchrun's SIGTERM, SLURM's): this is the preemption
                # checkpoint, not another one after more steps, in the grace period before SIGKILL
                if self.preempt_requested(guard, every_call=True):
                    return tracking.STATUS_PREEMPTED
        return tracking.STATUS_FINISHED

    def check_intervals(self) -> dict[str, int]:
        """``{"val": eval.val_every, "eval": eval.eval_every}`` (0 = off), in the order they run."""
        return {"val": self.cfg.eval.val_every, "eval": self.cfg.eval.eval_every}

    def run_due(self, guard: PreemptionGuard, resumed: bool = False) -> None:
        """The validation and evaluation of `due`, in that order, each taken off it once done; a signal
        to ``guard`` stops the evaluation. ``resumed``: the `due` of the checkpoint resumed from, less
        those this config turned off."""
        if resumed:
            self.due = [k for k, n in self.check_intervals().items() if n and k in self.due]
            names = {"val": "validation", "eval": "evaluation"}
            if self.due:
                log.info("step %d: the %s of this step, which its checkpoint was written before", self.step,
                         " and ".join(names[k] for k in self.due))  # fmt: skip
        for kind in list(self.due):
            if kind == "val":
                self.validate()
            else:
                self.evaluate(guard)
            self.due.remove(kind)

    def preempt_requested(self, guard: PreemptionGuard, every_call: bool = False) -> bool:
        """Whether a signal arrived (on any rank). With several processes the ranks agree through
        an all-reduce, when `signal_sync` says so: at most `SIGNAL_SYNC_EVERY` steps and, at the
        step time measured on rank 0, `SIGNAL_SYNC_S` seconds apart, not at every step, to avoid a
        device sync per step (``every_call``: at each call, as between sampling batches, where the
        step stands still). One process: the flag, without any collective."""
        flag = guard.received is not None
        if self.world > 1:
            sync = self.signal_sync
            if not every_call and not sync.due(self.step):
                return False
            proposal = sync.propose(self.step) if self.main else 0
            t = torch.tensor([1.0 if flag else 0.0, float(proposal)], device=self.device)
            flags, interval = self.acc.reduce(t, reduction="sum").tolist()
            sync.agree(self.step, round(interval))  # rank 0's integer plus zeros: the same everywhere
            flag = flags > 0
        return flag

    # ------------------------------------------------------------------ one step
    def lr(self, step: int) -> float:
        """The lr of optimizer step ``step`` (0-based), `dit_core.trainer.lr_schedule.lr_at`."""
        return lr_at(step, self.total, self.cfg.optim, self.peak_lr)

    def train_step(self) -> None:
        """One optimizer step on the next global batch, at lr ``self.lr(self.step)``."""
        x, y = (v.to(self.device, non_blocking=True) for v in self.stream.next_batch())
        u, noise, drop = self.random.draw(self.step, x)
        t = self.diffusion.timesteps_from_uniform(u).to(self.device)
        lr = self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        kwargs = {"y": y} if drop is None else {"y": y, "force_drop_ids": drop}
        loss = self.diffusion.training_losses(self.train_model, x, t, kwargs, noise=noise)["loss"].mean()
        ops = self.update
        ops.backward(self.scaler.scale(loss) if self.scaler else loss)
        if self.cfg.optim.grad_clip > 0:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            ops.clip_grad_norm_(self.cfg.optim.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            ops.optimizer.step()
        ops.optimizer.zero_grad(set_to_none=True)
        self.ema.update()
        self.pending.append(loss.detach())
        self.step += 1
        self.images_seen += self.batch

    # ------------------------------------------------------------------ tracking and logs
    def end_run_on_error(self, err: BaseException, local_job: bool) -> None:
        """End the MLflow run (if started) of a run that stops on ``err``: FAILED with the ``error``
        tag, or, for a Ctrl-C of a sweep's local job, KILLED with ``status=interrupted``. A preemption
        signal meanwhile (the SIGTERM `torchrun` sends every rank once one has died) waits until the run
        is ended (`signals_deferred`). With several processes, another rank leaves its error for rank 0
        (`publish_failure`), which names it first in the tag: rank 0's own is then mostly gloo's lost
        connection to it. Every rank leaves its error, so that one whose process does not end is
        not waited for (`PeerWatch`); so does one that fails while its trainer is built (no run yet)."""
        if self.peer_watch is not None:
            self.peer_watch.claim()  # this thread ends the run, not the watch's
            self.peer_watch.stop()  # and writes to the store alone
        self.end_failed_run(err, local_job)

    def stop_for_peers(self, failed: dict[int, str], busy_at: str) -> None:
        """`PeerWatch`'s: ranks ``failed`` ``{rank: error}`` left their errors and did not end; this
        rank, waiting for them in a collective, ends the run (rank 0; none yet while the trainer is
        built) before its process exits. ``busy_at``: where this rank's main thread is, when one of them
        timed out waiting for it while it was busy on its own (stuck, or slower than the timeout)."""
        ranks = ", ".join(str(rank) for rank in failed)
        if busy_at:
            err: RuntimeError = StuckHere(
                f"rank {ranks} stopped waiting for rank {self.rank} after --dist-timeout-s; rank "
                f"{self.rank} was busy in {busy_at} all that time (stuck there, or slower than the "
                "timeout) and stopped"
            )
        else:
            err = PeerStuck(
                f"rank {ranks} failed and had not ended {PEER_GRACE_S:g} s later; rank {self.rank} stopped "
                "waiting for it"
            )
        if not self.main:  # rank 0 logs each with the tag (`with_peer_failures`)
            for rank, error in failed.items():
                log.error("rank %d failed: %s", rank, error)
        log.error("%s (exit 1)", err)
        self.end_failed_run(err, local_job=False)

    def end_failed_run(self, err: BaseException, local_job: bool) -> None:
        """`end_run_on_error`'s work, once this thread has claimed it; a Ctrl-C (SIGINT, SIGHUP) or a
        preemption signal meanwhile waits, then acts (`signals_deferred`)."""
        if not (self.tracker or self.world > 1):
            return
        with signals_deferred(
            *INTERRUPT_SIGNALS, during="ending the run", again_after_s=SIGINT_ECHO_S
        ) as held:
            text = f"{type(err).__name__}: {err}"
            if self.world > 1:
                publish_failure(self.rank, text)
            if self.world > 1 and self.main:
                text = with_peer_failures(text, peer_failures(self.world))
            if self.tracker:
                self.tracker.set_tags({tracking.ERROR_TAG: text[:5000]})
                ctrl_c = local_job and isinstance(err, KeyboardInterrupt)
                self.tracker.finish(tracking.STATUS_INTERRUPTED if ctrl_c else tracking.STATUS_FAILED)
            if held:  # the signal ends the process as the block ends, before the CLI could say the error
                log.error("%s", err)

    def end_stopped_run(
        self, status: str, signum: int | None, local_job: bool, signals: tuple[int, ...]
    ) -> int | None:
        """End the MLflow run of a run that stopped, ``status`` finished or preempted (on ``signum``; None:
        ``stop_at_step``), its checkpoint written. A Ctrl-C or a preemption signal meanwhile waits until
        the run is ended (`signals_deferred`), then acts (SIGTERM's default ends the process, SIGINT's
        raises KeyboardInterrupt); but a Ctrl-C (SIGINT, SIGHUP) of ``signals``, those the run's guard
        took, finds the run stopped as it asks: returned (the first; else None) for the result to name
        (CLI: exit 130, 129); so does any other of ``signals`` when the run is preempted (dropped: the CLI
        exits 143). A second Ctrl-C over `SIGINT_ECHO_S` after a first held one stops at once."""
        with signals_deferred(
            *INTERRUPT_SIGNALS, during="ending the run", again_after_s=SIGINT_ECHO_S
        ) as held:
            if self.tracker:
                if status == tracking.STATUS_FINISHED:
                    self.log_fixed_cost()
                ctrl_c_stop = local_job and signum in CTRL_C_SIGNALS
                self.tracker.finish(tracking.STATUS_INTERRUPTED if ctrl_c_stop else status)
            ctrl_c = [s for s in signals if s in CTRL_C_SIGNALS]
            late = [s for s in held if s in ctrl_c]
            # a preempted run is stopping as a preemption signal asks (torchrun SIGTERMs every rank once one
            # has exited 143): its CLI still returns 143, not the signal's default death
            again = [s for s in held if s in signals and status == tracking.STATUS_PREEMPTED]
            held[:] = [s for s in held if s not in ctrl_c and s not in again]  # the others act as it ends
        if late or again:
            first = (late or again)[0]
            log.warning("received %s while ending the run, stopped already", signal.Signals(first).name)
        return late[0] if late else None

    def start_tracking(self) -> None:
        """Start or continue the MLflow run (main process) and log the config and derived params."""
        t = self.cfg.tracking
        if not t.enabled and self.run_id and self.untracked_from is None:
            self.untracked_from = self.step  # its MLflow run lacks the steps from here
        if not (self.main and t.enabled):
            return
        given = {
            tracking.SWEEP_TAG: t.sweep,
            tracking.GRID_CELL_TAG: t.grid_cell,
            "mlflow.parentRunId": t.parent_run_id,
        }
        tags = {**t.tags, **{k: v for k, v in given.items() if v}, **tracking.executor_tags()}
        tags[tracking.UNIQUE_IMAGES_TAG] = tracking.unique_images_tag(unique_images(self.train_set))
        fork = self.forked_from is not None
        if fork:
            tags |= {
                tracking.RESUMED_FROM_TAG: str(self.forked_from),
                tracking.RESUMED_FROM_STEP_TAG: str(self.step),
            }
            tags |= {tracking.RESUMED_FROM_RUN_TAG: self.parent_run_id} if self.parent_run_id else {}
        untracked = self.untracked_until
        if untracked is not None:
            tags |= {
                tracking.RESUMED_WITHOUT_HISTORY_TAG: "true",
                tracking.RESUMED_FROM_STEP_TAG: str(untracked),
            }
        self.tracker = tracking.RunTracker.start(
            uri=t.uri, experiment=t.experiment, run_id=self.run_id or t.run_id, run_name=t.run_name,
            tags=tags, out_dir=self.out, reuse_saved_id=self.resume != "never" and not fork,
            spare_run_id=self.parent_run_id,
        )  # fmt: skip
        self.run_id = self.tracker.run_id
        if untracked is not None:
            self.untracked_until = None  # said once: the run keeps its tags
            log.warning(
                "checkpoint %s (step %d) was trained without MLflow tracking (--no-mlflow): MLflow run %s "
                "holds this run's metrics from step %d on only, tagged %s=true and %s=%d; for the whole run "
                "in MLflow, train it again with --out a new folder", self.ckpt_path, untracked, self.run_id,
                untracked + 1, tracking.RESUMED_WITHOUT_HISTORY_TAG, tracking.RESUMED_FROM_STEP_TAG,
                untracked,
            )  # fmt: skip
        self.note_untracked_steps()
        self.tracker.requeue(self.unsent_metrics)
        derived = {
            tracking.MODEL_PARAMS: param_count(self.dit_cfg),
            tracking.MODEL_PARAMS_NON_EMBEDDING: non_embedding_param_count(self.dit_cfg),
            tracking.MODEL_FORWARD_GFLOPS: forward_gflops(self.dit_cfg),
            tracking.MODEL_TRAIN_FLOPS_PER_IMAGE: self.fpi,
            tracking.OPTIM_LR_EFFECTIVE: self.peak_lr,
            tracking.OPTIM_WARMUP_STEPS_EFFECTIVE: self.warmup,
            tracking.DATA_TRAIN_SIZE: len(self.train_set),
            tracking.WORLD_SIZE: self.world,
        }
        commit = tracking.git_commit()
        if commit:
            derived[tracking.GIT_COMMIT] = commit
        self.tracker.log_params({**self.flat, **derived})
        self.tracker.log_dict(dataclasses.asdict(self.cfg), "config.json")
        if self.classes is not None:
            self.tracker.log_dict(self.class_index(), "classes.json")

    def note_untracked_steps(self) -> None:
        """Tag (`UNTRACKED_STEPS_TAG`) and say the steps this continued run has no metrics for: those from
        `untracked_from` to this step, trained with --no-mlflow."""
        first, self.untracked_from = self.untracked_from, None
        if first is None or first >= self.step:
            return
        span = f"{first + 1}-{self.step}"
        held = self.tracker.client.get_run(self.run_id).data.tags.get(tracking.UNTRACKED_STEPS_TAG)
        if span not in (held or "").split(","):  # not twice for a resume that is resumed again
            self.tracker.set_tags({tracking.UNTRACKED_STEPS_TAG: f"{held},{span}" if held else span})
        log.warning(
            "MLflow run %s has no metrics for steps %s: they were trained without MLflow tracking "
            "(--no-mlflow) before checkpoint %s; the run is tagged %s", self.run_id, span, self.ckpt_path,
            tracking.UNTRACKED_STEPS_TAG,
        )  # fmt: skip

    def class_index(self) -> dict[str, int]:
        """``classes.json``: folder data's class name -> label."""
        return {name: i for i, name in enumerate(self.classes)}

    def log_fixed_cost(self) -> None:
        """Send the buffered metrics, then log `FIXED_COST_METRICS` at this step (MLflow time
        includes that flush)."""
        t0 = time.perf_counter()
        self.tracker.flush(timeout=300.0)
        self.seconds["mlflow_s"] += time.perf_counter() - t0
        self.tracker.log_metrics({tracking.PERF_PREFIX + k: v for k, v in self.seconds.items()}, self.step)

    def reduced_pending(self) -> torch.Tensor:
        """Per-step losses since the last log, averaged over ranks ``(K,)`` (a collective);
        FloatingPointError when one is not finite (`check_finite`)."""
        vec = torch.stack(self.pending).float() if self.pending else torch.empty(0)
        if self.world > 1 and self.pending:
            vec = self.acc.reduce(vec.to(self.device), reduction="mean").cpu()
        vec = torch.cat([self.restored_losses, vec])
        self.check_finite(vec)
        return vec

    def check_finite(self, vec: torch.Tensor) -> None:
        bad = (~torch.isfinite(vec)).nonzero()
        if len(bad):
            first = int(bad[0, 0])
            step = self.step - len(vec) + first + 1
            raise FloatingPointError(
                f"non-finite training loss ({float(vec[first])}) at step {step} "
                f"(lr {self.lr(step - 1):.3g}); the run stopped and kept its last good checkpoint "
                f"({latest_checkpoint(self.out) or 'none yet'}). Lower --lr, set --grad-clip, "
                "or use bf16 instead of fp16"
            )

    def log_interval(self, train_time: float, interval_images: int, progress: Progress) -> None:
        """Log the mean training loss of the steps since the last log (at least the one just taken)."""
        vec = self.reduced_pending()
        self.pending, self.restored_losses = [], torch.empty(0)
        self.last_loss = float(vec.mean())
        ips = interval_images / train_time if train_time > 0 else 0.0
        lr = float(self.optimizer.param_groups[0]["lr"])  # what the last step used
        self._log({tracking.TRAIN_LOSS: self.last_loss, tracking.LR: lr, tracking.IMAGES_PER_S: ips})
        progress.update(self.step, self.last_loss, ips, ips / self.batch)

    def _log(self, metrics: dict[str, float]) -> None:
        """``metrics`` at this step, with ``compute/train_flops``, ``data/images_seen`` and the
        data-reuse metrics (`dit_core.data.data_accounting`)."""
        if self.tracker and metrics:
            seen = self.images_seen
            extra = {tracking.TRAIN_FLOPS: self.fpi * seen, tracking.IMAGES_SEEN: float(seen)}
            self.tracker.log_metrics({**metrics, **extra, **data_accounting(self.train_set, seen)}, self.step)

    def validate(self) -> None:
        """``val/loss`` (and ``val/loss_ema``) at this step (`dit_core.trainer.validation`)."""
        models = {tracking.VAL_LOSS: self.model} | (
            {tracking.VAL_LOSS_EMA: self.ema.model} if self.cfg.eval.val_ema else {}
        )
        t0 = time.perf_counter()
        metrics = self.validator(models)
        self.seconds["val_s"] += time.perf_counter() - t0
        if bad := next(((k, v) for k, v in metrics.items() if not math.isfinite(v)), None):
            self.reduced_pending()  # a non-finite training loss is named as such
            raise FloatingPointError(
                f"non-finite validation loss {bad[0]} ({bad[1]}) at step {self.step}; the run stopped and "
                f"kept its last good checkpoint ({latest_checkpoint(self.out) or 'none yet'}). The "
                "validation data may hold non-finite values, or the model overflow on it: check "
                "data.val_root (or the val split), or use bf16 instead of fp16"
            )
        self.last_val = metrics[tracking.VAL_LOSS]
        self._log(metrics)
        log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def evaluate(self, guard: PreemptionGuard | None = None) -> None:
        """Sample metrics ``eval/<name>`` of the EMA model and a sample grid artifact; a signal to
        ``guard`` stops the sampling (`SamplingStopped`)."""
        e, t0 = self.cfg.eval, time.perf_counter()
        spaces: dict[str, str] = {}
        stop = (lambda: self.preempt_requested(guard, every_call=True)) if guard else None
        metrics = evaluate_samples(
            self.ema.model, self.diffusion, self.cfg, self.dit_cfg, self.acc, spaces, stop=stop
        )
        self.last_eval = dict(metrics)
        if self.tracker and e.grid_images > 0 and self.cfg.data.name != "latents":
            grid = sample_grid(
                self.ema.model, self.diffusion, self.cfg, self.dit_cfg, e.grid_images, self.device
            )
            self.tracker.log_image(grid, f"samples/step_{self.step:07d}.png")
        if self.tracker and metrics:
            self.tracker.log_metrics({tracking.EVAL_PREFIX + k: v for k, v in metrics.items()}, self.step)
        if self.tracker and spaces:
            self.tracker.set_tags({tracking.FEATURE_SPACE_TAG: tracking.feature_space_tag(spaces)})
        self.seconds["eval_s"] += time.perf_counter() - t0
        log.info("step %d: eval %s", self.step, metrics)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Write a checkpoint (main process) of the current step; all ranks take part."""
        vec = self.reduced_pending()
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        if not torch.isfinite(torch.stack(norms)).all():
            raise FloatingPointError(
                f"non-finite weights at step {self.step}; the run stopped and kept its last good "
                f"checkpoint ({latest_checkpoint(self.out) or 'none yet'}). Lower --lr or set --grad-clip"
            )
        path = None
        if self.main:
            state = {
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"schedule": self.cfg.optim.schedule, "last_step": self.step,
                              "total_steps": self.total, "lr": self.lr(max(self.step - 1, 0))},
                "rng": get_rng_state(),
                "data_position": self.stream.state_dict(),
                "ledger": {"images_seen": self.images_seen, "train_flops": self.fpi * self.images_seen,
                           "train_flops_per_image": self.fpi, "steps": self.step},
                "step": self.step,
                "config": self.flat,
                "mlflow_run_id": self.run_id or "",
                "folder": str(self.out.resolve()),  # where it was trained: `check_not_a_copy`
                "loop": {"pending_losses": [float(v) for v in vec], "last_loss": self.last_loss,
                         "last_val": self.last_val, "due": list(self.due),
                         "untracked_from": self.untracked_from,
                         "unsent_metrics": self.tracker.unsent_points() if self.tracker else []},
            }  # fmt: skip
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
            manifest = getattr(self.train_set, "manifest", None) if self.cfg.data.name == "latents" else None
            if manifest:  # what decoding divides by, wherever the checkpoint is sampled (`latent_scale`)
                state["latent_scale"] = float(manifest["scale_factor"])
            if self.classes is not None:
                state["classes"] = self.classes
            path = save_checkpoint(self.out, state, keep_last=self.cfg.checkpoint.keep_last)
        self.acc.wait_for_everyone()
        return path
