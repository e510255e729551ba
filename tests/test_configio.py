"""`dit_core.configio` on small dataclasses of its own: what each value parses to, the errors and
their words, the fields it walks, the help it reads and the flags it makes.

Written from a mutation sample of the module (docs/testing.md, session 22): each test fails on one
of the mutants that the trainer's and the sweep's config tests let through.
"""

import argparse
import dataclasses

import pytest

from dit_core.configio import (
    ConfigError,
    add_field_flags,
    check_keys,
    coerce_fields,
    field_help,
    iter_fields,
    parse_value,
    yaml_to_flat,
)


@dataclasses.dataclass
class Inner:
    """An inner section.

    width: channels of the ``hidden`` state,
        the ``stem`` included
    """

    width: int = 4


@dataclasses.dataclass
class Outer:
    lr: float = 1e-3
    steps: int = 10
    cached: int = dataclasses.field(default=0, init=False)  # not a config field
    inner: Inner = dataclasses.field(default_factory=Inner)
    name: str = "run"

    def __post_init__(self):
        coerce_fields(self)


def test_an_int_field_takes_whole_numbers_and_refuses_booleans():
    assert parse_value("7", int, "steps") == 7 and parse_value("1e3", int, "steps") == 1000
    assert parse_value(5.0, int, "steps") == 5
    for bad in (True, 1.5, "abc"):
        with pytest.raises(ConfigError, match=r"^steps: cannot use .* as int; give an int value$"):
            parse_value(bad, int, "steps")


def test_lists_and_tuples_keep_their_kind_and_a_bad_item_names_the_field():
    got = parse_value("1,2", tuple[int, ...], "model.sizes")
    assert got == (1, 2) and type(got) is tuple
    assert parse_value("[3, 4]", list[int], "model.sizes") == [3, 4]
    with pytest.raises(
        ConfigError,
        match=r"^model.sizes: cannot use '1,x' as tuple \(its item 'x' is not an int\); give a tuple value$",
    ):
        parse_value("1,x", tuple[int, ...], "model.sizes")


def test_none_is_refused_where_the_type_cannot_be_none():
    """None (YAML's null, an empty value) is unset only for an optional field; for another it was
    passed through (session 60: `tracking: {enabled: null}` turned MLflow off, `out:` crashed later)."""
    with pytest.raises(
        ConfigError, match=r"^lr: must be set, got null \(an empty value\); give a float value"
    ):
        parse_value(None, float, "lr")
    with pytest.raises(ConfigError, match=r"^tracking.enabled: must be set, got null"):
        parse_value(None, bool, "tracking.enabled")
    assert parse_value("null", float | None, "lr") is None and parse_value(None, int | None, "s") is None
    # YAML 1.1 reads `precision: no` as False: a text field says so instead of taking 'False'
    with pytest.raises(ConfigError, match=r"^precision: YAML read this value as the boolean False; quote it"):
        parse_value(False, str, "precision")
    with pytest.raises(ConfigError, match=r"^out: cannot use \['a'\] as str; give one text value$"):
        parse_value(["a"], str, "out")
    # and YAML 1.1 reads `name: 010` as 8 (session 61): a number for a text field says to quote it
    with pytest.raises(ConfigError, match=r"^name: YAML read this value as the number 3 .*quote it"):
        parse_value(3, str, "name")
    assert parse_value("3", str, "name") == "3"


def test_post_init_coercion_parses_leaves_names_the_field_and_leaves_sections():
    cfg = Outer(lr="3e-4", steps="20")
    assert (cfg.lr, cfg.steps) == (3e-4, 20) and type(cfg.lr) is float and cfg.inner == Inner(4)
    with pytest.raises(ConfigError, match=r"^Outer.lr: cannot use 'fast' as float; give a float value$"):
        Outer(lr="fast")


def test_iter_fields_skips_non_init_fields_and_goes_on():
    assert list(iter_fields(Outer)) == [
        ("lr", float, 1e-3), ("steps", int, 10), ("inner.width", int, 4), ("name", str, "run"),
    ]  # fmt: skip


def test_unknown_keys_suggest_only_close_names():
    with pytest.raises(ConfigError) as err:
        check_keys(Outer, {"zzzz": 1}, "f.yaml")
    assert str(err.value) == "f.yaml: unknown key(s) ['zzzz']; valid keys: ['lr', 'steps', 'inner', 'name']"
    with pytest.raises(ConfigError, match=r"\(did you mean steps for stepz\?\)"):
        check_keys(Outer, {"stepz": 1}, "f.yaml")


def test_a_yaml_file_that_is_not_a_mapping_is_named():
    with pytest.raises(ConfigError, match=r"^f.yaml: must hold a mapping of fields, got list$"):
        yaml_to_flat(Outer, [1, 2], "f.yaml")
    assert yaml_to_flat(Outer, {"inner": {"width": 8}, "lr": 1}, "f.yaml") == {"inner.width": 8, "lr": 1}


def test_docstring_help_drops_rst_quotes_on_continuation_lines_too():
    assert field_help(Inner) == {"width": "channels of the hidden state, the stem included"}


def test_flags_show_their_field_name_as_the_metavar():
    parser = argparse.ArgumentParser(prog="t")
    add_field_flags(parser, Outer, {"--lr": "lr"})
    text = parser.format_help()
    assert "--lr LR, --lr LR" not in text and "--lr LR" in text and "--inner.width WIDTH" in text
    assert "channels of the hidden state, the stem included (default: 4)" in " ".join(text.split())
