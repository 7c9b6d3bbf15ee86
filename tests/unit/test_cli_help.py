"""`conveyor ... --help` at 80 columns: every option's names and environment variable whole."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from importlib import metadata
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


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(("conveyor", *p)))
def test_flags_that_take_no_value_show_no_value_placeholder(path: tuple[str, ...]) -> None:
    # `--json`, `--help`, `--reflection / --no-reflection` take no value: a `<bool>` beside
    # them reads as if `--json true` were wanted.
    shown = [line for line in _help(path).splitlines() if "<bool>" in line]
    assert not shown, "\n".join(shown)


def test_an_argument_is_written_as_the_reference_writes_it() -> None:
    output = _help(("trace",))
    assert "Usage: conveyor trace [OPTIONS] EVENT_ID" in output
    assert "{event_id}" not in output
    assert "Usage: conveyor health [OPTIONS] [SERVICE]" in _help(("health",))
    missing = CliRunner().invoke(app, ["trace"], env={"COLUMNS": "80"})
    assert missing.exit_code == 2
    assert "Missing argument 'EVENT_ID'" in missing.output


def _ragged(lines: list[str]) -> list[str]:
    """Short lines continued on the next line: a docstring's source line break kept."""
    return [
        line
        for line, after in itertools.pairwise(lines)
        if line.strip() and after.strip() and len(line) < 55
    ]


def test_the_command_list_wraps_each_description_as_one_paragraph() -> None:
    panel = _help(()).split("─ Commands ─", 1)[1].splitlines()[1:]
    rows = [line.strip("│").rstrip() for line in panel if line.startswith("│")]
    ragged = [
        row
        for row, after in itertools.pairwise(rows)
        if after.startswith(" " * 10) and len(row) < 55  # a short line continued below
    ]
    assert not ragged, "\n".join(ragged)
    assert "demo-mailer, key prefix conveyor-demo" in " ".join(" ".join(rows).split())


@pytest.mark.parametrize("path", [("dlq", "list"), ("consume",), ("relay",), ("demo",)])
def test_a_commands_description_wraps_as_paragraphs(path: tuple[str, ...]) -> None:
    head = _help(path).split("╭─", 1)[0].splitlines()
    lines = [line.rstrip() for line in head if not line.lstrip().startswith("Usage:")]
    assert not _ragged(lines), "\n".join(_ragged(lines))


def test_version_prints_the_installed_packages_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"conveyor {metadata.version('conveyor-events')}\n"
