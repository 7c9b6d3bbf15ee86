"""Faults around an event reclaimed past its attempts: database errors and deadlocks while
marking, a Redis reset with a replay, many topics at once. The event is dead-lettered once and
applied at most once; the consumer keeps running."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from admin.catalog import ConsumerCatalog
from consumers import Consumer, ConsumerSettings, EventContext, Router
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
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


async def _over_cap_entry(case: Case, keys: wire.Keys, *, type_field: bytes | None) -> str:
    """One event pending on a dead member `x`, delivered 3 times (over max_attempts=2)."""
    (event_id,) = await publish(case.redis, case.prefix, 1)
    if type_field is not None:
        ((_, fields),) = await case.redis.xrange(keys.events)
        await case.redis.delete(keys.events)
        await case.redis.xadd(keys.events, dict(fields) | {wire.F_EVENT_TYPE: type_field})
    await case.redis.xgroup_create(keys.events, "g", id="0", mkstream=True)
    await case.redis.xgroup_create(keys.retry("g"), "g", id="0", mkstream=True)
    reply = await case.redis.xreadgroup("g", "x", {keys.events: ">"}, count=1)
    entry_id = reply[0][1][0][0]
    for _ in range(2):
        await case.redis.xclaim(keys.events, "g", "x", 0, [entry_id])
    return event_id


@pytest.mark.parametrize("trigger", ["postgres_connection_lost", "nul_in_type_field"])
async def test_a_database_error_while_marking_over_the_cap_leaves_the_entry_pending(
    case: Case, trigger: str
) -> None:
    """The connection is lost while the mark waits for a slow member, or the entry's type
    field holds a NUL: the consumer keeps running (the entry stays pending, is reclaimed and
    dead-lettered later), and the event is applied at most once."""
    await create_effects(case.pg, case.schema)
    keys = wire.Keys("identity", case.prefix)
    event_id = await _over_cap_entry(
        case,
        keys,
        type_field=b"conveyor.identity.v1.User\x00Registered"
        if trigger == "nul_in_type_field"
        else None,
    )
    holder = await asyncpg.connect(case.database_url)
    tx = holder.transaction()
    if trigger == "postgres_connection_lost":
        # A slow member's lane, mid-transaction, holding the event's ledger row.
        await tx.start()
        await holder.execute(
            f"INSERT INTO {case.schema}.event_ledger (consumer_group, event_id, event_type, "
            "stream, entry_id) VALUES ('g', $1::uuid, 't', 's', '1-0')",
            event_id,
        )
    conf = consumer_settings(case, max_attempts=2, claim_idle=0.2, consumer="b")
    consumer = Consumer(
        effect_router(case.schema),
        ConsumerSettings(**conf, topics=("identity",)),
        catalog=ConsumerCatalog,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        if trigger == "postgres_connection_lost":
            me = holder.get_server_pid()

            async def blocked() -> bool:
                return bool(
                    await case.pg.fetchval(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE $1 = ANY(pg_blocking_pids(pid))",
                        me,
                    )
                )

            await wait_until(blocked, timeout=10, what="the mark waiting for the slow member")
            await case.pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE $1 = ANY(pg_blocking_pids(pid))",
                me,
            )
        await asyncio.wait([task], timeout=3)
        if task.done():
            error = task.exception()
            raise AssertionError(f"the consumer stopped: Consumer.run() raised {error!r}")
    finally:
        if trigger == "postgres_connection_lost":
            await tx.rollback()
        await holder.close()
        consumer.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await consumer.close()


async def test_marks_and_claims_take_ledger_rows_in_one_order_and_never_deadlock(
    case: Case,
) -> None:
    """Two events whose stream order differs from their id order are over the cap on B while
    member A's lane claims both. Marks take their rows in event-id order, as claims do, so the
    two never deadlock and B's consumer keeps running."""
    await create_effects(case.pg, case.schema)
    keys = wire.Keys("identity", case.prefix)
    ids = await publish(case.redis, case.prefix, 2)
    fields = [f for _, f in await case.redis.xrange(keys.events)]
    await case.redis.delete(keys.events)
    for f in reversed(fields):  # stream order: the higher event id first
        await case.redis.xadd(keys.events, f)
    await case.redis.xgroup_create(keys.events, "g", id="0")
    await case.redis.xgroup_create(keys.retry("g"), "g", id="0", mkstream=True)
    reply = await case.redis.xreadgroup("g", "x", {keys.events: ">"}, count=2)
    entry_ids = [eid for eid, _ in reply[0][1]]
    for _ in range(2):
        await case.redis.xclaim(keys.events, "g", "x", 0, entry_ids)
    low, high = sorted(ids)
    lane = await asyncpg.connect(case.database_url)  # member A's lane, claiming in id order
    tx = lane.transaction()
    await tx.start()
    insert = (
        f"INSERT INTO {case.schema}.event_ledger (consumer_group, event_id, event_type, "
        "stream, entry_id) VALUES ('g', $1::uuid, 't', 's', '1-0') "
        "ON CONFLICT (consumer_group, event_id) DO NOTHING"
    )
    await lane.execute(insert, low)
    conf = consumer_settings(case, max_attempts=2, claim_idle=0.2, consumer="b")
    consumer = Consumer(
        effect_router(case.schema),
        ConsumerSettings(**conf, topics=("identity",)),
        catalog=ConsumerCatalog,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        me = lane.get_server_pid()

        async def mark_waiting() -> bool:
            return bool(
                await case.pg.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    me,
                )
            )

        await wait_until(mark_waiting, timeout=10, what="B's mark waiting for the lower id")
        await asyncio.wait_for(lane.execute(insert, high), 10)  # A's claim goes on
        await asyncio.wait([task], timeout=3)
        if task.done():
            raise AssertionError(
                f"the consumer stopped: Consumer.run() raised {task.exception()!r}"
            )
    finally:
        with contextlib.suppress(Exception):
            await tx.rollback()
        await lane.close()
        consumer.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await consumer.close()


