"""Reading nested config dataclasses from strings: one parser for YAML files, dotted overrides,
MLflow params and CLI flags.

Precedence (`dit_core.trainer.cli`): defaults <- YAML (``--config``) <- dotted overrides (``--set``)
<- flags. Every value is parsed by its field's annotated type (`parse_value`), so ``"3e-4"`` from
YAML 1.1 or MLflow and ``"1e3"`` for an int both work; a key that names no field raises
`ConfigError` listing the valid keys. Field help for ``--help`` comes from the dataclass
docstrings (``name: text`` lines), the only place it is written.

Plain dataclasses are enough for this (no OmegaConf/tyro): see docs/training.md, "Configuration".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

_NONE = ("none", "null", "")


class ConfigError(ValueError):
    """A bad config value or key; the message reads ``"<dotted.field>: what is wrong; how to fix"``."""


def require(ok: bool, where: str, msg: str) -> None:
    """The one validation style: ``raise ConfigError(f"{where}: {msg}")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: {msg}")


_BOUNDS = {
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "> 0": lambda v: v > 0,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "a finite number > 0": lambda v: v > 0 and math.isfinite(v),
    "a finite number >= 0": lambda v: v >= 0 and math.isfinite(v),
    "finite": math.isfinite,
}


def check_fields(obj: Any, section: str, rules: dict[str, Any]) -> None:
    """`require` each field of ``obj`` named in ``rules``: a tuple of choices or a `_BOUNDS` key
    (None passes a bound where the field's type allows None: it means unset)."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        if isinstance(rule, tuple):
            require(value in rule, section + name, f"{value!r} is unknown; choose one of {list(rule)}")
        elif value is None:
            unset = type(None) in typing.get_args(_hints(type(obj))[name])
            require(unset, section + name, f"must be {rule}, got None")
        else:
            require(_BOUNDS[rule](value), section + name, f"must be {rule}, got {value}")


# ---------------------------------------------------------------------- values
def parse_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` (maybe a string from YAML, MLflow or the CLI) as type ``hint``; ConfigError if it
    cannot be. Handles bool, int (``"1e3"`` -> 1000), float, str, ``X | None``, tuple/list
    (JSON or comma-separated) and ``dict[str, str]`` (JSON)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        ):
            return None
        options = [a for a in args if a is not type(None)]
        return parse_value(value, options[0], where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) or hint is Any:
        return value
    if value is None:  # YAML's null (an empty value) for a field that cannot be None
        raise ConfigError(
            f"{where}: must be set, got null (an empty value); give {_a(_type_name(hint))} value, or leave "
            "the key out for its default"
        )
    key = where.rsplit(": ", 1)[-1].rsplit(".", 1)[-1]  # the field's name, after a file's "x.yaml: "
    if hint is str and isinstance(value, bool):  # YAML 1.1 reads no/yes/off/on as booleans
        raise ConfigError(
            f"{where}: YAML read this value as the boolean {value}; quote it to give the text "
            f'(e.g. {key}: "no")'
        )
    if hint is str and isinstance(value, (int, float)):  # and 010 as 8, 0x1F as 31, 12:30 as 750
        raise ConfigError(
            f"{where}: YAML read this value as the number {value!r} (it reads 010 as 8, 0x1F as 31, 12:30 as "
            f'750); quote it to give the text as written (e.g. {key}: "010")'
        )
    if hint is str and isinstance(value, (list, tuple, dict)):
        raise ConfigError(f"{where}: cannot use {value!r} as str; give one text value")
    try:
        return _parse(value, hint, origin, args, where)
    except (ValueError, TypeError, KeyError, AttributeError):
        name = _type_name(hint)
        item = _bad_item(value, args[0] if args else Any) if origin in (tuple, list) else ""
        raise ConfigError(f"{where}: cannot use {value!r} as {name}{item}; give {_a(name)} value") from None


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _bad_item(value: Any, inner: Any) -> str:
    """``" (its item 'x' is not an int)"``: the first item of a list/tuple ``value`` that its item type
    ``inner`` refuses, so that a list holding one bad number does not read as no list; else ``""``."""
    try:
        for v in _list_items(value):
            try:
                parse_value(v, inner, "")
            except ConfigError:
                return f" (its item {v!r} is not {_a(_type_name(inner))})"
    except (ValueError, TypeError):  # not a list at all (bad JSON, a number): the value says it
        pass
    return ""


def _list_items(value: Any) -> list[Any]:
    """The items of a list/tuple value: JSON ``"[1, 2]"``, comma-separated ``"1,2"`` (stripped, empty
    items dropped) or a sequence as it is."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
    return [v.strip() if isinstance(v, str) else v for v in value]


