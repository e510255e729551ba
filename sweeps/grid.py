"""A sweep: `SweepSpec` (YAML + overrides) and its expansion into grid cells with stable ids.

A cell is one (model shape, patch size, compute budget) triple; its id is stable across launches,
e.g. ``S-2-1e15`` (family S, patch 2, 1e15 training FLOPs) or ``d4w64h4-2-3e12`` for a custom
shape. Parameters, FLOPs and the number of optimizer steps, ``floor(budget / (batch_size *
train_flops_per_image))``, come from `dit_core.spec`, as in the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dit_core.atomic import atomic_write_text
from dit_core.configio import (
    check_fields,
    check_keys,
    iter_fields,
    parse_value,
    require,
    yaml_problem,
    yaml_to_flat,
)
from dit_core.spec import (
    FOLDER_DATASETS,
    MAX_IMAGES,
    DiTConfig,
    budget_steps,
    forward_gflops,
    model_config,
    model_label,
    param_count,
    train_flops_per_image,
)
from dit_core.tracking import DEFAULT_EXPERIMENT
from sweeps.families import ModelShape, Scale, custom_shape, family_shape, positive, whole

log = logging.getLogger(__name__)

#: The trainer module a sweep's cells run unless its ``trainer`` names another.
DEFAULT_TRAINER = "dit_core.train"

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SPEC_RECORD = "sweep.json"  # <output_dir>/<name>/sweep.json: the spec of the sweep's last launch
DESIGNS = ("grid", "isoflop", "adaptive")
DESIGN_MIN_STEPS = 20  # the isoflop/adaptive designs' min_steps where none is given (grid: 1)
EXECUTORS = ("auto", "slurm", "local", "debug")
MIN_SIZE_RATIO = 1.2  # two sizes of one budget closer than this are "near-identical"


@dataclass
class DataSpec:
    """What the models see. input_size/in_channels are the model's input (pixels, or VAE latents:
    256 px images -> input_size 32, in_channels 4); root is the data folder for imagefolder/latents."""

    name: str = "digits"
    input_size: int = 16
    in_channels: int = 1
    num_classes: int = 10
    root: str | None = None


@dataclass
class ExecutorSpec:
    """Where cells run (submitit): each field is a key of the YAML's ``executor:``, described with its
    flag in docs/sweeps.md's option table; max_num_timeout (YAML only): time-limit requeues per
    submission before a job counts as failed."""

    name: str = "auto"
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    array_parallelism: int = 64
    local_parallelism: int = 2
    local_warm: bool = True
    signal_delay_s: int = 90
    sbatch: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    max_retries: int = 2
    max_num_timeout: int = 3


def check_mem_gb(mem_gb: float | None) -> None:
    """The one check of ``executor.mem_gb``: unset, or GB per node > 0, finite, at least 1 MB (submitit
    asks SLURM for ``int(mem_gb * 1024)`` MB)."""
    if mem_gb is None:
        return
    require(mem_gb > 0, "executor.mem_gb", f"must be > 0, got {mem_gb}")
    require(math.isfinite(mem_gb), "executor.mem_gb", f"must be > 0 and finite, got {mem_gb}")  # no overflow
    require(  # --mem=0MB: SLURM gives the whole node
        int(mem_gb * 1024) >= 1,
        "executor.mem_gb",
        f"{mem_gb} GB is under 1 MB (SLURM reads --mem=0 as all of a node's memory); give GB per node, "
        "e.g. --mem-gb 16",
    )


@dataclass
class SweepSpec:
    """A whole sweep; `load_spec` reads it from YAML, `SweepSpec.replace` applies overrides. Each field
    is a YAML key: its meaning, default and flag are in the option table of docs/sweeps.md (one place);
    the isoflop/adaptive designs are `sweeps.design`."""

    name: str = "demo"
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    output_dir: str = "sweep_runs"
    families: list[str] = field(default_factory=lambda: ["S", "B", "L", "XL"])
    scale: Scale = field(default_factory=Scale)
    patch_sizes: list[int] = field(default_factory=lambda: [2])
    shapes: list[list[int]] = field(default_factory=list)
    budgets: list[float] = field(default_factory=lambda: [1e12])
    seeds: list[int] = field(default_factory=lambda: [0])
    lrs: list[float] = field(default_factory=list)  # empty: every cell at the train section's optim.lr
    design: str = "grid"
    ladder: bool = False  # cells of one model share a constant-lr trunk, each trains its cooldown
    min_steps: int | None = None
    isoflop_max_steps: int = 100_000
    sizes_per_budget: int = 5
    size_spread: float = 4.0
    tokens_per_param: float = 20.0  # Chinchilla's compute-optimal ratio (Hoffmann et al. 2022)
    prior: str | None = None
    design_head_dim: int | None = None
    isoflop_centres: dict[float, float] = field(default_factory=dict)
    batch_size: int = 64
    data: DataSpec = field(default_factory=DataSpec)
    train: dict[str, Any] = field(default_factory=dict)
    trainer: str = DEFAULT_TRAINER
    final_eval: bool = True
    val_points: int = 1
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)

    def __post_init__(self) -> None:
        self.train = typed_train(self.train, self.trainer, "train")

    def replace(self, **overrides: Any) -> SweepSpec:
        """A copy with top-level fields replaced; ``executor``/``data`` take dicts of their fields."""
        for k in ("executor", "data"):
            if isinstance(overrides.get(k), dict):
                overrides[k] = dataclasses.replace(getattr(self, k), **overrides[k])
        spec = dataclasses.replace(self, **overrides)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and how to fix it."""
        if not self.name or any(c in self.name for c in "/\\ '\""):
            raise ValueError(f"sweep name {self.name!r} must be non-empty without '/', spaces or quotes")
        if self.name in (".", ".."):
            raise ValueError(f"sweep name {self.name!r} would be the output folder itself; give a name")
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ValueError(
                f"experiment {self.experiment!r}: give an MLflow experiment name (--experiment NAME)"
            )
        if not self.families and not self.shapes:
            raise ValueError("the grid has no models: give --grid S,B,L,XL and/or custom --depths/--widths")
        for f in self.families:
            family_shape(f, self.scale)  # raises on unknown names
        check_fields(self.data, "data.", dict.fromkeys(("input_size", "in_channels", "num_classes"), ">= 1"))
        if self.data.root is not None and self.data.name not in FOLDER_DATASETS:  # the trainer would refuse
            raise ValueError(  # every cell when it starts
                f"data.root: {self.data.name!r} is bundled and reads no folder; drop data.root, or set "
                f"data.name to one of {list(FOLDER_DATASETS)} to train on that folder"
            )
        for p in self.patch_sizes:
            if not whole(p):
                raise ValueError(f"patch size {p!r} must be a positive integer (e.g. --patch 2,4,8)")
            if self.data.input_size % p:
                divisors = [d for d in range(1, self.data.input_size + 1) if self.data.input_size % d == 0]
                raise ValueError(
                    f"patch size {p} does not divide the input size {self.data.input_size} "
                    f"(data.input_size); choose from {divisors}"
                )
        if not self.patch_sizes:
            raise ValueError("patch_sizes is empty; give e.g. --patch 2")
        for s in self.shapes:
            if len(s) != 3:
                raise ValueError(f"custom shape {s!r} must be [depth, hidden_size, num_heads]")
            custom_shape(*s)
        if not self.budgets:
            raise ValueError("budgets is empty; give e.g. --budgets 1e12,3e12 (training FLOPs)")
        for b in self.budgets:
            if not positive(b):
                raise ValueError(f"budget {b!r} must be a positive number of training FLOPs (e.g. 1e15)")
        self._validate_seeds()
        for lr in self.lrs:
            if not positive(lr):
                raise ValueError(f"lr {lr!r} must be a positive number (e.g. --lrs 1e-3,3e-3,1e-2)")
        if len({format_budget(lr) for lr in self.lrs}) < len(self.lrs):
            raise ValueError(
                f"lrs {self.lrs} repeat an lr (to 4 digits, as cell ids keep it); list each once"
            )
        check_fields(self, "", {"design": DESIGNS, "batch_size": ">= 1", "val_points": ">= 1"})
        if isinstance(self.min_steps, bool) or self.fewest_steps() < 1:
            raise ValueError("need min_steps >= 1 (--min-steps)")
        if self.design != "grid" and self.fewest_steps() > self.isoflop_max_steps:  # a grid has no maximum
            raise ValueError("need min_steps <= isoflop_max_steps (--min-steps, --max-steps)")
        self._validate_design()
        e = self.executor
        rules = {"name": EXECUTORS, "gpus_per_node": ">= 0", "max_retries": ">= 0"}
        rules |= dict.fromkeys(("signal_delay_s", "max_num_timeout"), ">= 0")
        rules |= dict.fromkeys(("nodes", "tasks_per_node", "cpus_per_task", "timeout_min"), ">= 1")
        rules |= dict.fromkeys(("array_parallelism", "local_parallelism"), ">= 1")
        check_fields(e, "executor.", rules)
        check_mem_gb(e.mem_gb)
        if self.ladder and self.trainer != DEFAULT_TRAINER:
            raise ValueError(
                f"ladder: trainer {self.trainer!r} cannot fork a cooldown from a trunk's checkpoint (a "
                "ladder needs dit_core.train's resume and lr schedules); drop --ladder or the trainer setting"
            )
        if self.ladder and self.design == "adaptive":
            raise ValueError(
                "ladder: the adaptive design launches one budget at a time, and a ladder's peak lr is set by "
                "its largest budget; use --design grid or isoflop with --ladder"
            )
        if self.ladder and e.nodes * e.tasks_per_node > 1:
            raise ValueError(
                f"ladder: a cooldown ladder's cells run one process each (their jobs take turns growing a "
                f"shared trunk), not {e.nodes * e.tasks_per_node} (nodes x tasks_per_node); drop --ladder or "
                "use --nodes 1 --tasks-per-node 1"
            )
        if self.batch_size % (e.nodes * e.tasks_per_node):
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by the {e.nodes * e.tasks_per_node} "
                "processes (nodes x tasks_per_node)"
            )

    def _validate_seeds(self) -> None:
        if not self.seeds:
            raise ValueError("seeds is empty; give e.g. --seeds 0,1,2 (the default is one seed, 0)")
        for x in self.seeds:
            if not whole(x, 0):
                raise ValueError(f"seed {x!r} must be a whole number >= 0 (e.g. --seeds 0,1,2)")
        if len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed; each seed trains every cell once")
        if self.seeds != [0] and "seed" in self.train:
            raise ValueError(
                f"train.seed={self.train['seed']!r} and seeds {self.seeds} both choose the seed; "
                "drop the one (e.g. --set seed=...) and keep --seeds"
            )

    def fewest_steps(self) -> int:
        """``min_steps``, or its design's default: 1 for ``grid``, 20 for ``isoflop``/``adaptive``."""
        if self.min_steps is not None:
            return self.min_steps
        return 1 if self.design == "grid" else DESIGN_MIN_STEPS

    def _validate_design(self) -> None:
        if isinstance(self.sizes_per_budget, bool) or not isinstance(self.sizes_per_budget, int):
            raise ValueError(
                "sizes_per_budget (--sizes-per-budget) must be an integer >= 3, "
                f"got {self.sizes_per_budget!r}"
            )
        if self.sizes_per_budget < 3:
            raise ValueError(
                f"sizes_per_budget {self.sizes_per_budget} < 3: an IsoFLOP parabola needs 3 sizes per budget "
                "(--sizes-per-budget 3 or more; the default is 5)"
            )
        if not (isinstance(self.size_spread, (int, float)) and 1 < self.size_spread < math.inf):
            raise ValueError(
                f"size_spread must be a finite number > 1 (e.g. --spread 4), got {self.size_spread!r}"
            )
        if self.size_spread ** (2.0 / (self.sizes_per_budget - 1)) < MIN_SIZE_RATIO:
            raise ValueError(
                f"{self.sizes_per_budget} sizes within {self.size_spread:g}x either side are closer than "
                f"{MIN_SIZE_RATIO:g}x apart: raise --spread or lower --sizes-per-budget"
            )
        if not (isinstance(self.tokens_per_param, (int, float)) and 0 < self.tokens_per_param < math.inf):
            raise ValueError(
                f"tokens_per_param must be a finite number > 0 (e.g. --tokens-per-param 20), "
                f"got {self.tokens_per_param!r}"
            )
        hd = self.design_head_dim
        if hd is not None and not (whole(hd, 4) and hd % 4 == 0):
            raise ValueError(
                f"design_head_dim must be a positive multiple of 4 (e.g. --head-dim 8), got {hd!r}"
            )
        for b, n in self.isoflop_centres.items():
            if not (isinstance(n, (int, float)) and n > 0 and isinstance(b, (int, float)) and b > 0):
                raise ValueError(f"isoflop_centres: {b!r}: {n!r} must map a budget to a size > 0")

    def models(self) -> list[ModelShape]:
        """The model axis: the (scaled) families, then the custom shapes, as listed (a model listed
        twice is there twice: `expand` refuses it, naming it)."""
        out = [family_shape(f, self.scale) for f in self.families]
        return out + [custom_shape(*s) for s in self.shapes]

    def listed_twice(self) -> list[str]:
        """The values the sweep's axes list more than once (a family, case-insensitive, a shape, a
        patch size, a budget), each named with its flag; empty when each is listed once."""
        axes = (
            ("model", "--grid/--shapes", [m.name for m in self.models()], str),
            ("patch size", "--patch", self.patch_sizes, str),
            ("budget", "--budgets", self.budgets, format_budget),  # equal values; near ones: `expand`
        )
        out = []
        for what, flag, values, show in axes:
            twice = dict.fromkeys(v for i, v in enumerate(values) if v in values[:i])
            out += [f"{what} {show(v)} ({flag})" for v in twice]
        return out


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep; ``steps * batch_size * train_flops_per_image <= budget``."""

    cell_id: str
    model: ModelShape
    patch_size: int
    budget: float
    params: int
    forward_gflops: float
    train_flops_per_image: float
    batch_size: int
    steps: int
    seed: int = 0  # the trainer's seed; cells of seed s > 0 have ids ending in -s{s}
    lr: float | None = None  # optim.lr of the sweep's `lrs` axis (ids end in -lr{lr}); None: the config's

    @property
    def images(self) -> int:
        return self.steps * self.batch_size

    @property
    def train_flops(self) -> float:
        """FLOPs actually spent (whole steps), <= budget."""
        return self.images * self.train_flops_per_image

    @property
    def model_name(self) -> str:
        """`dit_core.spec.model_label`: ``DiT-S/2`` for the paper's shape, ``DiT-d3-w12/2`` else."""
        m = self.model
        return model_label(m.depth, m.hidden_size, m.num_heads, self.patch_size)


