"""A consumer whose Redis goes away with two batches in flight waits for both before it
reconnects: neither goes on applying beside the next round, neither fails unobserved (asyncio's
"Task exception was never retrieved"), and both are applied once when Redis is back."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import pytest

from consumers import EventContext
from consumers.deliveries import Entry
from conveyor import redis_client, wire
from conveyor.identity.v1 import events_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    insert_effect,
    publish,
    router_of,
    running_consumer,
)
from tests.processes import wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    """A throwaway Redis with appendfsync always: a restart keeps the group and its pending."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.mark.timeout(120)
async def test_redis_lost_with_two_batches_in_flight_waits_for_both(
    case: Case,
    aof_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await create_effects(case.pg, case.schema)
    gate, held, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    started: list[str] = []
    seen: list[Entry] = []

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        started.append(ctx.event_id)
        await gate.wait()  # the batches stay in flight until Redis is gone
        await insert_effect(ctx, case.schema)

    async def in_flight() -> bool:
        return bool(started) and held.is_set()

    # One event per batch: batches 1 and 2 in flight together (the second may wait for the
    # first's lane).
    settings = consumer_settings(case, redis_url=aof_redis.url, batch_size=1, claim_idle=0.5)
    events = wire.Keys("identity", case.prefix).events
    async with running_consumer(router_of(handler), **settings) as consumer:
        reader = consumer.workers["identity"]._reader
        read_new = reader.read_new

        async def slow_after_second(count: int, *, wait: bool) -> list[Entry]:
            """The read after the one that brought the second entry is slow: it is still on
            its way when Redis goes, with both batches in flight."""
            if len(seen) >= 2 and not release.is_set():
                held.set()
                await release.wait()
            entries = await read_new(count, wait=wait)
            seen.extend(entries)
            return entries

        monkeypatch.setattr(reader, "read_new", slow_after_second)
        try:
            r = redis_client.connect(aof_redis.url)
            ids = await publish(r, case.prefix, 2)
            await r.aclose()
            await wait_until(in_flight, what="the batches in flight, the next read held")
            await asyncio.to_thread(aof_redis.kill)
            release.set()  # the held read fails: the round ends with both batches in flight
            await asyncio.sleep(0.5)
            gate.set()  # both commit their effects; their acknowledgements fail
            await asyncio.sleep(1)
            await asyncio.to_thread(aof_redis.start)
            r = redis_client.connect(aof_redis.url)

            async def settled() -> bool:
                groups = await r.xinfo_groups(events)
                return bool(groups) and all(int(g["pending"]) == 0 for g in groups)

            await wait_until(settled, timeout=30, what="both entries acknowledged")
            await r.aclose()
        finally:
            gate.set()
            release.set()
    gc.collect()
    unobserved = [
        rec.getMessage()
        for rec in caplog.records
        if rec.levelno >= logging.ERROR and "never retrieved" in rec.getMessage()
    ]
    assert not unobserved, unobserved
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts == dict.fromkeys(ids, 1), counts
