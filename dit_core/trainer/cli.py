"""``python -m dit_core.train`` (also ``ditscale-train``): a thin CLI over `Trainer`.

Every `TrainConfig` field is a flag by its dotted name (``--optim.lr``), with the help text of its
dataclass docstring and its real default; `ALIASES` gives the short names of the common ones.
Precedence: defaults <- ``--config FILE.yaml`` <- ``--set KEY=VALUE`` <- flags.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys

import torch.distributed as dist

from ..config import TrainConfig, read_yaml_config
from ..configio import (
    ConfigError,
    add_field_flags,
    apply_flat,
    flags_to_flat,
    join_negative_values,
    stdout_closed,
)
from ..memory import out_of_memory
from ..spec import model_config, model_label
from ..tracking import STATUS_FINISHED, check_tracking_server
from .ranklog import CollectiveTimeout, exit_now, failed_peers, process_state, raised_waiting
from .signals import INTERRUPT_SIGNALS

log = logging.getLogger("dit_core.train")

__all__ = ["ALIASES", "EXIT_PREEMPTED", "build_parser", "config_from_args", "main"]

#: Exit code of the CLI when a signal stopped the run after a checkpoint (128 + SIGTERM).
EXIT_PREEMPTED = 143
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_HANGUP = 129  # 128 + SIGHUP: its terminal closed, taken as a Ctrl-C
TRACKING_HINT = "start it, pass --tracking-uri sqlite:///mlflow.db (a local file), or --no-mlflow"

#: Fields that also take their own name as a flag (``optim.lr`` -> ``--lr``, ``_`` as ``-``).
SHORT_NAMED = (
    "model.depth", "model.hidden_size", "model.num_heads", "model.patch_size", "model.pos_embed",
    "model.block_type", "diffusion.objective", "data.image_size", "budget.max_steps", "budget.train_flops",
    "budget.global_batch_size", "optim.lr", "optim.lr_scaling", "optim.lr_base_width", "optim.lr_flops_ref",
    "optim.lr_flops_exponent", "optim.weight_decay", "optim.warmup_steps", "optim.warmup_frac",
    "optim.schedule", "optim.cooldown_frac", "optim.min_lr_ratio", "optim.grad_clip", "optim.ema_decay",
    "eval.val_every", "eval.val_examples", "eval.eval_every", "eval.num_samples", "eval.sampler",
    "eval.cfg_scale", "eval.reference", "checkpoint.keep_last", "tracking.experiment", "tracking.run_name",
    "tracking.run_id", "tracking.sweep", "tracking.grid_cell", "grad_checkpointing", "num_workers",
    "log_every", "dist_timeout_s",
)  # fmt: skip
#: Short flags for common fields (flag -> dotted field); every field also has ``--<dotted.name>``.
ALIASES = {"--" + key.rpartition(".")[2].replace("_", "-"): key for key in SHORT_NAMED} | {
    "--model": "model.name", "--width": "model.hidden_size", "--heads": "model.num_heads",
    "--noise-schedule": "diffusion.schedule", "--data": "data.name", "--data-root": "data.root",
    "--batch-size": "budget.global_batch_size", "--sample-steps": "eval.steps",
    "--ckpt-every": "checkpoint.every", "--tracking-uri": "tracking.uri",
}  # fmt: skip

#: Flags that switch a bool field off.
NEGATIONS = {"--no-flip": "data.random_flip", "--no-mlflow": "tracking.enabled"}

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
  (--resume auto, the default). --resume PATH of another run folder forks it into an --out without
  checkpoints: its training state continues in a new MLflow run (tagged resumed_from), and that
  folder's run is left alone; relaunch a fork with --resume auto (before its first checkpoint:
  with its --resume PATH again; auto then says so). A run whose final validation or
  evaluation failed has its last step checkpointed: running again only does those and finishes the
  run. One trainer at a time may use an --out (it holds <out>/.train.lock;
  a second one exits with 2). SIGTERM, SIGUSR1 or SIGUSR2 write a checkpoint at the next step and
  exit with code 143; Ctrl-C (SIGINT) does the same and exits with 130 (Ctrl-C twice stops at once,
  without the checkpoint), and so does a closed terminal (SIGHUP, exit 129; unless started under
  nohup); the MLflow run is tagged status=preempted. Exit codes: 0 finished, 1 training error (e.g.
  non-finite loss), 2 bad arguments or config, 129 terminal closed, 130 Ctrl-C, 141 the reader of
  --print-config left (`| head`), 143 preempted.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dit_core.train",
        description="Train one DiT (the job every sweep cell runs); logs to MLflow, checkpoints to --out. "
        "Precedence: defaults <- --config <- --set <- flags.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_argument_group("run")
    run.add_argument("--config", metavar="FILE.yaml", help="YAML file of fields, nested or dotted")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any field by its dotted name, e.g. --set optim.beta2=0.95")  # fmt: skip
    run.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow tag")
    run.add_argument(
        "--resume", default="auto",
        help="auto (continue --out if it has a checkpoint) | never | PATH (a checkpoint or run folder; "
        "another folder's is continued in a new MLflow run, a fork)",
    )  # fmt: skip
    run.add_argument("--print-config", action="store_true", help="print the config as dotted fields and exit")
    for flag, key in NEGATIONS.items():
        run.add_argument(flag, dest=key, action="store_const", const="false", default=argparse.SUPPRESS,
                         help=f"set {key} to false")  # fmt: skip
    add_field_flags(p, TrainConfig, ALIASES)
    return p


def _key_value(item: str, what: str, example: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{what}: {item!r} is not KEY=VALUE; write e.g. {what} {example}")
    return key.strip(), value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """defaults <- ``--config`` YAML <- ``--set`` <- flags (``--tag`` adds to ``tracking.tags``).

    The layers are merged first and the result checked once, so a value that only makes sense with a
    later layer's (``--set data.channels=1 --data photos``) is not judged against the defaults."""
    from_file = read_yaml_config(args.config) if args.config else {}
    later = dict(_key_value(item, "--set", "optim.lr=3e-4") for item in args.set)
    later |= flags_to_flat(args, TrainConfig)
    try:
        cfg = apply_flat(TrainConfig(), from_file | later)
    except ConfigError as e:  # a value (or key) only the file gives: name the file
        key = str(e).partition(":")[0]
        named = f"config file {args.config}: {e}" if key in from_file.keys() - later else str(e)
        raise ConfigError(named) from None
    if args.tag:
        tags = dict(cfg.tracking.tags) | dict(_key_value(t, "--tag", "team=vision") for t in args.tag)
        cfg = apply_flat(cfg, {"tracking.tags": tags})
    return cfg


