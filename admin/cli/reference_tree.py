"""What the reference reads from the `conveyor` command line: its click command tree, each option
as a Markdown row, and the exit codes declared as `EXIT_*` constants in admin/cli."""

from __future__ import annotations

import ast
import functools
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

CLI_DIR = Path(__file__).resolve().parent
"""The folder whose modules declare the exit codes."""

_HEADER = "| flag | environment | default | meaning |\n|---|---|---|---|\n"


@functools.cache
def _tree() -> Any:
    from admin.cli import app as cli  # the tree imports every command module

    return typer.main.get_command(cli.app)


def command(*path: str) -> Any:
    """The click command `conveyor PATH...` (`command()` is the whole tree)."""
    found = _tree()
    for name in path:
        found = found.commands[name]
    return found


def walk(cmd: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of `cmd` (default: the whole tree) and every command below it, parents
    first, in the order they were added."""
    cmd = command() if cmd is None else cmd
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from walk(sub, (*path, name))


def name(path: Sequence[str]) -> str:
    """`conveyor PATH...` as typed."""
    return " ".join(("conveyor", *path))


def option_params(cmd: Any) -> list[Any]:
    """The options of `cmd` (not its arguments, nor --help)."""
    return [p for p in cmd.params if p.opts[0].startswith("-") and p.name != "help"]


def argument_params(cmd: Any) -> list[Any]:
    """The positional arguments of `cmd`."""
    return [p for p in cmd.params if not p.opts[0].startswith("-")]


def flags(cmd: Any) -> set[str]:
    """Every flag `cmd` accepts, each spelling (`--no-x`, `-v`) and `--help` included."""
    found = {"--help"}
    for param in option_params(cmd):
        found.update(param.opts, param.secondary_opts)
    return found


def usage(path: Sequence[str], cmd: Any) -> str:
    """`conveyor PATH... ARG [OPTIONAL]`, the arguments in upper case."""
    args = [p.name.upper() if p.required else f"[{p.name.upper()}]" for p in argument_params(cmd)]
    return " ".join((name(path), *args))


def summary(cmd: Any) -> str:
    """The first paragraph of `cmd`'s help, on one line."""
    return " ".join((cmd.help or "").split("\n\n")[0].split())


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


def argument_row(param: Any) -> tuple[str, str, str, str]:
    """An argument as a row of the option table."""
    flag = f"`{param.name.upper()}` (argument" + (", required)" if param.required else ")")
    return flag, "—", _default(param), _meaning(getattr(param, "help", None))


def _default(param: Any) -> str:
    value = param.default
    if param.required:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == []:
        return "none"
    if value == "":
        return '`""`'
    if isinstance(value, list):
        return " ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _meaning(help_text: str | None) -> str:
    return " ".join((help_text or "").replace("\\[", "[").replace("|", "\\|").split())


def table(rows: Iterable[Sequence[str]], header: str = _HEADER) -> str:
    """A Markdown table of `rows` under `header`."""
    return header + "".join("| " + " | ".join(r) + " |\n" for r in rows)


@dataclass(frozen=True, slots=True)
class ExitCode:
    """An `EXIT_*` constant and the docstring below it."""

    value: int
    name: str
    meaning: str
    module: str


def exit_codes(folder: Path = CLI_DIR) -> list[ExitCode]:
    """Every integer `EXIT_*` constant of the modules in `folder`, by value, once per value and
    name. ValueError for one without a docstring, or two names of one value (or values of one
    name), naming them."""
    found: dict[tuple[int, str], ExitCode] = {}
    for path in sorted(folder.rglob("*.py")):
        for code in _declared(path, folder.parent.parent):
            found.setdefault((code.value, code.name), code)
    codes = sorted(found.values(), key=lambda c: (c.value, c.name))
    for one, other in itertools.pairwise(codes):
        if one.value == other.value:
            raise ValueError(
                f"exit code {one.value} has two names: {one.name} ({one.module}) and "
                f"{other.name} ({other.module}); keep one"
            )
    names = [c.name for c in codes]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"{', '.join(twice)} declared with different values; keep one")
    return codes


def _declared(path: Path, root: Path) -> Iterator[ExitCode]:
    module = path.relative_to(root).as_posix()
    body = ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body
    for node, after in zip(body, [*body[1:], None], strict=True):
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        value = getattr(node, "value", None)
        if not (isinstance(target, ast.Name) and target.id.startswith("EXIT_")):
            continue
        if not (isinstance(value, ast.Constant) and type(value.value) is int):
            continue
        doc = after.value if isinstance(after, ast.Expr) else None
        if not (isinstance(doc, ast.Constant) and isinstance(doc.value, str) and doc.value.strip()):
            raise ValueError(
                f"{module}:{node.lineno}: {target.id} has no docstring: write what exit code "
                f"{value.value} means in a string on the line below it"
            )
        yield ExitCode(value.value, target.id, " ".join(doc.value.split()), module)


def exit_code_table(codes: Iterable[ExitCode]) -> str:
    """The exit codes as a Markdown table."""
    header = "| code | constant | meaning |\n|---|---|---|\n"
    return table(((str(c.value), f"`{c.name}`", _meaning(c.meaning)) for c in codes), header)
