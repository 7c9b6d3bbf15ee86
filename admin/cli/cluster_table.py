"""`conveyor status`'s table of a Redis Cluster's masters: one row per master with its state,
memory, replicas and the topics whose streams it serves."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table
from rich.text import Text

from admin.cli.tables import add_column, add_row, list_table

_MIB = 1024 * 1024


def nodes_table(nodes: Iterable[Any]) -> Table:
    """The masters of `RedisStatus.nodes` (conveyor.v1.RedisNodeStatus)."""
    table = list_table("redis cluster masters")
    for name in ("node", "up", "cluster", "used memory", "replicas", "topics", "error"):
        add_column(table, name, right=name in ("used memory", "replicas"))
    for n in nodes:
        add_row(
            table,
            n.address,
            Text("yes", style="green") if n.up else Text("no", style="red"),
            n.cluster_state or "-",
            f"{n.used_memory_bytes / _MIB:.1f} MiB" if n.up else "-",
            str(n.connected_replicas) if n.up else "-",
            ", ".join(n.topics) or "-",
            Text(n.error, style="red") if n.error else "",
        )
    return table