def _oom_message(cfg: TrainConfig, err: BaseException, building: bool) -> str:
    """What ran out of memory, and which flags make it smaller."""
    why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    if building:  # the model's position table, the data or the validation set
        d, m = cfg.data, cfg.model
        base = model_config(m.name) if m.name else None
        shape = [getattr(m, k) if getattr(m, k) is not None else getattr(base, k, None) for k in m._SHAPE]
        label = model_label(*shape) if None not in shape else m.name or "custom"
        return (
            f"out of memory setting up the run at --image-size {d.image_size} (data {d.name}, model "
            f"{label}): {why}; give a smaller --image-size or model"
        )
    return (
        f"out of memory training (--batch-size {cfg.budget.global_batch_size}, eval.batch_size "
        f"{cfg.eval.batch_size}): {why}; give a smaller --batch-size or --set eval.batch_size=N, or "
        "--grad-checkpointing"
    )


def _log_rank_failure(err: Exception) -> None:
    """Log this rank's ``err`` with its traceback; but when it lost its connection to a rank that left
    its error in the store (`failed_peers`; rank 0's trainer takes them off as it names them), that
    error, then this rank's in one line: gloo's traceback names neither the rank nor its error."""
    rank, world = dist.get_rank(), dist.get_world_size()
    peers = failed_peers(rank, world) if raised_waiting(err) else {}
    for other, error in peers.items():
        log.error("rank %d failed: %s", other, error)
    said = str(err).splitlines()[0] if str(err) else ""
    after = f" after rank {', '.join(map(str, peers))} failed" if peers else ""
    log.error("rank %d stopped on %s: %s%s", rank, type(err).__name__, said, after, exc_info=not peers)


def main(argv: list[str] | None = None) -> int:
    """Parse, train, and return the exit code (0, 1 training error, 2 bad config, 129 terminal closed
    (SIGHUP), 130 Ctrl-C, 141 --print-config's reader left, 143 preempted)."""
    from accelerate import PartialState

    from .loop import Trainer

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(join_negative_values(argv, parser))
    if extra:
        flags = {s for a in parser._actions for s in a.option_strings}
        close = [m for e in extra for m in difflib.get_close_matches(e.split("=")[0], flags, n=2)]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint} (--help lists every field)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        if cfg.tracking.enabled and not args.print_config:
            check_tracking_server(cfg.tracking.uri, TRACKING_HINT)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        try:
            for k, v in cfg.to_flat_dict().items():
                print(f"{k} = {v!r}")
            sys.stdout.flush()
        except BrokenPipeError:  # `--print-config | head`: its reader left
            return stdout_closed()
        return 0
    code, trainer = 0, None
    try:
        state = process_state(cfg.dist_timeout_s)  # the process group, with cfg's collective timeout
        if not state.is_main_process:
            logging.getLogger().setLevel(logging.WARNING)
        trainer = Trainer(cfg, resume=args.resume)
        result = trainer.run(signals=INTERRUPT_SIGNALS)
        code = 0 if result.status == STATUS_FINISHED else EXIT_PREEMPTED
        if result.signal in ("SIGINT", "SIGHUP"):
            code = EXIT_INTERRUPTED if result.signal == "SIGINT" else EXIT_HANGUP
    except ValueError as e:  # a bad config found once the data and model are known, or an --out
        # another trainer holds (`OutFolderBusy`, raised on every rank): as above
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # Ctrl-C twice, or before training started
        print(
            "\ninterrupted: stopped without a checkpoint (the MLflow run is marked failed; one being ended, "
            "its checkpoint written, stays RUNNING); run the same command to resume from the newest "
            "checkpoint in --out, if any",
            file=sys.stderr,
        )
        code = EXIT_INTERRUPTED
    except (FloatingPointError, CollectiveTimeout) as e:  # a non-finite loss or samples;
        # a collective that timed out (a stuck rank): one line, gloo's traceback says no more
        log.error("%s", e)
        code = 1
    except Exception as e:  # out of memory: said in one line; anything else: its traceback
        if isinstance(e, (MemoryError, RuntimeError)) and out_of_memory(e):
            print(f"error: {_oom_message(cfg, e, building=trainer is None)}", file=sys.stderr)
            code = 2 if trainer is None else 1
        elif not (dist.is_initialized() and dist.get_world_size() > 1):
            raise
        else:  # through the exit below: the interpreter's teardown with gloo up can abort (SIGABRT)
            _log_rank_failure(e)
            code = 1
    state = PartialState()
    if state.num_processes > 1:
        # torch + gloo can abort at interpreter exit (notes/dependencies.md section 5): leave directly
        if code == 0:
            state.wait_for_everyone()
        state.destroy_process_group()
        exit_now(code)
    return code
