"""A handler that ends the event's transaction with SQL (COMMIT or ROLLBACK as text, however it
goes on afterwards) commits nothing: the commit guard fails any COMMIT but the consumer's own, so
its neighbours' ledger rows never commit without their effects (guarantee 3)."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import suppress

import asyncpg
import pytest

from consumers import EventContext, Router
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
    insert_effect,
    ledger_results,
    publish,
    router_of,
    running_consumer,
)
from tests.integration.test_dead_letters import dead_letters, settled
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


@pytest.mark.parametrize(
    "style", ["commit_then_raise", "commit_in_own_block", "commit_begin", "commit_then_conn_lost"]
)
async def test_a_commit_by_sql_in_any_shape_loses_no_event(case: Case, style: str) -> None:
    """Event 3's handler sends COMMIT as SQL and then raises, or does it inside its own
    ctx.db.transaction() block, or opens a new transaction after it (COMMIT; BEGIN, with a later
    handler failing), or its connection is lost right after it (a failover, a kill): every
    other event of its transaction is still applied exactly once."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        n = int(ctx.aggregate_id.removeprefix("agg"))
        if n == 3:
            await insert_effect(ctx, case.schema)
            if style == "commit_then_raise":
                await ctx.db.execute("COMMIT")
                raise RuntimeError("the handler fails after its COMMIT")
            if style == "commit_in_own_block":
                async with ctx.db.transaction():
                    await ctx.db.execute("COMMIT")
            if style == "commit_begin":
                await ctx.db.execute("COMMIT")
                await ctx.db.execute("BEGIN")
            if style == "commit_then_conn_lost" and ctx.attempt == 1:
                # A crash point right after the handler's COMMIT: the connection
                # (or the process) is lost right after the COMMIT - a failover, a kill.
                await ctx.db.execute("COMMIT")
                await ctx.db.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            return
        if style == "commit_begin" and n == 6 and ctx.attempt == 1:
            raise RuntimeError("an ordinary failure of a later event, first attempt only")
        await insert_effect(ctx, case.schema)

    router = Router()
    router.handler(events_pb2.UserRegistered, topic="identity")(handler)
    ids = await publish(case.redis, case.prefix, 10)
    async with running_consumer(router, **consumer_settings(case, max_attempts=2, partitions=1)):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    counts = await effect_counts(case.pg, case.schema, "g")
    fine = [i for n, i in enumerate(ids) if n != 3]
    missing = [i for i in fine if counts.get(i) != 1]
    assert missing == [], (
        f"{len(missing)} events acknowledged but not applied once (ledger says "
        f"{sorted({(await ledger_results(case, 'g')).get(i) for i in missing}, key=str)})"
    )
    # Its own COMMIT never commits: applied only by the attempt that did not send it.
    assert counts.get(ids[3], 0) == (1 if style == "commit_then_conn_lost" else 0)


