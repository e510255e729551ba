"""Shared helpers for the training tests: a tiny config that trains in seconds on CPU."""

from __future__ import annotations

import contextlib
import os
import signal

import torch

from dit_core.config import (
    BudgetConfig,
    CheckpointConfig,
    EvalConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
)
from dit_core.data import DataConfig


def tiny_config(out, *, steps: int = 40, batch: int = 8, **overrides) -> TrainConfig:
    """DiT with depth 2, width 32, 2 heads, patch 2 on 16 px digits, batch 8."""
    cfg = TrainConfig(
        model=ModelConfig(name=None, depth=2, hidden_size=32, num_heads=2, patch_size=2),
        data=DataConfig(name="digits", image_size=16),
        budget=BudgetConfig(max_steps=steps, global_batch_size=batch),
        eval=EvalConfig(val_every=0, val_examples=32),
        checkpoint=CheckpointConfig(every=10, keep_last=0),
        tracking=TrackingConfig(experiment="test-train"),
        out=str(out),
        log_every=5,
    )
    return cfg.replace(**overrides) if overrides else cfg


@contextlib.contextmanager
def one_thread():
    """2 shared cores: one intra-op thread is ~20x faster than oversubscribed threads here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def metric_history(client, run_id: str, key: str) -> dict[int, float]:
    """{step: value} of one MLflow metric of a run (``client``: an ``MlflowClient``)."""
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def signal_after_step(monkeypatch, step: int, signum: int) -> None:
    """Patch `Trainer.train_step` to send this process ``signum`` right after the trainer's step ``step``."""
    from dit_core.train import Trainer

    real_step = Trainer.train_step

    def step_then_signal(self):
        real_step(self)
        if self.step == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)


@contextlib.contextmanager
def signal_handlers(handlers: dict):
    """Install ``{signum: handler}`` for the block. The tests never rely on a signal's default
    action: a guard that failed to intercept must fail an assertion, not end the test process."""
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class IndexedDataset(torch.utils.data.Dataset):
    """Item i is ``([i, epoch, pid], i % 3)``: which image, in which epoch, read by which process."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, e: int) -> None:
        self.epoch = e

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i), float(self.epoch), float(os.getpid())]), i % 3


def assert_same_tensors(a, b, where: str) -> None:
    """Assert that two nested checkpoint structures (dicts, lists, tensors, scalars) are bitwise equal;
    ``where`` names the first difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def run_main(capsys, main, argv: list[str]) -> tuple[int, str]:
    """A CLI's ``main(argv)`` in this process, on one thread: (exit code, its stderr); an argparse
    ``SystemExit`` gives its code."""
    with one_thread():
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, capsys.readouterr().err


def train_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``python -m dit_core.train ARGV`` in this process, on one thread: (exit code, its stderr)."""
    from dit_core.trainer.cli import main

    return run_main(capsys, main, argv)


def read_until(proc, text: str) -> list[str]:
    """Read ``proc``'s stderr (a text pipe) up to the first line holding ``text``; the lines read. Fails
    the test, with the last lines, when the stream ends first."""
    import pytest

    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return seen
    pytest.fail(f"no line with {text!r}:\n" + "".join(seen[-30:]))


def nan_loss_at(monkeypatch, call: int):
    """Make the ``call``-th training forward's loss NaN (1-based: at step ``call`` of a fresh run);
    returns the real `GaussianDiffusion.training_losses`, to put back."""
    from dit_core.diffusion.gaussian import GaussianDiffusion

    real = GaussianDiffusion.training_losses
    calls = {"n": 0}

    def poisoned(self, model, x0, t, model_kwargs=None, noise=None):
        out = real(self, model, x0, t, model_kwargs, noise)
        if model.training:
            calls["n"] += 1
            if calls["n"] == call:
                out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_losses", poisoned)
    return real


def evaluate_checkpoint(cfg) -> tuple[dict[str, float], int]:
    """(metrics, training step) of ``cfg.checkpoint`` on one process, as the CLI scores it."""
    from dit_core.evaluate.checkpoint_eval import prepare_checkpoint_eval, score_prepared

    prepared = prepare_checkpoint_eval(cfg)
    return score_prepared(prepared, cfg), prepared.step


def train_lock_free(out) -> bool:
    """Whether nobody holds ``<out>/.train.lock`` (another open file description: a holder in this
    process counts too)."""
    import fcntl

    from dit_core.trainer.out_lock import TRAIN_LOCK

    fd = os.open(os.path.join(out, TRAIN_LOCK), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
