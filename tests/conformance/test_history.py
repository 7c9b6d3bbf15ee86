"""Publish/subscribe conformance, history: what a consumer group created after events were
published gets."""

from __future__ import annotations

from conveyor import wire
from tests.conformance.support import (
    assert_delivered,
    create_applied,
    members,
    produce,
    recording_router,
    settings_for,
    wait_applied,
)
from tests.integration.conftest import Case
from tests.integration.relay_support import running_relay
from tests.processes import wait_until


async def test_a_group_created_after_the_events_were_published_gets_all_of_them(
    case: Case,
) -> None:
    """architecture.md: a consumer that finds no group creates it at `0`, never `$`. Events
    published to the stream before any group existed, and more after: the new group applies
    every one. A second group created after the first applied them all still gets all of them,
    as long as the stream keeps them (the housekeeper trims only what every group acknowledged,
    one housekeeping interval after start: 60 s by default)."""
    await create_applied(case.pg, case.schema)
    router = recording_router(case.schema, ["orders"])
    async with running_relay(**case.relay_settings()):
        history = await produce(case.pg, case.schema, range(200), topic="orders")

        async def in_stream() -> bool:
            stream = wire.Keys("orders", case.prefix).events
            return int(await case.redis.xlen(stream)) == len(history)

        await wait_until(in_stream, timeout=20, what="history published before any group exists")
        async with members((router, settings_for(case, "first", "m1", "exactly-once"))):
            later = await produce(case.pg, case.schema, range(200, 220), topic="orders")
            counts = await wait_applied(case, "first", history + later, topic="orders")
            assert_delivered(counts, history + later, "exactly-once")
            async with members((router, settings_for(case, "second", "m1", "exactly-once"))):
                counts = await wait_applied(case, "second", history + later, topic="orders")
    assert_delivered(counts, history + later, "exactly-once")


async def test_a_group_created_after_the_housekeeper_trimmed_gets_only_what_is_left(
    case: Case,
) -> None:
    """operations.md, Retention: stream entries are kept until every group acknowledged them,
    then the housekeeper trims them. A group created after that trim starts from what is left:
    it gets the events published since, not the trimmed history (`conveyor relay replay`
    republishes that from the outbox when needed)."""
    await create_applied(case.pg, case.schema)
    router = recording_router(case.schema, ["orders"])
    stream = wire.Keys("orders", case.prefix).events
    first = settings_for(case, "first", "m1", "exactly-once", housekeeping_interval=0.2)
    async with running_relay(**case.relay_settings()), members((router, first)):
        history = await produce(case.pg, case.schema, range(100), topic="orders")
        await wait_applied(case, "first", history, topic="orders")

        async def trimmed() -> bool:
            return int(await case.redis.xlen(stream)) == 0

        await wait_until(trimmed, timeout=20, what="the acknowledged history trimmed")
        async with members((router, settings_for(case, "second", "m1", "exactly-once"))):
            later = await produce(case.pg, case.schema, range(100, 120), topic="orders")
            second = await wait_applied(case, "second", later, topic="orders")
            first_counts = await wait_applied(case, "first", history + later, topic="orders")
    assert_delivered(second, later, "exactly-once")
    assert_delivered(first_counts, history + later, "exactly-once")
