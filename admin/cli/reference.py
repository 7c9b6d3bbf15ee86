"""The generated blocks of docs/configuration.md, built from the `conveyor` command tree, the
settings dataclasses and the `EXIT_*` constants, so the reference says what the command line does:
every command, every option with its variable and default, and every exit code.

    python -m admin.cli.reference docs/configuration.md           rewrite the generated blocks
    python -m admin.cli.reference --check docs/configuration.md   exit 1 when they are stale

Generated blocks sit between `<!-- generated: NAME -->` and `<!-- end -->`; the prose around them
is written by hand.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from admin.cli import client, consume, options, relay
from admin.cli.reference_tree import (
    argument_params,
    argument_row,
    command,
    exit_code_table,
    exit_codes,
    option_params,
    row,
    summary,
    table,
    usage,
    walk,
)
from admin.cli.setting_options import SettingOptions, field_docs, is_duration

REGENERATE = "python -m admin.cli.reference docs/configuration.md"
"""The command that rewrites the reference; the test that finds it stale names it."""

CONNECTION_PANEL = "Connection"
"""The `--help` panel of the options every client command takes (admin/cli/client.py)."""

OWN_SECTIONS = (
    ("migrate",),
    ("relay",),
    ("relay", "replay"),
    ("relay", "backfill"),
    ("consume",),
)
"""Commands with a section of their own (with the commands below them); the `commands` block
holds every other one."""

_BLOCK_RE = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end -->)", re.DOTALL)


def _shared(
    database_url: options.DatabaseUrl = options.DEFAULT_DATABASE_URL,
    redis_url: options.RedisUrl = options.DEFAULT_REDIS_URL,
    key_prefix: options.KeyPrefix = options.DEFAULT_PREFIX,
    schema: options.Schema = options.DEFAULT_SCHEMA,
    log_level: options.LogLevel = options.DEFAULT_LOG_LEVEL,
    log_format: options.LogFormat = options.DEFAULT_LOG_FORMAT,
) -> None:
    """The options several commands declare alike (admin/cli/options.py)."""


def shared_rows() -> list[tuple[str, str, str, str]]:
    """Rows of the options several commands declare alike."""
    app = typer.Typer(add_completion=False)
    app.command()(_shared)
    return [row(p) for p in option_params(typer.main.get_command(app))]


def command_block(
    cmd: Any, settings: SettingOptions | None = None, panel: str | None = None
) -> str:
    """The table of `cmd`'s options in `panel` (None: the main one) but the shared ones, a line
    naming those, and the settings fields that have no option."""
    shared = shared_rows()
    rows = [row(p) for p in option_params(cmd) if p.rich_help_panel == panel]
    text = table(r for r in rows if r not in shared)
    also = [r[0] for r in rows if r in shared]
    if also:
        text += f"\nplus the shared {', '.join(also)}.\n"
    if settings is not None:
        text += programmatic(settings)
    return text


def programmatic(settings: SettingOptions) -> str:
    """The fields of `settings` that only code sets, with default and meaning."""
    if not settings.programmatic:
        return ""
    cls = settings.settings
    lines = [
        f"\nSettings without a flag, for code that builds `{cls.__module__.split('.')[0]}."
        f"{cls.__name__}` itself:\n\n"
    ]
    for name in settings.programmatic:
        field = settings.fields[name]
        value = f"`{field.default!r}`" + (" (seconds)" if is_duration(field) else "")
        if field.default is dataclasses.MISSING:
            value = "required"
        lines.append(f"- `{name}` = {value}: {field_docs(cls)[name]}\n")
    return "".join(lines)


def grpc_block() -> str:
    """The ops-plane options `conveyor relay` and `conveyor consume` share (defaults may differ)."""
    relay_rows = [row(p) for p in option_params(command("relay")) if p.rich_help_panel]
    consume_rows = [row(p) for p in option_params(command("consume")) if p.rich_help_panel]
    rows = []
    for ours, theirs in zip(relay_rows, consume_rows, strict=True):
        if ours[:2] != theirs[:2] or ours[3] != theirs[3]:
            raise ValueError(f"relay and consume declare {ours[0]} differently")
        default = ours[2] if ours[2] == theirs[2] else f"relay {ours[2]}, consume {theirs[2]}"
        rows.append((ours[0], ours[1], default, ours[3]))
    return table(rows) + "".join(
        programmatic(s) for s in (options.SERVER, options.AUTH, options.OPS)
    )


def client_block() -> str:
    """The connection options of every client command, and what only the environment sets."""
    takers = [
        f"`{usage(path, cmd)}`"
        for path, cmd in walk()
        if any(p.rich_help_panel == CONNECTION_PANEL for p in option_params(cmd))
    ]
    rows = [
        row(p) for p in option_params(command("status")) if p.rich_help_panel == CONNECTION_PANEL
    ]
    rows += [("—", f"`{env}`", "none", meaning) for env, meaning in client.ENVIRONMENT_ONLY.items()]
    return f"Taken by {', '.join(takers)}.\n\n" + table(rows)


def migrate_block() -> str:
    """The `conveyor migrate` commands with their flags, then the flags not shared."""
    commands, flags = [], {}
    for path, cmd in walk(command("migrate"), ("migrate",)):
        if path == ("migrate",):
            continue
        names = ", ".join(f"`{p.opts[0]}`" for p in option_params(cmd))
        commands.append((f"`{usage(path, cmd)}`", names, summary(cmd)))
        flags.update({p.opts[0]: p for p in option_params(cmd)})
    header = "| command | flags | does |\n|---|---|---|\n"
    shared = shared_rows()
    own = [row(p) for p in flags.values() if row(p) not in shared]
    return table(commands, header) + "\n" + table(own)


def _own_section(path: tuple[str, ...]) -> bool:
    return any(path[: len(own)] == own for own in OWN_SECTIONS)


def commands_block() -> str:
    """Every command without a section of its own: usage, what it does, its arguments and
    options (the connection options and the shared ones named, not repeated)."""
    shared = shared_rows()
    parts = []
    for path, cmd in walk():
        params = option_params(cmd)
        if _own_section(path) or not (params or argument_params(cmd)):
            continue
        text = f"### `{usage(path, cmd)}`\n\n"
        if does := summary(cmd):
            text += f"{does}\n\n"
        rows = [argument_row(p) for p in argument_params(cmd)]
        rows += [row(p) for p in params if p.rich_help_panel != CONNECTION_PANEL]
        if own := [r for r in rows if r not in shared]:
            text += table(own) + "\n"
        if also := [r[0] for r in rows if r in shared]:
            text += f"plus the shared {', '.join(also)}.\n\n"
        if any(p.rich_help_panel == CONNECTION_PANEL for p in params):
            text += "plus the connection options.\n\n"
        parts.append(text)
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


BLOCKS: dict[str, Callable[[], str]] = {
    "shared": lambda: table(shared_rows()),
    "migrate": migrate_block,
    "relay": lambda: command_block(command("relay"), relay.RELAY),
    "relay-replay": lambda: command_block(command("relay", "replay")),
    "relay-backfill": lambda: command_block(command("relay", "backfill")),
    "consume": lambda: command_block(command("consume"), consume.CONSUMER),
    "grpc": grpc_block,
    "client": client_block,
    "commands": commands_block,
    "exit-codes": lambda: exit_code_table(exit_codes()),
}
"""What each generated block of the reference holds."""


def render(text: str) -> str:
    """`text` with every generated block rewritten; ValueError for an unknown or missing one."""
    found = {m.group(2) for m in _BLOCK_RE.finditer(text)}
    if unknown := found - BLOCKS.keys():
        raise ValueError(f"unknown generated blocks: {', '.join(sorted(unknown))}")
    if missing := BLOCKS.keys() - found:
        raise ValueError(f"missing generated blocks: {', '.join(sorted(missing))}")
    return _BLOCK_RE.sub(lambda m: m.group(1) + BLOCKS[m.group(2)]() + m.group(4), text)


def main(argv: Sequence[str]) -> int:
    """Rewrite (or with --check, compare) the reference at the path in `argv`."""
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    if len(paths) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(paths[0])
    text = path.read_text(encoding="utf-8")
    fresh = render(text)
    if check:
        if fresh != text:
            print(f"{path} is stale: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    path.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
