"""`conveyor status`: the table of each group's members (GetStatus's GroupStatus.members)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table

from admin.cli.tables import add_column, add_row, list_table


def members_table(groups: Iterable[Any]) -> Table | None:
    """One row per member of each group on its topic's stream; None when no group has one."""
    rows = [(g, m) for g in groups for m in g.members]
    if not rows:
        return None
    table = list_table("group members")
    for name in ("topic", "group", "member", "host", "pending", "idle", "inactive", "redelivered"):
        add_column(table, name, right=name in ("pending", "idle", "inactive", "redelivered"))
    for group, member in rows:
        add_row(
            table,
            group.topic,
            group.group,
            member.name,
            member.host or "-",
            str(member.pending),
            _seconds(member.idle_seconds),
            "-" if member.inactive_seconds < 0 else _seconds(member.inactive_seconds),
            str(member.redelivered),
        )
    return table


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"
