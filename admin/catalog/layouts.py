"""The layouts of partitioned topics (`conveyor.topic_layouts`): read a deployment's, set one,
remove one. The only SQL for that table. `CatalogLayouts` is what relays and consumers are given
to read them (`conveyor.layouts.LayoutSource`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

import asyncpg

from admin.catalog.registry import RegisteredGroup
from conveyor import database, wire
from conveyor.layouts import Layout

_LAYOUTS: Final = f"{database.CATALOG_SCHEMA}.{database.TOPIC_LAYOUTS_TABLE}"
_SELECT: Final = (
    f"SELECT topic, partitions, ordered, on_dead_letter, version FROM {_LAYOUTS} "
    "WHERE key_prefix = $1 ORDER BY topic"
)
_UPSERT: Final = (
    f"INSERT INTO {_LAYOUTS} (key_prefix, topic, partitions, ordered, on_dead_letter) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_prefix, topic) DO UPDATE SET "
    "partitions = EXCLUDED.partitions, ordered = EXCLUDED.ordered, "
    f"on_dead_letter = EXCLUDED.on_dead_letter, version = {_LAYOUTS}.version + 1, "
    "updated_at = now() "
    "RETURNING partitions, ordered, on_dead_letter, version"
)
_DELETE: Final = f"DELETE FROM {_LAYOUTS} WHERE key_prefix = $1 AND topic = $2"


def _layout(row: asyncpg.Record) -> Layout:
    return Layout(row["partitions"], row["ordered"], row["on_dead_letter"], row["version"])


async def layouts(pool: asyncpg.Pool | asyncpg.Connection, prefix: str) -> dict[str, Layout]:
    """The partitioned topics of the deployment with key prefix `prefix`, by topic."""
    rows = await pool.fetch(_SELECT, prefix)
    return {r["topic"]: _layout(r) for r in rows}


async def changed_at(pool: asyncpg.Pool | asyncpg.Connection, prefix: str) -> dict[str, datetime]:
    """When each partitioned topic of the deployment last had its layout set, by topic."""
    rows = await pool.fetch(
        f"SELECT topic, updated_at FROM {_LAYOUTS} WHERE key_prefix = $1", prefix
    )
    return {r["topic"]: r["updated_at"] for r in rows}


async def set_layout(
    pool: asyncpg.Pool | asyncpg.Connection,
    prefix: str,
    topic: str,
    *,
    partitions: int,
    ordered: bool,
    on_dead_letter: str,
) -> Layout:
    """Create the topic's layout (version 1) or change it (version + 1); return it as stored."""
    wanted = Layout(partitions, ordered, on_dead_letter)  # ValueError before any SQL
    row = await pool.fetchrow(
        _UPSERT,
        wire.validate_prefix(prefix),
        wire.validate_topic(topic),
        wanted.partitions,
        wanted.ordered,
        wanted.on_dead_letter,
    )
    assert row is not None
    return _layout(row)


async def remove_layout(pool: asyncpg.Pool | asyncpg.Connection, prefix: str, topic: str) -> bool:
    """Make the topic unpartitioned again; False when it had no layout."""
    done = await pool.execute(_DELETE, prefix, topic)
    return bool(done.endswith(" 1"))


def per_stream(
    groups: Sequence[RegisteredGroup], layouts: Mapping[str, Layout]
) -> list[RegisteredGroup]:
    """`groups` with each group of a partitioned topic repeated for every partition, as
    `topic:N`, in partition order; those of other topics as they are."""
    out: list[RegisteredGroup] = []
    for g in groups:
        layout = layouts.get(g.topic)
        if layout is None:
            out.append(g)
            continue
        out.extend(
            RegisteredGroup(name, g.group, g.mode, g.members)
            for name in stream_names(g.topic, layouts)
        )
    return out


def stream_name(topic: str, partition: int | None) -> str:
    """How status, verify and consumer workers name one stream of a topic: the topic, or
    `topic:N` for partition N (as in the partition's hash tag)."""
    return topic if partition is None else f"{topic}{wire.PARTITION_SEPARATOR}{partition}"


def stream_names(topic: str, layouts_now: Mapping[str, Layout]) -> list[str]:
    """The names of every stream of `topic` (one, or one per partition)."""
    layout = layouts_now.get(topic)
    if layout is None:
        return [topic]
    return [stream_name(topic, p) for p in range(layout.partitions)]


def named_keys(name: str, prefix: str) -> wire.Keys:
    """The keys of the stream `name` (`orders`, or `orders:3`) names."""
    topic, _, partition = name.partition(wire.PARTITION_SEPARATOR)
    return wire.Keys(topic, prefix, int(partition) if partition else None)


def name_of_event(topic: str, aggregate_id: str, layouts_now: Mapping[str, Layout]) -> str:
    """The name of the stream an event of `topic` and `aggregate_id` is published to."""
    layout = layouts_now.get(topic)
    if layout is None:
        return topic
    return stream_name(topic, wire.partition_of(aggregate_id, layout.partitions))


def dlq_keys(dlq_stream: str, topic: str, prefix: str) -> wire.Keys | None:
    """The keys of the stream (the topic's, or one partition's) whose dead-letter stream is
    `dlq_stream`: a reprocessed dead letter goes back to that partition's retry stream. None
    when it is no dead-letter stream of `topic` in the deployment with key prefix `prefix`."""
    tag = wire.parse_tag(dlq_stream)
    if tag is None or tag[0] != topic:
        return None
    keys = wire.Keys(topic, prefix, tag[1])
    return keys if keys.dlq == dlq_stream else None


class CatalogLayouts:
    """The layouts as a relay or consumer reads them, on its own pool: `Relay(settings,
    layouts=CatalogLayouts)`; a consumer reads them through its catalog (`ConsumerCatalog`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def layouts(self, key_prefix: str) -> dict[str, Layout]:
        """The partitioned topics of the deployment with key prefix `key_prefix`."""
        return await layouts(self._pool, key_prefix)
