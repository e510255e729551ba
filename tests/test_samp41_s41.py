"""Session 41 (samp41): one `SampleSettings` for every sampler of a sample set; the metrics the
evaluate and train --help texts name are the ones scored."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from _image_helpers import RandomConvExtractor
from PIL import Image

from dit_core.config import TrainConfig
from dit_core.evaluate import SampleSettings, evaluate_samples
from dit_core.evaluate.__main__ import build_parser as evaluate_parser
from dit_core.evaluate.checkpoint_eval import CheckpointEvalConfig, chosen_metrics
from dit_core.evaluate.domain_classifier import DOMAINS
from dit_core.evaluate.metrics import default_metrics
from dit_core.trainer.cli import build_parser as train_parser
from dit_core.trainer.evaluation import run_metrics, sampling_settings


def _help(parser, dest: str) -> str:
    """The --help text of ``parser``'s option ``dest``, its whitespace made single spaces."""
    (action,) = [a for a in parser._actions if a.dest == dest]
    return " ".join(action.help.split())


def _names(text: str, domain: str = "<d>") -> tuple[str, ...]:
    return tuple(n.replace("<d>", domain) for n in text.split(", "))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An image folder of 8 RGB 16 px images (a reference of no domain)."""
    monkeypatch.setenv("DITSCALE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "real"
    root.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return str(root)


def test_evaluate_help_names_the_metrics_each_reference_is_scored_on(folder):
    """`python -m dit_core.evaluate --reference FOLDER` scored fid, sfid, precision and recall while its
    --help said only "that reference's default metrics" (and the trainer's: fid alone): the help now
    names them, and they are the keys the evaluation returns."""
    text = _help(evaluate_parser(), "metrics")
    own = re.search(r"else (.+?) for a <d> = digits \| photos run, and (\w+) alone for other data", text)
    given = re.search(r"with --reference, that reference's: (.+?), after those four for <d>", text)
    assert own and given, text
    run = TrainConfig()
    for d in DOMAINS:
        assert run_metrics(run, d) == _names(own[1], d)
        assert default_metrics(d) == _names(own[1], d) + _names(given[1])
    assert run_metrics(run, folder) == (own[2],)
    names = chosen_metrics(CheckpointEvalConfig(checkpoint="x.pt", reference=folder), run, folder)
    assert names == _names(given[1])  # what the CLI asks for with --reference FOLDER ...
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    scored = evaluate_samples(
        images, folder, metrics=names, extractors={"inception": RandomConvExtractor(dim=8)}
    )
    assert tuple(scored) == _names(given[1])  # ... and the keys it gets back


def test_train_help_names_the_metrics_a_run_logs(folder):
    """The trainer's --eval.metrics help (its EvalConfig docstring) names the run's default metrics."""
    text = _help(train_parser(), "eval.metrics")
    m = re.search(
        r"\((fid_digits, [^)]*?) or the \*_photos ones; no Inception\), else Inception (\w+) alone", text
    )
    assert m, text
    run = TrainConfig()
    assert run_metrics(run, "digits") == _names(m[1])
    assert run_metrics(run, "photos") == _names(m[1].replace("_digits", "_photos"))
    assert run_metrics(run, folder) == (m[2],)


def test_a_run_s_sample_settings_with_a_cli_s_given_ones():
    """`SampleSettings.overridden`: a CLI's setting replaces the run's; None, or one the CLI has no
    flag for (eta), keeps the run's."""
    run = sampling_settings(TrainConfig())
    assert run == SampleSettings("ddim", steps=50, cfg_scale=1.5, seed=0, clip_denoised=True)  # eval.*
    given = CheckpointEvalConfig(checkpoint="x.pt", steps=7, seed=None, clip_denoised=False)
    assert run.overridden(given) == SampleSettings(
        "ddim", steps=7, cfg_scale=1.5, seed=0, clip_denoised=False
    )
