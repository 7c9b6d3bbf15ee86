"""Producers for `conveyor bench`: write the outbox through `enqueue_many`, flat out or paced,
and publish straight to a stream (the relay's entry layout) for consumer-only scenarios."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Sequence

import asyncpg

from admin.bench.harness import Scratch
from conveyor import redis_client
from conveyor.identity.v1 import events_pb2
from conveyor.layouts import Layouts
from relay import NewEvent, enqueue_many, envelope
from relay.publisher import StreamPublisher

OnCommit = Callable[[Sequence[uuid.UUID], int], None]
"""Called after each producer COMMIT returns: the ids it wrote, time.monotonic_ns() then."""


def sampled_traceparent() -> str:
    """A W3C traceparent of a fresh, sampled trace: an event whose producer's trace is sampled."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def events(scratch: Scratch, start: int, n: int, *, traced: bool = False) -> list[NewEvent]:
    """`n` identity events (about 60 bytes each) numbered from `start`; with `traced`, each
    carries the traceparent of a sampled producer trace."""
    return [
        NewEvent(
            events_pb2.UserRegistered(user_id=f"user-{i}", email=f"u{i}@example.com"),
            "user",
            f"user-{i}",
            topic=scratch.topic,
            headers={"traceparent": sampled_traceparent()} if traced else None,
        )
        for i in range(start, start + n)
    ]


async def fill_outbox(
    database_url: str, scratch: Scratch, n: int, per_txn: int = 5000, *, traced: bool = False
) -> None:
    """Write `n` events to the scratch's outbox, `per_txn` per transaction, then VACUUM
    ANALYZE it so the relay's claims plan as they would on a settled table."""
    conn = await asyncpg.connect(database_url)
    try:
        for start in range(0, n, per_txn):
            async with conn.transaction():
                await enqueue_many(
                    conn,
                    events(scratch, start, min(per_txn, n - start), traced=traced),
                    schema=scratch.schema,
                )
        await conn.execute(f"VACUUM ANALYZE {scratch.schema}.outbox")
    finally:
        await conn.close()


async def fill_stream(
    redis_url: str,
    scratch: Scratch,
    n: int,
    per_call: int = 1000,
    *,
    traced: bool = False,
    layouts: Layouts | None = None,
) -> None:
    """Publish `n` events straight to the scratch's stream (its partitions' streams when
    `layouts` partitions its topic), as the relay would."""
    r = redis_client.connect(redis_url)
    publisher = StreamPublisher(r, scratch.prefix, layouts=layouts)
    try:
        for start in range(0, n, per_call):
            rows = []
            for i in range(start, min(n, start + per_call)):
                event_id = envelope.uuid7()
                event = envelope.build(
                    events_pb2.UserRegistered(user_id=f"user-{i}", email=f"u{i}@example.com"),
                    event_id=event_id,
                    source="urn:conveyor:bench",
                    aggregate_type="user",
                    aggregate_id=f"user-{i}",
                    occurred_at=None,
                    headers={"traceparent": sampled_traceparent()} if traced else {},
                )
                rows.append(
                    (
                        i,
                        event_id,
                        scratch.topic,
                        event.type,
                        event.aggregate_id,
                        None,
                        event.SerializeToString(),
                    )
                )
            await publisher.publish(rows)
    finally:
        await r.aclose()


async def produce(
    database_url: str,
    scratch: Scratch,
    *,
    rate: float | None,
    per_txn: int = 1,
    connections: int = 1,
    seconds: float | None = None,
    total: int | None = None,
    stop: asyncio.Event | None = None,
    on_commit: OnCommit | None = None,
    backend_pids: set[int] | None = None,
    wait_for_flush: bool = True,
) -> int:
    """Commit events to the outbox, `per_txn` per transaction over `connections` connections,
    at `rate` events/s in all (None: as fast as they go), until `seconds` pass, `total` events
    are written or `stop` is set; return how many were committed. `backend_pids` receives the
    PostgreSQL backend pid of each producer connection (so CPU scenarios can leave it out).
    Without `wait_for_flush` the producers' COMMITs return before their WAL is flushed
    (synchronous_commit off, for these connections only): one process of single-event
    producers then offers thousands of events/s, as an application's many processes would,
    instead of waiting out a disk flush per event."""
    conns = [await asyncpg.connect(database_url) for _ in range(connections)]
    if not wait_for_flush:
        for conn in conns:
            await conn.execute("SET synchronous_commit = off")
    if backend_pids is not None:
        for conn in conns:
            backend_pids.add(int(await conn.fetchval("SELECT pg_backend_pid()")))
    sent = 0
    started = time.monotonic()
    deadline = started + seconds if seconds is not None else float("inf")

    def more() -> bool:
        return (
            time.monotonic() < deadline
            and (total is None or sent < total)
            and not (stop is not None and stop.is_set())
        )

    async def one(conn: asyncpg.Connection, lane: int) -> None:
        nonlocal sent
        per_lane = rate / connections if rate else None
        mine = 0
        while more():
            if per_lane is not None:
                due = started + mine / per_lane
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                    if not more():
                        return
            n = per_txn if total is None else min(per_txn, total - sent)
            if n <= 0:
                return
            start = sent
            sent += n  # claimed before the await, so lanes never overshoot `total`
            batch = events(scratch, lane * 1_000_000_000 + start, n)
            async with conn.transaction():
                ids = await enqueue_many(conn, batch, schema=scratch.schema)
            if on_commit is not None:
                on_commit(ids, time.monotonic_ns())
            mine += n

    try:
        await asyncio.gather(*(one(c, i) for i, c in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close()
    return sent
