"""The consumer groups table of `conveyor status`: one row per group and stream, with the lease
and parked aggregates of ordered partitions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table

from admin.cli.tables import add_column, add_row, list_table


def groups_table(groups: Iterable[Any]) -> Table:
    table = list_table("consumer groups")
    groups = list(groups)
    ordered = any(g.lease_epoch for g in groups)
    names = ["topic", "group", "mode", "members", "lag entries", "lag", "pending"]
    if ordered:  # an ordered topic: who holds each partition's lease, which aggregates wait
        names += ["lease", "parked"]
    for name in names:
        add_column(table, name, right=name in ("members", "lag entries", "lag", "pending"))
    for group in groups:
        cells = [
            group.topic,
            group.group,
            group.mode,
            str(group.consumers),
            str(group.lag_entries),
            seconds(group.lag_seconds),
            str(group.pending),
        ]
        if ordered:
            cells += [_lease(group), ", ".join(group.parked_aggregates)]
        add_row(table, *cells)
    return table


def _lease(group: Any) -> str:
    """`member (epoch N)`, `free (epoch N)`, or '' for a stream that is not ordered."""
    if not group.lease_epoch:
        return ""
    return f"{group.lease_owner or 'free'} (epoch {group.lease_epoch})"


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"
