"""Review of the conditional NOTIFY (app_0005): commits that a waiting relay should hear of."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from conveyor.database import RELAY_LISTENERS_TABLE
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many
from tests.integration.conftest import Case
from tests.integration.relay_support import fill, running_relay, stream_ids
from tests.processes import wait_until


async def _row_says(pg: asyncpg.Connection, schema: str, waiting: bool) -> bool:
    found = await pg.fetch(f"SELECT waiting FROM {schema}.{RELAY_LISTENERS_TABLE}")
    return bool(found) and all(r["waiting"] is waiting for r in found)


async def _has(case: Case, wanted: set[uuid.UUID]) -> bool:
    return wanted <= set(await stream_ids(case.redis, case.prefix))


@pytest.mark.parametrize("isolation", ["read_committed", "repeatable_read", "serializable"])
async def test_a_producer_whose_snapshot_saw_busy_wakes_a_waiting_relay(
    case: Case, isolation: str
) -> None:
    """A REPEATABLE READ (or SERIALIZABLE) producer's trigger reads the listeners table with the
    snapshot of its transaction's first statement, not one taken after its lock. A producer that
    began while the relay said busy and inserts after the relay said waiting reads "busy": the
    relay's ACCESS EXCLUSIVE lock was free (the producer had not touched the table yet), so
    nothing stops the announcement, and the commit sends no NOTIFY. The event waits a whole poll
    interval (here an hour) though the relay says it is waiting. READ COMMITTED (the control)
    passes: each statement of the trigger takes a new snapshot after its lock."""
    producer = await asyncpg.connect(case.database_url)
    streamer = await asyncpg.connect(case.database_url)
    try:
        async with running_relay(**case.relay_settings(poll_interval=3600)):
            await wait_until(
                lambda: _row_says(case.pg, case.schema, True), timeout=10, what="waiting"
            )
            # A steady flow of commits turns the relay's row busy.
            flowing = True

            async def flow() -> None:
                while flowing:
                    await fill(streamer, case.schema, 1)
                    await asyncio.sleep(0.001)

            task = asyncio.create_task(flow())
            rr = producer.transaction(isolation=isolation)
            for _ in range(200):
                if await _row_says(case.pg, case.schema, False):
                    await rr.start()
                    await producer.fetchval("SELECT 1")  # the transaction's snapshot
                    if await _row_says(case.pg, case.schema, False):
                        break  # the snapshot was taken while the row said busy
                    await rr.rollback()
                    rr = producer.transaction(isolation=isolation)
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the relay's row never said busy")
            flowing = False
            await task
            # The flow drained, the relay says waiting again: its lock was free.
            await wait_until(
                lambda: _row_says(case.pg, case.schema, True), timeout=10, what="waiting again"
            )
            (late,) = await enqueue_many(
                producer,
                [
                    NewEvent(
                        events_pb2.UserRegistered(user_id="late"), "user", "late", topic="identity"
                    )
                ],
                schema=case.schema,
            )
            await rr.commit()
            await wait_until(
                lambda: _has(case, {late}), timeout=10, what="the event of the RR producer"
            )
    finally:
        await producer.close()
        await streamer.close()
