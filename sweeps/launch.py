"""``python sweeps/launch.py [run] --grid S,B,L,XL ...`` and ``python sweeps/launch.py status``.

A thin CLI over `sweeps.runner.launch` / `sweeps.state.read_states`. Defaults: the bundled demo
sweep (``sweeps/configs/demo.yaml``), ``--executor auto`` (SLURM where ``sbatch`` is found, else
local), MLflow's default local store, wait for the jobs with a progress line, then print a summary.
Exit status: 0 all cells finished, 1 some failed, 2 bad input (nothing submitted).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import math
import os
import signal
import sys
from collections import Counter
from pathlib import Path

from dit_core.configio import (
    KeepRawFormatter,
    add_flags,
    exit_codes_help,
    iter_fields,
    join_negative_values,
    parse_scalar,
    stdout_closed,
)
from dit_core.spec import FOLDER_DATASETS
from dit_core.tracking import check_tracking_server, sqlite_store_path
from sweeps.cost import DEFAULT_DEVICE, DEFAULT_MFU, DEVICES, cell_eval_flops, estimate
from sweeps.design import (
    FAMILY_HEAD_DIM,
    check_adaptive,
    check_placed,
    launch_adaptive,
    placed,
    plan_budgets,
    read_record,
    recorded_spec,
)
from sweeps.eta import CpuEstimate
from sweeps.executor import resolve_executor_kind, sbatch_flags
from sweeps.grid import (
    DESIGN_MIN_STEPS,
    DESIGNS,
    EXECUTORS,
    SPEC_RECORD,
    Cell,
    SweepSpec,
    expand,
    format_budget,
    left_out,
    load_spec,
    parse_budget,
    read_spec_record,
    train_field_types,
    typed_train,
)
from sweeps.ladder import trained_cells, trunk_progress
from sweeps.lock import CELL_LOCK, launcher_pid
from sweeps.runner import (
    Progress,
    check_executor,
    check_output_dir,
    check_wait,
    job_name,
    launch,
    preview,
    stop_on_signals,
    stop_signal,
    sweep_dir,
    take_jobs_gone,
    threads_per_process,
)
from sweeps.state import (
    AUTH_HINT,
    CellState,
    Plan,
    check_tracking_uri,
    mark_waiting,
    plan,
    read_runs,
    read_states,
    resolve_tracking_uri,
)
from sweeps.table import cells_table, status_table
from sweeps.task import cell_dir, check_trainer, make_tasks

NEXT_COMMAND = "python analysis/fit_scaling.py"
COMMANDS = ("run", "status")


def _csv(kind):
    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty list {text!r}")
        try:
            return [kind(x) for x in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _shape(text: str) -> list[int]:
    try:
        d, w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be DEPTHxWIDTHxHEADS, e.g. 4x64x4") from None
    return [d, w, h]


def field_default(key: str):
    """The dataclass default of a sweep YAML key (``batch_size``, ``executor.timeout_min``): the value a
    flag left out takes where the config leaves the key out too."""
    return next(default for k, _, default in iter_fields(SweepSpec) if k == key)


def _config_default(key: str) -> str:
    """Help text for a flag that overrides the YAML key ``key``: where its default comes from."""
    value = field_default(key)
    shown = f"{value:g}" if isinstance(value, float) else value
    return f"(default: the config's {key}, else {shown})"


def _override(key: str, kw: dict) -> dict:
    """add_argument's keywords ``kw`` of a flag that sets the YAML key ``key``, with the field's type, its
    name as the dest and, after the help, where its default comes from."""
    help_ = f"{kw['help']} {_config_default(key)}"
    return kw | {"type": type(field_default(key)), "dest": key.removeprefix("executor."), "help": help_}


#: Seconds between progress updates when --poll is not given: `sweeps.runner.launch`'s own default.
DEFAULT_POLL_S = inspect.signature(launch).parameters["poll_s"].default


#: the flags of each argument group, in --help's order: (flags, the sweep YAML key it overrides or None,
#: add_argument's keywords); a key's flag takes its field's type and name (`_override`)
_FLAGS = {
    "sweep": (
        ("-c --config", None, dict(
            help="sweep YAML or a bundled name (demo, digits, imagenet256); default demo")),
        ("--name", "name", dict(help="sweep id (MLflow tag `sweep`, folder <output-dir>/<name>)")),
        ("--experiment", "experiment", dict(help="MLflow experiment")),
        ("--tracking-uri", None, dict(
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")),
        ("--output-dir", "output_dir", dict(help="folder for checkpoints and job logs")),
        ("--grid", None, dict(type=_csv(str), help="model families, e.g. S,B,L,XL")),
        ("--patch", None, dict(type=_csv(int), help="patch sizes, e.g. 2,4,8")),
        ("--shapes", None, dict(
            type=_csv(_shape), help="custom DEPTHxWIDTHxHEADS shapes, e.g. 4x64x4,6x96x6")),
        ("--depths", None, dict(type=_csv(int), help="custom depths (crossed with --widths)")),
        ("--widths", None, dict(type=_csv(int), help="custom widths (crossed with --depths)")),
        ("--head-dim", None, dict(type=int, help="width per head: of --depths/--widths (default "
            f"{FAMILY_HEAD_DIM}), and of the shapes the isoflop/adaptive designs generate (default "
            f"scale.head_dim, else the families' {FAMILY_HEAD_DIM} / scale.width_div; 4 for the demo)")),
        ("--budgets", None, dict(type=_csv(parse_budget), help="training FLOPs, e.g. 1e15,3e15,1e16")),
        ("--seeds", None, dict(type=_csv(int), help="train every cell once per seed, e.g. 0,1,2 (default 0); "
            "seed s > 0 adds -s{s} to the cell id, and the analysis averages a cell's seeds. Two seeds "
            "before you believe a ranking")),
        ("--lrs", None, dict(type=_csv(float), help="train every cell once per peak lr, e.g. 1e-3,3e-3,1e-2 "
            "(sets optim.lr; an lr rule across budgets, optim.lr_flops_ref, still scales it); the cell id "
            "ends in -lr{lr}, and the analysis keeps each cell's best lr")),
        ("--design", None, dict(choices=DESIGNS, help="grid: every model (--grid/--shapes) at every budget. "
            "isoflop: per budget, --sizes-per-budget shapes on the DiT families' depth/width curve, "
            "log-spaced within --spread x of a prior N_opt(C) (--tokens-per-param or --prior). adaptive: "
            "isoflop, budgets run smallest first, each next one centred on the refit of those before "
            "(docs/sweeps.md)")),
        ("--ladder", None, dict(action=argparse.BooleanOptionalAction, help="cooldown ladder (Hagele et al. "
            "2024): the cells of one model share a constant-lr trunk and each trains only its cooldown "
            "(optim.cooldown_frac of its steps), forked from the trunk's checkpoint; peak lr: the lr rule at "
            "the model's largest budget; --no-ladder: every cell from step 0 (default: the config's "
            "ladder, else False)")),
        ("--sizes-per-budget", "sizes_per_budget", dict(
            metavar="K", help="isoflop/adaptive: model sizes per budget, at least 3")),
        ("--spread", "size_spread", dict(metavar="F", help="isoflop/adaptive: sizes span N_opt/F .. N_opt*F, "
            "log-spaced (4 with 5 sizes: 1/4, 1/2, 1, 2, 4 x N_opt)")),
        ("--tokens-per-param", "tokens_per_param", dict(metavar="R", help="isoflop/adaptive prior: training "
            "tokens (images x patches per image) per parameter at the optimum; 20 is Chinchilla's ratio, "
            "Hoffmann et al. 2022")),
        ("--prior", None, dict(metavar="FIT.json", help="isoflop/adaptive prior: the N_opt(C) law of a "
            "previous `analysis/fit_scaling.py --json` result")),
        ("--min-steps", None, dict(type=int, help="fewest optimizer steps a cell may have: isoflop/adaptive "
            f"propose no size below it (default {DESIGN_MIN_STEPS}); grid leaves out the cells below it "
            "(default: every cell, each at least 1 step)")),
        ("--max-steps", None, dict(type=int, help="isoflop/adaptive: most steps a proposed size may have "
            f"{_config_default('isoflop_max_steps')}; refused for grid, whose cells' steps follow from "
            "--budgets")),
        ("--batch-size", "batch_size", dict(help="global batch size")),
        ("--set", None, dict(action="append", default=[], metavar="KEY=VALUE",
            help="TrainConfig override for every cell, e.g. --set optim.lr=3e-4 (repeatable)")),
    ),
    "executor": (
        ("--executor", None, dict(choices=EXECUTORS, help="auto: SLURM where a SLURM controller answers, "
            "else local processes; debug: submitit's in-process executor (default: the config's "
            "executor.name)")),
        ("--partition", None, dict(help="SLURM partition")),
        ("--nodes", None, dict(type=int, help="nodes per job (several: multi-node Accelerate)")),
        ("--gpus-per-node", None, dict(type=int, help="GPUs per node (0 on CPU)")),
        ("--tasks-per-node", None, dict(type=int, help="processes per node (one per GPU)")),
        ("--cpus-per-task", None, dict(type=int, help="SLURM: CPU cores per process")),
        ("--mem-gb", None, dict(type=float, help="memory per node in GB (SLURM --mem)")),
        ("--time", "executor.timeout_min", dict(help="time limit per job in minutes")),
        ("--array-parallelism", None, dict(type=int, help="SLURM: array tasks running at once")),
        ("--parallel", "executor.local_parallelism", dict(help="local: cells running at once")),
        ("--no-warm", None, dict(action="store_const", const=False, dest="local_warm",
            help="local: a fresh python per cell instead of forking cells from one warm worker")),
        ("--signal-delay", "executor.signal_delay_s", dict(help="USR2 this many s before the limit")),
        ("--sbatch", None, dict(
            action="append", metavar="FLAG", help="extra sbatch flag, e.g. --sbatch=--qos=high")),
        ("--setup", None, dict(action="append", metavar="CMD", help="shell line run before each job")),
        ("--max-retries", "executor.max_retries", dict(help="resubmissions of a failed cell on relaunch")),
    ),
    "run": (
        ("--dry-run", None, dict(
            action="store_true", help="print the cells and the study's bill; submit nothing")),
        ("--device", None, dict(type=str.upper, choices=sorted(DEVICES), help="accelerator the dry run "
            f"prices the study on, in GPU-hours (its dense bf16 peak; default: {DEFAULT_DEVICE}); without it "
            "a local sweep on CPU gets its wall time on this machine instead")),
        ("--mfu", None, dict(type=float, help="model FLOPs utilisation assumed for the GPU-hours (measure "
            f"it: bash benchmarks/gpu_check.sh; default: {DEFAULT_MFU:g})")),
        ("--no-wait", None, dict(action="store_true", help="submit and return: the SLURM jobs, or the local "
            "warm worker, go on; see `status` later")),
        ("--slurm-jobs-gone", None, dict(action="store_true", help="the SLURM cluster the sweep ran on is "
            "gone for good: take cells whose job state is unknown (sacct and squeue fail) for interrupted "
            "and resubmit them (e.g. with --executor local); a job of them still alive would train its cell "
            "twice")),
        ("--poll", None, dict(type=float, default=DEFAULT_POLL_S,
            help="seconds between progress updates (default: %(default)g)")),
        ("-v --verbose", None, dict(
            action="store_true", help="log the launcher's steps (INFO), not only warnings")),
    ),
}  # fmt: skip


#: the CLI's exit codes (docs/interfaces.md, "Exit codes"; docs/sweeps.md), listed in its --help
EXIT_CODES = {
    0: "submitted (--no-wait), every cell waited for finished, a dry run, or status",
    1: "a launch that waited: a cell did not finish or is out of retries, or an earlier launch's\n"
    "cell ended unfinished (relaunch the same command); a --no-wait launch whose warm worker died\n"
    "before it started a cell; or a crash (a traceback)",
    2: "bad input, said in one line, nothing submitted: a flag, the sweep config, the output\n"
    "folder, a tracking store that is no MLflow store or fails, SLURM jobs no cell records",
    129: "SIGHUP (a closed terminal): as a Ctrl-C",
    130: "Ctrl-C, or SIGINT to the launcher alone (SLURM jobs keep running; local ones get the\n"
    "Ctrl-C and stop, checkpointed)",
    141: "its output's reader left (`| head`)",
    143: "SIGTERM: as a Ctrl-C",
}


class _Parser(argparse.ArgumentParser):
    """argparse with errors raised as ValueError (so `main` prints them like every other bad input)."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(f"{message} (`{self.prog} --help` lists the options)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python sweeps/launch.py",
        description="Train a grid of DiT shapes x patch sizes x compute budgets, one job per cell "
        "(SLURM or local, via submitit), logged to MLflow. Subcommands: run (default), status.",
        epilog=exit_codes_help(EXIT_CODES),
        formatter_class=KeepRawFormatter,
    )
    p.add_argument(
        "command",
        nargs="?",
        metavar="{run,status}",  # checked in `main`, not by choices: those refused a mistyped flag's value
        default="run",  # ("--max-retry 3") as the command, and never named the flag
        help="run: launch the sweep's cells (finished and live ones are skipped); status: print its table "
        "and submit nothing (default: %(default)s)",
    )
    for title, rows in _FLAGS.items():
        add_flags(p.add_argument_group(title), rows, _override)
    return p