async def test_an_event_dead_lettered_over_the_cap_is_applied_by_a_replay_after_a_redis_reset(
    case: Case,
) -> None:
    """An event dead-lettered over the cap leaves a 'dead_letter' mark of its entry. Redis then
    loses its data (the case guarantee 2 answers with `conveyor relay replay`): the dead-letter
    entry is gone, and the replayed event, a new entry of the topic stream, is applied over the
    mark, once."""
    await create_effects(case.pg, case.schema)
    keys = wire.Keys("identity", case.prefix)
    event_id = await _over_cap_entry(case, keys, type_field=None)
    ((_, fields),) = await case.redis.xrange(keys.events)
    router = effect_router(case.schema)
    conf = consumer_settings(case, max_attempts=2, claim_idle=0.2, consumer="b")
    async with running_consumer(router, **conf):

        async def moved() -> bool:
            return await case.redis.xlen(keys.dlq) == 1

        await wait_until(moved, timeout=20, what="the over-cap entry dead-lettered")
        await asyncio.sleep(0.3)
    assert await ledger_results(case) == {event_id: "dead_letter"}
    # Redis restarts empty; the relay's replay republishes the event.
    for key in (keys.events, keys.dlq, keys.retry("g")):
        await case.redis.delete(key)
    await case.redis.xadd(keys.events, dict(fields))
    async with running_consumer(router, **conf):

        async def drained() -> bool:
            info = await case.redis.xinfo_groups(keys.events)
            return bool(info) and info[0]["pending"] == 0 and info[0]["lag"] == 0

        await wait_until(drained, timeout=20, what="the replayed entry handled")
        await asyncio.sleep(0.3)
    counts: dict[str, Any] = await effect_counts(case.pg, case.schema, "g")
    assert counts == {event_id: 1}, (
        f"replayed event not applied (ledger {await ledger_results(case)}, dead-letter stream "
        f"length {await case.redis.xlen(keys.dlq)})"
    )


TOPICS = tuple(f"t{i}" for i in range(5))


