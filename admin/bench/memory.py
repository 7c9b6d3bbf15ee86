"""Peak memory: `conveyor relay` draining an outbox backlog, then `conveyor consume` draining
the stream that relay filled, with a small and a large backlog, a fresh process each time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from admin.bench.harness import Bench, Proc, Scratch
from admin.bench.model import Figure, Target
from conveyor import database, redis_client
from conveyor.identity.v1 import events_pb2
from relay import envelope

COLUMNS = ("event_id", "topic", "event_type", "aggregate_type", "aggregate_id", "traceparent")
"""The outbox columns `relay.enqueue_many` writes, but the payload (added in `rows`)."""
CHUNK = 10_000
"""Rows built and copied into the outbox at a time."""
STALL_SECONDS = 60.0
"""A drain that makes no progress for this long has failed: the scenario stops with an error."""
POLL_SECONDS = 0.1
"""How often a drain's progress is read (cheap reads: XLEN, XINFO GROUPS)."""
CONSUMER_ROUTER = "batch"
"""The consumer's form: exactly-once, admin.bench.handlers' batch handler."""


def rows(scratch: Scratch, start: int, n: int) -> list[tuple[Any, ...]]:
    """`n` outbox rows numbered from `start`, each as `relay.enqueue_many` builds one for a
    UserRegistered event outside any trace (no traceparent), so the relay sees normal rows."""
    source = f"urn:conveyor:{scratch.schema}"
    out = []
    for i in range(start, start + n):
        event_id = envelope.uuid7()
        event = envelope.build(
            events_pb2.UserRegistered(user_id=f"user-{i}", email=f"u{i}@example.com"),
            event_id=event_id,
            source=source,
            aggregate_type="user",
            aggregate_id=f"user-{i}",
            occurred_at=None,
            headers={},
        )
        row = (event_id, scratch.topic, event.type, "user", f"user-{i}", None)
        out.append((*row, event.SerializeToString()))
    return out


async def fill(bench: Bench, scratch: Scratch, n: int) -> None:
    """Write `n` rows to the scratch's outbox by COPY, `CHUNK` at a time (several times faster
    than INSERTs: a million rows take about half a minute here), then VACUUM ANALYZE it so the
    relay's claims plan as they would on a settled table."""
    bench.progress.stage(f"memory: filling the outbox with {n:,} events", n)
    conn = await asyncpg.connect(bench.database_url)
    try:
        for start in range(0, n, CHUNK):
            await conn.copy_records_to_table(
                database.OUTBOX_TABLE,
                schema_name=scratch.schema,
                columns=(*COLUMNS, "payload"),
                records=rows(scratch, start, min(CHUNK, n - start)),
            )
            bench.progress.advance(min(n, start + CHUNK))
        await conn.execute(f"VACUUM ANALYZE {scratch.schema}.{database.OUTBOX_TABLE}")
    finally:
        await conn.close()


async def drain(proc: Proc, n: int, done: Callable[[], Awaitable[int]], bench: Bench) -> float:
    """Wait until `done()` reaches `n`, showing progress; return the process's peak RSS then.
    Fails when the process exits or `done()` stands still for STALL_SECONDS."""
    last, moved = -1, time.monotonic()
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.popen.returncode} while draining")
        now_done = await done()
        bench.progress.advance(min(now_done, n))
        if now_done >= n:
            return proc.peak_rss_mib()
        if now_done != last:
            last, moved = now_done, time.monotonic()
        elif time.monotonic() - moved > STALL_SECONDS:
            raise RuntimeError(f"no progress for {STALL_SECONDS:.0f}s at {now_done:,} of {n:,}")
        await asyncio.sleep(POLL_SECONDS)


async def relay_peak(bench: Bench, scratch: Scratch, n: int, r: Any) -> float:
    """Peak RSS of a fresh `conveyor relay` publishing the `n` rows of the scratch's outbox."""
    bench.progress.stage(f"memory: relay draining {n:,} events", n)

    async def published() -> int:
        entries = int(await r.xlen(scratch.stream))
        if entries < n:
            return entries
        # All are in the stream; the last batch's commit may still be on its way.
        left = await bench.fetchval(
            f"SELECT count(*) FROM {scratch.schema}.{database.OUTBOX_TABLE} "
            "WHERE published_at IS NULL"
        )
        return n - int(left)

    proc = bench.relay(scratch)
    try:
        return await drain(proc, n, published, bench)
    finally:
        proc.stop()


async def consumer_peak(bench: Bench, scratch: Scratch, n: int, r: Any) -> float:
    """Peak RSS of a fresh `conveyor consume` (exactly-once, batch handler) applying and
    acknowledging the `n` entries of the scratch's stream."""
    bench.progress.stage(f"memory: consumer draining {n:,} events", n)

    async def acknowledged() -> int:
        groups = await r.xinfo_groups(scratch.stream)
        if not groups:
            return 0
        return int(groups[0]["entries-read"] or 0) - int(groups[0]["pending"])

    proc = bench.consume(scratch, CONSUMER_ROUTER, "--mode", "exactly-once")
    try:
        return await drain(proc, n, acknowledged, bench)
    finally:
        proc.stop()


async def peaks(bench: Bench, n: int) -> tuple[float, float]:
    """(relay, consumer) peak RSS in MiB with a backlog of `n` events: the relay drains an
    outbox of `n` rows into the stream, then the consumer drains that stream."""
    async with bench.scratch() as s:
        await fill(bench, s, n)
        r = redis_client.connect(bench.redis_url)
        try:
            relay_mib = await relay_peak(bench, s, n, r)
            consumer_mib = await consumer_peak(bench, s, n, r)
        finally:
            await r.aclose()
    return relay_mib, consumer_mib


def pair(
    process: str, small: int, large: int, peaks: tuple[float, float], how: str
) -> list[Figure]:
    """The small backlog's peak (absolute) and the large one's, as a ratio to the small one."""
    return [
        Figure("memory", f"{process} peak RSS, {small:,} backlog", peaks[0], "MiB", detail=how),
        Figure(
            "memory",
            f"{process} peak RSS, {large:,} backlog",
            peaks[1],
            "MiB",
            peaks[0],
            f"{process}, {small:,} backlog",
            Target("ratio<=", 1.2),
            how,
        ),
    ]


async def run(bench: Bench) -> list[Figure]:
    small, large, batch = bench.sizes.backlog_small, bench.sizes.backlog_large, bench.sizes.batch
    relay_small, consumer_small = await peaks(bench, small)
    relay_large, consumer_large = await peaks(bench, large)
    return [
        *pair(
            "relay",
            small,
            large,
            (relay_small, relay_large),
            f"VmHWM, fresh process draining the outbox, batch {batch}",
        ),
        *pair(
            "consumer",
            small,
            large,
            (consumer_small, consumer_large),
            f"VmHWM, fresh process, exactly-once batch handler, batch {batch}",
        ),
    ]