#: Flags (argparse dests) that set the `SweepSpec` field of the same name, or of the name in `_RENAMED`.
_SPEC_ARGS = (
    "name", "experiment", "tracking_uri", "output_dir", "grid", "patch", "budgets", "seeds", "lrs", "design",
    "ladder", "min_steps", "max_steps", "batch_size", "sizes_per_budget", "size_spread", "tokens_per_param",
    "prior",
)  # fmt: skip
_RENAMED = {"grid": "families", "patch": "patch_sizes", "max_steps": "isoflop_max_steps", "executor": "name"}
#: Flags that set an `ExecutorSpec` field (of the same name; ``--executor`` sets its ``name``).
_EXECUTOR_ARGS = (
    "executor", "partition", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb",
    "timeout_min", "array_parallelism", "local_parallelism", "local_warm", "signal_delay_s", "max_retries",
)  # fmt: skip


def spec_from_args(args: argparse.Namespace, base: SweepSpec | None = None) -> SweepSpec:
    """The YAML sweep (or ``base``) with the command-line overrides applied (validated)."""
    spec = load_spec(args.config) if base is None else base
    top = {_RENAMED.get(a, a): getattr(args, a) for a in _SPEC_ARGS if getattr(args, a) is not None}
    design = args.design or spec.design
    if design != "grid":
        given = [
            f for f, v in (("--grid", args.grid), ("--shapes", args.shapes), ("--depths", args.depths)) if v
        ]
        if given:
            raise ValueError(
                f"{'/'.join(given)} choose the models of the grid design; the {design} design generates its "
                "own shapes (--sizes-per-budget, --spread, --head-dim)"
            )
        if args.head_dim is not None:
            top["design_head_dim"] = args.head_dim
    elif args.max_steps is not None:  # a grid cell's steps follow from its budget: nothing would cap them
        raise ValueError(
            f"--max-steps {args.max_steps} applies to the isoflop/adaptive designs (the most steps of a size "
            "they propose); a grid cell makes budget / (batch x FLOPs per image) steps: lower --budgets, "
            "or use --design isoflop"
        )
    else:  # the design's own flags would be ignored by a grid: refused, as --max-steps is
        design_flags = ("--sizes-per-budget", "--spread", "--tokens-per-param", "--prior", "--head-dim")
        dests = ("sizes_per_budget", "size_spread", "tokens_per_param", "prior", "head_dim")
        unused = [f for f, d in zip(design_flags, dests) if getattr(args, d) is not None]
        unused = [f for f in unused if f != "--head-dim" or args.depths is None]  # it sizes --depths/--widths
        if unused:
            raise ValueError(
                f"{' '.join(unused)}: used by the isoflop/adaptive designs only (--head-dim also by "
                "--depths/--widths), so a grid would ignore it; add --design isoflop, or drop it"
            )
    shapes = list(args.shapes or [])
    if args.head_dim is not None and args.head_dim < 1:
        raise ValueError(f"--head-dim {args.head_dim}: give channels per head >= 1 (4, 8, ..., 64)")
    if not 0 < args.poll < math.inf:  # nan and inf too: time.sleep refuses both
        raise ValueError(f"--poll {args.poll}: give the seconds between progress updates, > 0 and finite")
    if (args.depths is None) != (args.widths is None):
        raise ValueError("--depths and --widths go together (their cross product is the custom grid)")
    if args.depths:
        head_dim = FAMILY_HEAD_DIM if args.head_dim is None else args.head_dim
        if odd := [w for w in args.widths if w % head_dim]:
            raise ValueError(f"width {odd[0]} is not a multiple of --head-dim {head_dim}")
        shapes += [[d, w, w // head_dim] for d in args.depths for w in args.widths]
    if shapes:
        top["shapes"] = shapes
        if args.grid is None:
            top["families"] = []
    if args.set:
        train, types = dict(spec.train), train_field_types(spec.trainer)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set {item!r} must be KEY=VALUE, e.g. --set optim.lr=3e-4")
            key = key.strip()  # text for a known field, which its type parses (YAML 1.1 would read
            train[key] = value if key in types else parse_scalar(value)  # no as False, 010 as 8)
        top["train"] = typed_train(train, spec.trainer, "--set")
    ex = {_RENAMED.get(a, a): getattr(args, a) for a in _EXECUTOR_ARGS if getattr(args, a) is not None}
    for key in ("sbatch", "setup"):  # lines added to the config's
        if getattr(args, key):
            ex[key] = list(getattr(spec.executor, key)) + getattr(args, key)
    return spec.replace(executor=ex, **top)


def _mm_ss(seconds: float) -> str:
    return "{:02d}:{:02d}".format(*divmod(round(seconds), 60))


def _progress_printer():
    tty = sys.stderr.isatty()
    last = [None]

    def show(p: Progress) -> None:
        counts = f"{p.done}/{p.total} done, {p.running} running, "
        counts += "".join(f"{n} {word}, " for n, word in ((p.queued, "queued"), (p.held, "held")) if n)
        counts += f"{p.failed} failed" + (f", {p.pending} waiting" if p.pending else "")
        line = f"[{_mm_ss(p.elapsed_s)}] {counts}"
        if p.eta_s is not None and p.work_done is not None and p.done < p.total:
            line += f"; {100 * p.work_done:.0f}% of the work, ~{_mm_ss(p.eta_s)} left"
        if tty:
            print("\r" + line + "\033[K", end="", file=sys.stderr, flush=True)
        elif counts != last[0]:  # a log gets a line when a cell starts or ends, not every poll
            print(line, file=sys.stderr, flush=True)
        last[0] = counts

    return show


#: Flags that only say which sweep `status` reads; any other spec flag describes its cells.
_LOCATING_ARGS = ("name", "experiment", "tracking_uri", "output_dir")


def status_spec(spec: SweepSpec, args: argparse.Namespace, recorded: SweepSpec | None) -> SweepSpec:
    """The sweep `status` shows: its last launch ``recorded`` (`sweeps.grid.read_spec_record`), with the
    cells the command line describes (--grid, --budgets, --seeds, --set, ...) applied to it, not to the
    bundled demo; with -c, those cells are the config's instead, looked up where the sweep logs them
    (the recorded experiment and tracking URI). Never launched: ``spec``, refused where it is the
    bundled demo for a named sweep and the command line describes cells. A given --experiment or
    --tracking-uri applies in every case."""
    if recorded is None:
        if args.config is None and args.name is not None and _describes_cells(args):
            raise ValueError(
                f"sweep {spec.name}: no record of its launch ({sweep_dir(spec) / SPEC_RECORD}), so the cells "
                "this command line describes would be the bundled demo's; pass the -c/--config it was "
                "launched with, or the --output-dir where its folder is"
            )
        return spec
    recorded = recorded.replace(output_dir=spec.output_dir)
    given = {a: getattr(args, a) for a in ("experiment", "tracking_uri") if getattr(args, a) is not None}
    if not _describes_cells(args):
        return recorded.replace(**given)
    if args.config is None:
        return spec_from_args(args, base=recorded)
    located = {"experiment": recorded.experiment, "tracking_uri": recorded.tracking_uri}
    return spec.replace(**{**located, **given})


def _describes_cells(args: argparse.Namespace) -> bool:
    """Whether a status command line names cells (--grid, --budgets, --set, ...), not only the sweep."""
    cells_args = set(_SPEC_ARGS + ("shapes", "depths", "widths", "head_dim", "set")) - set(_LOCATING_ARGS)
    return any(getattr(args, a) not in (None, []) for a in cells_args)


_RUNS_ONLY = "the table shows the sweep's runs in MLflow only"  # where its cells are not known


def _run_folders(runs: dict) -> list[str]:
    """The --output-dir folders of the runs' trainers (param ``out``: <dir>/<name>/cells/<cell>)."""
    outs = {r.data.params.get("out") for rs in runs.values() for r in rs}
    return sorted({str(Path(o).parents[2]) for o in outs if o and len(Path(o).parents) > 2})


def show_status(
    spec: SweepSpec, launched: SweepSpec | None = None, guessed: bool = False, unknown: bool = False
) -> dict[str, CellState]:
    """Print the sweep's table; each cell's state. ``launched``: its recorded last launch (sweep.json),
    whose experiment and store are named when the ones given hold none of its runs; ``guessed``: the
    cells are the config's, not the sweep's record nor the command line's (shown only where the
    sweep's folder exists); ``unknown``: its cells are not known here (no record, and the config is the
    bundled demo, not the named sweep's): its runs only are shown."""
    if spec.design == "adaptive":  # the budgets placed so far, at their recorded centres
        placed = recorded_spec(spec, sweep_dir(spec))
        if placed is None:
            print(f"sweep {spec.name}: adaptive, no budget placed yet (launch it)")
            return {}
        spec = placed
    cells, note = {}, None
    if unknown:
        note = (
            f"no record of its launch ({sweep_dir(spec) / SPEC_RECORD}): {_RUNS_ONLY}; pass the -c/--config "
            "it was launched with to see all its cells"
        )
    else:
        try:
            cells = {c.cell_id: c for c in expand(spec)}
        except ValueError as e:  # e.g. the prior file is gone: the runs in MLflow still say where it stands
            if spec.design == "grid":
                raise
            note = f"{spec.design} design not placed again ({e}); {_RUNS_ONLY}"
    uri = resolve_tracking_uri(spec.tracking_uri)
    check_tracking_server(uri, AUTH_HINT)
    if (path := sqlite_store_path(uri)) is not None and not path.is_file():
        raise ValueError(  # do not let MLflow create an empty store just to look
            f"sweep {spec.name}: no MLflow store at {uri}; launch the sweep first, or pass the "
            "--tracking-uri (and --name / --config) it was launched with"
        )
    runs = read_runs(uri, spec.experiment, spec.name)  # one paged search, shared with read_states
    if not runs and not sweep_dir(spec).is_dir():
        raise ValueError(
            f"no sweep {spec.name!r}: no folder {sweep_dir(spec)} and no runs of it in experiment "
            f"{spec.experiment!r} at {uri}; check --name (and --output-dir, --experiment, --tracking-uri)"
        )
    if not runs and launched is not None:
        was = (launched.experiment, resolve_tracking_uri(launched.tracking_uri))
        if was != (spec.experiment, uri):
            raise ValueError(
                f"sweep {spec.name}: no runs of it in experiment {spec.experiment!r} at {uri}; it was "
                f"launched into experiment {was[0]!r} at {was[1]} ({sweep_dir(spec) / SPEC_RECORD}): drop "
                "--experiment / --tracking-uri, or give those"
            )
    if guessed and runs and not sweep_dir(spec).is_dir():  # moved or deleted: the config's cells are a guess
        where = _run_folders(runs)
        cells = {}
        note = (
            f"no folder {sweep_dir(spec)}: {_RUNS_ONLY}"
            + (f"; they train under --output-dir {' or '.join(where)}" if where else "")
            + "; pass the --output-dir the sweep was launched with (or where its folder was moved)"
        )
    ids = list(cells) + sorted(set(runs) - set(cells))
    run_dirs = {cid: str(cell_dir(sweep_dir(spec), cid)) for cid in ids}
    states = read_states(uri, spec.experiment, spec.name, run_dirs, runs=runs)
    waiting = _waiting_cells(spec, states)
    print(f"sweep {spec.name}: experiment {spec.experiment!r} at {uri}")
    print(status_table(list(states.values()), cells, _trunks(spec, cells, states, uri)))
    counts = Counter(s.state for s in states.values())
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    for line in waiting + _advice(spec, states) + (_left_out_lines(spec) if note is None else [note]):
        print(line)
    return states


def _waiting_cells(spec: SweepSpec, states: dict[str, CellState]) -> list[str]:
    """With a launch of the sweep alive, mark the cells it has yet to submit `waiting` (`mark_waiting`);
    the line that says so, if any."""
    if (pid := launcher_pid(sweep_dir(spec))) is None or not (cells := mark_waiting(states)):
        return []
    return [
        f"waiting: {len(cells)} cells wait for a free slot in the live launch of this sweep ({_pid(pid)}), "
        "which submits each as one frees; `status` again to watch them"
    ]


def _pid(pid: int) -> str:
    """A launcher's pid as `launcher_pid` reads it (0: the holder has not written it yet)."""
    return f"pid {pid}" if pid else "pid unknown"


def _trunks(spec: SweepSpec, cells: dict, states: dict[str, CellState], uri: str) -> dict[str, str]:
    """A ladder's live cells with no step of their own: how far their trunk has grown (`trunk_progress`)."""
    live = [
        c for c, st in states.items() if c in cells and st.step is None and st.state in ("queued", "running")
    ]
    if not spec.ladder or not live:
        return {}
    return trunk_progress(make_tasks(spec, list(cells.values()), sweep_dir(spec), uri), live)


def _advice(spec: SweepSpec, states: dict[str, CellState]) -> list[str]:
    """What to do about the cells no launch or wait will finish as they are: unknown, held by SLURM,
    failed or interrupted (relaunch; out of retries: --max-retries)."""
    out = []
    if any(st.state == "unknown" for st in states.values()):
        out.append(
            "unknown: SLURM does not answer (sacct and squeue failed), so whether those cells' jobs are "
            "alive is not known; look again once `squeue` answers (a launch refuses until then, unless "
            "--slurm-jobs-gone says that cluster is gone for good)"
        )
    if held := {c: st.job_id for c, st in states.items() if st.state == "held"}:
        out.append(
            f"held: {', '.join(f'{c} (job {j})' for c, j in held.items())}: SLURM holds the job, which never "
            f"starts on its own; release it with `scontrol release {','.join(held.values())}`"
        )
    if unrecorded := [c for c, st in states.items() if st.state in ("running", "queued") and st.unrecorded]:
        out.append(
            f"running unrecorded: {', '.join(unrecorded[:8])}: a live job holds the cell's lock, but its run "
            "records no job (its launcher was killed before recording it); it trains that run to its end, "
            "and a launch does not start the cell again (`fuser` on the cell's lock file, e.g. "
            f"{cell_dir(sweep_dir(spec), unrecorded[0]) / CELL_LOCK}, lists the processes that hold it)"
        )
    p = plan(states, spec.executor.max_retries)
    redo = [c for c in p.submit if states[c].state in ("failed", "interrupted")]
    if redo:
        out.append(
            f"{len(redo)} failed or interrupted ({', '.join(redo[:8])}): relaunch the same command that "
            "launched the sweep to resume them; finished cells are kept, live ones are not resubmitted"
        )
    if p.exhausted:
        out.append(
            f"{len(p.exhausted)} out of retries ({', '.join(p.exhausted[:8])}): {_retry(p.exhausted, states)}"
        )
    return out


def _left_out_lines(spec: SweepSpec) -> list[str]:
    """The grid cells left out below ``min_steps``, in one line (none: no line)."""
    out = left_out(spec)
    if not out:
        return []
    cells = ", ".join(f"{c.cell_id} ({c.steps} steps)" for c in out)
    return [f"left out, below min_steps {spec.min_steps}: {cells}"] + _no_cell_lines(spec, out)


def _no_cell_lines(spec: SweepSpec, out: list[Cell]) -> list[str]:
    """One line per model and patch size that ``min_steps`` leaves without a cell at every budget (of
    the left-out cells ``out``): its most steps, and the budget or --min-steps that would keep it."""
    rows: dict[tuple[str, int], list[Cell]] = {}
    for c in out:
        rows.setdefault((c.model.name, c.patch_size), []).append(c)
    lines = []
    for (name, patch), row in rows.items():
        if len(row) < len(spec.budgets):
            continue
        best = max(row, key=lambda c: c.steps)
        need = spec.min_steps * best.batch_size * best.train_flops_per_image
        digits = 10.0 ** (math.floor(math.log10(need)) - 1)  # rounded up to 2 digits: still enough steps
        fixes = [f"add a budget of {format_budget(math.ceil(need / digits) * digits)} or more (--budgets)"]
        if best.steps >= 1:
            fixes.append(f"lower --min-steps to {best.steps}")
        patch_s = f" at patch {patch}" if len(spec.patch_sizes) > 1 else ""
        lines.append(
            f"{name}{patch_s} gets no cell: below min_steps {spec.min_steps} at every budget (the most: "
            f"{best.steps} steps at {format_budget(best.budget)}); {' or '.join(fixes)} to train it, or "
            "drop it (--grid, --shapes)"
        )
    return lines


def _design_lines(spec: SweepSpec) -> list[str]:
    """Where the isoflop/adaptive design centred each budget, or the grid cells left out (dry run)."""
    if spec.design == "grid":
        return _left_out_lines(spec)
    plans = plan_budgets(spec)
    if spec.design != "adaptive":
        return [p.text() for p in plans]
    record = read_record(sweep_dir(spec))
    for p in plans:
        if p.budget in record:
            p.source = f"placed on {record[p.budget]['source']}"
    return [p.text() for p in plans] + [
        "adaptive: budgets run smallest first; each one not yet placed is centred on the refit of the "
        "finished ones when its turn comes (shown here at the prior)"
    ]


def _waiting(args: argparse.Namespace) -> dict:
    """The keywords of `sweeps.runner.launch` (and `sweeps.design.launch_adaptive`) that the run flags
    set: whether and how to wait for the jobs, and --slurm-jobs-gone."""
    on_progress = _progress_printer()
    return dict(
        wait=not args.no_wait, poll_s=args.poll, on_progress=on_progress, jobs_gone=args.slurm_jobs_gone
    )


def cmd_run(spec: SweepSpec, args: argparse.Namespace) -> int:
    if spec.design == "adaptive":
        recorded = {b: v["centre"] for b, v in placed(spec, sweep_dir(spec)).items()}
        spec = spec.replace(isoflop_centres={**spec.isoflop_centres, **recorded})
        if not args.dry_run:
            return cmd_adaptive(spec, args)
    if args.dry_run:
        return cmd_dry_run(spec, args)
    res = launch(spec, **_waiting(args))
    prep, pl = res.prepared, res.plan
    if sys.stderr.isatty() and res.job_ids and res.waited:
        print(file=sys.stderr)
    print(
        f"sweep {spec.name} on {prep.kind}: {len(res.job_ids)} submitted, "
        f"{len(pl.finished)} already finished, {len(pl.running)} still running, "
        f"{len(pl.exhausted)} out of retries"
    )
    if not res.waited:
        if res.job_ids:  # a relaunch with nothing to submit has no jobs to list
            print(f"jobs: {', '.join(f'{c}={j}' for c, j in res.job_ids.items())}")
        print(f"watch with: {_status_command(args)}")
        _print_failed(res.errors, res.logs)  # cells its warm worker, dead, could not start
        return 1 if res.errors else 0
    states = show_status(spec)
    # a job can end without an error and its cell still not be finished (a trainer that returns a
    # failure, or never ends its run): the cell's record decides, as for `status` and the relaunch
    failed = dict(res.errors)
    for cid in res.job_ids:
        st = states.get(cid)
        if cid not in failed and st is not None and st.state != "finished":
            failed[cid] = f"its job ended, but its run is {st.state} (MLflow status {st.run_status})"
    _print_failed(failed, res.logs)
    if failed:
        print(f"{len(failed)} cell(s) failed; relaunch the same command to retry them", file=sys.stderr)
        _print_diverged(failed)
    if pl.exhausted:
        _print_exhausted(pl.exhausted, states)
    if failed or pl.exhausted:
        return 1
    fit = fit_command(spec, prep.cells)
    # an earlier launch's cells, which this one did not wait for (the fit would miss them), in the state
    # they are in now: finished meanwhile (not named), live, or over without finishing (failed)
    now = {c: states[c].state if c in states else "running" for c in pl.running}
    ended = {c: s for c, s in now.items() if s not in ("finished", "running", "queued", "held", "unknown")}
    if ended:
        named = ", ".join(f"{c}: {s}" for c, s in ended.items())
        print(f"{len(ended)} cell(s) of an earlier launch ended unfinished ({named}); relaunch the same "
              "command to retry them", file=sys.stderr)  # fmt: skip
        return 1
    running = [f"{c}: {s}" if s in ("held", "unknown") else c for c, s in now.items() if s != "finished"]
    if running:
        print(
            f"\n{len(running)} cell(s) still running ({', '.join(running)}); watch with: "
            f"{_status_command(args)}\nthen: {fit}"
        )
        return 0
    print(f"\nnext: {fit}")
    return 0


def fit_command(spec: SweepSpec, cells: list[Cell]) -> str:
    """The `NEXT_COMMAND` line that fits ``spec``'s runs; with ``--min-steps`` where some of ``cells``
    make fewer steps than the analysis keeps by default, which would otherwise leave them out of the fit
    (a sweep launched with a low ``--min-steps``)."""
    from analysis.config import AnalysisConfig

    fit = f"{NEXT_COMMAND} --experiment {spec.experiment}" + (
        "" if spec.tracking_uri is None else f" --tracking-uri {spec.tracking_uri}"
    )
    fewest = min((c.steps for c in cells), default=AnalysisConfig.min_steps)
    return fit + (f" --min-steps {fewest}" if fewest < AnalysisConfig.min_steps else "")


def _print_exhausted(cells: list[str], states: dict[str, CellState]) -> None:
    """The cells out of retries, with the tries each made (`CellState.tries`, as the table's column) and
    the --max-retries that runs them all again: a cell is tried while its tries are at most that."""
    made = ", ".join(f"{c}: tried {states[c].tries} times" if c in states else c for c in cells)
    print(f"{len(cells)} cell(s) out of retries ({made}); {_retry(cells, states)}", file=sys.stderr)


def _retry(cells: list[str], states: dict[str, CellState]) -> str:
    """What tries ``cells``, out of retries, again: a cell is tried while its tries (`CellState.tries`, as
    the table's column) are at most --max-retries."""
    need = max((states[c].tries for c in cells if c in states), default=1)
    return f"relaunch with --max-retries {need} or more to try them again"


def _print_diverged(errors: dict[str, str]) -> None:
    """For cells whose trainer stopped at a non-finite loss or weights (its messages say "non-finite"):
    the same settings diverge again, and a changed lr is another sweep's."""
    diverged = [cid for cid, err in errors.items() if "non-finite" in err]
    if diverged:
        print(
            f"{len(diverged)} of them diverged ({', '.join(diverged)}): a retry with the same settings "
            "diverges again; launch them as a new sweep (--name NEW) with a lower lr (--set optim.lr=... or "
            "--lrs) or gradient clipping (--set optim.grad_clip=1)",
            file=sys.stderr,
        )


def _print_failed(errors: dict[str, str], logs: dict[str, str]) -> None:
    """One ``FAILED`` line per failed cell: its error and its job's log files."""
    for cid, err in errors.items():
        where = f" (logs: {logs[cid]})" if logs.get(cid) else ""
        print(f"FAILED {cid}: {err}{where}", file=sys.stderr)


def cmd_dry_run(spec: SweepSpec, args: argparse.Namespace) -> int:
    """Print the cells and the study's bill once the checks of a real launch pass (the same refusals,
    exit 2), reading only: no store, folder, experiment or run is made. A real launch's needs that
    the machine of a dry run may lack (SLURM, the tracking server, data.root) are noted instead."""
    notes = []
    sdir = sweep_dir(spec)
    if spec.design == "adaptive":  # as `sweeps.design.launch_adaptive` refuses it
        check_adaptive(spec)
        for b, rec in placed(spec, sdir).items():
            check_placed(spec, sdir, b, rec)
    cells = expand(spec)
    unknown: tuple[str, ...] = ()
    if spec.data.name in FOLDER_DATASETS and not spec.data.root:
        notes.append(
            f"data.root is not set: a real launch needs it (`data: {{root: ...}}` in the sweep's YAML, "
            f"-c {args.config or 'demo'})"
        )
        spec, unknown = spec.replace(data={"root": "<data.root>"}), ("data.root",)
    no_cluster = ""
    try:
        kind = resolve_executor_kind(spec.executor.name)
    except ValueError as e:  # SLURM asked for, no cluster answers: noted once the dry run knows its bill
        kind, no_cluster = "slurm", str(e)
    uri, uri_read = resolve_tracking_uri(spec.tracking_uri), True
    try:
        check_tracking_uri(uri)  # a file that is no MLflow store, a missing folder, ...
    except ValueError as e:  # a server out of reach from here, as SLURM may be
        if not uri.startswith(("http://", "https://")):
            raise
        notes.append(
            f"{e} (a real launch refuses it; the sweep's runs were not read, so the settings a relaunch "
            "compares were not checked, and the estimate counts every cell)"
        )
        uri_read = False
    check_executor(spec, kind)
    check_output_dir(sdir)
    check_wait(kind, not args.no_wait)
    tasks = make_tasks(spec, cells, sdir, uri)
    # each cell's TrainConfig, or an error (the trainer's own checks, which import torch: at launch)
    configs = check_trainer(spec.trainer, list(tasks.values()), resolve=False)
    states = preview(spec, tasks, configs, uri, unknown) if uri_read else {}  # a relaunch's refusals
    if gone := take_jobs_gone(states) if args.slurm_jobs_gone else []:  # as a launch takes them
        notes.append(
            f"--slurm-jobs-gone: a launch takes the SLURM jobs of {len(gone)} cell(s) whose state is unknown "
            f"({_some(gone)}) for over and submits those cells again (with retries left; counted above); a "
            "job of them still alive would train its cell twice"
        )
    p = plan(states, spec.executor.max_retries) if any(st.run_id for st in states.values()) else None
    todo = [c for c in cells if p is None or c.cell_id in p.submit]  # what a launch would submit
    todo = trained_cells(todo, tasks)  # a ladder's: the steps each job trains
    evals = {
        c.cell_id: cell_eval_flops(c, tasks[c.cell_id].overrides, tasks[c.cell_id].trunk is None)
        for c in todo
    }
    ex = spec.executor
    # priced before anything is printed: a bad --mfu or --device is an error, not a table then an error
    if ex.gpus_per_node or args.device or args.mfu is not None:
        gpus, mfu = ex.nodes * max(1, ex.gpus_per_node), DEFAULT_MFU if args.mfu is None else args.mfu
        bill = estimate(todo, evals, device_name=args.device or DEFAULT_DEVICE, mfu=mfu, gpus_per_cell=gpus)
        bill = bill.summary()
    else:  # CPU only: locally its wall time here, on SLURM its core-hours
        threads = threads_per_process(ex, kind) * ex.tasks_per_node
        slots = ex.local_parallelism if kind == "local" else 1
        nodes = ex.nodes if kind == "slurm" else 1  # a SLURM cell's processes span its nodes
        cpu = CpuEstimate(tuple(todo), tuple(evals.values()), slots, threads * nodes)
        bill = cpu.slurm_summary() if kind == "slurm" else cpu.summary(os.cpu_count() or 1)
    print(
        f"sweep {spec.name}: {len(cells)} cells, {spec.design} design, batch {spec.batch_size}, "
        f"data {spec.data.name} {spec.data.input_size}px x{spec.data.in_channels}, "
        f"total {sum(c.train_flops for c in cells):.3g} training FLOPs (true FLOPs)"
    )
    print("\n".join([cells_table(cells), *_design_lines(spec), *_ladder_lines(spec, tasks), ""]))
    if p is not None and not p.submit:  # no bill of 0 cells: why nothing, and what would add some
        print("\n".join(_nothing_to_submit(spec, args, p, states, len(cells), bool(no_cluster))))
    else:
        print(bill)
    if p is not None and p.submit and not p.unknown:
        print(
            f"{_already(spec, p)}; a launch would submit {len(p.submit)} of {len(cells)} cells (the estimate "
            f"above is for those {len(p.submit)})"
        )
    elif p is not None and p.submit:  # a launch refuses while SLURM does not say whether those jobs live
        print(
            f"{_already(spec, p)}; a launch refuses until SLURM answers about the {len(p.unknown)} of "
            f"unknown job state, then submits {len(p.submit)} of {len(cells)} cells (the estimate above is "
            f"for those {len(p.submit)}) and those of the {len(p.unknown)} found over"
        )
        print(_unknown_line(p, bool(no_cluster)))
    if p is not None and p.submit and (pid := launcher_pid(sdir)) is not None:
        print(
            f"a launch of this sweep is running ({_pid(pid)}): it submits the cells it has not yet as slots "
            "free (`status` shows them `waiting`), and a second launch is refused until it ends"
        )
    if kind == "slurm" and todo:
        flags = sbatch_flags(spec.executor, sdir / "jobs", job_name(spec), len(todo))
        print(f"sbatch for those {len(todo)} cells: {' '.join(flags)}")
    if no_cluster:  # SLURM asked for and no cluster answers: a real launch here refuses, exit 2
        if p is not None and not p.submit:
            no_cluster += (
                " (a real launch here refuses, although it would submit nothing; `python sweeps/launch.py "
                "status` reads the sweep without a cluster)"
            )
        else:
            no_cluster += " (a real launch here refuses; the bill is priced all the same)"
        notes.append(no_cluster)
    print("\n".join([*notes, "dry run: nothing submitted"]))
    return 0


def _ladder_lines(spec: SweepSpec, tasks: dict) -> list[str]:
    """The dry run's line on a cooldown ladder's trunks and training FLOPs."""
    if not spec.ladder:
        return []
    from sweeps.ladder import ladder_flops

    ladder, scratch = ladder_flops(tasks)
    trunks = len({t.trunk.run_dir for t in tasks.values()})
    return [
        f"cooldown ladder: {trunks} constant-lr trunks, each cell trains its cooldown from its trunk's "
        f"checkpoint: {ladder:.3g} training FLOPs, {ladder / scratch:.2f}x its cells trained from step 0"
    ]


def _already(spec: SweepSpec, p: Plan) -> str:
    """The dry run's count of the sweep's cells a launch would skip, by why."""
    unknown = f", {len(p.unknown)} of unknown job state" if p.unknown else ""
    return (
        f"already in experiment {spec.experiment!r}: {len(p.finished)} finished, {len(p.running)} running "
        f"or queued, {len(p.exhausted)} out of retries{unknown}"
    )


def _unknown_line(p: Plan, no_cluster: bool) -> str:
    """The cells whose SLURM job state is unknown, why a launch refuses, and the way out; ``no_cluster``:
    SLURM is asked for where no cluster answers, so the way out needs --executor local too."""
    here = " (and, where no cluster answers as here, --executor local)" if no_cluster else ""
    return (
        f"job state unknown (SLURM does not answer): {_some(p.unknown)}; a launch refuses until `squeue` "
        f"answers, unless --slurm-jobs-gone{here} says that cluster is gone for good"
    )


def _some(items: list[str], most: int = 8) -> str:
    """``items`` joined by commas, the first ``most`` of them and then "..." where there are more."""
    return ", ".join(items[:most]) + (", ..." if len(items) > most else "")


def _nothing_to_submit(
    spec: SweepSpec, args: argparse.Namespace, p: Plan, states: dict[str, CellState], n_cells: int,
    no_cluster: bool = False,
) -> list[str]:  # fmt: skip
    """The dry run's lines for a sweep whose every cell a launch would skip: how many and why (finished,
    live, out of retries, job state unknown), and what to do about each (the flags that exist)."""
    out = [f"{_already(spec, p)}; a launch would submit 0 of {n_cells} cells: nothing to submit, so no bill"]
    if p.running:
        out.append(
            f"running or queued: {_some(p.running)}; a launch does not submit them again; watch "
            f"them with: {_status_command(args)}"
        )
    if p.exhausted:
        made = _some([f"{c}: tried {states[c].tries} times" for c in p.exhausted])
        out.append(f"out of retries: {made}; {_retry(p.exhausted, states)}")
    if p.unknown:
        out.append(_unknown_line(p, no_cluster))
    models = {"grid": "models (--grid, --shapes), ", "isoflop": "sizes (--sizes-per-budget, --spread), "}
    out.append(  # an adaptive budget keeps the sizes it was placed with (`sweeps.design.check_placed`)
        f"to train more, add cells: budgets (--budgets), {models.get(spec.design, '')}seeds (--seeds) or "
        "lrs (--lrs); a finished cell is never trained again: to retrain it, launch it as a new sweep "
        "(--name NEW)"
    )
    return out


def cmd_adaptive(spec: SweepSpec, args: argparse.Namespace) -> int:
    """Run an adaptive sweep budget by budget (`sweeps.design.launch_adaptive`), then the status."""

    def show(step) -> None:
        if sys.stderr.isatty():
            print(file=sys.stderr)
        r = step.launch
        print(
            f"budget {format_budget(step.budget)}: centred on N {step.centre.n:.3g} ({step.centre.source}); "
            f"{len(step.cells)} cells, {len(r.job_ids)} submitted, {len(r.plan.finished)} already finished"
            + (f"\n  {step.centre.note}" if step.centre.note else "")
        )

    res = launch_adaptive(spec, on_step=show, **_waiting(args))
    if res.final is not None:
        print(
            f"fit after the last budget: N_opt at {format_budget(max(spec.budgets))} = "
            f"{res.final.n:.3g} ({res.final.source})"
        )
    if res.stopped:
        print(res.stopped)
    show_status(spec)
    _print_failed(res.errors, res.logs)
    if res.errors or (res.stopped and not args.no_wait):
        print("relaunch the same command to retry; placed budgets keep their cells", file=sys.stderr)
        return 1
    return 0


def _status_command(args: argparse.Namespace) -> str:
    """The `status` command of the sweep ``args`` launched: its -c/--config and the flags that locate it."""
    flags = ("config", "name", "experiment", "tracking_uri", "output_dir")
    given = "".join(f" --{f.replace('_', '-')} {getattr(args, f)}" for f in flags if getattr(args, f))
    return ("python sweeps/launch.py status" + given).rstrip()


def check_status_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse `status` with an option that only a launch uses (of the "executor" and "run" groups, all
    but --verbose): status reads the sweep's record and runs, so the option would be ignored silently."""
    for group in parser._action_groups:
        for action in group._group_actions if group.title in ("executor", "run") else []:
            if action.dest != "verbose" and getattr(args, action.dest) != action.default:
                flag = max(action.option_strings, key=len)
                raise ValueError(
                    f"status only reads; {flag} applies to a launch (`python sweeps/launch.py run ...`): "
                    "drop it"
                )


def _mlflow_error(e: BaseException) -> bool:
    """Whether ``e`` is MLflow's own (`MlflowException`: a store's or a server's error), mlflow imported."""
    exceptions = sys.modules.get("mlflow.exceptions")
    return exceptions is not None and isinstance(e, exceptions.MlflowException)


def _first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, at most 300 characters."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv, parser))
        if args.command not in COMMANDS:
            parser.error(
                f"argument command: invalid choice: {args.command!r} (choose from {', '.join(COMMANDS)})"
            )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    spec = None
    try:
        if args.command == "status":
            check_status_args(parser, args)
        spec = spec_from_args(args)
        if args.command == "status":
            launched = read_spec_record(sweep_dir(spec))
            guessed = launched is None and not _describes_cells(args)
            unknown = guessed and args.config is None and args.name is not None  # the demo is not its config
            show_status(status_spec(spec, args, launched), launched, guessed, unknown)
            return 0
        if argv is None:  # the CLI's own process (a test calling main() keeps its handlers)
            stop_on_signals()
        return cmd_run(spec, args)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head`: stdout's reader left; an OSError, but not the user's input
        return stdout_closed()
    except OSError as e:  # a config path that is a folder, an output folder that cannot be made, ...
        print(f"error: {e}; check --config and --output-dir", file=sys.stderr)
        return 2
    except Exception as e:  # an MLflow store that answers its health check but fails (its database, ...)
        if not _mlflow_error(e):
            raise
        uri = resolve_tracking_uri(args.tracking_uri if spec is None else spec.tracking_uri)
        print(
            f"error: the MLflow tracking store at {uri} failed ({_first_line(e)}); fix it (a server's log "
            "says why), then run the same command again: finished and live cells are kept",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as e:  # a Ctrl-C, or SIGTERM or SIGHUP taken as one (`stop_on_signals`)
        return _interrupted(e)


def _interrupted(e: KeyboardInterrupt) -> int:
    """Say what the launcher's Ctrl-C (or SIGTERM, SIGHUP) stopped; returns 128 + the signal."""
    signum = stop_signal(e)
    said = (
        str(e)  # `sweeps.runner.CancelInterrupted`: what the signal stopped
        or "SLURM jobs keep running; local jobs get the Ctrl-C (from the launcher too) and stop at their "
        "next step, checkpointed (not counted as tries against --max-retries). Relaunch the same command "
        "to resume: finished cells are kept, live ones are not resubmitted"
    )
    name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        print(f"\ninterrupted{name}: {said}", file=sys.stderr)
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