def train_field_types(trainer: str) -> dict[str, Any]:
    """``{dotted key: type}`` of the leaf fields of ``trainer``'s config: `dit_core.train.TrainConfig`'s
    for the bundled trainer, none for another (whose types the sweep cannot know)."""
    if trainer != DEFAULT_TRAINER:
        return {}
    from dit_core.config import TrainConfig

    return {key: hint for key, hint, _ in iter_fields(TrainConfig)}


def typed_train(train: Any, trainer: str, where: str) -> dict[str, Any]:
    """A sweep's ``train`` section as dotted keys, each value of a known field parsed by its type as
    the trainer will parse it (``optim.lr: 3e-2`` a float, ``keep_last: "010"`` 10, ``precision: "no"``
    text), so that the sweep's own checks, its cost model and each cell's model read what trains.

    A section written nested (``optim: {lr: 3e-2}``) is flattened (`dit_core.configio.yaml_to_flat`);
    keys the trainer does not know, and every key of another trainer, are kept as given (the trainer's
    config refuses an unknown key, naming the valid ones, before any cell is submitted)."""
    if not isinstance(train, dict):
        raise ValueError(f"{where}: must hold a mapping of dotted TrainConfig fields, got {train!r}")
    types = train_field_types(trainer)
    if not types:
        return dict(train)
    from dit_core.config import TrainConfig

    flat = yaml_to_flat(TrainConfig, train, where)
    return {k: parse_value(v, types[k], f"{where}: {k}") if k in types else v for k, v in flat.items()}


