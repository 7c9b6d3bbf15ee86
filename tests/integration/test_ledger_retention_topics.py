"""Ledger retention keeps the rows of entries still in a stream for every stream of the group,
also those of topics the housekeeping member does not consume itself (guarantee 3)."""

from __future__ import annotations

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
from tests.integration.consumer_support import (
    create_effects,
    effect_counts,
    effect_router,
    publish,
    running_consumer,
)
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


@pytest.fixture
async def pool(case: Case) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(case.database_url, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.close()


async def test_rows_of_pending_entries_of_another_topic_of_the_group_outlive_retention(
    case: Case, pool: asyncpg.Pool
) -> None:
    """Group g1 runs two kinds of members on one ledger: some consume `identity`, some
    `billing`. Every billing member is down longer than the ledger retention with 5 events
    committed but not acknowledged. An identity member's housekeeping keeps their rows, and the
    billing member that comes back reclaims the 5 entries without applying them again."""
    billing = wire.Keys("billing", case.prefix)
    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 5, topic="billing")
    await case.redis.xgroup_create(billing.events, "g1", id="0")
    reply = await case.redis.xreadgroup("g1", "dead", {billing.events: ">"}, count=5)
    entries = [eid.decode() for eid, _ in reply[0][1]]
    await case.pg.executemany(
        f"INSERT INTO {case.schema}.{database.LEDGER_TABLE} (consumer_group, event_id, "
        "event_type, stream, entry_id, processed_at) VALUES ('g1', $1, "
        "'conveyor.identity.v1.UserRegistered', $2, $3, now() - interval '3 days')",
        [(uuid.UUID(e), billing.events, x) for e, x in zip(ids, entries, strict=True)],
    )
    await case.pg.executemany(
        f"INSERT INTO {case.schema}.effects (consumer_group, event_id, attempt) "
        "VALUES ('g1', $1, 1)",
        [(uuid.UUID(e),) for e in ids],
    )
    identity_member = ConsumerSettings(
        group="g1",
        topics=("identity",),
        consumer="i1",
        database_url=case.database_url,
        redis_url=case.redis_url,
        key_prefix=case.prefix,
        ledger_schema=case.schema,
        ledger_retention=86400.0,
    )
    report = await Housekeeper(
        pool, case.redis, identity_member, ConsumerMetrics(), catalog=ConsumerCatalog(pool)
    ).run_once(["identity"])
    conf = {
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "group": "g1",
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
        "block": 0.05,
        "claim_idle": 0.1,
        "consumer": "b2",
    }
    async with running_consumer(effect_router(case.schema, topic="billing"), **conf):

        async def drained() -> bool:
            info = await case.redis.xinfo_groups(billing.events)
            return info[0]["pending"] == 0

        await wait_until(drained, what="the billing entries reclaimed and acknowledged")
    counts = await effect_counts(case.pg, case.schema, "g1")
    assert (report.ledger_deleted, counts) == (0, dict.fromkeys(ids, 1))
