"""A lane that splits its part around a failing event, beside a member marking the same events
over their attempts: rows are taken in event-id order on both sides, so they never deadlock; and
the split costs a few transactions, not one claim per event."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import asyncpg
import pytest

from consumers import EventContext, Router
from consumers.applier import Applier
from consumers.deliveries import Decoder, Delivery, dead_letter_mark
from consumers.streams import TopicStreams
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


async def test_marks_never_deadlock_with_a_lane_splitting_its_part(case: Case) -> None:  # noqa: PLR0915 - one interleaving, step by step
    """Member A's lane holds events [e1, e0, e2] in stream order (e0 < e1 by id); e2's handler
    fails, so the lane applies [e1, e0] again in a transaction of its own, e1's handler slow.
    Meanwhile member B marks e0 and e1 over the cap, in event-id order: it waits for the lane,
    finds both applied, and neither side hits a deadlock."""
    await create_effects(case.pg, case.schema)
    keys = wire.Keys("identity", case.prefix)
    ids = await publish(case.redis, case.prefix, 3, aggregates=3)
    e0, e1, e2 = ids
    assert e0 < e1 < e2
    streams = TopicStreams(case.redis, keys, "g", "a")
    await streams.ensure_groups()
    entries = {
        e.fields[wire.F_EVENT_ID].decode(): e for e in await streams.read(keys.events, 3, None)
    }
    calls: Counter[str] = Counter()
    in_handler, go = asyncio.Event(), asyncio.Event()

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        calls[ctx.event_id] += 1
        if ctx.event_id == e2:
            raise RuntimeError("e2 fails: the lane goes to its isolated pass")
        if ctx.event_id == e1 and calls[e1] == 2:  # e1 in the isolated pass: slow work
            in_handler.set()
            await asyncio.wait_for(go.wait(), 10)
        await ctx.db.execute(
            f"INSERT INTO {case.schema}.effects (consumer_group, event_id, attempt) "
            "VALUES ($1, $2, 1)",
            ctx.group,
            uuid.UUID(ctx.event_id),
        )

    router = Router()
    router.handler(events_pb2.UserRegistered, topic="identity")(handler)
    decoder = Decoder(topic="identity", group="g", router=router, max_bytes=1 << 20)
    deliveries = [decoder.decode(entries[i]) for i in (e1, e0, e2)]  # stream order != id order
    assert all(isinstance(d, Delivery) for d in deliveries)
    marks = [dead_letter_mark(entries[i]) for i in (e1, e0)]

    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=4)
    troubles: list[str] = []
    try:
        a = Applier(
            pool,
            group="g",
            ledger_schema=case.schema,
            exactly_once=True,
            partitions=1,
            on_trouble=troubles.append,
        )
        b = Applier(pool, group="g", ledger_schema=case.schema, exactly_once=True, partitions=1)
        a_task = asyncio.create_task(a.apply(deliveries))  # type: ignore[arg-type]
        await asyncio.wait_for(in_handler.wait(), 10)

        async def mark() -> None:
            for m in sorted(marks, key=lambda m: m.event_id):  # type: ignore[union-attr]
                async with b.marking_dead_letter(m) as done:  # type: ignore[arg-type]
                    assert done, "the lane applied it meanwhile"

        b_task = asyncio.create_task(mark())

        async def b_waits() -> bool:
            return bool(
                await case.pg.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%dead_letter%' AND datname = current_database()"
                )
            )

        await wait_until(b_waits, timeout=10, what="B's marks waiting for e1")
        go.set()
        await asyncio.wait([a_task, b_task], timeout=20)
        b_error = b_task.exception() if b_task.done() else None
        await asyncio.wait_for(a_task, 20)
        await a.close()
        await b.close()
    finally:
        await pool.close()
    deadlocks = [t for t in troubles if "eadlock" in t]
    if b_error is not None and "eadlock" in str(b_error):
        deadlocks.append(f"marks: {b_error}")
    assert deadlocks == [], f"deadlock between the lane's claims and the marks: {deadlocks}"
    assert b_error is None


async def test_a_failing_event_in_a_large_part_costs_a_few_transactions(case: Case) -> None:
    """One failing event among 2,000 of one lane: the part runs once (rolled back), then the
    events before and after it in one transaction each: two committed claims, counted by the
    commit guard, not a claim per event; every other event is applied once."""
    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 2000)
    keys = wire.Keys("identity", case.prefix)
    streams = TopicStreams(case.redis, keys, "g", "a")
    await streams.ensure_groups()
    entries = await streams.read(keys.events, 2000, None)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        if ctx.event_id == ids[1234]:
            raise RuntimeError("this one fails")
        await ctx.db.execute(
            f"INSERT INTO {case.schema}.effects (consumer_group, event_id, attempt) "
            "VALUES ($1, $2, 1)",
            ctx.group,
            uuid.UUID(ctx.event_id),
        )

    router = Router()
    router.handler(events_pb2.UserRegistered, topic="identity")(handler)
    decoder = Decoder(topic="identity", group="g", router=router, max_bytes=1 << 20)
    deliveries = [decoder.decode(e) for e in entries]
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        applier = Applier(
            pool, group="g", ledger_schema=case.schema, exactly_once=True, partitions=1
        )
        outcomes = await applier.apply(deliveries)  # type: ignore[arg-type]
        await applier.close()
    finally:
        await pool.close()
    claims = await case.pg.fetchval(
        f"SELECT sum(claims) + count(*) FROM {case.schema}.conveyor_commit_guard"
    )
    assert claims == 2
    assert [d.event_id for d, _ in outcomes.failed] == [ids[1234]]
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts == {i: 1 for n, i in enumerate(ids) if n != 1234}