def _parse(value: Any, hint: Any, origin: Any, args: tuple, where: str) -> Any:
    text = value.strip() if isinstance(value, str) else None
    if hint is bool:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        return {"true": True, "1": True, "yes": True, "on": True,
                "false": False, "0": False, "no": False, "off": False}[text.lower()]  # fmt: skip
    if hint is int:
        if isinstance(value, str):
            value = float(text) if any(c in text for c in ".eE") else int(text)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if hint is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if hint is str:
        return value if isinstance(value, str) else str(value)
    if origin in (tuple, list):
        inner = args[0] if args else Any
        items = [parse_value(v, inner, where) for v in _list_items(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if text is not None:
            value = json.loads(text) if text else {}
        return {str(k): str(v) for k, v in dict(value).items()}
    return value


def parse_scalar(text: str) -> Any:
    """A command-line value with no known field type: YAML's reading (bool, None, int, str),
    with numbers like ``3e-4`` (a string to YAML 1.1) read as floats."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:  # "[1", "a: b: c": not YAML, so the text itself; the field's type judges it
        return text
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def yaml_problem(error: Exception) -> str:
    """Where and what PyYAML found wrong, on one line: ``line 2, column 1: expected ',' or ']', ...``
    (the one format of every "not valid YAML (...)" message)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return problem if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


# ---------------------------------------------------------------------- nested <-> dotted
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def iter_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted_key, type, default)`` of every leaf field of dataclass ``cls``, in order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from iter_fields(hint, f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            yield prefix + f.name, hint, default


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 1e-4, ...}``: every leaf field of dataclass ``obj``; tuples become lists."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = list(value) if isinstance(value, tuple) else value
    return out


def stable_hash(obj: Any, n: int = 12) -> str:
    """``n`` hex digits of sha256 over ``obj``'s canonical JSON (keys sorted): a cache or settings key."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def check_keys(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` if it is a mapping whose keys are all fields of ``cls``; else ConfigError naming
    the unknown keys and the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        close = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, names, n=1))}
        hint = f" (did you mean {', '.join(f'{v} for {k}' for k, v in close.items())}?)" if close else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint}; valid keys: {names}")
    return data


def apply_flat(cfg: Any, flat: dict[str, Any], *, skip=frozenset(), _at: str = "") -> Any:
    """A copy of nested dataclass ``cfg`` with dotted keys replaced, each value parsed by its
    field's type, the result validated by the dataclasses' ``__post_init__``.

    Keys in ``skip`` are ignored; other unknown keys raise ConfigError naming the valid ones.
    """
    names = {f.name: f for f in dataclasses.fields(cfg) if f.init}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if _at + key in skip:
            continue
        head, dot, rest = key.partition(".")
        if head not in names:
            valid = [k for k, _, _ in iter_fields(type(cfg), _at)]
            # a field's own name without its section (``lr`` for optim.lr; ``batch_size`` for
            # eval.batch_size and budget.global_batch_size) or a misspelling
            close = [k for k in valid if k.endswith(("." + key, "_" + key))] or difflib.get_close_matches(
                _at + key, valid, n=1
            )
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(
                f"{_at + key}: {type(cfg).__name__} has no field {head!r}{hint}; "
                f"valid keys: {', '.join(valid)}"
            )
        if dot:
            if not dataclasses.is_dataclass(getattr(cfg, head)):
                raise ConfigError(
                    f"{_at + key}: {_at + head} is not a nested config; set {_at + head} itself"
                )
            nested.setdefault(head, {})[rest] = value
        elif dataclasses.is_dataclass(_hints(type(cfg))[head]):
            # a section: a mapping of its fields (YAML's ``optim: {lr: 3e-4}``), or nothing (an empty
            # ``optim:`` whose lines are commented out); a value in its place would replace the section
            if isinstance(value, dict):
                nested.setdefault(head, {}).update({str(k): v for k, v in value.items()})
            elif value is not None:
                first = next(iter_fields(_hints(type(cfg))[head], f"{_at}{head}."))[0]
                raise ConfigError(
                    f"{_at + head}: is a section of fields, not a value (got {value!r}); set its fields, "
                    f"e.g. {first}=..., or in YAML a mapping under {head}:"
                )
        else:
            direct[head] = parse_value(value, _hints(type(cfg))[head], _at + head)
    for head, sub in nested.items():
        direct[head] = apply_flat(getattr(cfg, head), sub, skip=skip, _at=f"{_at}{head}.")
    return dataclasses.replace(cfg, **direct) if direct else cfg


def coerce_fields(obj: Any) -> None:
    """Parse the leaf fields of dataclass ``obj`` in place by their types (for ``__post_init__``,
    so ``OptimConfig(lr="3e-4")`` holds a float)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not dataclasses.is_dataclass(value):
            setattr(obj, f.name, parse_value(value, hints[f.name], f"{type(obj).__name__}.{f.name}"))


def yaml_to_flat(cls: type, data: Any, where: str) -> dict[str, Any]:
    """Dotted keys from a parsed YAML mapping that may nest sections (``optim: {lr: 3e-4}``) or
    use dotted keys (``optim.lr: 3e-4``); a mapping for a non-dataclass field (a dict) stays whole."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must hold a mapping of fields, got {type(data).__name__}")
    hints, flat = _hints(cls), {}
    for key, value in data.items():
        hint = hints.get(key)
        if isinstance(value, dict) and hint is not None and dataclasses.is_dataclass(hint):
            items = {f"{key}.{k}": v for k, v in yaml_to_flat(hint, value, where).items()}
        else:
            items = {str(key): value}
        twice = sorted(flat.keys() & items.keys())
        require(not twice, where, f"{', '.join(twice)} given twice (dotted and under its section); keep one")
        flat.update(items)
    return flat


# ---------------------------------------------------------------------- help and CLI flags
def field_help(cls: type) -> dict[str, str]:
    """``{field: text}`` from the class docstring's ``name: text`` lines (``a / b: text`` documents
    both; indented lines continue the text)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    current: list[str] = []
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        m = re.match(r"^([\w`]+(?:\s*[/,]\s*[\w`]+)*): (.*)$", line)
        keys = [k.strip("` ") for k in re.split(r"[/,]", m.group(1))] if m else []
        if keys and all(k in names for k in keys):
            current = keys
            for k in keys:
                out[k] = m.group(2).strip().replace("``", "")
        elif current and line.startswith((" ", "\t")) and line.strip():
            for k in current:
                out[k] += " " + line.strip().replace("``", "")
        else:
            current = []
    return out


