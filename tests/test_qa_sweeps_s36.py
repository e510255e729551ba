"""Session 36's QA pass over `sweeps/launch.py` and `analysis/fit_scaling.py` as a new user meets them.
Each test failed on the code before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps import launch


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = launch.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("families: [S\n", "not valid YAML (expected ',' or ']', but got '<stream end>', line 2"),
        ("families: [S]\n\tbudgets: [1e11]\n", "not valid YAML (found character '\\t' that cannot start"),
        (b"SQLite format 3\x00\xec\xff", "not a text file, so not a sweep YAML"),
    ],
    ids=["unclosed-list", "tab-indent", "binary"],
)
@pytest.mark.parametrize("command", ["run", "status"])
def test_config_that_is_not_yaml_is_refused(tmp_path: Path, monkeypatch, capsys, text, what, command):
    """A sweep YAML with a syntax error was a YAML traceback and exit 1; now exit 2 naming the file, the
    line and the fix, and nothing made."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "typo.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = [command, "-c", str(cfg), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    code, _, err = _main([*argv, "--dry-run"] if command == "run" else argv, capsys)
    assert code == 2, err
    assert f"error: {cfg}: {what}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]
