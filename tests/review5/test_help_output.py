"""`conveyor ... --help` as a newcomer reads it: 80 columns, stdout a pipe (a pager, a file)."""

from __future__ import annotations

import itertools

from tests.processes import run_conveyor

COMMANDS = [
    [],
    ["migrate", "current"],
    ["consume"],
    ["dlq", "list"],
    ["trace"],
    ["token", "create"],
]


def test_flags_that_take_no_value_show_no_value_placeholder() -> None:
    # `--json`, `--help`, `--reflection / --no-reflection` take no value, yet each is shown as
    # `--json  <bool>`, as if the user had to type `--json true` (which is refused: "Got
    # unexpected extra argument", exit 2). A user expects a placeholder only where a value is
    # wanted.
    shown = []
    for command in COMMANDS:
        result = run_conveyor([*command, "--help"], {"COLUMNS": "80"})
        assert result.returncode == 0, result.stderr
        shown += [
            f"conveyor {' '.join(command)}: {line.strip(' │')}"
            for line in result.stdout.splitlines()
            if "<bool>" in line
        ]
    assert not shown, "\n".join(shown)


def test_the_command_list_wraps_each_description_as_one_paragraph() -> None:
    # `conveyor --help` at 80 columns lists `demo` as
    #   "Run a relay ... under / names of the demo's / own (schema ..., key / prefix
    #   conveyor-demo), show / progress, ..." - the line breaks of the docstring's source kept
    # inside the panel, so half-empty lines alternate with full ones. A user expects each
    # description wrapped like the others (consume, metrics): lines filled to the panel's edge.
    result = run_conveyor(["--help"], {"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    panel = result.stdout.split("─ Commands ─", 1)[1].splitlines()[1:]
    rows = [line.strip("│").rstrip() for line in panel if line.startswith("│")]
    ragged = [
        row
        for row, after in itertools.pairwise(rows)
        if after.startswith(" " * 10) and len(row) < 55  # a short line continued below
    ]
    assert not ragged, "\n".join(ragged)


def test_a_commands_description_wraps_as_paragraphs() -> None:
    # `conveyor dlq list --help` at 80 columns: "The table shows what picks an entry: entry id,
    # event type (its last part), / group, reason, / attempts, age and state, ...": a line of
    # two words between full ones, where the docstring's source broke its line. A user expects
    # paragraphs wrapped to the width.
    result = run_conveyor(["dlq", "list", "--help"], {"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    head = result.stdout.split("╭─", 1)[0].splitlines()
    lines = [line.rstrip() for line in head if not line.lstrip().startswith("Usage:")]
    ragged = [
        line
        for line, after in itertools.pairwise(lines)
        if line.strip() and after.strip() and len(line) < 55
    ]
    assert not ragged, "\n".join(ragged)