def add_field_flags(parser: argparse.ArgumentParser, cls: type, aliases: dict[str, str]) -> None:
    """One ``--<dotted.key>`` flag per leaf field of ``cls`` (plus the short names in ``aliases``,
    ``{"--lr": "optim.lr"}``), one argument group per section. Values stay strings until
    `flags_to_flat` + `apply_flat` parse them; a bool flag alone means true."""
    extra: dict[str, list[str]] = {}
    for flag, key in aliases.items():
        extra.setdefault(key, []).append(flag)
    groups: dict[str, argparse._ArgumentGroup] = {}
    docs: dict[str, dict[str, str]] = {}
    for key, hint, default in iter_fields(cls):
        section, _, name = key.rpartition(".")
        if section not in groups:
            sub = cls
            for part in filter(None, section.split(".")):
                sub = _hints(sub)[part]
            title = f"{section}. ({sub.__name__})" if section else f"top level ({cls.__name__})"
            groups[section] = parser.add_argument_group(title)
            docs[section] = field_help(sub)
        text = docs[section].get(name, "")
        shown = default if not isinstance(default, tuple) else ",".join(map(str, default))
        flag = hint is bool or set(typing.get_args(hint)) == {bool, type(None)}  # alone means true
        kwargs: dict[str, Any] = {"nargs": "?", "const": "true"} if flag else {}
        groups[section].add_argument(
            *dict.fromkeys([*extra.get(key, []), f"--{key}"]), dest=key, default=argparse.SUPPRESS,
            metavar=name.upper(), help=f"{text} (default: {shown})".replace("%", "%%").strip(), **kwargs,
        )  # fmt: skip


