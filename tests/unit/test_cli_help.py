"""`conveyor ... --help` at 80 columns: every option's names and environment variable whole."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from admin.cli.app import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _whole(name: str, text: str) -> bool:
    """`name` appears with neither a name character nor an ellipsis on either side."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w…-])", text) is not None


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(("conveyor", *p)))
def test_help_at_80_columns_shows_every_option_and_variable_whole(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output, "nothing in the help is cut"
    names = []
    for param in COMMANDS[path].params:
        names += [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]
        if isinstance(getattr(param, "envvar", None), str):
            names.append(param.envvar)
    cut = [name for name in names if not _whole(name, result.output)]
    assert not cut, f"cut or missing at 80 columns: {cut}\n{result.output}"


def test_a_wide_terminal_keeps_names_and_help_side_by_side() -> None:
    result = CliRunner().invoke(app, ["relay", "--help"], env={"COLUMNS": "200"})

    line = next(line for line in result.output.splitlines() if "--batch-size" in line)
    assert "Rows claimed, published and marked" in line