def model_learns_sigma(train: dict[str, Any]) -> bool:
    """Does the model output 2C channels (learned variance)? As `dit_core.diffusion.DiffusionConfig`
    decides it: ``diffusion.learn_sigma`` (default True) and an objective other than ``flow``."""
    objective = str(train.get("diffusion.objective", "eps")).strip().lower()
    return (
        parse_value(train.get("diffusion.learn_sigma", True), bool, "diffusion.learn_sigma")
        and objective != "flow"
    )


def format_budget(b: float) -> str:
    """``1e15`` -> "1e15", ``3e15`` -> "3e15", ``1.5e15`` -> "1.5e15" (used in cell ids)."""
    mant, exp = f"{b:.3e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def parse_budget(text: str | float) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"budget {text!r} is not a number; write training FLOPs like 1e15 or 3e15") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"budget {text!r} must be a positive number of training FLOPs")
    return v


def cell_model_fields(spec: SweepSpec, model: ModelShape, patch_size: int) -> dict[str, int]:
    """The `DiTConfig` fields a cell sets itself, over ``spec.train``'s: ``model`` at ``patch_size`` on the
    sweep's data (`cell_model_config`; `sweeps.task.cell_overrides` as ``model.*`` overrides)."""
    cell = dict(depth=model.depth, hidden_size=model.hidden_size, num_heads=model.num_heads)
    cell |= dict(patch_size=patch_size, input_size=spec.data.input_size, in_channels=spec.data.in_channels)
    return cell | dict(num_classes=spec.data.num_classes)


