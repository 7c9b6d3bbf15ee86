"""Ordered topics when writing a dead letter goes partly wrong: the aggregate stays parked."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from admin.catalog import ConsumerCatalog, dead_letters
from admin.catalog.leases import ConsumerLeases
from consumers import Consumer, ConsumerSettings, EventContext, Reject
from consumers.catalog import DeadLetterRow
from consumers.ordered import OrderedWorker
from conveyor import redis_client, wire
from conveyor.replies import text
from tests.integration.ordered_support import (
    TOPIC,
    applied,
    create_applied,
    make_ordered,
    member,
    ordered_router,
    per_aggregate,
    publish,
    wait_for,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.usefixtures("catalog_cleanup")
GROUP = "orders-app"


class _CatalogBlip(ConsumerCatalog):
    """The catalog, whose first dead-letter write fails (PostgreSQL restarting)."""

    failed = 0

    async def record_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        if _CatalogBlip.failed == 0:
            _CatalogBlip.failed += 1
            raise ConnectionResetError("connection lost")
        await super().record_dead_letters(rows)


async def _count(pg: asyncpg.Connection, schema: str) -> int:
    return int(await pg.fetchval(f"SELECT count(*) FROM {schema}.applied"))


async def test_a_dead_letter_the_catalog_missed_still_parks_its_aggregate(case: Any) -> None:
    """a0's second event is rejected; its dead letter reaches the dead-letter stream but its
    catalog row is not written (the reconciler adds it later). a0's later events stay parked
    behind it: the parked aggregates read from the catalog every second must not forget it."""
    await make_ordered(case.pg, case.prefix, 2)
    await create_applied(case.pg, case.schema)
    _CatalogBlip.failed = 0

    def fail(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 2:
            raise Reject("refused for good")

    settings = ConsumerSettings(
        consumer="m-a",
        topics=(TOPIC,),
        group=GROUP,
        database_url=case.database_url,
        redis_url=case.redis_url,
        ledger_schema=case.schema,
        key_prefix=case.prefix,
        lease_ttl=3.0,
    )
    consumer = Consumer(
        ordered_router(case.schema, "m-a", fail),
        settings,
        catalog=_CatalogBlip,
        leases=ConsumerLeases,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        await publish(case.redis, case.prefix, 2, [("a0", 1), ("a0", 2), ("a1", 1)])

        async def three() -> bool:
            return _CatalogBlip.failed == 1 and await _count(case.pg, case.schema) == 2

        await wait_for(three, "a0's first event and a1's applied, the dead letter written")
        await publish(case.redis, case.prefix, 2, [("a0", 3), ("a0", 4)])
        # Later events of another aggregate, over several reads of the parked aggregates.
        for seq in range(2, 6):
            await publish(case.redis, case.prefix, 2, [("a1", seq)])
            await asyncio.sleep(1.0)
        await wait_for(
            lambda: _at_least(case.pg, case.schema, "a1", 5), "a1's later events applied"
        )
        assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1]
    finally:
        consumer.stop()
        try:
            await asyncio.wait_for(task, 60)
        finally:
            await consumer.close()


async def _at_least(pg: asyncpg.Connection, schema: str, agg: str, n: int) -> bool:
    got = await pg.fetchval(f"SELECT count(*) FROM {schema}.applied WHERE aggregate_id = $1", agg)
    return bool(got >= n)


async def test_an_undecodable_event_parks_its_aggregate_at_once(case: Any) -> None:
    """a0's second entry cannot be decoded (a producer's bug): it is dead-lettered as it is
    read, and a0's third event, read in the same batch, waits behind it (policy park) until the
    dead letter is resolved."""
    await make_ordered(case.pg, case.prefix, 1)
    await create_applied(case.pg, case.schema)
    await publish(case.redis, case.prefix, 1, [("a0", 1)])
    key = wire.Keys(TOPIC, case.prefix, 0).events
    await case.redis.xadd(
        key,
        {
            wire.F_VERSION: wire.LAYOUT_VERSION,
            wire.F_EVENT_ID: "0190a000-0000-7000-8000-000000000001",
            wire.F_EVENT_TYPE: "conveyor.identity.v1.UserRegistered",
            wire.F_AGGREGATE_ID: "a0",
            wire.F_EVENT: b"\xff\xff not a protobuf",
        },
    )
    await publish(case.redis, case.prefix, 1, [("a0", 3), ("a1", 1)])
    async with member(ordered_router(case.schema, "m-a"), "m-a", **_settings(case)):
        await wait_for(lambda: _at_least(case.pg, case.schema, "a1", 1), "a1's event applied")
        await publish(case.redis, case.prefix, 1, [("a1", 2)])
        await wait_for(lambda: _at_least(case.pg, case.schema, "a1", 2), "a1's next event")
        assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1]
        open_ids = await case.pg.fetch(
            "SELECT id FROM conveyor.dead_letters WHERE key_prefix = $1 AND state = 'open'",
            case.prefix,
        )
        assert len(open_ids) == 1
        await dead_letters.resolve(
            case.pg, [r[0] for r in open_ids], reason="dropped", principal="me"
        )
        await wait_for(lambda: _at_least(case.pg, case.schema, "a0", 2), "a0's held event")
    assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1, 3]


def _settings(case: Any) -> dict[str, Any]:
    return {
        "group": GROUP,
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
    }


async def test_a_dead_letter_redis_refuses_keeps_its_aggregate_parked(case: Any) -> None:
    """Redis, out of memory, refuses a0's dead letter: the entry stays pending and a0's later
    events wait behind it; once memory is freed the dead letter is written, and they wait for
    it to be resolved."""
    await make_ordered(case.pg, case.prefix, 1)
    await create_applied(case.pg, case.schema)
    entered, go = asyncio.Event(), asyncio.Event()

    async def refuse(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 2:
            entered.set()
            await go.wait()
            raise Reject("refused for good")

    with RedisServer(config=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")) as server:
        tight = redis_client.connect(server.url)
        try:
            settings = {**_settings(case), "redis_url": server.url}
            async with member(ordered_router(case.schema, "m-a", refuse), "m-a", **settings):
                await publish(tight, case.prefix, 1, [("a0", 1), ("a0", 2), ("a0", 3)])
                await asyncio.wait_for(entered.wait(), 60)
                await tight.config_set("maxmemory", "0")
                await tight.set("filler", b"x" * 3_000_000)
                await tight.config_set("maxmemory", "2mb")
                go.set()
                await asyncio.sleep(3.0)  # several reads of the parked aggregates
                assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1]
                dlq = wire.Keys(TOPIC, case.prefix, 0).dlq
                assert await tight.xlen(dlq) == 0
                await tight.delete("filler")

                async def written() -> bool:
                    return bool(await tight.xlen(dlq) == 1)

                await wait_for(written, "the dead letter written once memory is freed")
                await asyncio.sleep(2.0)
                assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1]
                open_ids = await case.pg.fetch(
                    "SELECT id FROM conveyor.dead_letters WHERE key_prefix = $1 AND state = 'open'",
                    case.prefix,
                )
                await dead_letters.resolve(
                    case.pg, [r[0] for r in open_ids], reason="dropped", principal="me"
                )
                await wait_for(lambda: _at_least(case.pg, case.schema, "a0", 2), "a0's seq 3")
        finally:
            await tight.aclose()
    assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1, 3]


def _reject_a0_first(agg: str, seq: int, ctx: EventContext) -> None:
    if agg == "a0" and seq == 1:
        raise Reject("refused for good")


async def _resolve_open(pg: asyncpg.Connection, prefix: str) -> None:
    rows = await pg.fetch(
        "SELECT id FROM conveyor.dead_letters WHERE key_prefix = $1 AND state = 'open'", prefix
    )
    assert rows, "a0's dead letter is open"
    await dead_letters.resolve(pg, [r[0] for r in rows], reason="dropped", principal="me")


def _held(consumer: Any) -> int:
    return sum(w.gate.waiting() for w in consumer.all_workers() if isinstance(w, OrderedWorker))


async def _pending(r: Any, key: str) -> dict[str, int]:
    """Entries pending in the group per member."""
    summary = await r.xpending(key, GROUP)
    return {text(c["name"]): int(c["pending"]) for c in summary.get("consumers") or ()}


async def test_a_parked_aggregate_holds_a_bounded_number_of_events_in_memory(case: Any) -> None:
    """a0's first event is dead-lettered; its 999 later events wait (policy park), but past a
    cap they wait in Redis only, pending on the owner, not in its memory; a1 flows meanwhile.
    Once the dead letter is resolved they are all applied, in stream order, none skipped."""
    await make_ordered(case.pg, case.prefix, 1)
    await create_applied(case.pg, case.schema)
    batch = 50
    settings = {**_settings(case), "batch_size": batch}
    events = [("a0", s) for s in range(1, 1001)] + [("a1", s) for s in range(1, 101)]
    events.sort(key=lambda e: e[1] * 10 if e[0] == "a1" else e[1])  # a1 interleaved
    async with member(ordered_router(case.schema, "m-a", _reject_a0_first), "m-a", **settings) as a:
        await publish(case.redis, case.prefix, 1, events)
        key = wire.Keys(TOPIC, case.prefix, 0).events

        async def all_read() -> bool:
            groups = await case.redis.xinfo_groups(key)
            return bool(groups and groups[0]["lag"] == 0 and groups[0]["pending"] == 999)

        await wait_for(all_read, "every event read, a0's later ones held pending")
        assert _held(a) <= 4 * batch, f"{_held(a)} events held in memory"
        got = per_aggregate(await applied(case.pg, case.schema))
        assert got["a1"] == list(range(1, 101)) and "a0" not in got
        await _resolve_open(case.pg, case.prefix)
        await wait_for(lambda: _at_least(case.pg, case.schema, "a0", 999), "a0's later events")
        assert await _pending(case.redis, key) in ({}, {"m-a": 0})
    got = per_aggregate(await applied(case.pg, case.schema))
    assert got["a0"] == list(range(2, 1001))


async def test_a_takeover_of_a_parked_aggregate_claims_its_events_a_page_at_a_time(
    case: Any,
) -> None:
    """m-a leaves with a0 parked and 999 of its events pending; m-b takes the partition over:
    it claims them but holds a bounded number in memory, and once the dead letter is resolved
    applies them all, in stream order, none skipped and none dead-lettered for its claims."""
    await make_ordered(case.pg, case.prefix, 1)
    await create_applied(case.pg, case.schema)
    batch = 50
    settings = {**_settings(case), "batch_size": batch, "max_attempts": 2}
    key = wire.Keys(TOPIC, case.prefix, 0).events
    async with member(ordered_router(case.schema, "m-a", _reject_a0_first), "m-a", **settings):
        await publish(case.redis, case.prefix, 1, [("a0", s) for s in range(1, 1001)])

        async def all_read() -> bool:
            return (await _pending(case.redis, key)).get("m-a") == 999

        await wait_for(all_read, "every event of a0 read and held pending on m-a")
    async with member(ordered_router(case.schema, "m-b"), "m-b", **settings) as b:

        async def taken() -> bool:
            return (await _pending(case.redis, key)).get("m-b") == 999

        await wait_for(taken, "a0's events taken over by m-b")
        assert _held(b) <= 4 * batch, f"{_held(b)} events held in memory"
        await _resolve_open(case.pg, case.prefix)
        await wait_for(lambda: _at_least(case.pg, case.schema, "a0", 999), "a0's later events")
    got = per_aggregate(await applied(case.pg, case.schema))
    assert got["a0"] == list(range(2, 1001))
    assert await case.redis.xlen(wire.Keys(TOPIC, case.prefix, 0).dlq) == 1


async def test_a_retrying_aggregate_past_the_cap_applies_its_events_in_order(case: Any) -> None:
    """a0's first event fails until the test lets it pass, waiting for its retries meanwhile:
    its 599 later events are read, a bounded number of them held in memory; once the first
    succeeds they all apply after it, in stream order."""
    await make_ordered(case.pg, case.prefix, 1)
    await create_applied(case.pg, case.schema)
    failing = [True]

    def fail(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 1 and failing[0]:
            raise RuntimeError("not yet")

    batch = 20
    settings = {**_settings(case), "batch_size": batch, "max_attempts": 1000}
    key = wire.Keys(TOPIC, case.prefix, 0).events
    async with member(ordered_router(case.schema, "m-a", fail), "m-a", **settings) as a:
        await publish(case.redis, case.prefix, 1, [("a0", s) for s in range(1, 601)])

        async def all_read() -> bool:
            groups = await case.redis.xinfo_groups(key)
            return bool(groups and groups[0]["lag"] == 0 and groups[0]["pending"] == 600)

        await wait_for(all_read, "every event of a0 read, pending behind its first")
        assert _held(a) <= 4 * batch, f"{_held(a)} events held in memory"
        failing[0] = False
        await wait_for(lambda: _at_least(case.pg, case.schema, "a0", 600), "a0's events")
    assert per_aggregate(await applied(case.pg, case.schema))["a0"] == list(range(1, 601))
