"""Session 42 (docsref): the user docs name only what the code has. README.md and docs/*.md (not the
historical docs/testing*.md, nor the helpers' docs/_*.md notes) name code objects, paths, CLI flags and
config keys in backticks; code was renamed and moved over 41 sessions, and a stale name sends a reader
to nothing. Each test extracts one kind of reference from the docs' text and checks the code has it:
dotted names resolve by import + getattr, repository paths exist, a CLI's flags are its parser's
options (parsers built in-process, by the functions the CLIs call), and the config table's keys and
defaults are `dit_core.config`'s."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^ {0,3}```.*?^ {0,3}```[^\n]*$", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
NAME = re.compile(r"(?<![\w/.-])(?:dit_core|sweeps|analysis)(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w/.-])(?:benchmarks|tests|dit_core|sweeps|analysis|slurm|docs)/[\w./*-]*")
FILE_SUFFIXES = {"md", "py", "yaml", "yml", "json", "csv", "txt", "sh", "db", "png", "pt"}

#: Dotted names that need not resolve -> why: none so far.
NAME_ALLOWED: dict[str, str] = {}
#: Paths that need not exist -> why.
PATH_ALLOWED = {
    "sweeps/configs/photos.yaml": "study.md's history: the file folded into demo.yaml in session 5"
}
#: Bare flags in prose that belong to tools outside the project -> the tool.
FOREIGN_FLAGS = {
    "--array": "sbatch (the job array a SLURM launch submits)",
    "--signal": "sbatch / scancel",
    "--multi_gpu": "accelerate launch",
    "--cpu": "accelerate launch",
    "--shutdown-timeout": "torchrun",
    "--signals-to-handle": "torchrun",
    "-n": "pytest-xdist's worker count",
}


def _docs() -> list[Path]:
    """The user docs: README.md and docs/*.md but the testing log and the helpers' notes."""
    docs = sorted(p for p in (REPO / "docs").glob("*.md") if not p.name.startswith(("testing", "_")))
    return [REPO / "README.md", *docs]


def _parts(path: Path) -> tuple[list[str], list[str]]:
    """``path``'s inline backticked spans (outside fenced blocks) and its fenced blocks' texts."""
    text = path.read_text()
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    spans = SPAN.findall(FENCE.sub("", text))
    return spans, blocks


def _where(kind: Callable[[str], list[str]]) -> dict[str, list[str]]:
    """Each reference ``kind`` finds in a doc's spans and blocks -> the docs naming it."""
    found: dict[str, list[str]] = {}
    for doc in _docs():
        spans, blocks = _parts(doc)
        for text in spans + blocks:
            for ref in kind(text):
                found.setdefault(ref, []).append(doc.name)
    return {ref: sorted(set(docs)) for ref, docs in found.items()}


# --- (1) dotted names ---------------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    out = []
    for name in NAME.findall(text):
        name = name.rstrip(".")
        if name.rsplit(".", 1)[-1] not in FILE_SUFFIXES:  # `sweeps.md` is a file, not a module
            out.append(name)
    return out


def _field_type(cls: type, attr: str) -> object:
    """The dataclass ``cls``'s field ``attr``'s type (its hint), or raise AttributeError."""
    if attr not in {f.name for f in dataclasses.fields(cls)}:
        raise AttributeError(attr)
    return typing.get_type_hints(cls).get(attr, object)


def resolve(name: str) -> object:
    """Import the longest module prefix of ``name``, then getattr the rest; a dataclass's field without
    a default (no class attribute) resolves to its type. Raises ImportError / AttributeError."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj: object = importlib.import_module(module)
            break
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise
    for attr in parts[i:]:
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
        elif isinstance(obj, type) and dataclasses.is_dataclass(obj):
            obj = _field_type(obj, attr)
        else:
            raise AttributeError(f"{obj!r} has no {attr!r}")
    return obj


def test_dotted_names_in_the_docs_resolve():
    """Every backticked `dit_core.` / `sweeps.` / `analysis.` name is a module, or an object reached from
    one by getattr (a class's method, constant or dataclass field)."""
    names = _where(_names)
    assert len(names) > 50, "the extraction found too few names: the docs' format changed?"
    bad = []
    for name, docs in sorted(names.items()):
        if name in NAME_ALLOWED:
            continue
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            bad.append(f"{name} ({', '.join(docs)}): {type(e).__name__}: {e}")
    assert bad == []


def test_resolve_reaches_a_dataclass_field_without_a_default():
    """`CellState.tries`-like names: a field with no default is no class attribute, still a name."""
    assert resolve("dit_core.config.BudgetConfig.global_batch_size") == 32
    assert resolve("dit_core.config.TrainConfig.model") is resolve("dit_core.config.ModelConfig")
    with pytest.raises(AttributeError):
        resolve("dit_core.config.BudgetConfig.no_such_field")
    with pytest.raises(AttributeError):
        resolve("dit_core.no_such_module.x")


# --- (2) repository paths -----------------------------------------------------------------------------


def _paths(text: str) -> list[str]:
    text = re.sub(r"<[^>\n]*>", "*", text)  # `weights/photos16-<hash>.pt`: a placeholder is a glob
    return [p.rstrip(".,:") for p in PATH.findall(text)]


def test_repository_paths_in_the_docs_exist():
    """Every backticked (or command-line) path under the repository's own folders exists; a glob (or a
    ``<placeholder>``) matches at least one file."""
    paths = _where(_paths)
    assert len(paths) > 50, "the extraction found too few paths: the docs' format changed?"
    bad = []
    for path, docs in sorted(paths.items()):
        found = any(REPO.glob(path)) if "*" in path else (REPO / path).exists()
        if not found and path not in PATH_ALLOWED:
            bad.append(f"{path} ({', '.join(docs)})")
    assert bad == []


# --- (3) CLI flags ------------------------------------------------------------------------------------


class _Built(Exception):
    """Raised by a patched `parse_args` to hand back the parser a benchmark's `main` built."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _benchmark_parser(script: str) -> argparse.ArgumentParser:
    """The parser ``benchmarks/<script>`` builds in its `main` (built there, not by a function): its
    `main` runs until `parse_args`, which hands the parser back instead of parsing."""
    spec = importlib.util.spec_from_file_location(f"_docsref_{script[:-3]}", REPO / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)

    def built(self, *a, **k):
        raise _Built(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", built)
        mp.setattr(argparse.ArgumentParser, "parse_known_args", built)
        try:
            module.main()
        except _Built as e:
            return e.parser
    raise AssertionError(f"benchmarks/{script}'s main built no parser")


def _module_parser(module: str) -> Callable[[], argparse.ArgumentParser]:
    return lambda: importlib.import_module(module).build_parser()


#: How a doc invokes a CLI (a regex) -> the function that builds its parser, as the CLI does.
CLIS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    r"python3? (?:sweeps/launch\.py|-m sweeps\.launch)": _module_parser("sweeps.launch"),
    r"(?:python3?|accelerate launch\b.*?) -m dit_core\.(?:train|trainer\.cli)\b": _module_parser(
        "dit_core.trainer.cli"
    ),
    r"python3? (?:analysis/fit_scaling\.py|-m analysis\.fit_scaling)": _module_parser("analysis.fit_scaling"),
    r"python3? -m dit_core\.evaluate\b": _module_parser("dit_core.evaluate.__main__"),
    r"python3? -m dit_core\.sample\b": _module_parser("dit_core.sample"),
    r"python3? -m dit_core\.extract_latents\b": _module_parser("dit_core.extract_latents"),
}
BENCHMARK = r"python3? benchmarks/(\w+\.py)"


def _commands(text: str) -> list[tuple[str, str]]:
    """(CLI key, the rest of its command line) for each CLI invocation in ``text``: continuation lines
    (``\\``) joined; the command ends at a pipe, ``&&``, ``;``, a redirect or a comment."""
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        for key in [*CLIS, BENCHMARK]:
            for m in re.finditer(key, line):
                rest = re.split(r"\s(?:\||&&|;|>|2>|#)", " " + line[m.end() :])[0]
                out.append((m.group(1) if key == BENCHMARK else key, rest))
    return out


def _flags(args: str) -> list[str]:
    """The option strings in a command's arguments (`--flag`, `--flag=value`, `-c`)."""
    return [t.split("=")[0] for t in args.split() if re.fullmatch(r"--[a-z][\w-]*(=.*)?|-[a-zA-Z]", t)]


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def _parser(key: str) -> argparse.ArgumentParser:
    if key not in _PARSERS:
        _PARSERS[key] = CLIS[key]() if key in CLIS else _benchmark_parser(key)
    return _PARSERS[key]


def test_cli_flags_in_the_docs_are_the_clis_options():
    """A flag on a documented command line (a code block's or a backticked one) is an option of that
    CLI's parser, spelled in full (argparse would accept an abbreviation; the docs should not teach one)."""
    seen: dict[tuple[str, str], list[str]] = {}
    for doc in _docs():
        spans, blocks = _parts(doc)
        for text in spans + blocks:
            for key, rest in _commands(text):
                for flag in _flags(rest):
                    seen.setdefault((key, flag), []).append(doc.name)
    assert len(seen) > 30, "the extraction found too few flags: the docs' format changed?"
    bad = [
        f"{flag} of {key} ({', '.join(sorted(set(docs)))})"
        for (key, flag), docs in sorted(seen.items())
        if flag not in _parser(key)._option_string_actions
    ]
    assert bad == []


def test_bare_flags_in_the_docs_are_some_clis_options():
    """A backticked flag on its own (`--min-steps`, `--grid S`) is an option of one of the project's CLIs
    (or of a named outside tool, FOREIGN_FLAGS)."""
    keys = [*CLIS, *(p.name for p in sorted((REPO / "benchmarks").glob("*.py")))]
    known = {flag for key in keys for flag in _parser(key)._option_string_actions}
    seen: dict[str, list[str]] = {}
    for doc in _docs():
        spans, _ = _parts(doc)
        for span in spans:
            if span.startswith("-") and not _commands(span):
                for flag in _flags(span.split()[0]):
                    seen.setdefault(flag, []).append(doc.name)
    bad = [
        f"{flag} ({', '.join(sorted(set(docs)))})"
        for flag, docs in sorted(seen.items())
        if flag not in known and flag not in FOREIGN_FLAGS
    ]
    assert bad == []


# --- (4) config keys ----------------------------------------------------------------------------------


def _config_table() -> list[tuple[str, str]]:
    """(section, fields cell) of each row of docs/training.md's config table (`| section | fields |`)."""
    text = (REPO / "docs" / "training.md").read_text()
    table = re.search(r"^\| section \| fields \(defaults\) \|\n\|[-|]+\|\n((?:\|.*\|\n)+)", text, re.M)
    assert table, "docs/training.md has no `| section | fields (defaults) |` table"
    rows = [re.match(r"\| *(.*?) *\| *(.*?) *\|$", r) for r in table.group(1).splitlines()]
    return [(m.group(1), m.group(2)) for m in rows]


def _key(key: str) -> object:
    """The `TrainConfig` default reached by the dotted ``key`` (a field of a field ...)."""
    from dit_core.config import TrainConfig

    obj: object = TrainConfig()
    for attr in key.split("."):
        if not (dataclasses.is_dataclass(obj) and attr in {f.name for f in dataclasses.fields(obj)}):
            raise KeyError(key)
        obj = getattr(obj, attr)
    return obj


VALUE = re.compile(r'`(\w+)`\s*\(?\s*("[^"]*"|-?\d[\d.]*(?:e-?\d+)?|True|False|None|\{\})(?=[\s;,)|]|$)')


def test_config_table_keys_are_config_fields_with_those_defaults():
    """Each field the config table lists under a section (`model.` ... `tracking.`, top level) is a field
    of that section's `dit_core.config` dataclass, a default it writes next to it is the field's, and it
    lists every field (but of `diffusion.` / `data.`, whose rows send readers to their classes)."""
    rows = _config_table()
    assert len(rows) >= 9
    bad, checked = [], 0
    for section, cell in rows:
        prefix = "" if section == "top level" else section.strip("`")
        for span in SPAN.findall(cell):
            key = span if "." in span else prefix + span
            if span.startswith(("dit_core.", "sweeps.")) or not re.fullmatch(r"[a-z_][a-z0-9_.]*", span):
                continue  # a class (checked as a name) or a value such as `sqlite:///./mlflow.db`
            try:
                _key(key)
                checked += 1
            except KeyError:
                bad.append(f"{key}: no such config field")
        for field, written in VALUE.findall(cell):
            if prefix + field in {b.split(":")[0] for b in bad}:
                continue  # no such field: said above
            default = _key(prefix + field)
            value = eval(written, {})  # a literal the regex matched: a number, a string, True/None, {}
            if value != default and not (default is None and value is None):
                bad.append(f"{prefix + field}: the table says {written}, the default is {default!r}")
    assert checked > 60
    assert bad == []
    assert _config_table_omits(rows) == []


def _config_table_omits(rows: list[tuple[str, str]]) -> list[str]:
    """`TrainConfig` keys the table leaves out: of a section whose row lists its fields (not one that
    names its class and ends in "..."), and top-level fields."""
    from dit_core.config import TrainConfig

    cells = {("" if s == "top level" else s.strip("`")): c for s, c in rows}
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        if not dataclasses.is_dataclass(hints[f.name]):
            out += [] if f"`{f.name}`" in cells[""] else [f.name]
        elif "..." not in cells[f.name + "."]:
            out += [
                f"{f.name}.{g.name}"
                for g in dataclasses.fields(hints[f.name])
                if f"`{g.name}`" not in cells[f.name + "."]
            ]
    return out


def test_config_overrides_in_the_docs_are_config_fields():
    """A backticked override `section.field=value` (`--set optim.lr=3e-4`, `eval.eval_every=0`) of a
    `TrainConfig` section, anywhere in the docs, names a field of that section. (A bare `model.params`
    is an MLflow param, not a key: only overrides are checked.)"""
    from dit_core.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    sections = sorted(
        f.name for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(hints[f.name])
    )
    key = re.compile(rf"(?<![\w./-])((?:{'|'.join(sections)})\.[a-z_]\w*(?:\.[a-z_]\w*)*)=")
    keys = _where(key.findall)
    assert len(keys) >= 8
    bad = []
    for k, docs in sorted(keys.items()):
        try:
            _key(k)
        except KeyError:
            bad.append(f"{k} ({', '.join(docs)})")
    assert bad == []


def test_dotted_run_keys_in_the_docs_are_config_keys_or_the_codes_strings():
    """A backticked `section.name` of a config section or an MLflow prefix (`model.params`,
    `eval.feature_space`, `val.loss`, `fixed_cost.startup_s`) is a config key, a string the code spells
    in full (an MLflow param, metric or tag), or an attribute of the object it names (`model.config`)."""
    source = "\n".join(
        p.read_text() for pkg in ("dit_core", "sweeps", "analysis") for p in (REPO / pkg).rglob("*.py")
    )
    prefixes = (
        "model|diffusion|data|optim|budget|eval|checkpoint|tracking|train|val|sample|samples|fixed_cost"
    )
    key = re.compile(rf"(?<![\w./-])((?:{prefixes})\.[a-z_]\w*(?:\.[a-z_]\w*)*)(?![\w/(])")
    keys = _where(lambda text: [k for k in key.findall(text) if k.rsplit(".", 1)[1] not in FILE_SUFFIXES])
    assert len(keys) >= 30
    bad = []
    for k, docs in sorted(keys.items()):
        try:
            _key(k)
            continue
        except KeyError:
            pass
        last = k.rsplit(".", 1)[1]
        if (
            f'"{k}"' not in source
            and f"'{k}'" not in source
            and not re.search(rf"(def |self\.){last}\b", source)
        ):
            bad.append(f"{k} ({', '.join(docs)})")
    assert bad == []


def test_python_imports_in_the_docs_code_blocks_resolve():
    """`from dit_core.evaluate import SampleSettings, ...` in a doc's code block imports."""
    imports = re.compile(r"^from ((?:dit_core|sweeps|analysis)[\w.]*) import \(?([\w, ]+)", re.M)
    found = _where(
        lambda text: [f"{m}.{n.strip()}" for m, names in imports.findall(text) for n in names.split(",")]
    )
    assert len(found) >= 20
    bad = []
    for name, docs in sorted(found.items()):
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            bad.append(f"{name} ({', '.join(docs)}): {e}")
    assert bad == []


# --- (5) the option tables of docs/sweeps.md and docs/diffusion.md --------------------------------------


def _table(doc: str, header: str) -> list[list[str]]:
    """The rows (cells split on unescaped ``|``) of the table in docs/``doc`` whose header row is
    ``header``."""
    text = (REPO / "docs" / doc).read_text()
    m = re.search(rf"^{re.escape(header)}\n\|[-|]+\|\n((?:\|.*\|\n)+)", text, re.M)
    assert m, f"docs/{doc} has no table headed {header!r}"
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in m.group(1).splitlines()]


def test_sweep_option_tables_name_launch_flags_and_sweep_yaml_keys():
    """docs/sweeps.md's option tables: each flag is `sweeps/launch.py`'s; each YAML key (a cell's
    ``key`` or ``key: {a, b}``) is a `SweepSpec` field (``a``, ``b``: of its nested spec); and each
    `SweepSpec` field is named somewhere in docs/sweeps.md (the spec's docstring sends readers there)."""
    from sweeps.grid import SweepSpec

    launch = _parser(next(iter(CLIS)))._option_string_actions
    hints = typing.get_type_hints(SweepSpec)
    rows = _table("sweeps.md", "| option | YAML key | meaning |")
    executor = _table("sweeps.md", "| option | meaning |")
    bad = []
    for row in rows + executor:
        for span in SPAN.findall(row[0]):
            bad += [f"{flag}: not a launch option" for flag in _flags(span) if flag not in launch]
    for row in rows:
        for span in SPAN.findall(row[1]):
            m = re.fullmatch(r"(\w+)(?::\s*\{(.*)\}|:.*)?", span)
            key, inner = m.group(1), m.group(2) or ""
            if key not in hints:
                bad.append(f"{key}: not a SweepSpec field")
            elif dataclasses.is_dataclass(hints[key]):
                fields = {f.name for f in dataclasses.fields(hints[key])}
                bad += [f"{key}.{k}: no such field" for k in re.findall(r"\w+", inner) if k not in fields]
    named = set(re.findall(r"`(\w+)[`:]", (REPO / "docs" / "sweeps.md").read_text()))
    bad += [f"SweepSpec.{f}: not in docs/sweeps.md" for f in hints if f not in named]
    assert len(rows) >= 20
    assert bad == []


def _table_vs_defaults(doc: str, header: str, defaults: dict[str, object], what: str) -> list[str]:
    """Rows of the table that disagree with ``defaults`` (name -> default): a name the table lists that
    ``what`` lacks, one it lacks, and a default (a Python literal, backticked or not) that differs."""
    documented = {}
    for row in _table(doc, header):
        for name in SPAN.findall(row[0]):
            documented[name] = row[1].strip("`")
    bad = [f"{n}: in docs/{doc}, not {what}" for n in documented if n not in defaults]
    bad += [f"{n}: {what}, not in docs/{doc}" for n in defaults if n not in documented]
    bad += [
        f"{n}: docs/{doc} says {documented[n]}, the default is {defaults[n]!r}"
        for n in defaults.keys() & documented.keys()
        if ast.literal_eval(documented[n]) != defaults[n]
    ]
    return bad


def test_sampler_option_table_is_samples_keywords_with_their_defaults():
    """docs/diffusion.md's sampler table lists `dit_core.diffusion.sample`'s keyword arguments, all of
    them, with their defaults."""
    import inspect

    from dit_core.diffusion import sample

    params = inspect.signature(sample).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert (
        _table_vs_defaults("diffusion.md", "| option | default | meaning |", defaults, "a keyword of sample")
        == []
    )


def test_data_field_table_is_dataconfigs_fields_with_their_defaults():
    """docs/data.md's field table lists `dit_core.data.DataConfig`'s fields, all of them, with their
    defaults."""
    from dit_core.data import DataConfig

    defaults = {f.name: getattr(DataConfig(), f.name) for f in dataclasses.fields(DataConfig)}
    assert (
        _table_vs_defaults("data.md", "| field | default | meaning |", defaults, "a DataConfig field") == []
    )


def test_metric_table_is_the_evaluators_metrics():
    """docs/evaluation.md's metric table names each metric `dit_core.evaluate` computes, and only those
    and the domain classifiers' accuracies logged alongside (``<domain>_classifier_acc``)."""
    from dit_core.evaluate.domain_classifier import DOMAINS
    from dit_core.evaluate.metrics import METRICS

    logged = METRICS.keys() | {f"{d}_classifier_acc" for d in DOMAINS}
    named = {k for row in _table("evaluation.md", "| key | features | notes |") for k in SPAN.findall(row[0])}
    assert sorted(named - logged) == [], "in the table, not computed"
    assert sorted(logged - named) == [], "computed, not in the table"


# --- (6) `Class.attr` without its module --------------------------------------------------------------


def _project_classes() -> dict[str, list[tuple[str, set[str]]]]:
    """Class name -> (module, the attributes its methods assign on ``self``) of each project class."""
    out: dict[str, list[tuple[str, set[str]]]] = {}
    for pkg in ("dit_core", "sweeps", "analysis"):
        for f in sorted((REPO / pkg).rglob("*.py")):
            module = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.parse(f.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    own = {
                        t.attr
                        for n in ast.walk(node)
                        for t in getattr(n, "targets", [getattr(n, "target", None)])
                        if isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    }
                    out.setdefault(node.name, []).append((module, own))
    return out


def _resolves(name: str) -> bool:
    try:
        resolve(name)
    except (ImportError, AttributeError):
        return False
    return True


def test_class_attributes_named_without_their_module_exist():
    """A backticked `Class.attr` (`LaunchResult.busy_slots`, `Trainer.update.direct`) of a project class
    is an attribute, field or method of it (or one its methods set on ``self``, whose own attributes are not
    followed), on through dataclass fields."""
    classes = _project_classes()
    pattern = re.compile(r"(?<![\w./-])([A-Z]\w*)((?:\.[a-z_]\w*)+)")
    found = _where(lambda text: [c + rest for c, rest in pattern.findall(text) if c in classes])
    assert len(found) >= 10
    bad = [
        f"{name} ({', '.join(docs)})"
        for name, docs in sorted(found.items())
        if not any(
            _resolves(f"{m}.{name}") or name.split(".")[1] in own for m, own in classes[name.split(".")[0]]
        )
    ]
    assert bad == []


# --- (7) README's layout ------------------------------------------------------------------------------


def _layout_section(block: list[str], head: str, indent: int) -> str:
    """The lines of README's layout block from the entry ``head`` (at ``indent``) up to the next entry at
    that indent or less."""
    start = next(i for i, line in enumerate(block) if line.startswith(" " * indent + head + " "))
    end = start + 1
    while end < len(block) and (len(block[end]) - len(block[end].lstrip())) > indent:
        end += 1
    return "\n".join(block[start:end])


def test_readme_layout_names_every_module_and_only_modules_that_exist():
    """README's layout block names each module of dit_core/, dit_core/trainer/, sweeps/ and analysis/
    (as ``name.py``, or ``name`` in a list: ``resolve, resume``), and each ``name.py`` it names is a
    file of that package."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in FENCE.findall(text) if "\ndit_core/ " in b).splitlines()
    bad = []
    for pkg, indent in (("dit_core/", 0), ("trainer/", 2), ("sweeps/", 0), ("analysis/", 0)):
        folder = REPO / ("dit_core/trainer" if pkg == "trainer/" else pkg)
        section = _layout_section(block, pkg, indent)
        modules = {f.stem for f in folder.glob("*.py") if not f.stem.startswith("__")}
        bad += [
            f"{folder.name}/{m}.py: not in the layout"
            for m in sorted(modules)
            if not re.search(rf"(?<![\w/]){m}(\.py\b|(?=,| \(|\s*$))", section, re.M)
        ]
        bad += [
            f"{folder.name}/{m}: in the layout, no such file"
            for m in re.findall(r"\b\w+\.py\b", section)
            if not any(folder.rglob(m))
        ]
    assert bad == []