def cell_model_config(spec: SweepSpec, model: ModelShape, patch_size: int) -> DiTConfig:
    """The `DiTConfig` a cell trains: ``model`` at ``patch_size`` on the sweep's data, with the
    ``model.*`` fields of ``spec.train`` (``mlp_ratio``, ``frequency_embedding_size``, ...)."""
    extra = {k[len("model.") :]: v for k, v in spec.train.items() if k.startswith("model.")}
    learn_sigma = extra.get("learn_sigma", model_learns_sigma(spec.train))
    extra["learn_sigma"] = parse_value(learn_sigma, bool, "model.learn_sigma")
    extra.pop("name", None)
    return model_config(**{**extra, **cell_model_fields(spec, model, patch_size)})  # the cell's win


def expand(spec: SweepSpec) -> list[Cell]:
    """All cells of ``spec``, ordered by budget, then model (as listed), then patch size (for the
    isoflop/adaptive designs by budget, patch size, then size: `sweeps.design.design_cells`), each
    once per lr of ``spec.lrs`` (if any: ids end in ``-lr3e-2``) and per seed of ``spec.seeds``, seeds
    next to each other. Seed 0 keeps the plain cell id, so adding seeds to a sweep reuses the cells it
    has run."""
    spec.validate()
    twice = spec.listed_twice()  # an error, never deduplicated: the command line says something else
    if twice and spec.design != "grid":
        raise ValueError(f"{', '.join(twice)} listed more than once; list each once")
    if spec.design in ("isoflop", "adaptive"):
        from sweeps.design import design_cells

        cells = design_cells(spec)
    else:
        cells = _grid_cells(spec)
    if too_big := [c for c in cells if c.images > MAX_IMAGES]:
        c = too_big[0]
        raise ValueError(
            f"budget {format_budget(c.budget)} gives {c.cell_id} {c.images:.3g} images, more than the "
            f"{MAX_IMAGES:.3g} a run can count (64-bit sample indices); lower --budgets"
        )
    if repeated := sorted(i for i, n in Counter(c.cell_id for c in cells).items() if n > 1):
        why = f"{', '.join(twice)} listed twice" if twice else "budgets equal to 4 digits (cell ids keep 4)"
        raise ValueError(f"cells {', '.join(repeated)} appear more than once: {why}; list each once")
    if twice:  # a grid whose repeated cells min_steps all left out: still listed twice
        raise ValueError(f"{', '.join(twice)} listed more than once; list each once")
    if spec.design == "grid" and (same := _one_shape_two_names(spec.models())):
        raise ValueError(
            f"{'; '.join(same)}: the grid would train each such model twice, under two names; list it "
            "once (drop one name from --grid or --shapes)"
        )
    lr_ids = [(lr, f"-lr{format_budget(lr)}") for lr in spec.lrs] or [(None, "")]
    return [
        dataclasses.replace(c, lr=lr, seed=s, cell_id=c.cell_id + lr_id + (f"-s{s}" if s else ""))
        for c in cells
        for lr, lr_id in lr_ids
        for s in spec.seeds
    ]


