"""Ordered partitioned topics in tests: a layout row, events XADDed to their partitions, a
handler recording the order it applied each aggregate's events in, consumers with leases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from admin.catalog import ConsumerCatalog
from admin.catalog.leases import ConsumerLeases
from consumers import Consumer, ConsumerSettings, EventContext, Router
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import envelope

TOPIC = "orders"


async def make_ordered(
    pg: asyncpg.Connection, prefix: str, partitions: int, policy: str = "park"
) -> None:
    """The catalog layout of TOPIC: `partitions` partitions, ordered, dead letters `policy`."""
    await pg.execute(
        "INSERT INTO conveyor.topic_layouts (key_prefix, topic, partitions, ordered, "
        "on_dead_letter) VALUES ($1, $2, $3, true, $4)",
        prefix,
        TOPIC,
        partitions,
        policy,
    )


async def publish(r: Any, prefix: str, partitions: int, events: list[tuple[str, int]]) -> list[str]:
    """XADD (aggregate, seq) events to their partitions' streams in the relay's layout (the
    seq travels in the email); their event ids in order."""
    ids = []
    for agg, seq in events:
        event_id = envelope.uuid7()
        event = envelope.build(
            events_pb2.UserRegistered(user_id=agg, email=f"{seq}@example.com"),
            event_id=event_id,
            source="test",
            aggregate_type="user",
            aggregate_id=agg,
            occurred_at=None,
            headers={},
        )
        key = wire.Keys(TOPIC, prefix, wire.partition_of(agg, partitions)).events
        await r.xadd(
            key,
            {
                wire.F_VERSION: wire.LAYOUT_VERSION,
                wire.F_EVENT_ID: str(event_id),
                wire.F_EVENT_TYPE: event.type,
                wire.F_AGGREGATE_ID: agg,
                wire.F_EVENT: event.SerializeToString(),
            },
        )
        ids.append(str(event_id))
    return ids


async def create_applied(pg: asyncpg.Connection, schema: str) -> None:
    """One row per effect, numbered in commit order by a sequence."""
    await pg.execute(
        f"CREATE TABLE {schema}.applied (n bigserial, event_id uuid NOT NULL, "
        "aggregate_id text NOT NULL, seq int NOT NULL, member text NOT NULL)"
    )


Fail = Callable[[str, int, EventContext], Awaitable[None] | None]


def ordered_router(schema: str, name: str = "m-a", fail: Fail | None = None) -> Router:
    """A handler recording (aggregate, seq, member `name`) per event; `fail` may raise first."""
    router = Router()

    @router.handler(events_pb2.UserRegistered, topic=TOPIC)
    async def on_event(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        seq = int(event.email.split("@")[0])
        if fail is not None:
            waited = fail(event.user_id, seq, ctx)
            if waited is not None:
                await waited
        await ctx.db.execute(
            f"INSERT INTO {schema}.applied (event_id, aggregate_id, seq, member) "
            "VALUES ($1, $2, $3, $4)",
            uuid.UUID(ctx.event_id),
            event.user_id,
            seq,
            name,
        )

    return router


async def applied(pg: asyncpg.Connection, schema: str) -> list[tuple[str, int, str]]:
    """(aggregate, seq, member) in commit order."""
    rows = await pg.fetch(f"SELECT aggregate_id, seq, member FROM {schema}.applied ORDER BY n")
    return [(r[0], r[1], r[2]) for r in rows]


def per_aggregate(rows: list[tuple[str, int, str]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for agg, seq, _ in rows:
        out.setdefault(agg, []).append(seq)
    return out


async def leases(pg: asyncpg.Connection, prefix: str, group: str) -> dict[int, str | None]:
    rows = await pg.fetch(
        "SELECT partition, owner FROM conveyor.partition_leases WHERE key_prefix = $1 "
        "AND consumer_group = $2 AND topic = $3 AND (expires_at > now() OR owner IS NULL)",
        prefix,
        group,
        TOPIC,
    )
    return {r[0]: r[1] for r in rows}


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, limit: float = 90) -> None:
    """Poll `check` until true; fail naming `what` after `limit` seconds (a bound, not a
    timing: the shared machine may be slow)."""
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def member(router: Router, name: str, **settings: Any) -> AsyncIterator[Consumer]:
    """A consumer of TOPIC with leases, running in this loop until the block ends."""
    settings.setdefault("topics", (TOPIC,))
    settings.setdefault("lease_ttl", 3.0)
    settings.setdefault("retry_backoff", 0.2)
    settings.setdefault("retry_backoff_max", 0.5)
    consumer = Consumer(
        router,
        ConsumerSettings(consumer=name, **settings),
        catalog=ConsumerCatalog,
        leases=ConsumerLeases,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        try:
            await asyncio.wait_for(task, 60)
        finally:
            await consumer.close()