@pytest.mark.parametrize("style", ["rollback_begin", "failed_commit_begin"])
async def test_a_transaction_ended_and_begun_again_by_sql_loses_no_neighbour(
    case: Case, style: str
) -> None:
    """Event 2's handler sends ROLLBACK and then BEGIN as SQL, or catches the failure of the
    COMMIT it sent (the commit guard's) and then sends BEGIN, and returns normally: the
    connection is in a transaction again, but not the lane's, which held its neighbours' ledger
    rows and effects. The probe before the consumer's COMMIT finds the lane's marker gone: the
    event fails with TransactionEnded, its neighbours are applied once, and its own writes never
    commit."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        if ctx.aggregate_id == "agg2":
            if style == "rollback_begin":
                await ctx.db.execute("ROLLBACK")
            else:
                await insert_effect(ctx, case.schema)
                with suppress(asyncpg.InvalidTransactionTerminationError):  # the guard's
                    await ctx.db.execute("COMMIT")
            await ctx.db.execute("BEGIN")
        await insert_effect(ctx, case.schema)

    ids = await publish(case.redis, case.prefix, 5)
    settings = consumer_settings(case, partitions=1, max_attempts=2)
    async with running_consumer(router_of(handler), **settings):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts == {i: 1 for n, i in enumerate(ids) if n != 2}
    ((dead,),) = [await dead_letters(case)]
    assert dead[wire.F_EVENT_ID] == ids[2].encode()
    assert dead[wire.DL_ERROR_CLASS] == b"TransactionEnded"


async def test_a_handler_that_commits_by_sql_commits_nothing_on_any_attempt(case: Case) -> None:
    """COMMIT sent as SQL and the handler returns normally: the COMMIT fails, so none of its
    attempts commits its writes; after max_attempts it is a dead letter, its writes absent."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)
        if ctx.aggregate_id == "agg3":
            await ctx.db.execute("COMMIT")

    router = Router()
    router.handler(events_pb2.UserRegistered, topic="identity")(handler)
    ids = await publish(case.redis, case.prefix, 5)
    async with running_consumer(router, **consumer_settings(case, max_attempts=3, partitions=1)):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    counts = await effect_counts(case.pg, case.schema, "g")
    ((dead,),) = [await dead_letters(case)]
    assert dead[wire.DL_ERROR_CLASS] == b"TransactionEnded"
    assert ids[3] not in counts, f"event 3's writes committed {counts[ids[3]]} times"
    assert counts == dict.fromkeys(set(ids) - {ids[3]}, 1)


async def test_a_rollback_by_sql_never_touches_rows_another_member_committed(
    case: Case,
) -> None:
    """Member A's lane holds events 0, 1, 2. Event 1's handler sends ROLLBACK as SQL (which
    releases the lane's uncommitted ledger rows) and then takes a while (an HTTP call, say)
    before returning; meanwhile member B, which reclaimed event 2, applies and commits it. A's
    next pass finds B's row and does not apply event 2 again."""
    await create_effects(case.pg, case.schema)
    keys = wire.Keys("identity", case.prefix)
    await publish(case.redis, case.prefix, 3)
    streams = TopicStreams(case.redis, keys, "g", "a")
    await streams.ensure_groups()
    entries = await streams.read(keys.events, 3, None)
    rolled_back, b_done = asyncio.Event(), asyncio.Event()

    async def effect(ctx: EventContext) -> None:
        await ctx.db.execute(
            f"INSERT INTO {case.schema}.effects (consumer_group, event_id, aggregate_id, "
            "attempt) VALUES ($1, $2, $3, $4)",
            ctx.group,
            uuid.UUID(ctx.event_id),
            ctx.aggregate_id,
            ctx.attempt,
        )

    async def handler_a(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await effect(ctx)
        if ctx.aggregate_id == "agg1" and not rolled_back.is_set():
            await ctx.db.execute("ROLLBACK")
            rolled_back.set()
            await asyncio.wait_for(b_done.wait(), 10)  # slow work after the ROLLBACK

    async def handler_b(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await effect(ctx)

    def deliveries(router: Router) -> list[Delivery]:
        decoder = Decoder(topic="identity", group="g", router=router, max_bytes=1 << 20)
        out = [decoder.decode(e) for e in entries]
        assert all(isinstance(d, Delivery) for d in out)
        return out  # type: ignore[return-value]

    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=4)
    try:
        a = Applier(pool, group="g", ledger_schema=case.schema, exactly_once=True, partitions=1)
        b = Applier(pool, group="g", ledger_schema=case.schema, exactly_once=True, partitions=1)
        a_task = asyncio.create_task(a.apply(deliveries(router_of(handler_a))))
        await asyncio.wait_for(rolled_back.wait(), 10)
        event_2 = deliveries(router_of(handler_b))[2]
        b_outcomes = await asyncio.wait_for(b.apply([event_2]), 10)
        assert b_outcomes.applied == 1
        b_done.set()
        await asyncio.wait_for(a_task, 20)
        await a.close()
        await b.close()
    finally:
        await pool.close()
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts.get(event_2.event_id) == 1, (
        f"event 2 applied {counts.get(event_2.event_id)} times"
    )
