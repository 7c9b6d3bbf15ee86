"""Ledger retention takes one cutoff per round: the streams whose rows it keeps and the rows it
deletes are decided by the same line (guarantee 3)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from admin.catalog import ConsumerCatalog
from consumers import ConsumerSettings
from consumers.metrics import ConsumerMetrics
from consumers.retention import Housekeeper
from conveyor import database, wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import publish

pytestmark = pytest.mark.usefixtures("catalog_cleanup")

RETENTION = 3600.0


@pytest.fixture
async def pool(case: Case) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(case.database_url, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.close()


async def test_a_row_passing_the_retention_line_during_a_round_keeps_its_pending_entry(
    case: Case, pool: asyncpg.Pool
) -> None:
    """A long round (a backlog of expired rows deleted chunk by chunk): a row of another stream
    (here the group's `billing` topic) reaches the retention line a moment into the round. The
    round's one cutoff leaves it alone, so its entry, still pending, is not applied twice when
    it is reclaimed."""
    table = f"{case.schema}.{database.LEDGER_TABLE}"
    gone = wire.Keys("olds", case.prefix).events  # a stream trimmed long ago: rows deletable
    await case.pg.execute(
        f"INSERT INTO {table} (consumer_group, event_id, event_type, stream, entry_id, "
        "processed_at) SELECT 'g', gen_random_uuid(), 't', $1, i || '-0', "
        "now() - interval '2 hours' FROM generate_series(1, 20000) i",
        gone,
    )
    billing = wire.Keys("billing", case.prefix)
    (event_id,) = await publish(case.redis, case.prefix, 1, topic="billing")
    await case.redis.xgroup_create(billing.events, "g", id="0")
    reply = await case.redis.xreadgroup("g", "dead-member", {billing.events: ">"}, count=1)
    entry_id = reply[0][1][0][0].decode()  # pending on a member that died after its COMMIT
    await case.pg.execute(
        f"INSERT INTO {table} (consumer_group, event_id, event_type, stream, entry_id, "
        "processed_at) VALUES ('g', $1, 't', $2, $3, now() - make_interval(secs => $4))",
        uuid.UUID(event_id),
        billing.events,
        entry_id,
        RETENTION - 0.25,
    )
    settings = ConsumerSettings(
        group="g",
        topics=("identity",),
        consumer="h",
        database_url=case.database_url,
        redis_url=case.redis_url,
        key_prefix=case.prefix,
        ledger_schema=case.schema,
        ledger_retention=RETENTION,
    )
    keeper = Housekeeper(
        pool,
        case.redis,
        settings,
        ConsumerMetrics(),
        catalog=ConsumerCatalog(pool),
        ledger_chunk=50,
    )
    started = time.monotonic()
    report = await keeper.run_once([])
    took = time.monotonic() - started
    assert report.errors == []
    kept = await case.pg.fetchval(
        f"SELECT count(*) FROM {table} WHERE event_id = $1", uuid.UUID(event_id)
    )
    assert await case.redis.xrange(billing.events) != []  # the entry is still in its stream
    assert kept == 1, (
        f"the row of an entry still pending in {billing.events} was deleted by a round of "
        f"{took:.1f}s that deleted {report.ledger_deleted} rows"
    )
