"""A consumer group lost from Redis is noticed, counted and recreated at 0, never at $."""

from __future__ import annotations

import logging

import pytest

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


async def test_at_least_once_group_stops_when_lost_unless_allowed(case: Case) -> None:
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
    assert len(await effect_counts(case.pg, case.schema, "g")) == 10, "nothing re-applied"


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