def add_flags(parser: Any, table: tuple, field_kwargs: Callable[[str, dict], dict]) -> None:
    """Add each row ``(flags, field, kwargs)`` of a CLI's flag ``table`` (in --help's order) to ``parser``
    (an `argparse.ArgumentParser` or argument group): ``flags`` space-separated (``"-v --verbose"``),
    ``kwargs`` add_argument's; a row naming a config ``field`` (else None) gets the keywords
    ``field_kwargs(field, kwargs)`` returns instead (the field's default, type, dest, ...)."""
    for flags, field, kwargs in table:
        if field is not None:
            kwargs = field_kwargs(field, kwargs)
        parser.add_argument(*flags.split(), **kwargs)


def flags_to_flat(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The dotted fields that flags from `add_field_flags` set (unset flags are absent)."""
    keys = {k for k, _, _ in iter_fields(cls)}
    return {k: v for k, v in vars(args).items() if k in keys}


def join_negative_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--budgets -1e11`` -> ``--budgets=-1e11``: argparse takes a value starting with ``-`` (other
    than ``-1`` or ``-.5``) for an option and says "expected one argument"; joined, the value reaches
    its parser, whose message names what is wrong with it."""
    takes_value = {s for a in parser._actions if a.nargs is None for s in a.option_strings}
    out: list[str] = []
    for tok in argv:
        if out and out[-1] in takes_value and re.match(r"^-\.?\d", tok):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def int_at_least(low: int, name: str = "", why: str = ""):
    """An argparse type: an int >= ``low`` that Python's ranges can hold, else a usage error naming it
    (``name``, ``why``: words before and after "must be >= low")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(
                f"{name + ' ' if name else ''}must be >= {low}{why}, got {value}"
            )
        if value > sys.maxsize:
            raise argparse.ArgumentTypeError(f"must be <= {sys.maxsize}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def float_where(rule: str):
    """An argparse type: a float that passes the bound ``rule`` (as `check_fields`'s: "a finite number
    > 0"), else a usage error saying it."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
        if not _BOUNDS[rule](value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = f"float {rule}"
    return parse


#: exit status of a CLI whose stdout reader has gone (`| head`), as a tool killed by SIGPIPE: 128 + 13
EXIT_PIPE_CLOSED = 141


def stdout_closed() -> int:
    """After a BrokenPipeError (stdout's reader left): stdout onto /dev/null, so that the flush at exit
    raises no second one; returns EXIT_PIPE_CLOSED (what the CLI wrote to files stands)."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor: nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_PIPE_CLOSED


class RawHelp(str):
    """Help text that `KeepRawFormatter` prints as written (a table), not re-wrapped."""


class KeepRawFormatter(argparse.HelpFormatter):
    """argparse's default formatter (descriptions wrapped to the terminal), except that a `RawHelp`
    text keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if isinstance(text, RawHelp):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def exit_codes_help(codes: dict[int, str], note: str = "") -> RawHelp:
    """The ``exit codes:`` part of a CLI's ``--help`` epilog: one line per code (continuation lines
    of a meaning already broken with ``\\n``), then ``note``'s paragraph, if any."""
    lines = ["exit codes:"]
    for code, meaning in codes.items():
        first, *rest = meaning.split("\n")
        lines.append(f"  {code:<3}  {first}")
        lines += [f"       {line}" for line in rest]
    return RawHelp("\n".join(lines) + (f"\n\n{note}" if note else ""))
