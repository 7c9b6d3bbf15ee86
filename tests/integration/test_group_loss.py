"""A consumer group lost from Redis is noticed, counted and recreated at 0, never at $."""

from __future__ import annotations

import logging

import asyncpg
import pytest
from prometheus_client import generate_latest

from admin.catalog import Catalog
from admin.ops.probes import ConsumerProbe
from admin.ops.status import StatusChecker
from consumers import Consumer
from conveyor import wire
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
from tests.integration.metrics_support import value
from tests.integration.test_status_gauges import status_gauges
from tests.processes import wait_until


async def republish_after_loss(case: Case, n: int) -> list[str]:
    """Delete the stream and append `n` new events in one MULTI, as if Redis came back empty and
    a relay published again before the consumer could notice."""
    events = wire.Keys("identity", case.prefix).events
    staged = f"{case.prefix}x"
    ids = await publish(case.redis, staged, n)
    entries = await case.redis.xrange(wire.Keys("identity", staged).events)
    pipe = case.redis.pipeline(transaction=True)
    pipe.delete(events)
    for _id, fields in entries:
        pipe.xadd(events, fields)
    await pipe.execute()
    await case.redis.delete(wire.Keys("identity", staged).events)
    return ids


async def test_stream_deleted_under_an_exactly_once_consumer(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    await create_effects(case.pg, case.schema)
    meters = Meters()
    before = await publish(case.redis, case.prefix, 100)
    with caplog.at_level(logging.WARNING):
        async with running_consumer(
            effect_router(case.schema), meters.metrics, **consumer_settings(case)
        ) as consumer:

            async def applied(n: int) -> bool:
                return len(await effect_counts(case.pg, case.schema, "g")) == n

            await wait_until(lambda: applied(100), what="first events applied")
            after = await republish_after_loss(case, 50)
            await wait_until(lambda: applied(150), what="events after the loss applied")
            assert consumer.workers["identity"].health.serving
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts) == set(before + after), "recreated at 0: nothing after the loss skipped"
    assert set(counts.values()) == {1}, "nothing applied twice"
    assert meters.total("consumer_groups_lost") >= 1
    assert "CONSUMER GROUP LOST" in caplog.text
    assert "consumer not serving" in caplog.text


async def test_at_least_once_group_stops_when_lost_unless_allowed(
    case: Case, catalog_cleanup: None
) -> None:
    """It stops for good: its process stays up, and serves conveyor_serving 0 and the whole
    stream as the group's lag (what keeps ConveyorConsumerGroupNotServing and
    ConveyorConsumerLagHigh firing after the loss)."""
    await create_effects(case.pg, case.schema)
    await publish(case.redis, case.prefix, 10)
    settings = consumer_settings(case, mode="at-least-once")
    async with running_consumer(effect_router(case.schema), **settings) as consumer:

        async def applied(n: int) -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == n

        await wait_until(lambda: applied(10), what="first events applied")
        await republish_after_loss(case, 5)
        worker = consumer.workers["identity"]

        async def stopped() -> bool:
            return worker.health.stopped

        await wait_until(stopped, what="the worker to stop")
        assert not worker.health.serving
        assert "group" in worker.health.reason
        served = await served_status(case, consumer)
    stream = wire.Keys("identity", case.prefix).events
    assert value(served, "conveyor_up", role="consumer", group="g") == 1
    assert value(served, "conveyor_serving", role="consumer", group="g") == 0
    assert value(served, "consumer_lag_entries", stream=stream, group="g") == 5
    assert value(served, "consumer_pending", stream=stream, group="g") == 0
    assert len(await effect_counts(case.pg, case.schema, "g")) == 10, "nothing re-applied"


async def served_status(case: Case, consumer: Consumer) -> str:
    """What `consumer`'s status gauges serve after one refresh of its status snapshot."""
    gauges, registry, provider = status_gauges(case.prefix, "g")
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        probe = ConsumerProbe(consumer, stall_timeout=60)
        checker = StatusChecker(redis=case.redis, catalog=Catalog(pool, case.prefix), probe=probe)
        gauges.watch(lambda: checker.snapshot)
        await checker.refresh()
        return generate_latest(registry).decode()
    finally:
        provider.shutdown()
        await pool.close()


async def test_at_least_once_group_allowed_to_recreate_carries_on(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    await publish(case.redis, case.prefix, 10)
    settings = consumer_settings(case, mode="at-least-once", recreate_lost_group=True)
    async with running_consumer(effect_router(case.schema), **settings) as consumer:

        async def applied(n: int) -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == n

        await wait_until(lambda: applied(10), what="first events applied")
        await republish_after_loss(case, 5)
        await wait_until(lambda: applied(15), what="events after the loss applied")
        assert not consumer.workers["identity"].health.stopped