def _one_shape_two_names(models: list[ModelShape]) -> list[str]:
    """The shapes the model axis holds under more than one name (a family and a custom shape, or two
    families a scale rounds to one shape), e.g. "models S and d3w48h6 are one shape, d3 w48 h6"."""
    names: dict[str, dict[str, None]] = {}  # shape -> its names, in order (one name twice: `listed_twice`)
    for m in models:
        names.setdefault(m.describe(), {})[m.name] = None
    return [f"models {' and '.join(ns)} are one shape, {shape}" for shape, ns in names.items() if len(ns) > 1]


def _grid_cells(spec: SweepSpec) -> list[Cell]:
    cells: list[Cell] = []
    for budget, row in _grid_rows(spec):
        if spec.min_steps is None and (too_small := [c for c in row if c.steps < 1]):
            shown = [
                f"{c.model_name} ({c.batch_size} x {c.train_flops_per_image:.3g} FLOPs)" for c in too_small
            ]
            raise ValueError(
                f"budget {format_budget(budget)} is smaller than one training step of "
                f"{', '.join(shown)}; raise the budget or lower batch_size"
            )
        if not (kept := [c for c in row if c.steps >= spec.fewest_steps()]):
            raise ValueError(
                f"budget {format_budget(budget)} gives no model min_steps {spec.min_steps} steps (the "
                f"most: {max(c.steps for c in row)}); raise the budget or lower --min-steps"
            )
        cells += kept
    return cells


