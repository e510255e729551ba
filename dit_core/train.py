"""Train one DiT: the job every sweep cell runs.

    python -m dit_core.train --model DiT-S/2 --data digits --image-size 16 --max-steps 2000
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no -m dit_core.train --train-flops 1e13 --global-batch-size 32 --out runs/a

``train(cfg)`` is the library entry point (the sweep calls it in-process); the CLI is a thin layer
that builds a `TrainConfig` from flags. See docs/training.md for the loop, resume semantics,
signals and the MLflow schema.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import (
    BudgetConfig,
    CheckpointConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrackingConfig,
    TrainConfig,
    apply_flat,
    load_yaml_config,
    resolve_budget_steps,
)
from .data import build_dataset, data_accounting, default_reference, unique_images
from .diffusion import create_diffusion
from .ema import EMA
from .flops import forward_gflops, param_count, train_flops_per_image
from .models import DiT
from .trainer.data_stream import DataStream
from .trainer.lr_schedule import lr_at
from .trainer.progress import Progress
from .trainer.rng import StepRandom, get_rng_state, set_rng_state
from .trainer.signals import PreemptionGuard

log = logging.getLogger(__name__)

__all__ = [
    "BudgetConfig",
    "CheckpointConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainResult",
    "build_parser",
    "config_from_args",
    "main",
    "resolve_config",
    "train",
]

#: Exit code of the CLI when a signal stopped the run after a checkpoint (128 + SIGTERM).
EXIT_PREEMPTED = 143

#: With several processes, steps between the all-reduces that agree on a received signal.
SIGNAL_SYNC_EVERY = 10

#: Fields that may change when a run is resumed (the rest must match the checkpoint).
RESUMABLE_CHANGES = ("tracking.", "checkpoint.", "eval.", "budget.max_steps", "budget.train_flops",
                     "num_workers", "log_every", "out", "compile", "grad_checkpointing")  # fmt: skip


@dataclass
class TrainResult:
    """What a run ended with. status: "finished" or "preempted" (a checkpoint was written and the
    run can be resumed); failures raise instead."""

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


# ---------------------------------------------------------------------- config resolution
def resolve_config(cfg: TrainConfig, dataset) -> TrainConfig:
    """Fill the model's open fields from ``dataset`` and the diffusion, and the budget's step count
    (``budget.max_steps``) and planned FLOPs (``budget.train_flops``); see `ModelConfig.resolve`."""
    needs_sigma = cfg.diffusion.model_learns_sigma
    if cfg.model.learn_sigma is not None and cfg.model.learn_sigma != needs_sigma:
        raise ValueError(
            f"model.learn_sigma={cfg.model.learn_sigma} but the diffusion (objective="
            f"{cfg.diffusion.objective!r}, learn_sigma={cfg.diffusion.learn_sigma}) needs {needs_sigma}; "
            "leave model.learn_sigma unset or set diffusion.learn_sigma to match"
        )
    model = cfg.model.resolve(
        input_size=int(dataset.resolution),
        in_channels=int(dataset.channels),
        num_classes=int(dataset.num_classes),
        learn_sigma=needs_sigma,
    )
    if (model.input_size, model.in_channels) != (dataset.resolution, dataset.channels):
        raise ValueError(
            f"model input {model.in_channels}x{model.input_size}x{model.input_size} does not match the "
            f"data ({dataset.channels}x{dataset.resolution}x{dataset.resolution}); leave "
            "model.input_size / model.in_channels unset to take them from the data"
        )
    fpi = train_flops_per_image(model.to_dit_config())
    steps = resolve_budget_steps(cfg.budget, fpi)
    flops = cfg.budget.train_flops
    if flops is None:
        flops = float(steps * cfg.budget.global_batch_size * fpi)
    budget = dataclasses.replace(cfg.budget, max_steps=steps, train_flops=flops)
    return dataclasses.replace(cfg, model=model, budget=budget)


def _check_resumable(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    from .tracking import format_param

    diff = [
        f"{k}: {format_param(saved.get(k))!r} -> {format_param(v)!r}"
        for k, v in now.items()
        if not k.startswith(RESUMABLE_CHANGES) and format_param(saved.get(k)) != format_param(v)
    ]
    if diff:
        raise ValueError(
            f"the checkpoint {path} was written by a different config ({'; '.join(diff[:8])}); "
            "use a new --out for a new run, or --resume never to start over in this folder"
        )


# ---------------------------------------------------------------------- the loop
class _Trainer:
    """State of one run; `train` drives it. Kept as one object so checkpointing sees everything."""

    def __init__(self, cfg: TrainConfig, accelerator, resume: str, train_set=None):
        self.acc = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.main = accelerator.is_main_process
        self.device = accelerator.device
        self.out = Path(cfg.out)
        self.train_set = train_set if train_set is not None else build_dataset(cfg.data, "train")
        self.cfg = cfg = resolve_config(cfg, self.train_set)
        self.flat = cfg.to_flat_dict()
        self.total = int(cfg.budget.max_steps)
        self.dit_cfg = cfg.model.to_dit_config(grad_checkpointing=cfg.grad_checkpointing)
        self.fpi = train_flops_per_image(self.dit_cfg)
        self.batch = cfg.budget.global_batch_size

        self.resume = resume
        self.ckpt_path = self._find_checkpoint(resume)
        ckpt = load_checkpoint(self.ckpt_path) if self.ckpt_path else None
        if ckpt is not None:
            _check_resumable(ckpt["config"], self.flat, self.ckpt_path)

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = DiT.from_config(self.dit_cfg).to(self.device)
        self.ema = EMA(self.model, cfg.optim.ema_decay)
        o = cfg.optim
        # fused AdamW (CUDA, and CPU since torch 2.4): 3-6x faster than foreach on CPU (14-18 ms vs
        # 60-88 ms per DiT-S/2 step here), which matters for the demo's small models
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay, fused=True,
        )  # fmt: skip
        self.diffusion = create_diffusion(cfg.diffusion)
        self.stream = DataStream(
            self.train_set, self.batch, seed=cfg.seed, rank=self.rank, world_size=self.world,
            num_workers=cfg.num_workers,
        )  # fmt: skip
        self.random = StepRandom(cfg.seed, self.device, cfg.model.class_dropout_prob, self.rank, self.world)
        self.step, self.images_seen = 0, 0
        self.pending: list[torch.Tensor] = []  # per-step losses since the last log (rank-reduced on save)
        self.last_loss: float | None = None
        self.last_val: float | None = None
        self.last_eval: dict[str, float] = {}
        self.run_id: str | None = None
        if ckpt is not None:
            self._load(ckpt)

        self.train_model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.tracker = None
        self._val_data = None

    # ------------------------------------------------------------------ resume
    def _find_checkpoint(self, resume: str) -> Path | None:
        if resume == "auto":
            return latest_checkpoint(self.out)
        if resume == "never":
            if latest_checkpoint(self.out) is not None:
                raise ValueError(
                    f"{self.out} already holds checkpoints and --resume never was given; "
                    "use a new --out, or --resume auto to continue that run"
                )
            return None
        p = Path(resume)
        if p.is_dir():
            found = latest_checkpoint(p)
            if found is None:
                raise ValueError(f"--resume {resume}: no checkpoint in that folder")
            return found
        if not p.is_file():
            raise ValueError(
                f"--resume must be 'auto', 'never' or a checkpoint file/run folder; {p} does not exist"
            )
        return p

    def _load(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.stream.load_state_dict(ckpt["data_position"])
        set_rng_state(ckpt["rng"])
        scaler = getattr(self.acc, "scaler", None)
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.images_seen = int(ckpt["ledger"]["images_seen"])
        loop = ckpt.get("loop", {})
        self.pending = [torch.tensor(v, dtype=torch.float32) for v in loop.get("pending_losses", [])]
        self.last_loss, self.last_val = loop.get("last_loss"), loop.get("last_val")
        self.run_id = ckpt.get("mlflow_run_id") or None
        log.info("resumed from %s at step %d (%d images seen)", self.ckpt_path, self.step, self.images_seen)

    # ------------------------------------------------------------------ tracking
    def start_tracking(self) -> None:
        t = self.cfg.tracking
        if not (self.main and t.enabled):
            return
        from .tracking import RunTracker, executor_tags, git_commit

        tags = dict(t.tags)
        tags.update({k: v for k, v in (("sweep", t.sweep), ("grid_cell", t.grid_cell)) if v})
        if t.parent_run_id:
            tags["mlflow.parentRunId"] = t.parent_run_id
        tags.update(executor_tags())
        tags["data.unique_images"] = str(unique_images(self.train_set) or "unbounded")
        run_id = self.run_id or t.run_id
        self.tracker = RunTracker.start(
            uri=t.uri, experiment=t.experiment, run_id=run_id, run_name=t.run_name, tags=tags,
            out_dir=self.out, reuse_saved_id=self.resume != "never",
        )  # fmt: skip
        self.run_id = self.tracker.run_id
        derived = {
            "model.params": param_count(self.dit_cfg),
            "model.forward_gflops": forward_gflops(self.dit_cfg),
            "model.train_flops_per_image": self.fpi,
            "data.train_size": len(self.train_set),
            "world_size": self.world,
        }
        commit = git_commit()
        if commit:
            derived["git.commit"] = commit
        self.tracker.log_params({**self.flat, **derived})
        self.tracker.log_dict(dataclasses.asdict(self.cfg), "config.json")

    # ------------------------------------------------------------------ pieces of a step
    def ledger(self) -> dict[str, Any]:
        return {
            "images_seen": self.images_seen,
            "train_flops": self.fpi * self.images_seen,
            "train_flops_per_image": self.fpi,
            "steps": self.step,
        }

    def reduced_pending(self) -> torch.Tensor:
        """Per-step losses since the last log, averaged over ranks ``(K,)`` (a collective)."""
        if not self.pending:
            return torch.empty(0)
        vec = torch.stack(self.pending).float()
        if self.world > 1:
            vec = self.acc.reduce(vec.to(self.device), reduction="mean").cpu()
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

    def lr(self, step: int) -> float:
        return lr_at(step, self.total, self.cfg.optim)

    def train_step(self) -> None:
        x, y = self.stream.next_batch()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        u, noise, drop = self.random.draw(self.step, x)
        t = self.diffusion.timesteps_from_uniform(u).to(self.device)
        lr = self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        kwargs = {"y": y} if drop is None else {"y": y, "force_drop_ids": drop}
        loss = self.diffusion.training_losses(self.train_model, x, t, kwargs, noise=noise)["loss"].mean()
        self.acc.backward(loss)
        if self.cfg.optim.grad_clip > 0:
            self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update()
        self.pending.append(loss.detach())
        self.step += 1
        self.images_seen += self.batch

    def log_interval(self, train_time: float, interval_images: int, progress: Progress) -> None:
        vec = self.reduced_pending()
        self.check_finite(vec)
        self.pending = []
        if len(vec) == 0:
            return
        self.last_loss = float(vec.mean())
        ips = interval_images / train_time if train_time > 0 else 0.0
        led = self.ledger()
        metrics = {
            "train/loss": self.last_loss,
            "lr": self.lr(self.step - 1),
            "compute/train_flops": led["train_flops"],
            "data/images_seen": float(led["images_seen"]),
            "perf/images_per_s": ips,
            **data_accounting(self.train_set, led["images_seen"]),
        }
        if self.tracker:
            self.tracker.log_metrics(metrics, self.step)
        progress.update(self.step, self.last_loss, ips, ips / self.batch)

    # ------------------------------------------------------------------ validation / evaluation
    def validate(self) -> None:
        from .diffusion import validation_losses

        if self._val_data is None:
            val = build_dataset(self.cfg.data, "val")
            n = min(self.cfg.eval.val_examples, len(val))
            lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
            items = [val[i] for i in range(lo, hi)]
            xs = torch.stack([a for a, _ in items]) if items else torch.empty(0)
            ys = torch.stack([torch.as_tensor(b) for _, b in items]) if items else torch.empty(0)
            self._val_data = (xs.to(self.device), ys.to(self.device), lo)
        x, y, lo = self._val_data
        metrics = {}
        models = [("val/loss", self.model)] + (
            [("val/loss_ema", self.ema.model)] if self.cfg.eval.val_ema else []
        )
        for key, model in models:
            if len(x):
                with self.acc.autocast():
                    losses = validation_losses(
                        self.diffusion, model, x, y, seed=self.cfg.eval.val_seed, index_offset=lo,
                        batch_size=self.cfg.eval.batch_size or None,
                    )  # fmt: skip
                sums = torch.tensor([losses.sum().item(), float(len(losses))], dtype=torch.float64)
            else:
                sums = torch.zeros(2, dtype=torch.float64)
            if self.world > 1:
                sums = self.acc.reduce(sums.to(self.device), reduction="sum").cpu()
            metrics[key] = float(sums[0] / sums[1])
        self.last_val = metrics["val/loss"]
        if self.tracker:
            led = self.ledger()
            metrics["compute/train_flops"] = led["train_flops"]
            metrics["data/images_seen"] = float(led["images_seen"])
            metrics.update(data_accounting(self.train_set, led["images_seen"]))
            self.tracker.log_metrics(metrics, self.step)
        log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def evaluate(self) -> None:
        e = self.cfg.eval
        data = self.cfg.data
        reference = e.reference or default_reference(data)
        cfg_scale = e.cfg_scale if self.cfg.model.class_dropout_prob > 0 else 1.0
        metrics: dict[str, float] = {}
        if data.name == "latents":
            log.warning(
                "eval: latent runs are scored from checkpoints with a VAE (dit_core.evaluate); skipped"
            )
        elif reference is None:
            log.warning("eval: no eval.reference set for %s data; sample metrics skipped", data.name)
        else:
            from .evaluate import evaluate_model
            from .evaluate.metrics import DIGITS_METRICS

            names = e.metrics or (DIGITS_METRICS if reference.startswith("digits") else ("fid",))
            metrics = evaluate_model(
                self.ema.model, self.diffusion, num_samples=e.num_samples, batch_size=e.batch_size,
                sampler=e.sampler, steps=e.steps, cfg_scale=cfg_scale, seed=self.cfg.seed,
                num_classes=self.dit_cfg.num_classes, image_size=self.dit_cfg.input_size,
                channels=self.dit_cfg.in_channels, reference=reference, metrics=tuple(names),
                accelerator=self.acc if self.world > 1 else None,
            )  # fmt: skip
        self.last_eval = dict(metrics)
        if self.tracker and e.grid_images > 0 and data.name != "latents":
            grid = self._sample_grid(e.grid_images, cfg_scale)
            self.tracker.log_image(grid, f"samples/step_{self.step:07d}.png")
        if self.tracker and metrics:
            self.tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, self.step)
        log.info("step %d: eval %s", self.step, metrics)

    @torch.no_grad()
    def _sample_grid(self, n: int, cfg_scale: float):
        """A uint8 ``(H, W, C)`` grid of ``n`` EMA samples, labels cycling through the classes."""
        from torchvision.utils import make_grid

        from .diffusion import sample

        e = self.cfg.eval
        c, s = self.dit_cfg.in_channels, self.dit_cfg.input_size
        y = torch.arange(n, device=self.device) % self.dit_cfg.num_classes
        g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        imgs = sample(self.ema.model, self.diffusion, (n, c, s, s), y, sampler=e.sampler, steps=e.steps,
                      cfg_scale=cfg_scale, generator=g)  # fmt: skip
        grid = make_grid(imgs.float().clamp(-1, 1).cpu(), nrow=int(math.ceil(math.sqrt(n))), padding=1)
        grid = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return grid[..., :1].repeat(3, axis=2) if c == 1 else grid[..., :3]

    # ------------------------------------------------------------------ checkpoints
    def weights_finite(self) -> bool:
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        return bool(torch.isfinite(torch.stack(norms)).all())

    def save(self) -> Path | None:
        """Write a checkpoint (main process) of the current step; all ranks take part."""
        vec = self.reduced_pending()
        self.check_finite(vec)
        if not self.weights_finite():
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
                "ledger": self.ledger(),
                "step": self.step,
                "config": self.flat,
                "mlflow_run_id": self.run_id or "",
                "loop": {"pending_losses": [float(v) for v in vec], "last_loss": self.last_loss,
                         "last_val": self.last_val},
            }  # fmt: skip
            scaler = getattr(self.acc, "scaler", None)
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            path = save_checkpoint(self.out, state, keep_last=self.cfg.checkpoint.keep_last)
        self.acc.wait_for_everyone()
        return path

    def run_loop(self, guard: PreemptionGuard, progress: Progress, stop_at_step: int | None = None) -> str:
        """Step until the budget (-> "finished"), a signal or ``stop_at_step`` (-> "preempted"), with
        logging, validation, evaluation and periodic checkpoints at their intervals."""
        cfg, e = self.cfg, self.cfg.eval
        train_time, interval_images = 0.0, 0
        while self.step < self.total:
            if self.preempt_requested(guard) or (stop_at_step is not None and self.step >= stop_at_step):
                return "preempted"
            t0 = time.perf_counter()
            self.train_step()
            train_time += time.perf_counter() - t0
            interval_images += self.batch
            s = self.step
            if s % cfg.log_every == 0 or s == self.total:
                self.log_interval(train_time, interval_images, progress)
                train_time, interval_images = 0.0, 0
            last = s == self.total
            if e.val_every and (s % e.val_every == 0 or last):
                self.validate()
            if e.eval_every and (s % e.eval_every == 0 or last):
                self.evaluate()
            if cfg.checkpoint.every and s % cfg.checkpoint.every == 0 and s < self.total:
                self.save()
        return "finished"

    def preempt_requested(self, guard: PreemptionGuard) -> bool:
        """Whether a signal arrived (on any rank). With several processes the ranks agree through
        an all-reduce, done every `SIGNAL_SYNC_EVERY` steps to avoid a device sync per step."""
        flag = guard.received is not None
        if self.world > 1:
            if self.step % SIGNAL_SYNC_EVERY:
                return False
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            flag = bool(self.acc.reduce(t, reduction="sum").item() > 0)
        return flag


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if cfg.precision == "fp16" and not cuda:
        raise ValueError("precision fp16 needs a CUDA GPU; use --precision bf16 (or no) on CPU")
    return Accelerator(cpu=not cuda, mixed_precision=cfg.precision)


def train(
    cfg: TrainConfig,
    *,
    resume: str = "auto",
    stop_at_step: int | None = None,
    accelerator=None,
    progress_bar: bool | None = None,
    train_set=None,
) -> TrainResult:
    """Train ``cfg`` to its budget (or until a preemption signal) and return a `TrainResult`.

    resume: "auto" (continue from ``<cfg.out>`` if it holds a checkpoint), "never" (error if it
    does), or a checkpoint file / run folder. stop_at_step: behave as if preempted once this step
    is reached (checkpoint, MLflow status "preempted"); for tests and time-sliced jobs.
    train_set: use this dataset instead of ``build_dataset(cfg.data)`` (items ``(x, y)``, attributes
    ``resolution``, ``channels``, ``num_classes``). progress_bar: None = a tqdm bar on a terminal.
    Raises FloatingPointError on a non-finite loss (MLflow run marked failed).
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"train() takes a TrainConfig, got {type(cfg).__name__}")
    acc = accelerator or _make_accelerator(cfg)
    try:
        return _run(_Trainer(cfg, acc, resume, train_set), stop_at_step, progress_bar)
    finally:
        if accelerator is None and acc.num_processes == 1:
            # let the next in-process run pick another precision (Accelerate keeps a singleton state)
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)


