"""Session 40 (helper `codes`): the exit codes of every CLI against one convention (docs/interfaces.md,
"Exit codes"): 0 done, 1 the run failed (its model or data, not its arguments; a crash), 2 bad input,
130 Ctrl-C, 141 the output's reader left, 143 preempted / SIGTERM; fit_scaling adds 3 and 4. Real
checkpoints, a real sqlite MLflow store (conftest's), each CLI's own ``main``."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from _train_helpers import one_thread, tiny_config
from mlflow import MlflowClient

from dit_core.train import train

TINY = ["--model", "none", "--depth", "2", "--width", "32", "--heads", "2", "--patch-size", "2",
        "--image-size", "16", "--data", "digits", "--experiment", "test-train"]  # fmt: skip
MODULES = {"sample": "dit_core.sample", "evaluate": "dit_core.evaluate.__main__"}
OVERFLOW = "sampling gave non-finite values (NaN or inf) in samples 0..3 at guidance scale 1e+308: "


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 1-step run of the tiny config (class dropout on, so guidance applies), without MLflow."""
    out = tmp_path_factory.mktemp("codes") / "run"
    with one_thread():
        train(tiny_config(out, steps=1, batch=4, **{"tracking.enabled": False, "checkpoint.every": 1,
                                                     "model.class_dropout_prob": 0.1}))  # fmt: skip
    return out


@pytest.mark.parametrize(
    "command",
    [
        ["sample", "--out", "{tmp}/grid.png", "--num-samples", "4"],
        ["evaluate", "--num-samples", "4", "--metrics", "fid_digits", "--output", "{tmp}/m.json"],
    ],
    ids=["sample", "evaluate"],
)
def test_samples_that_overflow_exit_1_a_failure_of_the_model_not_2(command, checkpoint, tmp_path, capsys):
    """NaN samples (guidance 1e308 overflows the model's outputs) exited 2, the code of bad arguments,
    though the arguments were valid and the model is what failed (docs/testing.md, "Session 40"): now 1,
    with the same one-line message and nothing written."""
    main = importlib.import_module(MODULES[command[0]]).main
    argv = ["--checkpoint", str(checkpoint), "--steps", "2", "--cfg-scale", "1e308"]
    argv += [a.format(tmp=tmp_path) for a in command[1:]]
    with one_thread():
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: " + OVERFLOW), err
    assert list(tmp_path.iterdir()) == []


def test_a_training_run_whose_evaluation_samples_overflow_exits_1(tmp_path, capsys):
    """The trainer's own evaluation at its last step, guidance 1e308: exit 2 ("error: sampling gave
    non-finite values") as if the config were bad; now 1, as a non-finite loss, the run FAILED with the
    error in its tag, the last step checkpointed with the evaluation due."""
    from dit_core.checkpoint import load_checkpoint
    from dit_core.trainer.cli import main

    out = tmp_path / "run"
    argv = TINY + ["--max-steps", "2", "--global-batch-size", "4", "--val-every", "0", "--eval-every", "2",
                   "--set", "eval.num_samples=4", "--set", "eval.steps=2", "--set", "eval.batch_size=4",
                   "--set", "eval.grid_images=0", "--set", "eval.cfg_scale=1e308",
                   "--set", "eval.metrics=fid_digits", "--set", "model.class_dropout_prob=0.1",
                   "--out", str(out)]  # fmt: skip
    with one_thread():
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "error: sampling gave" not in err, err  # not said as bad input
    run = MlflowClient().get_run((out / "mlflow_run_id").read_text().strip())
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "failed")
    assert run.data.tags["error"].startswith("NonFiniteSamples: " + OVERFLOW), run.data.tags["error"]
    ck = load_checkpoint(out)
    assert (ck["step"], ck["loop"]["due"]) == (2, ["eval"])


#: each CLI: its module (or script) and the codes it uses, each of which its --help must list
CODES = {
    "dit_core.trainer.cli": [0, 1, 2, 129, 130, 141, 143],
    "dit_core.sample": [0, 1, 2, 130],
    "dit_core.evaluate.__main__": [0, 1, 2, 130],
    "dit_core.extract_latents": [0, 1, 2, 130],
    "sweeps.launch": [0, 1, 2, 129, 130, 141, 143],
    "analysis.fit_scaling": [0, 1, 2, 3, 4, 141],
}


@pytest.mark.parametrize("module", list(CODES))
def test_each_help_lists_the_exit_codes_its_cli_uses(module):
    """Only the trainer's and fit_scaling's --help listed their exit codes; sample and evaluate said
    only "Exits 2 with a message on bad input", extract_latents and the launcher nothing. Each epilog
    now has an "exit codes" part with one line per code the CLI uses, and no other code."""
    text = importlib.import_module(module).build_parser().format_help()
    block = re.search(r"exit codes[^\n]*:(.*?)(?:\n\n|\Z)", text, flags=re.I | re.S)
    assert block, f"{module}: no 'exit codes' in --help:\n{text[-1500:]}"
    listed = [int(c) for c in re.findall(r"(?:^|,)\s+(\d+)\s", block[1], flags=re.M)]
    assert listed == CODES[module], (module, listed, block[1])
