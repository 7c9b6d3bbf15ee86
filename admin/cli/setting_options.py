"""Command-line options derived from settings dataclasses: flag, variable, default and help of an
option all come from one field, so the command line cannot drift from the settings."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import re
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

import typer
from rich.markup import escape

from admin.cli.durations import format_duration

_FROM_FIELD: Any = object()


@functools.cache
def field_docs(settings: type) -> Mapping[str, str]:
    """The attribute docstring of each field of the dataclass `settings`, as one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(settings)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def is_duration(field: dataclasses.Field[Any]) -> bool:
    """Settings hold durations as float seconds; the command line shows them as `30s`, `5m`."""
    return field.type in ("float", float)


def is_repeatable(field: dataclasses.Field[Any]) -> bool:
    """Tuple fields are repeatable options whose variable takes values separated by spaces."""
    return str(field.type).startswith("tuple[")


@dataclasses.dataclass(frozen=True, slots=True)
class Shown:
    """How a field shows on the command line where the rule of `SettingOptions` does not fit."""

    flag: str | None = None
    envvar: str | None = None
    help: str | None = None
    """For options whose value the command converts, so the field's docstring is not their
    meaning (e.g. `--descriptor-set` paths that become `payload_types`)."""


class SettingOptions:
    """Typer options for the fields of one settings dataclass.

    The rule: flag `--field-name`, variable `<envvar_prefix>FIELD_NAME`, default the field's
    (durations, float seconds, as `format_duration` writes them; required when the field has
    none), help the field's attribute docstring. `shown` holds the exceptions people already type.
    Every field is an option, a part (`nested` settings of their own) or `programmatic`, set only
    by code; a unit test checks that none is left out.
    """

    def __init__(
        self,
        settings: type,
        *,
        envvar_prefix: str = "CONVEYOR_",
        shown: Mapping[str, Shown] | None = None,
        programmatic: Iterable[str] = (),
        nested: Iterable[str] = (),
        panel: str | None = None,
    ) -> None:
        self.settings = settings
        self.fields = {f.name: f for f in dataclasses.fields(settings)}
        self.shown = dict(shown or {})
        self.programmatic = tuple(programmatic)
        self.nested = tuple(nested)
        self.bound: set[str] = set()
        """Fields some command has made an option of (filled as command modules load)."""
        self._prefix = envvar_prefix
        self._panel = panel
        for name in (*self.shown, *self.programmatic, *self.nested):
            self._field(name)

    def option(self, name: str, *, default: Any = _FROM_FIELD) -> Any:
        """A `typer.Option` for field `name`, as a command parameter's default; `default`
        replaces the field's where a command has its own (e.g. `--grpc-addr`)."""
        self._field(name)
        self.bound.add(name)
        if default is _FROM_FIELD:
            default = self.default(name)
        return typer.Option(
            default,
            self.flag(name),
            envvar=self.envvar(name),
            help=escape(self.help(name)),
            rich_help_panel=self._panel,
        )

    def flag(self, name: str) -> str:
        """The option's flag(s), as typer declares them (`--listen/--no-listen` for booleans)."""
        flag = self.shown.get(name, Shown()).flag or "--" + name.replace("_", "-")
        if self._field(name).type in ("bool", bool):
            return f"{flag}/--no-{flag.removeprefix('--')}"
        return flag

    def envvar(self, name: str) -> str:
        """The environment variable that gives the option's default."""
        return self.shown.get(name, Shown()).envvar or self._prefix + name.upper()

    def help(self, name: str) -> str:
        """The field's meaning, plus how to give several values for a repeatable one."""
        field = self._field(name)
        text = self.shown.get(name, Shown()).help or field_docs(self.settings).get(name, "")
        if is_repeatable(field):
            text += " Repeatable; the variable takes values separated by spaces."
        return text

    def default(self, name: str) -> Any:
        """The field's default as the command line takes it; `...` (required) when it has none."""
        field = self._field(name)
        if field.default is dataclasses.MISSING:
            if field.default_factory is not dataclasses.MISSING:
                raise ValueError(f"{name}: a computed default needs an explicit option default")
            return ...
        value = field.default
        if is_duration(field):
            return format_duration(value)
        if isinstance(value, tuple):
            return list(value)
        return value

    def _field(self, name: str) -> dataclasses.Field[Any]:
        try:
            return self.fields[name]
        except KeyError:
            raise ValueError(f"{self.settings.__name__} has no field {name!r}") from None


def in_flags(message: str, *options: SettingOptions) -> str:
    """`message` of a settings error with the field names it gives replaced by the option and
    variable a user sets: `--retry-backoff-max (CONVEYOR_RETRY_BACKOFF_MAX) must be ...`. Names with
    an underscore are replaced anywhere; one-word names only where the message starts with them
    ("concurrency must be 1-16"), as such words also occur as plain words."""
    names: dict[str, str] = {}
    for settings in options:
        for name in settings.fields:
            if name not in settings.nested and name not in settings.programmatic:
                flag = settings.flag(name).split("/")[0]
                names[name] = f"{flag} ({settings.envvar(name)})"
    if not names:
        return message
    ordered = sorted(names, key=len, reverse=True)
    anywhere = "|".join(re.escape(n) for n in ordered if "_" in n)
    # Quoted parts are values the user typed (`got ['batch_size']`): they stay as typed.
    parts = re.split(r"""('[^']*'|"[^"]*")""", message)
    for i in range(0, len(parts), 2):
        if anywhere:
            parts[i] = re.sub(rf"(?<![\w-])({anywhere})(?![\w-])", lambda m: names[m[1]], parts[i])
    first = re.match(r"([a-z]+)\b", parts[0])
    if first and first[1] in names:
        parts[0] = names[first[1]] + parts[0][first.end() :]
    return "".join(parts)
