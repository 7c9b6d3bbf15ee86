"""An event reclaimed past its attempts is dead-lettered, and never also applied by a slower
member that still held it (guarantees 3 and 4)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from admin.catalog import dead_letters as catalog
from admin.catalog.audit import AuditLog
from admin.catalog.reprocess import reprocess
from consumers import EventContext
from consumers.applier import Applier
from consumers.deliveries import Decoder, Delivery
from consumers.streams import TopicStreams
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    ledger_results,
    publish,
    running_consumer,
)
from tests.integration.test_dead_letters import dead_letters, settled
from tests.processes import wait_until


async def test_slow_member_commits_while_another_reclaims_past_the_cap(case: Case) -> None:
    """Attempt 2 (the last) is slow; another member reclaims the event as attempt 3 meanwhile.
    It waits for the slow member's transaction, finds the event applied and acknowledges it:
    applied once, no dead letter."""
    await create_effects(case.pg, case.schema)

    def slow_last_attempt(ctx: EventContext) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    router = effect_router(case.schema, fail=slow_last_attempt)
    route = router.route("identity", "conveyor.identity.v1.UserRegistered")
    assert route is not None
    insert = route.fn

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert(event, ctx)
        if ctx.attempt == 2:
            await asyncio.sleep(1.5)  # holds its ledger row, uncommitted, past claim_idle

    object.__setattr__(route, "fn", handler)
    (event_id,) = await publish(case.redis, case.prefix, 1)
    conf = consumer_settings(case, max_attempts=2, claim_idle=0.3)
    async with (
        running_consumer(router, **conf, consumer="a"),
        running_consumer(router, **conf, consumer="b"),
    ):
        await wait_until(lambda: settled(case), timeout=20, what="the event acknowledged")
        await asyncio.sleep(0.5)
    assert await effect_counts(case.pg, case.schema, "g") == {event_id: 1}
    assert await dead_letters(case) == []
    assert await ledger_results(case) == {event_id: "success"}


async def test_member_stalled_before_applying_cannot_apply_after_the_dead_letter(
    case: Case,
) -> None:
    """Member A holds the event's last attempt and stalls before its transaction begins. B
    reclaims it past the cap and dead-letters it. A wakes and applies its batch: the ledger's
    dead-letter mark makes it skip the event. Reprocessing the dead letter then applies it, once."""
    await create_effects(case.pg, case.schema)
    router = effect_router(case.schema)
    keys = wire.Keys("identity", case.prefix)
    (event_id,) = await publish(case.redis, case.prefix, 1)
    stalled = TopicStreams(case.redis, keys, "g", "a")
    await stalled.ensure_groups()
    (entry,) = await stalled.read(keys.events, 1, None)
    await case.redis.xclaim(keys.events, "g", "a", 0, [entry.entry_id])  # delivered twice
    entry.attempt = 2
    decoded = Decoder(topic="identity", group="g", router=router, max_bytes=1 << 20).decode(entry)
    assert isinstance(decoded, Delivery)

    conf = consumer_settings(case, max_attempts=2, claim_idle=0.2, consumer="b")
    async with running_consumer(router, **conf):
        await wait_until(lambda: settled(case), timeout=20, what="B dead-letters the event")
        await wait_until(lambda: has_dead_letter(case), timeout=10, what="the dead letter")
    assert await ledger_results(case) == {event_id: "dead_letter"}

    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        late = Applier(
            pool,
            group="g",
            ledger_schema=case.schema,
            exactly_once=True,
            partitions=1,
        )
        outcomes = await late.apply([decoded])
        await late.close()
        assert (outcomes.applied, outcomes.duplicates) == (0, 1)
        assert await effect_counts(case.pg, case.schema, "g") == {}

        (record,) = await catalog.get_dead_letters(
            pool,
            case.prefix,
            "identity",
            [i.decode() for i, _ in await case.redis.xrange(keys.dlq)],
        )
        async with running_consumer(router, **conf):
            progress = await reprocess(
                pool,
                case.redis,
                topic="identity",
                records=[record],
                key_prefix=case.prefix,
                principal="op",
                audit=AuditLog(pool, case.prefix),
                ledger_schemas={"g": case.schema},
            )
            assert progress.requeued == 1
            await wait_until(
                lambda: applied_once(case, event_id), timeout=10, what="the reprocess applied"
            )
        assert await ledger_results(case) == {event_id: "success"}
    finally:
        await pool.close()


async def has_dead_letter(case: Case) -> bool:
    return bool(await dead_letters(case))


async def applied_once(case: Case, event_id: str) -> bool:
    counts: dict[str, Any] = await effect_counts(case.pg, case.schema, "g")
    return counts == {event_id: 1}


async def retry_entry(case: Case, keys: wire.Keys) -> tuple[str, dict[bytes, bytes]]:
    """A reprocessed dead letter waiting in group g's retry stream (as admin.reprocess writes
    it: the original fields plus rt.dead_letter); the topic stream is left empty."""
    (event_id,) = await publish(case.redis, case.prefix, 1)
    ((_, fields),) = await case.redis.xrange(keys.events)
    await case.redis.delete(keys.events)
    fields = dict(fields) | {wire.RT_DEAD_LETTER: b"1-0"}
    await case.redis.xadd(keys.retry("g"), fields)
    return event_id, fields


@pytest.mark.usefixtures("catalog_cleanup")
async def test_a_stalled_member_cannot_apply_a_reprocessed_entry_dead_lettered_over_the_cap(
    case: Case,
) -> None:
    """Member A holds the last attempt of a reprocessed dead letter (an entry of the group's
    retry stream) and stalls before its transaction; B reclaims it past the cap, marks the
    ledger and moves it to the dead-letter stream. A wakes: the mark of that very entry stops
    it, so the event is not applied while it sits in the dead-letter stream."""
    await create_effects(case.pg, case.schema)
    router = effect_router(case.schema)
    keys = wire.Keys("identity", case.prefix)
    event_id, _ = await retry_entry(case, keys)
    stalled = TopicStreams(case.redis, keys, "g", "a")
    await stalled.ensure_groups()
    (entry,) = await stalled.read(keys.retry("g"), 1, None)
    await case.redis.xclaim(keys.retry("g"), "g", "a", 0, [entry.entry_id])  # delivered twice
    entry.attempt = 2
    decoded = Decoder(topic="identity", group="g", router=router, max_bytes=1 << 20).decode(entry)
    assert isinstance(decoded, Delivery)

    conf = consumer_settings(case, max_attempts=2, claim_idle=0.2, consumer="b")
    async with running_consumer(router, **conf):

        async def moved() -> bool:
            return await case.redis.xlen(keys.dlq) == 1

        await wait_until(moved, timeout=20, what="B dead-letters the retry entry")
        await asyncio.sleep(0.3)
    assert await ledger_results(case) == {event_id: "dead_letter"}

    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        late = Applier(pool, group="g", ledger_schema=case.schema, exactly_once=True, partitions=1)
        outcomes = await late.apply([decoded])
        await late.close()
    finally:
        await pool.close()
    counts: dict[str, Any] = await effect_counts(case.pg, case.schema, "g")
    assert await case.redis.xlen(keys.dlq) == 1
    assert (outcomes.applied, counts) == (0, {}), (
        "the event was dead-lettered over the cap and then applied by the stalled member"
    )
