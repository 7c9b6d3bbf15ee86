"""How many partitions each topic of a deployment has, read from the catalog's
conveyor.topic_layouts (a topic without a row is unpartitioned).

Stand-in: admin/catalog/layouts.py, the catalog module that owns topic layouts, was not on main
when `--start` and `relay backfill` were written; this is the one place they read the table
directly, and gives way to that module's reader once it lands."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from conveyor import database

_LAYOUTS = f"{database.CATALOG_SCHEMA}.topic_layouts"


async def partition_counts(
    conn: asyncpg.Pool | asyncpg.Connection, key_prefix: str, topics: Sequence[str]
) -> dict[str, int]:
    """Partitions of each of `topics` that has a layout row under `key_prefix`; topics without
    one (unpartitioned) are absent. Empty when the catalog predates topic layouts."""
    try:
        rows = await conn.fetch(
            f"SELECT topic, partitions FROM {_LAYOUTS} WHERE key_prefix = $1 AND topic = ANY($2)",
            key_prefix,
            list(topics),
        )
    except asyncpg.UndefinedTableError:
        return {}
    return {r["topic"]: int(r["partitions"]) for r in rows}
