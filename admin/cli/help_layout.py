"""How `conveyor ... --help` lays out its option panels so names are never cut at 80 columns.

typer puts each option's names, negative names, type and help side by side; with long flags
(`--allow-unauthenticated / --no-allow-unauthenticated`) that leaves the help a few characters at
80 columns, and rich then ellipsizes option names, variable names and defaults. When the help
column would be too narrow, a panel here puts each option's names and type on one line and its
help, variable, default and range under it, indented; on a wide terminal typer's own layout stays.
typer offers no public hook for this, so `install` replaces its panel function; a test renders
every command's help at 80 columns and fails if any name or variable is cut.

`install` also makes the help read as the reference (docs/configuration.md) does: a flag that takes
no value (`--json`, `--help`, `--reflection / --no-reflection`) shows no `<bool>` placeholder, an
argument is written `EVENT_ID` (`[SERVICE]` when optional) in the usage line, and a docstring's
paragraphs wrap to the terminal instead of keeping the line breaks of its source.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.text import Text
from typer import core, rich_utils

HELP_MIN_WIDTH = 40
"""Narrowest help column typer's side-by-side layout is kept for."""

_INDENT = 4
_PANEL_FRAME = 4  # the panel's two borders and their padding


def install() -> None:
    """Use the stacked layout for every option and argument panel typer prints, flags without a
    value placeholder, upper-case argument names and paragraphs wrapped (idempotent)."""
    original = rich_utils._print_options_panel
    if getattr(original, "_conveyor_layout", False):
        return

    def print_panel(**kwargs: Any) -> None:
        _print_panel(original, **kwargs)

    print_panel._conveyor_layout = True  # type: ignore[attr-defined]
    rich_utils._print_options_panel = print_panel
    option_type = core.TyperOption.display_type_rich

    def flag_type(self: core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else option_type(self, ctx)

    core.TyperOption.display_type_rich = flag_type  # type: ignore[method-assign]
    core.TyperArgument.display_name_raw = property(_argument_name)  # type: ignore[assignment]
    core.TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]
    rich_utils._fix_linebreaks = lambda paragraphs, markup_mode: "\n\n".join(
        _unwrap(paragraph) for paragraph in paragraphs
    )
    command_help = rich_utils._make_command_help
    rich_utils._make_command_help = lambda *, help_text, markup_mode: command_help(
        help_text=_unwrap(inspect.cleandoc(help_text).split("\n\n")[0]), markup_mode=markup_mode
    )


def _unwrap(paragraph: str) -> str:
    """One paragraph of a docstring as one line, so rich wraps it to the terminal; a line that
    starts a list item (`- `, `* `) or is indented keeps its break, and a paragraph that starts
    with `\\b` (click's "do not rewrap") is kept as written."""
    if paragraph.startswith("\b"):
        return paragraph
    lines = paragraph.split("\n")
    out = lines[:1]
    for line in lines[1:]:
        if line.startswith((" ", "- ", "* ")):
            out.append("\n" + line)
        else:
            out.append(" " + line)
    return "".join(out)


def _argument_name(self: core.TyperArgument) -> str:
    """`EVENT_ID`, as the usage line, the panel, error messages and docs/configuration.md
    write it."""
    return self.metavar if self.metavar is not None else (self.name or "").upper()


def _usage_name(self: core.TyperArgument) -> str:
    """`EVENT_ID` when required, `[SERVICE]` when optional."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name if self.nargs == 1 else f"{name}..."


def _print_panel(
    original: Callable[..., None],
    *,
    name: str,
    params: Sequence[Any],
    ctx: Any,
    markup_mode: Any,
    console: Any,
) -> None:
    if not params:
        return
    rows = [_names(param, ctx) for param in params]
    if console.width - _side_by_side_width(rows) >= _help_width_needed(params, ctx):
        original(name=name, params=params, ctx=ctx, markup_mode=markup_mode, console=console)
        return
    blocks: list[RenderableType] = []
    for param, (names, type_text) in zip(params, rows, strict=True):
        head = Text(overflow="fold")
        head.append("* " if param.required else "  ", style=rich_utils.STYLE_REQUIRED_SHORT)
        head.append(" / ".join(part for part in names if part), style=rich_utils.STYLE_OPTION)
        if type_text:
            head.append(f"  {type_text}", style=rich_utils.STYLE_TYPES)
        help_columns = rich_utils._get_parameter_help(param=param, ctx=ctx, markup_mode=markup_mode)
        for item in help_columns.renderables:
            if isinstance(item, Text):
                item.overflow = "fold"  # never an ellipsis: a long word wraps instead
        blocks += [head, Padding(help_columns, (0, 0, 0, _INDENT + 2))]
    console.print(
        Panel(
            Group(*blocks),
            border_style=rich_utils.STYLE_OPTIONS_PANEL_BORDER,
            title=name,
            title_align=rich_utils.ALIGN_OPTIONS_PANEL,
        )
    )


def _names(param: Any, ctx: Any) -> tuple[tuple[str, str, str, str], str]:
    """(long names, short names, negative long, negative short) and the type, as typer shows
    them."""
    shown = getattr(param, "display_name_raw", None) if not param.opts[0].startswith("-") else None
    long = ",".join(o for o in param.opts if o.startswith("--"))
    short = ",".join(shown or o for o in param.opts if not o.startswith("--"))
    negative = ",".join(o for o in param.secondary_opts if o.startswith("--"))
    negative_short = ",".join(o for o in param.secondary_opts if not o.startswith("--"))
    type_text = param.display_type_rich(ctx=ctx) or ""
    range_text = param._get_number_range_help_str()
    if range_text:
        type_text += rich_utils.RANGE_STRING.format(range_text)
    return (long, short, negative, negative_short), type_text


def _side_by_side_width(rows: Sequence[tuple[tuple[str, ...], str]]) -> int:
    """Width typer's layout gives everything but the help column: the widest entry of each
    column, the two-space gaps between columns and the panel's frame."""
    columns = [[*names, type_text] for names, type_text in rows]
    widths = [max(len(row[i]) for row in columns) for i in range(len(columns[0]))]
    return sum(widths) + 2 * len(widths) + 2 + _PANEL_FRAME  # +2: the required-mark column


def _help_width_needed(params: Sequence[Any], ctx: Any) -> int:
    """The help column must hold the longest variable or default line unbroken."""
    needed = HELP_MIN_WIDTH
    for param in params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            needed = max(needed, len(rich_utils.ENVVAR_STRING.format(envvar)))
        default = param.default
        if isinstance(default, str | int | float) and not isinstance(default, bool):
            needed = max(needed, len(rich_utils.DEFAULT_STRING.format(default)))
    return needed
