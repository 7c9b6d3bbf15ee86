"""Filling an outbox, running an in-process relay and reading streams back, for relay tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, Relay, RelaySettings, enqueue_many


async def fill(
    conn: asyncpg.Connection, schema: str, n: int, topic: str = "identity", chunk: int = 2000
) -> list[uuid.UUID]:
    """Commit `n` UserRegistered events into `schema`'s outbox; return their ids."""
    ids: list[uuid.UUID] = []
    for start in range(0, n, chunk):
        batch = [
            NewEvent(events_pb2.UserRegistered(user_id=f"u{i}"), "user", f"u{i}", topic=topic)
            for i in range(start, min(n, start + chunk))
        ]
        async with conn.transaction():
            ids += await enqueue_many(conn, batch, schema=schema)
    return ids


async def stream_ids(r: Any, prefix: str, topic: str = "identity") -> list[uuid.UUID]:
    """Event ids in the topic stream, in stream order (duplicates kept)."""
    entries = await r.xrange(wire.Keys(topic, prefix).events)
    return [uuid.UUID(fields[wire.F_EVENT_ID].decode()) for _id, fields in entries]


async def unpublished(conn: asyncpg.Connection, schema: str) -> int:
    return int(
        await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL")
    )


@asynccontextmanager
async def running_relay(**kwargs: Any) -> AsyncIterator[Relay]:
    """A Relay running in this event loop until the block ends."""
    relay = Relay(RelaySettings(**kwargs))
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await relay.close()


async def drained(conn: asyncpg.Connection, schema: str) -> bool:
    """True when every outbox row of `schema` is published."""
    return await unpublished(conn, schema) == 0
