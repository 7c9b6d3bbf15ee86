"""Publish/subscribe conformance, the broker restarting: Redis crashes and comes back while
events are being produced and consumed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from consumers import EventContext
from conveyor import redis_client
from tests.conformance.support import (
    Flow,
    applied,
    assert_delivered,
    create_applied,
    members,
    recording_router,
    settings_for,
    wait_applied,
)
from tests.integration.conftest import Case
from tests.integration.relay_support import drained, running_relay
from tests.processes import wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
async def durable_redis() -> AsyncIterator[RedisServer]:
    """A throwaway Redis that fsyncs every write (appendonly yes, appendfsync always)."""
    with RedisServer(appendonly=True) as server:
        yield server


async def test_a_redis_crash_while_producing_loses_nothing_and_applies_nothing_twice(
    case: Case, durable_redis: RedisServer
) -> None:
    """A relay, an exactly-once group and an at-least-once group on a durable throwaway Redis;
    events committed in a steady flow; Redis is SIGKILLed mid-stream and started again a second
    later while the flow goes on. Every committed event is applied once by the exactly-once group
    and at least once by the other, also the one event in twenty whose first attempt fails.
    (Claim idle 2 s: acknowledgements lost with the crash leave
    entries pending, which are reclaimed after it.)"""
    await create_applied(case.pg, case.schema)
    url = durable_redis.url
    relay = case.relay_settings(
        redis_url=url, backoff_initial=0.05, backoff_max=0.5, monitor_interval=0.2
    )
    fast = {"redis_url": url, "db_backoff_max": 0.5, "claim_idle": 2.0}

    def fail_first(seq: int, ctx: EventContext) -> None:
        if seq % 20 == 7 and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    router = recording_router(case.schema, ["orders"], after=fail_first)
    pairs = [
        (router, settings_for(case, "eo", "m1", "exactly-once", **fast)),
        (router, settings_for(case, "alo", "m1", "at-least-once", **fast)),
    ]
    flow = Flow(case.database_url, case.schema, "orders")
    redis = redis_client.connect(url)
    try:
        async with running_relay(**relay), members(*pairs):
            flow.start()

            async def flowing() -> bool:
                return len(await applied(case.pg, case.schema, "eo")) >= 100

            await wait_until(flowing, timeout=30, what="events flowing before the crash")
            await asyncio.to_thread(durable_redis.kill)
            before = len(flow.ids)
            await asyncio.sleep(1)
            await asyncio.to_thread(durable_redis.start)
            during = len(flow.ids) - before
            await asyncio.sleep(1)
            ids = await flow.stop()
            assert during > 0, "the business kept committing while Redis was down"
            await wait_until(lambda: drained(case.pg, case.schema), what="outbox published")
            for group, mode in (("eo", "exactly-once"), ("alo", "at-least-once")):
                counts = await wait_applied(case, group, ids, topic="orders", redis=redis)
                assert_delivered(counts, ids, mode)
    finally:
        await flow.stop()
        await redis.aclose()