def _run(tr: _Trainer, stop_at_step: int | None, progress_bar: bool | None) -> TrainResult:
    cfg = tr.cfg
    if tr.main:
        import json

        tr.out.mkdir(parents=True, exist_ok=True)
        (tr.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    tr.start_tracking()
    log.info(
        "training %s (%s params, %.3g train FLOPs/image) for %d steps of %d images on %d process(es), "
        "from step %d", cfg.model.name or "custom DiT", f"{param_count(tr.dit_cfg):,}", tr.fpi, tr.total,
        tr.batch, tr.world, tr.step,
    )  # fmt: skip
    progress = Progress(tr.total, tr.step, enabled=tr.main, use_bar=progress_bar)
    ckpt_path, signum = None, None
    try:
        with PreemptionGuard() as guard:
            if cfg.eval.val_every and tr.step == 0:
                tr.validate()
            status = tr.run_loop(guard, progress, stop_at_step)
            ckpt_path = tr.save()
            signum = guard.received if status == "preempted" else None
            prev_handler = guard.previous_handler(signum) if signum is not None else None
        progress.close()
    except BaseException as err:
        progress.close()
        if tr.tracker:
            tr.tracker.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
            tr.tracker.finish("failed")
        raise
    if tr.tracker:
        tr.tracker.finish(status)
    import signal as _signal

    signame = _signal.Signals(signum).name if signum is not None else None
    result = TrainResult(
        status=status, step=tr.step, total_steps=tr.total, out=str(tr.out), run_id=tr.run_id,
        checkpoint=str(ckpt_path) if ckpt_path else None, images_seen=tr.images_seen,
        train_flops=tr.fpi * tr.images_seen, train_loss=tr.last_loss, val_loss=tr.last_val,
        eval=tr.last_eval, signal=signame,
    )  # fmt: skip
    if status == "preempted":
        log.warning("stopped at step %d/%d (%s); checkpoint %s; resume with the same --out",
                    tr.step, tr.total, signame or "stop_at_step", ckpt_path)  # fmt: skip
        if prev_handler is not None:
            log.info("handing %s on to the previously installed handler", signame)
            prev_handler(signum, None)
    else:
        log.info("finished %d steps; train/loss %s, checkpoint %s", tr.step, tr.last_loss, ckpt_path)
    return result


# ---------------------------------------------------------------------- CLI
#: (flags, dotted field, type, help) of the friendly CLI options; anything else: --set key=value.
_FLAGS: list[tuple[tuple[str, ...], str, Any, str]] = [
    (("--model",), "model.name", str, "official model name DiT-{S,B,L,XL}/{2,4,8} (default DiT-S/2)"),
    (("--depth",), "model.depth", int, "custom number of blocks (overrides --model)"),
    (("--hidden-size", "--width"), "model.hidden_size", int, "custom width"),
    (("--num-heads", "--heads"), "model.num_heads", int, "custom number of attention heads"),
    (("--patch-size",), "model.patch_size", int, "patch size"),
    (("--pos-embed",), "model.pos_embed", str, "sincos | rope"),
    (("--block-type",), "model.block_type", str, "adaln_zero | adaln | cross_attention | in_context"),
    (("--objective",), "diffusion.objective", str, "eps | v | x0 | flow (default eps)"),
    (("--noise-schedule",), "diffusion.schedule", str, "linear | cosine | quadratic"),
    (("--data",), "data.name", str, "digits | photos | imagefolder | latents (default digits)"),
    (("--data-root",), "data.root", str, "folder for imagefolder / latents"),
    (("--image-size",), "data.image_size", int, "pixel resolution (digits, imagefolder; default 16)"),
    (("--max-steps",), "budget.max_steps", int, "stop after this many optimizer steps"),
    (("--train-flops",), "budget.train_flops", float, "stop at this training budget (true FLOPs)"),
    (
        ("--global-batch-size", "--batch-size"),
        "budget.global_batch_size",
        int,
        "images per step over all processes (default 32)",
    ),
    (("--lr",), "optim.lr", float, "AdamW learning rate (default 1e-4)"),
    (("--weight-decay",), "optim.weight_decay", float, "AdamW weight decay (default 0)"),
    (("--warmup-steps",), "optim.warmup_steps", int, "linear warmup steps (default 0)"),
    (("--schedule",), "optim.schedule", str, "constant | cosine | constant_cooldown"),
    (("--cooldown-frac",), "optim.cooldown_frac", float, "fraction of steps in the cooldown (0.2)"),
    (("--grad-clip",), "optim.grad_clip", float, "max gradient norm, 0 = off (default 0)"),
    (("--ema-decay",), "optim.ema_decay", float, "EMA decay (default 0.9999)"),
    (("--val-every",), "eval.val_every", int, "steps between validation losses (+ the last step), 0 = off"),
    (("--val-examples",), "eval.val_examples", int, "validation images (default 256)"),
    (("--eval-every",), "eval.eval_every", int, "steps between FID evaluations (+ the last step), 0 = off"),
    (("--num-samples",), "eval.num_samples", int, "samples per evaluation (default 500)"),
    (("--sampler",), "eval.sampler", str, "ddim | ddpm | euler | heun"),
    (("--sample-steps",), "eval.steps", int, "sampler steps (default 50)"),
    (("--cfg-scale",), "eval.cfg_scale", float, "classifier-free guidance scale (default 1.5)"),
    (("--reference",), "eval.reference", str, "FID reference (default: digits / held-out photos crops)"),
    (("--ckpt-every",), "checkpoint.every", int, "steps between checkpoints, 0 = end only (1000)"),
    (("--keep-last",), "checkpoint.keep_last", int, "checkpoints to keep, 0 = all (default 2)"),
    (("--tracking-uri",), "tracking.uri", str, "MLflow URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"),
    (("--experiment",), "tracking.experiment", str, "MLflow experiment (default ditscale)"),
    (("--run-name",), "tracking.run_name", str, "MLflow run name"),
    (("--run-id",), "tracking.run_id", str, "continue this existing MLflow run"),
    (("--sweep",), "tracking.sweep", str, "sweep id (param and tag)"),
    (("--grid-cell",), "tracking.grid_cell", str, "grid cell id (param and tag)"),
    (("--out",), "out", str, "run folder: checkpoints, config.json, mlflow_run_id (runs/train)"),
    (("--seed",), "seed", int, "seed of weights, data order and noise (default 0)"),
    (("--precision",), "precision", str, "no | bf16 | fp16 (fp16 needs CUDA)"),
    (("--num-workers",), "num_workers", int, "DataLoader worker processes (default 0)"),
    (("--log-every",), "log_every", int, "steps between train/loss logs (default 50)"),
]

_EPILOG = """\
examples:
  # 200 steps of DiT-S/2 on 16 px digits, validation every 50 steps, logged to ./mlflow.db
  python -m dit_core.train --model DiT-S/2 --data digits --image-size 16 --max-steps 200 --val-every 50

  # a compute budget instead of steps (steps = floor(FLOPs / (train FLOPs per image * batch)))
  python -m dit_core.train --model DiT-B/4 --train-flops 1e14 --global-batch-size 64 --out runs/b4

  # a tiny custom model, cosine schedule with warmup, any other field with --set
  python -m dit_core.train --model none --depth 2 --width 32 --heads 2 --patch-size 2 \\
      --schedule cosine --warmup-steps 20 --max-steps 500 --set optim.beta2=0.95

  # two CPU processes (gloo)
  accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
      --dynamo_backend no -m dit_core.train --max-steps 100 --global-batch-size 32

resume and signals:
  Running again with the same --out continues from its latest checkpoint and the same MLflow run
  (--resume auto, the default). SIGTERM, SIGUSR1 or SIGUSR2 write a checkpoint at the next step and
  exit with code 143; the MLflow run is tagged status=preempted. Exit codes: 0 finished,
  1 training error (e.g. non-finite loss), 2 bad arguments or config, 143 preempted.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dit_core.train",
        description="Train one DiT (the job every sweep cell runs); logs to MLflow, checkpoints to --out.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of fields (nested or dotted); flags win")
    for flags, key, typ, help_ in _FLAGS:
        meta = key.rsplit(".", 1)[-1].upper()
        p.add_argument(*flags, dest=key, type=typ, default=None, metavar=meta, help=f"{help_} [{key}]")
    p.add_argument("--no-flip", dest="data.random_flip", action="store_const", const=False, default=None,
                   help="no random horizontal flips [data.random_flip]")  # fmt: skip
    p.add_argument("--grad-checkpointing", dest="grad_checkpointing", action="store_const", const=True,
                   default=None, help="activation checkpointing per block")  # fmt: skip
    p.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                   help="torch.compile the model")  # fmt: skip
    p.add_argument("--no-mlflow", dest="tracking.enabled", action="store_const", const=False, default=None,
                   help="do not log to MLflow")  # fmt: skip
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow tag")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any TrainConfig field by its dotted name, e.g. --set optim.beta2=0.95")  # fmt: skip
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (continue --out if it has a checkpoint; default) | never | PATH",
    )
    p.add_argument("--print-config", action="store_true", help="print the config as flat fields and exit")
    return p


def _key_value(item: str, what: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{what} {item!r} is not KEY=VALUE")
    return key.strip(), value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config YAML < flags < --set."""
    cfg = load_yaml_config(args.config) if args.config else TrainConfig()
    flat: dict[str, Any] = {}
    top_level = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in vars(args).items():
        if ("." in key or key in top_level) and value is not None:
            flat[key] = value
    if (flat.get("model.name") or "").lower() in ("none", "custom"):
        flat["model.name"] = None
    if args.tag:
        tags = dict(cfg.tracking.tags)
        tags.update(_key_value(t, "--tag") for t in args.tag)
        flat["tracking.tags"] = tags
    for item in args.set:
        k, v = _key_value(item, "--set")
        flat[k] = v
    return apply_flat(cfg, flat)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate import PartialState

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        for k, v in cfg.to_flat_dict().items():
            print(f"{k} = {v!r}")
        return 0
    code = 0
    try:
        state = PartialState(cpu=not torch.cuda.is_available())
        if not state.is_main_process:
            logging.getLogger().setLevel(logging.WARNING)
        result = train(cfg, resume=args.resume)
        code = EXIT_PREEMPTED if result.status == "preempted" else 0
    except ValueError as e:
        log.error("%s", e)
        code = 2
    except FloatingPointError as e:
        log.error("%s", e)
        code = 1
    state = PartialState()
    if state.num_processes > 1:
        # torch + gloo can abort at interpreter exit (notes/dependencies.md section 5): leave directly
        if code == 0:
            state.wait_for_everyone()
        state.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