def _grid_rows(spec: SweepSpec) -> list[tuple[float, list[Cell]]]:
    """Per budget (ascending), every model x patch size of a ``grid`` design, before ``min_steps``."""
    return [
        (b, [make_cell(spec, m, p, b) for m in spec.models() for p in spec.patch_sizes])
        for b in sorted(spec.budgets)  # a budget listed twice gives its cells twice: `expand` refuses them
    ]


def left_out(spec: SweepSpec) -> list[Cell]:
    """The cells of a ``grid`` design that `expand` leaves out for making fewer than ``min_steps``
    steps (none for the other designs, whose sizes are chosen within the step window)."""
    if spec.design != "grid" or spec.min_steps is None:
        return []
    return [c for _, row in _grid_rows(spec) for c in row if c.steps < spec.min_steps]


def make_cell(spec: SweepSpec, model: ModelShape, patch_size: int, budget: float) -> Cell:
    """The cell ``{model}-{patch}-{budget}``: its counts and whole steps within ``budget``."""
    cfg = cell_model_config(spec, model, patch_size)
    fpi = train_flops_per_image(cfg)
    return Cell(
        cell_id=f"{model.name}-{patch_size}-{format_budget(budget)}",
        model=model,
        patch_size=patch_size,
        budget=budget,
        params=param_count(cfg),
        forward_gflops=forward_gflops(cfg),
        train_flops_per_image=fpi,
        batch_size=spec.batch_size,
        steps=budget_steps(budget, fpi, spec.batch_size),
    )


# ---------------------------------------------------------------- YAML


