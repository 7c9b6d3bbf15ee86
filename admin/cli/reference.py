"""The option tables of docs/configuration.md, generated from the `conveyor` command tree and the
settings dataclasses, so the reference says what the command line does.

    python -m admin.cli.reference docs/configuration.md           rewrite the generated blocks
    python -m admin.cli.reference --check docs/configuration.md   exit 1 when they are stale

Generated blocks sit between `<!-- generated: NAME -->` and `<!-- end -->`; the prose around them
is written by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import typer

from admin.cli import app as cli
from admin.cli import client, consume, options, relay
from admin.cli.setting_options import SettingOptions, field_docs, is_duration

REGENERATE = "python -m admin.cli.reference docs/configuration.md"
"""The command that rewrites the reference; the test that finds it stale names it."""

_BLOCK_RE = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end -->)", re.DOTALL)
_HEADER = "| flag | environment | default | meaning |\n|---|---|---|---|\n"


def _shared(
    database_url: options.DatabaseUrl = options.DEFAULT_DATABASE_URL,
    redis_url: options.RedisUrl = options.DEFAULT_REDIS_URL,
    key_prefix: options.KeyPrefix = options.DEFAULT_PREFIX,
    schema: options.Schema = options.DEFAULT_SCHEMA,
    log_level: options.LogLevel = options.DEFAULT_LOG_LEVEL,
) -> None:
    """The options several commands declare alike (admin/cli/options.py)."""


@functools.cache
def _tree() -> Any:
    return typer.main.get_command(cli.app)


def command(*path: str) -> Any:
    """The click command `conveyor PATH...` (`command()` is the whole tree)."""
    found = _tree()
    for name in path:
        found = found.commands[name]
    return found


def option_params(cmd: Any) -> list[Any]:
    """The options of `cmd` (not its arguments, nor --help)."""
    return [p for p in cmd.params if p.opts[0].startswith("-") and p.name != "help"]


def row(param: Any) -> tuple[str, str, str, str]:
    """flag, environment, default and meaning of a click option, as Markdown cells."""
    flag = ", ".join(f"`{o}`" for o in param.opts)
    if param.secondary_opts:
        flag = f"`{param.opts[0]}/{param.secondary_opts[0]}`"
    if param.multiple:
        flag += " (repeatable)"
    if param.required:
        flag += " (required)"
    env = f"`{param.envvar}`" if param.envvar else "—"
    if param.envvar and param.multiple:
        env += " (space-separated)"
    return flag, env, _default(param), _meaning(param.help)


def _default(param: Any) -> str:
    value = param.default
    if param.required:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == []:
        return "none"
    if isinstance(value, list):
        return " ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _meaning(help_text: str | None) -> str:
    return (help_text or "").replace("\\[", "[").replace("|", "\\|")


def table(rows: Iterable[Sequence[str]], header: str = _HEADER) -> str:
    """A Markdown table of `rows` under `header`."""
    return header + "".join("| " + " | ".join(r) + " |\n" for r in rows)


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
    rows = [row(p) for p in option_params(command("status")) if p.rich_help_panel == "Connection"]
    rows += [("—", f"`{env}`", "none", meaning) for env, meaning in client.ENVIRONMENT_ONLY.items()]
    return table(rows)


def migrate_block() -> str:
    """The `conveyor migrate` commands with their flags, then the flags not shared."""
    group = command("migrate")
    commands, flags = [], {}
    for name, cmd in group.commands.items():
        args = " ".join(f"[{p.name.upper()}]" for p in cmd.params if p not in option_params(cmd))
        names = ", ".join(f"`{p.opts[0]}`" for p in option_params(cmd))
        does = (cmd.help or "").split("\n\n")[0].replace("\n", " ")
        commands.append((f"`{f'{name} {args}'.strip()}`", names, does))
        flags.update({p.opts[0]: p for p in option_params(cmd)})
    header = "| command | flags | does |\n|---|---|---|\n"
    shared = shared_rows()
    own = [row(p) for p in flags.values() if row(p) not in shared]
    return table(commands, header) + "\n" + table(own)


BLOCKS: dict[str, Callable[[], str]] = {
    "shared": lambda: table(shared_rows()),
    "migrate": migrate_block,
    "relay": lambda: command_block(command("relay"), relay.RELAY),
    "relay-replay": lambda: command_block(command("relay", "replay")),
    "consume": lambda: command_block(command("consume"), consume.CONSUMER),
    "grpc": grpc_block,
    "client": client_block,
    "demo": lambda: command_block(command("demo")),
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
