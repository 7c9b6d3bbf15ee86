"""What a handler may do with `ctx.db`: its own (nested) transactions, cursors, COPY; its writes
commit or roll back with the event's ledger row (guarantee 3)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg
import pytest

from consumers import EventContext
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

Handler = Callable[[events_pb2.UserRegistered, EventContext], object]


async def test_handler_transactions_nest_as_savepoints_and_commit_with_the_ledger(
    case: Case,
) -> None:
    """`async with ctx.db.transaction():` works in a handler, also nested twice, beside a cursor
    and COPY; an inner block that fails and is caught rolls back only itself."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        async with ctx.db.transaction():
            await insert_effect(ctx, case.schema)
            try:
                async with ctx.db.transaction():
                    await insert_effect(ctx, case.schema, attempt=-1)
                    await ctx.db.execute("SELECT 1 / 0")
            except asyncpg.DivisionByZeroError:
                pass  # contained by its savepoint: the -1 row is gone, the first row stays
        async for _row in ctx.db.cursor("SELECT generate_series(1, 3)"):
            pass
        await ctx.db.copy_records_to_table(
            "effects",
            schema_name=case.schema,
            columns=["consumer_group", "event_id", "attempt"],
            records=[("copied", uuid.UUID(ctx.event_id), 0)],
        )

    ids = await publish(case.redis, case.prefix, 30)
    # One lane: all events of a batch share one transaction.
    async with running_consumer(
        router_of(handler), **consumer_settings(case, max_attempts=2, partitions=1)
    ):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    assert await effect_counts(case.pg, case.schema, "g") == dict.fromkeys(ids, 1)
    assert await effect_counts(case.pg, case.schema, "copied") == dict.fromkeys(ids, 1)
    assert (
        await case.pg.fetchval(f"SELECT count(*) FROM {case.schema}.effects WHERE attempt < 0") == 0
    )
    assert await ledger_results(case, "g") == dict.fromkeys(ids, "success")
    assert await dead_letters(case) == []


async def test_writes_in_a_handler_transaction_roll_back_with_a_failing_event(case: Case) -> None:
    """A handler that commits its own transaction block and then fails: the block's writes
    roll back with the event's ledger row, and the retry that succeeds applies them once."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        async with ctx.db.transaction():
            await insert_effect(ctx, case.schema)
        if ctx.attempt == 1:
            raise RuntimeError("fails after its transaction block, on the first attempt")

    ids = await publish(case.redis, case.prefix, 5)
    async with running_consumer(router_of(handler), **consumer_settings(case, max_attempts=3)):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    rows = await case.pg.fetch(f"SELECT event_id::text, attempt FROM {case.schema}.effects")
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {2}  # only the second attempt's writes exist
    assert await dead_letters(case) == []


@pytest.mark.parametrize("ending", [{3}, {3, 5, 6}], ids=["one", "three"])
async def test_handler_ending_the_transaction_by_sql_is_a_failure_and_loses_nothing(
    case: Case, ending: set[int]
) -> None:
    """A handler that sends COMMIT as SQL would commit its neighbours' ledger rows before their
    handlers ran. The commit guard fails that COMMIT, so nothing of it commits; the event fails
    with a message saying what to do instead, and every other event of its transaction is
    applied exactly once."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)
        if int(ctx.aggregate_id.removeprefix("agg")) in ending:
            await ctx.db.execute("COMMIT")

    ids = await publish(case.redis, case.prefix, 10)
    async with running_consumer(
        router_of(handler), **consumer_settings(case, max_attempts=1, partitions=1)
    ):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    dead = await dead_letters(case)
    assert sorted(d[wire.F_EVENT_ID].decode() for d in dead) == sorted(ids[i] for i in ending)
    assert {d[wire.DL_ERROR_CLASS] for d in dead} == {b"TransactionEnded"}
    assert all(b"ctx.db.transaction()" in d[wire.DL_ERROR] for d in dead)
    fine = set(ids) - {ids[i] for i in ending}
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts == dict.fromkeys(fine, 1), "the others once each; the COMMIT committed nothing"
    assert set(await ledger_results(case, "g")) == fine
