"""Train one DiT: the job every sweep cell runs.

    python -m dit_core.train --model DiT-S/2 --data digits --image-size 16 --max-steps 2000
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no -m dit_core.train --train-flops 1e13 --global-batch-size 32 --out runs/a

``train(cfg)`` is the library entry point (the sweep calls it in-process): it builds a
`dit_core.trainer.loop.Trainer` and runs it. The CLI is `dit_core.trainer.cli`. See
docs/training.md for the loop, resume semantics, signals and the MLflow schema.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .config import TrainConfig
from .lazy import lazy_exports

if TYPE_CHECKING:
    from .trainer.loop import TrainResult

#: imported on first use (`dit_core.lazy`): a sweep launcher imports this module to check its cells'
#: configs (`sweeps.task.check_trainer`), which needs `TrainConfig` only, not torch (~2 s)
_EXPORTS = {
    "build_parser": ".trainer.cli",
    "config_from_args": ".trainer.cli",
    "main": ".trainer.cli",
    "Trainer": ".trainer.loop",
    "TrainResult": ".trainer.loop",
    "resolve_config": ".trainer.resolve",
}
__all__ = sorted([*_EXPORTS, "TrainConfig", "train"])
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


def train(
    cfg: TrainConfig,
    *,
    resume: str = "auto",
    stop_at_step: int | None = None,
    accelerator=None,
    progress_bar: bool | None = None,
    train_set=None,
    local_job: bool | None = None,
) -> TrainResult:
    """Train ``cfg`` to its budget (or until a preemption signal) and return a `TrainResult`.

    resume: "auto" (continue from ``<cfg.out>`` if it holds a checkpoint), "never" (error if it
    does), or a checkpoint file / run folder. stop_at_step: behave as if preempted once this step
    is reached (checkpoint, MLflow status "preempted"); for tests and time-sliced jobs.
    train_set: use this dataset instead of ``build_dataset(cfg.data)`` (items ``(x, y)``, attributes
    ``resolution``, ``channels``, ``num_classes``). progress_bar: None = a tqdm bar on a terminal.
    local_job: a sweep's local job, which a terminal's Ctrl-C reaches (None: `in_local_job`, from the
    environment): a Ctrl-C checkpoints at the next step boundary too (a second one, over
    `dit_core.trainer.signals.SIGINT_ECHO_S` later, stops at once) and ends the run KILLED, tagged
    ``status=interrupted``; elsewhere a Ctrl-C raises KeyboardInterrupt (run FAILED).
    Raises ConfigError (a ValueError) on a bad config and FloatingPointError on a non-finite loss
    (MLflow run marked failed).
    """
    from .trainer.loop import Trainer
    from .trainer.signals import in_local_job

    trainer = Trainer(cfg, resume=resume, accelerator=accelerator, train_set=train_set)
    local = in_local_job() if local_job is None else local_job
    return trainer.run(stop_at_step=stop_at_step, progress_bar=progress_bar, local_job=local)


if __name__ == "__main__":
    from .trainer.cli import main

    sys.exit(main())
