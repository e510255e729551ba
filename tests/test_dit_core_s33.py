"""Session 33's dit_core defects, each checked against what the user (or a caller) sees."""

from __future__ import annotations

import signal

import pytest
from _train_helpers import one_thread, tiny_config, train_cli

from dit_core.configio import ConfigError
from dit_core.data import DataConfig, digits_images
from dit_core.extract_latents import main as extract_main
from dit_core.train import Trainer
from dit_core.train import main as train_main
from dit_core.trainer import loop
from dit_core.trainer.progress import Progress
from dit_core.trainer.signals import PreemptionGuard


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-size", "0"], "--image-size: must be >= 1, got 0"),
        (["--num-workers", "-1"], "--num-workers: must be >= 0, got -1"),
        (["--scale-factor", "0"], "--scale-factor: must be > 0, got 0.0"),
        (["--rank", "2", "--world-size", "2"], "--rank: need 0 <= --rank < --world-size, got --rank=2, "
         "--world-size=2"),
    ],
)  # fmt: skip
def test_extract_latents_errors_name_the_flags_not_the_fields(flags, message, tmp_path, capsys):
    """``--image-size 0`` said ``image_size: must be >= 1``: a field name the command line does not take."""
    argv = ["--data-path", str(tmp_path), "--output", str(tmp_path / "out"), "--vae", str(tmp_path / "vae")]
    assert extract_main([*argv, *flags]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_extract_latents_image_size_the_vae_cannot_take_names_the_flag(tiny_vae, tmp_path, capsys):
    """``image_size=15 must be a multiple ...`` named the field; now the flag, with a size that works."""
    from PIL import Image

    tiny_vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / "a" / "0.png")
    folders = {"--data-path": tmp_path / "imgs", "--output": tmp_path / "out", "--vae": tmp_path / "vae"}
    argv = [str(a) for flag_path in folders.items() for a in flag_path]
    assert extract_main([*argv, "--image-size", "15", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "error: --image-size: 15 is not a multiple of the VAE's downsampling factor 2; "
        "give e.g. --image-size 14\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [4096, 100000])
def test_digits_at_a_huge_image_size_exits_2_before_allocating(size, capsys):
    """``--data digits --image-size 4096`` died in the resize with an out-of-memory traceback."""
    assert train_main(["--data", "digits", "--image-size", str(size), "--no-mlflow", "--print-config"]) == 2
    assert capsys.readouterr().err == (
        f"error: data.image_size: {size} px is above the digits' limit of 256 px (their 8 px upscaled 32x, "
        "all held in memory); give --image-size 256 or less (usually 8, 16 or 32)\n"
    )


def test_digits_limit_is_256_px_in_the_config_and_the_library():
    assert DataConfig(name="digits", image_size=256).image_size == 256
    with pytest.raises(ConfigError, match=r"^data\.image_size: 257 px is above the digits' limit of 256 px"):
        DataConfig(name="digits", image_size=257)
    assert DataConfig(name="photos", image_size=256).image_size == 256  # the photos' limit: session 34
    with pytest.raises(
        ValueError, match=r"^digits resolution must be >= 8 \(native size\) and <= 256, got 257$"
    ):
        digits_images("val", 257)


def test_the_guard_given_to_run_loop_also_stops_its_evaluations(tmp_path, monkeypatch):
    """The trainer kept the guard twice: `run_loop(guard)` checked the one it was given between steps,
    while its evaluations read ``self.guard`` (set by `run` only), so a caller's guard could not stop
    them. Now one path: the guard passed down."""
    cfg = tiny_config(tmp_path, steps=1, batch=4, **{
        "model.depth": 1, "model.hidden_size": 16, "data.image_size": 8, "eval.eval_every": 1,
        "tracking.enabled": False, "checkpoint.every": 0,
    })  # fmt: skip
    guard, seen = PreemptionGuard(), []

    def evaluate_samples(*args, stop=None, **kwargs):
        guard.received = signal.SIGTERM  # a signal arrives during the evaluation
        seen.append(stop is not None and stop())
        return {}

    monkeypatch.setattr(loop, "evaluate_samples", evaluate_samples)
    with one_thread():
        tr = Trainer(cfg)
        assert tr.run_loop(guard, Progress(1, 0, enabled=False)) == "finished"
    assert seen == [True] and not hasattr(tr, "guard")


def test_a_run_too_large_for_memory_exits_2_naming_the_image_size(tmp_path, capsys):
    """``--data photos --image-size 100000`` died in the model's position table (3.8 TB) with a traceback
    (since session 34 that size is refused by the photos' limit; a huge width takes its place). The
    model is named by its shape: session 34 found ``--depth 1 --hidden-size 4000000`` called DiT-S/2."""
    code, err = train_cli(capsys, ["--data", "photos", "--image-size", "16", "--depth", "1", "--hidden-size",
                                   "4000000", "--num-heads", "1", "--no-mlflow", "--max-steps", "1",
                                   "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2, err
    assert err.startswith(
        "error: out of memory setting up the run at --image-size 16 (data photos, model DiT-d1-w4000000/2): "
    ), err
    assert err.endswith("; give a smaller --image-size or model\n") and "Traceback" not in err


def test_running_out_of_memory_while_training_exits_1_with_the_batch_flags(tmp_path, capsys, monkeypatch):
    """An allocation failure during the steps: exit 1 with the batch flags to lower, not a traceback."""

    def oom(self, **kwargs):
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 40000000000 bytes"
        )

    monkeypatch.setattr(Trainer, "run", oom)
    code, err = train_cli(capsys, ["--data", "digits", "--image-size", "8", "--no-mlflow", "--max-steps", "1",
                                   "--batch-size", "64", "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 1, err
    assert err == (
        "error: out of memory training (--batch-size 64, eval.batch_size 100): DefaultCPUAllocator: can't "
        "allocate memory: you tried to allocate 40000000000 bytes; give a smaller --batch-size or --set "
        "eval.batch_size=N, or --grad-checkpointing\n"
    )
