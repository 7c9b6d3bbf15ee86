"""A partitioned topic of one test: its layout in the catalog, events published to it as the
relay publishes them, and its partition streams read back."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from admin.catalog import layouts as catalog_layouts
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from conveyor.layouts import Layout
from relay import NewEvent, enqueue_many, envelope
from relay.publisher import StreamPublisher

TOPIC = "orders"
PARTITIONS = 4


async def partition(pg: asyncpg.Connection, prefix: str, n: int = PARTITIONS) -> Layout:
    """Give the test's deployment a partitioned `orders` topic (removed with its catalog rows)."""
    return await catalog_layouts.set_layout(
        pg, prefix, TOPIC, partitions=n, ordered=False, on_dead_letter="park"
    )


async def enqueue(
    conn: asyncpg.Connection, schema: str, n: int, *, aggregates: int, topic: str = TOPIC
) -> list[tuple[str, uuid.UUID]]:
    """Commit `n` events of `aggregates` aggregates (`agg0`...) round robin into the outbox;
    return (aggregate id, event id) in commit order."""
    batch = [
        NewEvent(
            events_pb2.UserRegistered(user_id=f"u{i}"), "user", f"agg{i % aggregates}", topic=topic
        )
        for i in range(n)
    ]
    async with conn.transaction():
        ids = await enqueue_many(conn, batch, schema=schema)
    return [(e.aggregate_id, i) for e, i in zip(batch, ids, strict=True)]


async def publish(
    r: Any, prefix: str, n: int, *, aggregates: int, layout: Layout | None
) -> list[tuple[str, str]]:
    """XADD `n` events straight to the partition streams, as the relay would; return
    (aggregate id, event id) in order."""
    rows, out = [], []
    for i in range(n):
        event_id = envelope.uuid7()
        agg = f"agg{i % aggregates}"
        event = envelope.build(
            events_pb2.UserRegistered(user_id=f"u{i}", email=f"u{i}@example.com"),
            event_id=event_id,
            source="test",
            aggregate_type="user",
            aggregate_id=agg,
            occurred_at=None,
            headers={},
        )
        rows.append((i, event_id, TOPIC, event.type, agg, None, event.SerializeToString()))
        out.append((agg, str(event_id)))
    layouts = {} if layout is None else {TOPIC: layout}
    await StreamPublisher(r, prefix, layouts=layouts).publish(rows)
    return out


async def entries(r: Any, key: str) -> list[tuple[str, str]]:
    """(aggregate id, event id) of each entry of stream `key`, in stream order."""
    return [
        (fields[wire.F_AGGREGATE_ID].decode(), fields[wire.F_EVENT_ID].decode())
        for _id, fields in await r.xrange(key)
    ]
