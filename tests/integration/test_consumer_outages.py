"""Consumers ride out PostgreSQL and Redis outages and misbehaving handlers (guarantees 3-4)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from admin import migrations
from consumers import EventContext
from conveyor import database, redis_client, wire
from conveyor.v1 import event_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    Meters,
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    publish,
    running_consumer,
)
from tests.processes import wait_until
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.slow


async def count_is(pg: asyncpg.Connection, schema: str, n: int) -> bool:
    return len(await effect_counts(pg, schema, "g")) == n


async def test_postgres_restart_under_a_consumer(redis_url: str, key_prefix: str) -> None:
    schema = "outage"
    r = redis_client.connect(redis_url)
    with PostgresServer() as server:
        await asyncio.to_thread(migrations.upgrade, server.url, schema)
        pg = await asyncpg.connect(server.url)
        await create_effects(pg, schema)
        settings = {
            "database_url": server.url,
            "redis_url": redis_url,
            "group": "g",
            "ledger_schema": schema,
            "key_prefix": key_prefix,
            "block": 0.05,
            "db_backoff_max": 0.5,
        }
        try:
            async with running_consumer(effect_router(schema), **settings):
                before = await publish(r, key_prefix, 100)
                await wait_until(lambda: count_is(pg, schema, 100), what="first part applied")
                await pg.close()
                await asyncio.to_thread(server.restart, "immediate")
                after = await publish(r, key_prefix, 100)
                pg = await asyncpg.connect(server.url)
                await wait_until(
                    lambda: count_is(pg, schema, 200), timeout=60, what="applied after the restart"
                )
            counts = await effect_counts(pg, schema, "g")
        finally:
            await pg.close()
            await r.aclose()
    assert set(counts) == set(before + after)
    assert set(counts.values()) == {1}


async def test_consumer_connections_killed_by_the_server_are_replaced(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_effects(case.pg, case.schema)
    # Only this consumer's connections are cut, found by the name the consumer gives them: the
    # server is shared with other tests and users.
    monkeypatch.delenv("PGAPPNAME", raising=False)
    member = f"outage-{case.prefix}"
    name = database.application_name("consume", f"g/{member}")
    settings = consumer_settings(case, db_backoff_max=0.5, consumer=member)
    async with running_consumer(effect_router(case.schema), **settings):
        first = await publish(case.redis, case.prefix, 50)
        await wait_until(lambda: count_is(case.pg, case.schema, 50), what="first part applied")
        killed = await case.pg.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            name,
        )
        assert killed >= 1
        second = await publish(case.redis, case.prefix, 50)
        await wait_until(lambda: count_is(case.pg, case.schema, 100), what="applied again")
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts) == set(first + second) and set(counts.values()) == {1}


async def test_a_handler_swallowing_a_database_error_fails_only_its_event(case: Case) -> None:
    await create_effects(case.pg, case.schema)

    router = effect_router(case.schema)
    route = router.route("identity", "conveyor.identity.v1.UserRegistered")
    assert route is not None
    insert = route.fn

    async def handler(event: object, ctx: EventContext) -> None:
        await insert(event, ctx)
        if ctx.aggregate_id == "agg3":
            with contextlib.suppress(asyncpg.DivisionByZeroError):
                await ctx.db.execute("SELECT 1 / 0")  # aborts the transaction, silently

    object.__setattr__(route, "fn", handler)
    ids = await publish(case.redis, case.prefix, 10)
    # One lane: the swallowing event and its successors share a transaction.
    async with running_consumer(router, **consumer_settings(case, max_attempts=1, partitions=1)):

        async def dead_lettered() -> bool:
            return await case.redis.xlen(wire.Keys("identity", case.prefix).dlq) == 1

        await wait_until(dead_lettered, what="the swallowing event dead-lettered")
        await wait_until(lambda: count_is(case.pg, case.schema, 9), what="the others applied")
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts) == set(ids) - {ids[3]} and set(counts.values()) == {1}
    ((_id, dead),) = await case.redis.xrange(wire.Keys("identity", case.prefix).dlq)
    assert dead[wire.DL_ERROR_CLASS] == b"SwallowedDatabaseError"


async def test_upper_case_event_ids_from_elsewhere_are_applied_once(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    (event_id,) = await publish(case.redis, case.prefix, 1)
    key = wire.Keys("identity", case.prefix).events
    ((_entry, fields),) = await case.redis.xrange(key)
    event = event_pb2.Event.FromString(fields[wire.F_EVENT])
    event.id = event.id.upper()
    fields[wire.F_EVENT], fields[wire.F_EVENT_ID] = event.SerializeToString(), event.id.encode()
    await case.redis.delete(key)
    await case.redis.xadd(key, fields)
    await case.redis.xadd(key, fields)  # and a duplicate, which takes the filtering path
    async with running_consumer(effect_router(case.schema), **consumer_settings(case)):
        await wait_until(lambda: count_is(case.pg, case.schema, 1), what="applied")
        await asyncio.sleep(0.3)
    assert await effect_counts(case.pg, case.schema, "g") == {event_id: 1}
    assert uuid.UUID(event_id) == uuid.UUID(event.id)


@pytest.fixture
async def lossy_redis() -> AsyncIterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_redis_restarted_empty_under_an_at_least_once_consumer(
    case: Case, lossy_redis: RedisServer
) -> None:
    await create_effects(case.pg, case.schema)
    r = redis_client.connect(lossy_redis.url)
    meters = Meters()
    settings = consumer_settings(case, mode="at-least-once", redis_url=lossy_redis.url)
    try:
        async with running_consumer(
            effect_router(case.schema), meters.metrics, **settings
        ) as consumer:
            await publish(r, case.prefix, 20)
            await wait_until(lambda: count_is(case.pg, case.schema, 20), what="applied")
            await asyncio.to_thread(lossy_redis.restart)
            await r.aclose()
            r = redis_client.connect(lossy_redis.url)
            await publish(r, case.prefix, 5)
            worker = consumer.workers["identity"]

            async def stopped() -> bool:
                return worker.health.stopped

            await wait_until(stopped, timeout=30, what="the group loss to stop the worker")
        assert meters.total("consumer_groups_lost") >= 1
        assert await count_is(case.pg, case.schema, 20), "nothing re-applied"
    finally:
        await r.aclose()
