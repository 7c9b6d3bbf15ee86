"""After a failed round a consumer takes back at once the entries a lost reply left pending on
it (docs/architecture.md, "Network faults and timeouts"), but never one it already holds (a
retry it claimed back in the same round is not taken a second time, so its failure is retried,
not acknowledged as a duplicate of itself), nor one another member has claimed meanwhile."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from consumers import EventContext, Retry
from consumers.streams import TopicStreams
from conveyor import wire
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
from tests.integration.test_dead_letters import dead_letters, settled
from tests.processes import wait_until
from tests.torture.faultproxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("catalog_cleanup")]


async def test_a_retry_due_after_a_failed_round_is_retried_not_acknowledged(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    attempts: list[int] = []

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt <= 2:
            raise Retry("not yet", delay=1.5)
        await insert_effect(ctx, case.schema)

    proxy = FaultProxy.for_url(case.redis_url)
    try:
        settings = consumer_settings(
            case,
            redis_url=proxy.url(case.redis_url),
            max_attempts=5,
            dependency_timeout=1.0,
            db_backoff_max=0.3,
        )
        async with running_consumer(router_of(handler), **settings):
            (event_id,) = await publish(case.redis, case.prefix, 1)

            async def failed_once() -> bool:
                return attempts == [1]

            await wait_until(failed_once, timeout=20, what="the first attempt to fail")
            # Redis away until the retry is due: rounds fail meanwhile, and the first one
            # after the heal claims the due retry back.
            proxy.partition()
            await asyncio.sleep(2.5)
            proxy.heal()

            async def done() -> bool:
                return await settled(case)

            await wait_until(done, timeout=30, what="the event acknowledged")
        assert await effect_counts(case.pg, case.schema, "g") == {event_id: 1}, (
            f"attempts made: {attempts}"
        )
        assert await dead_letters(case) == []
    finally:
        proxy.close()


async def test_an_entry_another_member_claims_meanwhile_is_left_to_it(case: Case) -> None:
    """Member a's read was answered but its reply lost: the entries are pending on a, unseen.
    While a looks for them (between its XPENDING and its XCLAIM), member b reclaims one, idle
    past claim_idle: a takes back the others and leaves that one to b, so it is not applied
    by both."""
    keys = wire.Keys("identity", case.prefix)
    await publish(case.redis, case.prefix, 3)
    a = TopicStreams(case.redis, keys, "g", "a")
    await a.ensure_groups()
    lost = await a.read(keys.events, 3, None)  # delivered to a; say its reply never came
    assert len(lost) == 3
    await asyncio.sleep(0.3)
    taken = lost[1].entry_id

    class OtherMemberClaims:
        """Holds nothing; b's reclaim runs while a's XPENDING reply is being looked at."""

        def __init__(self) -> None:
            self.done = False

        def __contains__(self, key: tuple[str, str], /) -> bool:
            if not self.done:
                self.done = True
                with redis.Redis.from_url(case.redis_url) as other:
                    other.xclaim(keys.events, "g", "b", 200, [taken])
                time.sleep(0.01)
            return False

    back = await a.reclaim_mine(keys.events, 10, OtherMemberClaims())
    assert [e.entry_id for e in back] == [lost[0].entry_id, lost[2].entry_id]
    pending = await case.redis.xpending_range(keys.events, "g", "-", "+", 10)
    owners = {p["message_id"].decode(): p["consumer"].decode() for p in pending}
    assert owners[taken] == "b", f"the entry b claimed was taken back: {owners}"
