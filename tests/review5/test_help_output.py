"""`conveyor ... --help` as a newcomer reads it: 80 columns, stdout a pipe (a pager, a file)."""

from __future__ import annotations

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
