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


@pytest.mark.xfail(
    strict=True,
    reason="every event of a parked aggregate read is held in the owner's memory until the dead "
    "letter is settled (OrderedGate.held), and a takeover claims them all into memory at once: "
    "a hot aggregate parked for hours grows without bound; fix: past a cap, stop holding a "
    "parked aggregate's events in memory (leave them pending) and re-claim the partition's "
    "pending entries in stream order, a page at a time, when it is released",
)
async def test_a_parked_aggregate_holds_a_bounded_number_of_events_in_memory(case: Any) -> None:
    await make_ordered(case.pg, case.prefix, 1)
    await create_applied(case.pg, case.schema)

    def fail(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 1:
            raise Reject("refused for good")

    batch = 50
    settings = {**_settings(case), "batch_size": batch}
    async with member(ordered_router(case.schema, "m-a", fail), "m-a", **settings) as a:
        await publish(case.redis, case.prefix, 1, [("a0", s) for s in range(1, 1001)])
        key = wire.Keys(TOPIC, case.prefix, 0).events

        async def all_read() -> bool:
            groups = await case.redis.xinfo_groups(key)
            return bool(groups and groups[0]["lag"] == 0 and groups[0]["pending"] == 999)

        await wait_for(all_read, "every event of a0 read and held pending")
        held = sum(w.gate.waiting() for w in a.all_workers() if isinstance(w, OrderedWorker))
        assert held <= 4 * batch, f"{held} events held in memory"
