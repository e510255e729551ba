"""The trainer's small modules against what they promise: the CLI (parsing, help, exit codes of
real one-process runs), the data stream's order per (seed, epoch) and its resume position, the
progress lines, and the config resolution against the budget's closed form."""

from __future__ import annotations

import ast
import io
import logging
import math
import os
import re
import signal
import socket
import sys

import pytest
import torch
from _train_helpers import IndexedDataset

from dit_core.config import BudgetConfig, ConfigError, ModelConfig, TrainConfig
from dit_core.spec import train_flops_per_image
from dit_core.trainer.cli import build_parser, config_from_args, main
from dit_core.trainer.data_stream import DataStream
from dit_core.trainer.progress import Progress, format_eta
from dit_core.trainer.resolve import resolve_config


class _Data:  # what `resolve_config` reads of a dataset
    resolution, channels, num_classes = 16, 1, 10


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- CLI: parsing and help
def test_help_keeps_the_examples_verbatim_and_names_the_program(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m dit_core.train ")
    lines = out.splitlines()
    # the epilog is printed as written (RawDescriptionHelpFormatter), not re-wrapped
    assert (
        "  python -m dit_core.train --model DiT-B/4 --train-flops 1e14 --global-batch-size 64 --out runs/b4"
        in lines
    )
    assert "      --dynamo_backend no -m dit_core.train --max-steps 100 --global-batch-size 32" in lines
    assert "Train one DiT (the job every sweep cell runs)" in out
    assert "set data.random_flip to false" in out and "set tracking.enabled to false" in out
    assert "checkpoints to --out. Precedence: defaults <- --config <- --set <- flags.\n" in out  # as written
    run_flags = {"--config FILE.yaml": "YAML file", "--set KEY=VALUE": "any field",
                 "--tag KEY=VALUE": "extra MLflow tag", "--resume RESUME": "auto (continue"}  # fmt: skip
    for flag, text in run_flags.items():
        assert re.search(rf"^  {flag}\s+{re.escape(text)}", out, re.M), flag


def test_run_flags_defaults_and_repeats(tmp_path):
    p = build_parser()
    args = p.parse_args([])
    assert (args.config, args.set, args.tag, args.resume, args.print_config) == (None, [], [], "auto", False)
    assert not hasattr(args, "data.random_flip") and not hasattr(args, "tracking.enabled")  # SUPPRESS
    args = p.parse_args(["--set", "seed=3", "--set", "optim.lr=2e-4", "--tag", "a=1", "--tag", "b=x=y",
                         "--no-flip", "--no-mlflow", "--resume", "never", "--print-config"])  # fmt: skip
    assert (args.resume, args.print_config) == ("never", True)
    cfg = config_from_args(args)
    assert (cfg.seed, cfg.optim.lr, cfg.data.random_flip, cfg.tracking.enabled) == (3, 2e-4, False, False)
    assert cfg.tracking.tags == {"a": "1", "b": "x=y"}  # split at the first "="
    y = tmp_path / "c.yaml"
    y.write_text("tracking: {tags: {team: x, k: old}}\n")
    cfg = config_from_args(p.parse_args(["--config", str(y), "--tag", "k=new", "--set", " seed =4"]))
    assert cfg.tracking.tags == {"team": "x", "k": "new"} and cfg.seed == 4  # --tag adds to the file's


@pytest.mark.parametrize("item", ["optim.lr", "=3", "  =3", ""])
def test_set_and_tag_need_key_value(item, capsys):
    with pytest.raises(ConfigError) as e:
        config_from_args(build_parser().parse_args(["--set", item]))
    assert str(e.value) == f"--set: {item!r} is not KEY=VALUE; write e.g. --set optim.lr=3e-4"
    with pytest.raises(ConfigError, match=r"^--tag: 'k' is not KEY=VALUE; write e.g. --tag team=vision$"):
        config_from_args(build_parser().parse_args(["--tag", "k"]))
    assert main(["--set", item]) == 2
    assert (
        capsys.readouterr().err
        == f"error: --set: {item!r} is not KEY=VALUE; write e.g. --set optim.lr=3e-4\n"
    )


def test_unknown_flags_get_at_most_two_suggestions(capsys):
    flags = set(build_parser()._option_string_actions)
    for argv, first, n in ((["--sampel-steps", "3"], "--sample-steps", 2), (["--lrr=0.000000001"], "--lr", 1),
                           (["--zzzzzzzz"], None, 0)):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"unrecognized arguments: {' '.join(argv)}" in err
        assert err.rstrip().endswith("(--help lists every field)")
        if n:  # the closest existing flags (of a flag given with "=value": of its name)
            hint = err.split("; did you mean ")[1].split("? (--help")[0].split(", ")
            assert len(hint) == n and hint[0] == first and set(hint) <= flags
        else:
            assert "did you mean" not in err


def test_print_config_prints_every_field_and_skips_the_server_check(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["--tracking-uri", url, "--max-steps", "3", "--lr", "2e-4", "--print-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    want = (
        TrainConfig().replace(**{"tracking.uri": url, "budget.max_steps": 3, "optim.lr": 2e-4}).to_flat_dict()
    )
    got = {}
    for line in lines:
        key, sep, value = line.partition(" = ")
        assert sep, line
        got[key] = ast.literal_eval(value)
    assert got == want
    # without --print-config the dead server is found before anything runs
    assert main(["--tracking-uri", url, "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: MLflow tracking server {url} is unreachable (")
    assert err.endswith(
        "; start it, pass --tracking-uri sqlite:///mlflow.db (a local file), or --no-mlflow\n"
    )


def test_the_cli_logs_info_lines_with_time_level_and_name_to_stderr(monkeypatch, capsys):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (pytest's own handlers aside)
    monkeypatch.setattr(root, "level", logging.WARNING)
    assert main(["--max-steps", "1", "--print-config", "--no-mlflow"]) == 0
    capsys.readouterr()
    assert root.level == logging.INFO and len(root.handlers) == 1
    logging.getLogger("dit_core.train").info("hello %d", 7)
    err = capsys.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO dit_core\.train: hello 7\n", err), err
    assert root.handlers[0].stream is sys.stderr


# ---------------------------------------------------------------------- CLI: real runs, exit codes
TINY = ["--model", "none", "--depth", "1", "--width", "16", "--heads", "2", "--patch-size", "4",
        "--data", "digits", "--image-size", "8", "--global-batch-size", "4", "--no-mlflow",
        "--val-every", "0", "--eval-every", "0", "--log-every", "1"]  # fmt: skip


def test_a_finished_run_exits_0_and_logs_its_steps(tmp_path, caplog, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)  # the CLI turns INFO on
    with caplog.at_level(logging.INFO, logger="dit_core.train"):
        assert main([*TINY, "--max-steps", "2", "--out", str(tmp_path)]) == 0
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [s.split(" |")[0] for s in steps] == ["step 1/2", "step 2/2"]
    assert (tmp_path / "checkpoints" / "step_0000002.pt").is_file()
    caplog.clear()
    # --resume reaches the trainer: "never" refuses a folder with checkpoints, "auto" continues it
    capsys.readouterr()
    assert main([*TINY, "--max-steps", "3", "--resume", "never", "--out", str(tmp_path)]) == 2
    assert "already holds checkpoints and --resume never" in capsys.readouterr().err.partition("error: ")[2]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dit_core.train"):
        assert main([*TINY, "--max-steps", "3", "--out", str(tmp_path)]) == 0
    assert [r.getMessage().split(" |")[0] for r in caplog.records if r.getMessage().startswith("step ")] == [
        "step 3/3"
    ]


def test_a_non_finite_loss_exits_1(tmp_path, caplog):
    assert main([*TINY, "--max-steps", "3", "--lr", "1e30", "--out", str(tmp_path)]) == 1
    assert any("non-finite" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_bad_config_found_by_the_trainer_exits_2(tmp_path, capsys):
    """Found once the data is known, and said as every CLI says a refusal: ``error: ...`` on stderr."""
    assert main([*TINY, "--max-steps", "1", "--global-batch-size", "4000", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fewer than one global batch of 4000" in err, err


def test_ctrl_c_twice_stops_at_once_with_130_and_no_traceback(tmp_path, capsys):
    """Two SIGINTs (a terminal's Ctrl-C) while step 1 is logged: the first asks for a checkpoint at
    the next step boundary, the second stops at once; the CLI says so and exits 130."""

    class InterruptTwiceAtFirstStep(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("step 1/"):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    hook, before = InterruptTwiceAtFirstStep(), signal.getsignal(signal.SIGINT)
    logger = logging.getLogger("dit_core.train")
    logger.addHandler(hook)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert main([*TINY, "--max-steps", "5", "--out", str(tmp_path), "--ckpt-every", "0"]) == 130
    finally:
        logger.removeHandler(hook)
        logger.setLevel(old_level)
    err = capsys.readouterr().err
    assert "interrupted: stopped without a checkpoint" in err and "Traceback" not in err
    assert not list((tmp_path / "checkpoints").glob("step_*.pt"))  # stopped before any was written
    assert signal.getsignal(signal.SIGINT) is before  # handed back


def test_a_preemption_signal_exits_143(tmp_path):
    """SIGUSR1 arrives (a real signal to this process) while step 1 is logged: the trainer
    checkpoints at the next step boundary and the CLI exits with 143."""

    class SignalAtFirstStep(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("step 1/"):
                os.kill(os.getpid(), signal.SIGUSR1)

    hook = SignalAtFirstStep()
    logger = logging.getLogger("dit_core.train")
    logger.addHandler(hook)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert main([*TINY, "--max-steps", "5", "--out", str(tmp_path)]) == 143
    finally:
        logger.removeHandler(hook)
        logger.setLevel(old_level)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["step_0000001.pt"]


# ---------------------------------------------------------------------- data stream
class _Batched(IndexedDataset):
    """A dataset that reads whole batches (like the photos stream); reading one item is refused."""

    def __getitem__(self, i):
        raise AssertionError("read by __getitems__ only")

    def __getitems__(self, idx):
        return [IndexedDataset.__getitem__(self, i) for i in idx]


class _Plain(torch.utils.data.Dataset):  # no set_epoch
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor(i)


def _ids(batch):
    return batch[0][:, 0].long().tolist()


def test_each_epoch_visits_its_permutation_in_global_batches():
    ds = IndexedDataset(10)
    s = DataStream(ds, 4, seed=3)  # 2 batches per epoch, 2 images of each epoch skipped
    assert s.batches_per_epoch == 2
    for epoch in range(3):
        perm = s.permutation(epoch)
        assert sorted(perm.tolist()) == list(range(10))
        a, b = s.next_batch(), s.next_batch()
        assert _ids(a) + _ids(b) == perm[:8].tolist()
        assert a[0][:, 1].tolist() == [float(epoch)] * 4  # set_epoch told the dataset
        assert a[1].tolist() == [i % 3 for i in _ids(a)] and a[1].dtype == torch.int64
        assert s.state_dict() == {"epoch": epoch, "index": 8, "dataset_size": 10, "global_batch_size": 4}
    perms = [s.permutation(e).tolist() for e in range(3)]
    assert len({tuple(p) for p in perms}) == 3  # a new order each epoch
    assert DataStream(ds, 4, seed=3).permutation(2).tolist() == perms[2]  # depends on (seed, epoch) only
    assert DataStream(ds, 4, seed=4).permutation(2).tolist() != perms[2]


def test_one_batch_epochs_and_datasets_without_set_epoch():
    s = DataStream(_Plain(), 6, seed=0)  # the whole set is one batch
    first, second = s.next_batch(), s.next_batch()
    assert sorted(_ids(first)) == sorted(_ids(second)) == list(range(6)) and _ids(first) != _ids(second)
    assert first[1].tolist() == _ids(first)
    assert s.state_dict()["epoch"] == 1


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_every_global_batch_across_epochs(world):
    ds = IndexedDataset(12)
    full = DataStream(ds, 8, seed=5)
    want = [_ids(full.next_batch()) for _ in range(4)]  # 1 batch per epoch: 4 epochs
    ranks = [DataStream(ds, 8, seed=5, rank=r, world_size=world) for r in range(world)]
    for w in want:
        got = [_ids(r.next_batch()) for r in ranks]
        assert all(len(g) == 8 // world for g in got) and sum(got, []) == w


def test_resume_mid_epoch_and_a_loaded_position_replaces_the_current_one():
    ds = IndexedDataset(13)
    ref = DataStream(ds, 3, seed=1)  # 4 batches per epoch
    want = [_ids(ref.next_batch()) for _ in range(9)]
    a = DataStream(ds, 3, seed=1)
    for _ in range(6):
        a.next_batch()
    b = DataStream(ds, 3, seed=1)
    b.next_batch()  # b is mid-epoch with an iterator of its own
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"epoch": 1, "index": 6, "dataset_size": 13, "global_batch_size": 3}
    assert [_ids(b.next_batch()) for _ in range(3)] == want[6:]


class _WorkerSeeds(torch.utils.data.Dataset):
    """Item i: the torch seed of the worker process that loads it (what a random augmentation draws from)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        return torch.tensor([float(torch.initial_seed() % 2**31)]), torch.tensor(i)


def test_a_resume_with_loader_workers_leaves_the_global_rng_and_the_workers_seeds_as_they_were():
    """With data workers a resumed run makes one DataLoader more (the rest of its epoch). A DataLoader
    seeds its workers from the global torch RNG by default, so the resumed run's RNG (saved in its next
    checkpoint) and every later epoch's worker seeds differed from the uninterrupted run's. The workers'
    seeds come from (seed, rank, epoch) instead."""

    def stream(rank: int = 0) -> DataStream:
        return DataStream(_WorkerSeeds(), 4, seed=0, num_workers=1, rank=rank, world_size=1 + rank)

    torch.manual_seed(0)
    a = stream()
    full = [a.next_batch()[0][0].item() for _ in range(12)]  # 4 batches an epoch: epochs 0, 1, 2
    rng_full = torch.get_rng_state()
    torch.manual_seed(0)
    b = stream()
    first = [b.next_batch()[0][0].item() for _ in range(6)]  # stopped mid-epoch 1
    pos, rng = b.state_dict(), torch.get_rng_state()
    torch.set_rng_state(rng)
    c = stream()
    c.load_state_dict(pos)
    resumed = first + [c.next_batch()[0][0].item() for _ in range(6)]
    assert resumed == full and torch.equal(torch.get_rng_state(), rng_full)
    assert torch.equal(rng_full, torch.manual_seed(0).get_state())  # the loaders drew nothing from it
    epochs = [full[0], full[4], full[8]]
    assert len(set(epochs)) == 3  # a seed per epoch
    assert stream(rank=1).next_batch()[0][0].item() != full[0]  # and per rank


def test_a_position_from_another_dataset_or_batch_is_refused():
    s = DataStream(IndexedDataset(10), 4, seed=0)
    msg = (r"^cannot resume the data position: the checkpoint was written with {} images and global batch "
           r"{}, this run has 10 and 4$")  # fmt: skip
    with pytest.raises(ValueError, match=msg.format(12, 4)):
        s.load_state_dict({"epoch": 0, "index": 0, "dataset_size": 12, "global_batch_size": 4})
    with pytest.raises(ValueError, match=msg.format(10, 2)):
        s.load_state_dict({"epoch": 0, "index": 0, "dataset_size": 10, "global_batch_size": 2})


def test_batch_sizes_that_cannot_work_are_named():
    with pytest.raises(ValueError) as e:
        DataStream(IndexedDataset(10), 6, seed=0, world_size=4)
    assert str(e.value) == (  # the resume case too, where a new --batch-size would be refused
        "budget.global_batch_size: 6 images per step are not divisible by 4 processes; give a --batch-size "
        "that is a multiple of 4, or (when resuming, where the batch cannot change) a process count that "
        "divides 6"
    )
    with pytest.raises(ValueError) as e:
        DataStream(IndexedDataset(10), 11, seed=0)
    assert str(e.value) == ("the training set has 10 images, fewer than one global batch of 11; "
                            "lower --global-batch-size or use more data")  # fmt: skip
    assert DataStream(IndexedDataset(10), 10, seed=0).batches_per_epoch == 1  # exactly one batch is enough


def test_whole_batch_reads_and_worker_processes():
    plain, batched = DataStream(IndexedDataset(10), 4, seed=2), DataStream(_Batched(10), 4, seed=2)
    for _ in range(3):
        x, y = plain.next_batch()
        xb, yb = batched.next_batch()
        assert torch.equal(x, xb) and torch.equal(y, yb)
    assert set(x[:, 2].tolist()) == {float(os.getpid())}  # num_workers=0: read in this process
    workers = DataStream(IndexedDataset(10), 4, seed=2, num_workers=1)
    ref = DataStream(IndexedDataset(10), 4, seed=2)
    for _ in range(3):
        xw, yw = workers.next_batch()
        xr, yr = ref.next_batch()
        assert torch.equal(xw[:, :2], xr[:, :2]) and torch.equal(yw, yr)
        assert float(os.getpid()) not in xw[:, 2].tolist()  # read by a worker process


# ---------------------------------------------------------------------- progress
def test_format_eta_rounds_to_whole_seconds():
    cases = {0: "0s", 5: "5s", 59.4: "59s", 59.6: "1m00s", 65: "1m05s", 3599.6: "1h00m00s", 3600: "1h00m00s",
             3725: "1h02m05s", 90061: "25h01m01s", float("inf"): "?", float("nan"): "?"}  # fmt: skip
    assert {s: format_eta(s) for s in cases} == cases


def test_progress_log_lines(caplog):
    with caplog.at_level(logging.INFO, logger="dit_core.train"):
        p = Progress(total=100, start=0, use_bar=False)
        p.update(40, 0.123456, images_per_s=250.04, steps_per_s=2.0)  # 60 steps left at 2 steps/s
        p.update(50, 0.5, images_per_s=8.0, steps_per_s=0.5)  # 50 steps at 0.5/s
        p.update(60, 0.5, images_per_s=8.0, steps_per_s=0.0)  # no rate yet
        p.close()
        Progress(total=100, start=0, enabled=False, use_bar=True).update(1, 1.0, 1.0, 1.0)
    assert [r.getMessage() for r in caplog.records] == [
        "step 40/100 | loss 0.1235 | 250.0 img/s | eta 30s",
        "step 50/100 | loss 0.5000 | 8.0 img/s | eta 1m40s",
        "step 60/100 | loss 0.5000 | 8.0 img/s | eta ?",
    ]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_counts_from_the_resumed_step(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    p = Progress(total=10, start=4)  # a resumed run, on a terminal: a bar
    p.update(6, 0.25, images_per_s=12.0, steps_per_s=1.0)
    p.update(7, 0.125, images_per_s=14.0, steps_per_s=1.0)
    p.close()
    p.close()  # closing twice is harmless
    final = term.getvalue().split("\r")[-1]
    assert final.startswith("train:  70%") and " 7/10 " in final
    assert re.search(r"[\d?]step/s|s/step", final)  # the rate is in steps
    assert "loss=0.1250" in final and "img_s=14.0" in final
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: log lines, no bar
    assert Progress(total=10, start=0).use_bar is False
    assert Progress(total=10, start=0, use_bar=False, enabled=True).use_bar is False
    monkeypatch.setattr(sys, "stderr", term)
    assert Progress(total=10, start=0, enabled=False).use_bar is False
    quiet = Progress(total=10, start=0, use_bar=False)
    assert quiet._bar is None


def test_progress_bar_follows_the_terminal_width():
    """On a real (pseudo) terminal, resized while training: the bar is redrawn at the new width."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    resize = lambda cols: fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))  # noqa: E731
    resize(50)
    term = os.fdopen(slave, "w")
    out = b""
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stderr", term)
            p = Progress(total=10, start=0)
            assert p.use_bar
            resize(120)
            p.update(7, 0.125, images_per_s=14.0, steps_per_s=1.0)
            p.close()
        term.flush()
        while select.select([master], [], [], 0.5)[0]:
            out += os.read(master, 65536)
    finally:
        term.close()
        os.close(master)
    final = out.decode().replace("\r\n", "\n").split("\r")[-1].strip("\n")
    assert "7/10" in final and len(final) > 100, final


# ---------------------------------------------------------------------- resolve
def test_resolve_fills_the_model_from_the_data_and_the_budget_from_its_closed_form():
    cfg = TrainConfig().replace(
        **{"model.name": "DiT-S/4", "budget.max_steps": 40, "budget.global_batch_size": 8}
    )
    r = resolve_config(cfg, _Data)
    m = r.model
    assert (m.input_size, m.in_channels, m.num_classes, m.learn_sigma) == (16, 1, 10, True)
    assert (m.name, m.depth, m.hidden_size, m.num_heads, m.patch_size) == ("DiT-S/4", 12, 384, 6, 4)
    fpi = train_flops_per_image(m.to_dit_config())
    assert (r.budget.max_steps, r.budget.train_flops) == (40, 40 * 8 * fpi)  # planned = used
    assert r.optim == cfg.optim and r.out == cfg.out and cfg.model.input_size is None  # the rest untouched
    by_flops = resolve_config(cfg.replace(**{"budget.max_steps": None, "budget.train_flops": 1e12}), _Data)
    assert by_flops.budget.max_steps == math.floor(1e12 / (8 * fpi))
    assert by_flops.budget.train_flops == 1e12  # the budget as planned, not the whole steps' cost
    flow = resolve_config(cfg.replace(**{"diffusion.objective": "flow"}), _Data)
    assert flow.model.learn_sigma is False  # flow never learns sigma


def test_resolve_refuses_a_model_that_does_not_match_the_diffusion_or_the_data():
    cfg = TrainConfig().replace(**{"model.name": "DiT-S/4", "budget.max_steps": 4})
    with pytest.raises(ConfigError) as e:
        resolve_config(cfg.replace(**{"model.learn_sigma": False}), _Data)
    assert str(e.value) == (
        "model.learn_sigma: False but the diffusion (objective='eps', learn_sigma=True) needs True; "
        "leave model.learn_sigma unset or set diffusion.learn_sigma to match"
    )
    assert resolve_config(cfg.replace(**{"model.learn_sigma": True}), _Data).model.learn_sigma is True
    for over, shape in (({"model.input_size": 32}, "1x32x32"), ({"model.in_channels": 3}, "3x16x16")):
        with pytest.raises(ConfigError) as e:
            resolve_config(cfg.replace(**over), _Data)
        assert str(e.value) == (
            f"model.input_size: the model input {shape} does not match the data (1x16x16); "
            "leave model.input_size / model.in_channels unset to take them from the data"
        )
    with pytest.raises(ValueError, match="budget smaller than one step"):
        resolve_config(cfg.replace(**{"budget.max_steps": None, "budget.train_flops": 1.0}), _Data)
    assert BudgetConfig().max_steps is None and ModelConfig().input_size is None