async def test_marks_of_five_topics_at_once_leave_the_pool_room_to_record_the_dead_letters(
    case: Case,
) -> None:
    """A consumer of 5 topics, partitions=1, with one entry per topic pending past
    max_attempts and a slow member holding their ledger rows for a moment: the 5 workers' marks
    wait at once. When the slow member lets go, every entry is moved and recorded in the
    catalog, and every topic goes on consuming (a worker never holds two pooled connections)."""
    await create_effects(case.pg, case.schema)
    router = Router()
    for topic in TOPICS:

        @router.handler(events_pb2.UserRegistered, topic=topic)
        async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
            await ctx.db.execute(
                f"INSERT INTO {case.schema}.effects (consumer_group, event_id, attempt) "
                "VALUES ($1, $2, $3)",
                ctx.group,
                uuid.UUID(ctx.event_id),
                ctx.attempt,
            )

    # One entry per topic, pending on the dead member x, delivered 3 times (> max_attempts 2).
    over: dict[str, str] = {}
    for topic in TOPICS:
        keys = wire.Keys(topic, case.prefix)
        (event_id,) = await publish(case.redis, case.prefix, 1, topic=topic)
        await case.redis.xgroup_create(keys.events, "g", id="0")
        await case.redis.xgroup_create(keys.retry("g"), "g", id="0", mkstream=True)
        reply = await case.redis.xreadgroup("g", "x", {keys.events: ">"}, count=1)
        entry_id = reply[0][1][0][0]
        for _ in range(2):
            await case.redis.xclaim(keys.events, "g", "x", 0, [entry_id])
        over[topic] = event_id
    # The slow member: holds the 5 events' ledger rows, uncommitted.
    holder = await asyncpg.connect(case.database_url)
    tx = holder.transaction()
    await tx.start()
    for event_id in over.values():
        await holder.execute(
            f"INSERT INTO {case.schema}.event_ledger (consumer_group, event_id, event_type, "
            "stream, entry_id) VALUES ('g', $1::uuid, 't', 's', '1-0')",
            event_id,
        )
    conf = consumer_settings(
        case,
        max_attempts=2,
        claim_idle=3.0,
        partitions=1,
        heartbeat_interval=3600,
        housekeeping_interval=3600,
    )
    consumer = Consumer(router, ConsumerSettings(**conf, topics=TOPICS), catalog=ConsumerCatalog)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        # Every lane applies an event (and keeps its connection).
        for topic in TOPICS:
            await publish(case.redis, case.prefix, 1, topic=topic)

        async def lanes_busy() -> bool:
            return await case.pg.fetchval(f"SELECT count(*) FROM {case.schema}.effects") == 5

        await wait_until(lanes_busy, timeout=10, what="every topic applied one event")
        me = holder.get_server_pid()

        async def all_marks_waiting() -> bool:
            return await case.pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", me
            ) == len(TOPICS)

        await wait_until(all_marks_waiting, timeout=15, what="the 5 marks waiting")
        await tx.rollback()

        async def recorded() -> bool:
            n = await case.pg.fetchval(
                "SELECT count(*) FROM conveyor.dead_letters WHERE dlq_stream LIKE $1",
                case.prefix + ":%",
            )
            return n == len(TOPICS)

        try:
            await wait_until(recorded, timeout=8, what="the 5 dead letters recorded")
        except Exception as exc:  # noqa: BLE001
            stuck = await case.pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' "
                "AND query LIKE '%dead_letter%'"
            )
            raise AssertionError(
                f"dead letters never recorded; {stuck} mark transactions left idle in "
                f"transaction holding their ledger rows ({exc})"
            ) from None
    finally:
        with contextlib.suppress(Exception):
            await tx.rollback()
        await holder.close()
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(consumer.close(), 10)


async def test_an_entry_moved_before_a_later_move_failed_keeps_its_mark(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two events are over the cap, held by member x, which stalled before its transaction.
    Member b reclaims both and moves them one by one, each with its own mark; Redis fails on
    the second move. The first entry's mark committed with its move, so when x wakes it does
    not apply the event that sits in the dead-letter stream; the second stays pending."""
    await create_effects(case.pg, case.schema)
    router = effect_router(case.schema)
    keys = wire.Keys("identity", case.prefix)
    ids = await publish(case.redis, case.prefix, 2, aggregates=2)
    stalled = TopicStreams(case.redis, keys, "g", "x")
    await stalled.ensure_groups()
    entries = await stalled.read(keys.events, 2, None)
    for _ in range(2):  # delivered 3 times: over max_attempts=2
        await case.redis.xclaim(keys.events, "g", "x", 0, [e.entry_id for e in entries])
    for e in entries:
        e.attempt = 3
    decoder = Decoder(topic="identity", group="g", router=router, max_bytes=1 << 20)
    first = decoder.decode(entries[0])
    assert isinstance(first, Delivery)

    original = TopicStreams.dead_letter
    calls = {"n": 0}

    async def flaky(self: TopicStreams, entry: Any, fields: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RedisConnectionError("injected: Redis connection lost on the second move")
        return await original(self, entry, fields)

    monkeypatch.setattr(TopicStreams, "dead_letter", flaky)
    conf = consumer_settings(case, max_attempts=2, claim_idle=0.2, consumer="b", db_backoff_max=0.2)
    async with running_consumer(router, **conf):

        async def both_moved() -> bool:
            return await case.redis.xlen(keys.dlq) == 2

        await wait_until(both_moved, timeout=20, what="both entries dead-lettered")
    marks = await ledger_results(case)

    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        late = Applier(pool, group="g", ledger_schema=case.schema, exactly_once=True, partitions=1)
        outcomes = await late.apply([first])
        await late.close()
    finally:
        await pool.close()
    counts = await effect_counts(case.pg, case.schema, "g")
    assert (marks.get(ids[0]), outcomes.applied, counts) == ("dead_letter", 0, {}), (
        f"the first entry was moved to the dead-letter stream with its mark rolled back "
        f"(ledger {marks}); the stalled member then applied it: effects {counts}"
    )
