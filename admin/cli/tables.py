"""How the client commands' tables fit a terminal: one borderless list style, the width a table
needs, and a vertical view (a block of `name  value` lines per row) for a table that cannot fit.

Values that name something (entry ids, times, states) are never wrapped: a column either fits
whole or the table is shown vertically. Only free text (errors, reasons) wraps, by words.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

_MEASURE_WIDTH = 100_000


def list_table(title: str | None = None) -> Table:
    """A borderless table, columns two spaces apart: at 80 columns the values get the room a
    box would take (three characters a column)."""
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
    )


def add_column(table: Table, name: str, *, right: bool = False, wrap: bool = False) -> None:
    """A column whose values stay on one line, or with `wrap` free text wrapped by words."""
    table.add_column(
        name,
        justify="right" if right else "left",
        no_wrap=not wrap,
        overflow="fold" if wrap else "ellipsis",
    )


def add_row(table: Table, *values: str | Text) -> None:
    """Add a row of plain text: what the server sent is never read as rich markup."""
    table.add_row(*(value if isinstance(value, Text) else Text(value) for value in values))


def natural_width(renderable: RenderableType) -> int:
    """Columns `renderable` takes when nothing has to wrap."""
    console = Console(width=_MEASURE_WIDTH)
    return Measurement.get(console, console.options, renderable).maximum


def least_width(table: Table) -> int:
    """Columns a `list_table` needs with every one-line value whole and free text wrapped at
    its longest word."""
    widths = []
    for column in table.columns:
        texts = [str(column.header), *(_plain(cell) for cell in column.cells)]
        pieces = (t.split("\n") if column.no_wrap else t.split() for t in texts)
        widths.append(max((len(piece) for group in pieces for piece in group), default=0))
    return sum(widths) + 2 * max(len(widths) - 1, 0)


def _plain(cell: RenderableType) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def fitted(table: Table, width: int) -> RenderableType:
    """`table` when it fits in `width` columns with every one-line value whole (free text may
    wrap), else the same rows shown vertically."""
    if least_width(table) <= width:
        return table
    return vertical(table)


def vertical(table: Table) -> RenderableType:
    """The rows of `table` as blocks of `column  value` lines, a blank line between blocks."""
    names = [str(column.header) for column in table.columns]
    cells = [list(column.cells) for column in table.columns]
    blocks: list[RenderableType] = []
    if table.title:
        blocks.append(Text(str(table.title), style="bold"))
    for row in range(table.row_count):
        block = Table.grid(padding=(0, 2))
        block.add_column(style="bold", no_wrap=True)
        block.add_column(overflow="fold")
        for name, column in zip(names, cells, strict=True):
            value = column[row]
            if not isinstance(value, Text) or value.plain:
                block.add_row(name, value)
        blocks += [block, Text("")] if row < table.row_count - 1 else [block]
    return Group(*blocks)


def lines(values: Iterable[str]) -> Text:
    """Values one per line in a cell, so each stays whole (e.g. entry ids)."""
    return Text("\n".join(values))