def _typed(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with each value parsed by its field's type (ConfigError naming the key if it cannot
    be); mappings of nested sections and of ``isoflop_centres`` are left to the caller."""
    hints, out = typing.get_type_hints(cls), {}
    for k, v in data.items():
        if v is None and type(None) not in typing.get_args(hints[k]):
            raise ValueError(f"{where}: {k} must be set (leave the key out for its default), got null")
        keep = k == "isoflop_centres" or (k == "train" and isinstance(v, dict))  # values typed later
        out[k] = v if keep else parse_value(v, hints[k], f"{where}: {k}")
    return out


def spec_from_dict(data: dict[str, Any], where: str = "sweep config") -> SweepSpec:
    """Build and validate a `SweepSpec` from a parsed YAML mapping; unknown keys are errors."""
    data = dict(check_keys(SweepSpec, data, where))
    for key in ("families", "patch_sizes", "shapes", "budgets", "seeds", "lrs"):
        if key in data and not isinstance(data[key], list):
            raise ValueError(f"{where}: {key} must be a list, e.g. `{key}: [{data[key]}]`, got {data[key]!r}")
    ex = data.get("executor")
    for key in ("setup", "sbatch"):  # one line given as text is one line: its commas are its own
        if isinstance(ex, dict) and isinstance(ex.get(key), str):  # (export CUDA_VISIBLE_DEVICES=0,1)
            data["executor"] = ex = {**ex, key: [ex[key]]}
    for key, cls in (("scale", Scale), ("data", DataSpec), ("executor", ExecutorSpec)):
        if key in data:
            at = f"{where}: {key}"
            data[key] = cls(**_typed(cls, check_keys(cls, data[key] or {}, at), at))
    data = _typed(SweepSpec, data, where)
    if "train" in data:  # here for the file's name in a message; SweepSpec types it again (a no-op)
        data["train"] = typed_train(data["train"], data.get("trainer", DEFAULT_TRAINER), f"{where}: train")
    if "budgets" in data:
        data["budgets"] = [parse_budget(b) for b in data["budgets"]]
    if centres := data.get("isoflop_centres"):
        try:
            data["isoflop_centres"] = {parse_budget(b): float(n) for b, n in centres.items()}
        except (AttributeError, TypeError, ValueError):
            raise ValueError(
                f"{where}: isoflop_centres must map budgets to model sizes (`{{1e12: 5e4}}`), got {centres!r}"
            ) from None
    spec = SweepSpec(**data)
    spec.validate()
    return spec


def load_spec(path: str | Path | None = None) -> SweepSpec:
    """Read a sweep YAML; ``None`` = the bundled demo, a bare name = ``sweeps/configs/<name>.yaml``."""
    path = CONFIG_DIR / "demo.yaml" if path is None else path
    p = Path(path)
    if not p.exists() and not p.suffix and (CONFIG_DIR / f"{p}.yaml").exists():
        p = CONFIG_DIR / f"{p}.yaml"
    if not p.exists():
        bundled = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"sweep config {str(path)!r} not found; bundled configs: {bundled}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise ValueError(
            f"{p}: not a text file, so not a sweep YAML; give a .yaml file (-c/--config)"
        ) from None
    except yaml.YAMLError as e:
        raise ValueError(
            f"{p}: not valid YAML ({yaml_problem(e)}); fix the file: indent with spaces, close each [ ] "
            "and { }, quote values holding ': ' or '#'"
        ) from None
    return spec_from_dict(data, where=str(p))


def write_spec_record(spec: SweepSpec, folder: Path) -> None:
    """Keep ``spec`` as the sweep's last launch in ``folder/sweep.json``: what ``launch.py status``
    shows when its command line names the sweep but not its cells. A prior is kept as an absolute path."""
    data = dataclasses.asdict(spec)
    if spec.prior:
        data["prior"] = str(Path(spec.prior).resolve())
    atomic_write_text(Path(folder) / SPEC_RECORD, json.dumps(data, indent=2) + "\n")


def read_spec_record(folder: Path) -> SweepSpec | None:
    """The spec `write_spec_record` kept in ``folder``; None when there is none, or when it no longer
    reads (a warning says why)."""
    path = Path(folder) / SPEC_RECORD
    if not path.is_file():
        return None
    try:
        return spec_from_dict(json.loads(path.read_text()), where=str(path))
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        log.warning("%s does not read as a sweep (%s); showing the command line's cells instead", path, e)
        return None
