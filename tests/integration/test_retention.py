"""Housekeeping trims only what every group acknowledged, caps and counts, expires dead letters,
idle members and ledger rows (BRIEF guarantees 3 and 6)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from admin.catalog import ConsumerCatalog
from consumers import ConsumerSettings, dead_letters
from consumers.metrics import ConsumerMetrics
from consumers.retention import TRY_LOCK_SQL, UNLOCK_SQL, Housekeeper, retention_warning
from conveyor import database, wire
from conveyor import telemetry as t
from tests.integration.conftest import Case
from tests.integration.consumer_support import effect_router, publish, running_consumer
from tests.processes import wait_until

TOPIC = "identity"
_DEAD_LETTERS = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"


def settings(case: Case, **overrides: Any) -> ConsumerSettings:
    base: dict[str, Any] = {
        "group": "g1",
        "topics": (TOPIC,),
        "consumer": "me",
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "key_prefix": case.prefix,
        "ledger_schema": case.schema,
    }
    return ConsumerSettings(**(base | overrides))


@pytest.fixture
async def pool(case: Case) -> AsyncIterator[asyncpg.Pool]:
    """A pool for the housekeeper; the catalog rows of this test's streams go with it."""
    p = await asyncpg.create_pool(case.database_url, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.execute(f"DELETE FROM {_DEAD_LETTERS} WHERE dlq_stream LIKE $1", case.prefix + ":%")
        await p.close()


def housekeeper(case: Case, pool: asyncpg.Pool, meter: Any = None, **overrides: Any) -> Housekeeper:
    return Housekeeper(
        pool,
        case.redis,
        settings(case, **overrides),
        ConsumerMetrics(meter=meter),
        catalog=ConsumerCatalog(pool),
    )


async def add(case: Case, stream: str, n: int) -> list[str]:
    return [(await case.redis.xadd(stream, {"n": str(i)})).decode() for i in range(n)]


async def stream_ids(case: Case, stream: str) -> list[str]:
    return [eid.decode() for eid, _ in await case.redis.xrange(stream)]


async def read(case: Case, stream: str, group: str, consumer: str, count: int) -> list[str]:
    reply = await case.redis.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return [eid.decode() for eid, _ in reply[0][1]] if reply else []


async def test_trim_removes_only_entries_every_group_acknowledged(case: Case, pool: Any) -> None:
    keys = wire.Keys(TOPIC, case.prefix)
    ids = await add(case, keys.events, 10)
    for group in ("billing", "mailer"):
        await case.redis.xgroup_create(keys.events, group, id="0")
    await case.redis.xack(
        keys.events, "billing", *await read(case, keys.events, "billing", "b", 10)
    )
    read_by_mailer = await read(case, keys.events, "mailer", "m", 6)
    await case.redis.xack(keys.events, "mailer", read_by_mailer[0], read_by_mailer[1], ids[4])
    keeper = housekeeper(case, pool)

    report = await keeper.run_once([TOPIC])
    # ids[2], ids[3], ids[5] are pending for mailer; ids[6:] were never delivered to it.
    assert await stream_ids(case, keys.events) == ids[2:]
    assert report.trimmed == {keys.events: 2}
    assert report.errors == []

    await case.redis.xack(keys.events, "mailer", ids[2], ids[3], ids[5])
    report = await keeper.run_once([TOPIC])
    assert await stream_ids(case, keys.events) == ids[6:], "undelivered entries stay"
    assert report.trimmed == {keys.events: 4}


async def test_stream_without_groups_is_not_trimmed(case: Case, pool: Any) -> None:
    keys = wire.Keys(TOPIC, case.prefix)
    ids = await add(case, keys.events, 5)
    report = await housekeeper(case, pool).run_once([TOPIC])
    assert await stream_ids(case, keys.events) == ids
    assert report.trimmed == {}
    assert report.errors == []


async def test_missing_streams_are_no_error(case: Case, pool: Any) -> None:
    report = await housekeeper(case, pool).run_once([TOPIC, "billing"])
    assert report.errors == []
    assert report.trimmed == {} and report.consumers_removed == []


async def test_length_cap_trims_counts_and_warns(
    case: Case, pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    keys = wire.Keys(TOPIC, case.prefix)
    ids = await add(case, keys.events, 10)
    await case.redis.xgroup_create(keys.events, "g1", id="0")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    keeper = housekeeper(case, pool, meter=provider.get_meter("test"), max_stream_length=3)

    with caplog.at_level(logging.WARNING, logger="consumers.retention"):
        report = await keeper.run_once([TOPIC])
    assert await stream_ids(case, keys.events) == ids[7:]
    assert report.trimmed == {keys.events: 0}, "nothing was acknowledged"
    assert report.capped == {keys.events: 7}
    assert trimmed_counter(reader) == {keys.events: 7}
    assert any("count=7" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def trimmed_counter(reader: InMemoryMetricReader) -> dict[str, int]:
    """events_trimmed by stream, as an exporter would see it."""
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == t.EVENTS_TRIMMED
        for point in metric.data.data_points
    ]
    return {str((p.attributes or {})[t.ATTR_STREAM]): int(p.value) for p in points}


async def test_trim_skips_a_stream_another_process_is_trimming(case: Case, pool: Any) -> None:
    keys = wire.Keys(TOPIC, case.prefix)
    ids = await add(case, keys.events, 4)
    await case.redis.xgroup_create(keys.events, "g1", id="0")
    await case.redis.xack(keys.events, "g1", *await read(case, keys.events, "g1", "c", 4))
    keeper = housekeeper(case, pool)
    assert await case.pg.fetchval(TRY_LOCK_SQL, keys.events), "the test holds the trim lock"
    try:
        report = await keeper.run_once([TOPIC])
        assert report.skipped == [keys.events]
        assert await stream_ids(case, keys.events) == ids, "not trimmed while locked elsewhere"
    finally:
        await case.pg.fetchval(UNLOCK_SQL, keys.events)
    report = await keeper.run_once([TOPIC])
    assert report.skipped == [] and report.trimmed == {keys.events: 4}
    assert await stream_ids(case, keys.events) == []
    # The housekeeper released its own session lock after trimming.
    assert await case.pg.fetchval(TRY_LOCK_SQL, keys.events)
    await case.pg.fetchval(UNLOCK_SQL, keys.events)


async def test_expired_dead_letters_leave_stream_and_catalog(case: Case, pool: Any) -> None:
    keys = wire.Keys(TOPIC, case.prefix)
    states = {
        "old-resolved": ("resolved", 3),
        "old-reprocessed": ("reprocessed", 3),
        "old-open": ("open", 3),
        "old-reprocessing": ("reprocessing", 3),
        "new-resolved": ("resolved", 0),
    }
    entry_of: dict[str, str] = {}
    for label in states:
        fields = {
            wire.F_EVENT_ID: str(uuid.uuid4()).encode(),
            wire.DL_REASON: b"rejected",
            wire.DL_GROUP: b"g1",
            b"label": label.encode(),
        }
        entry_of[label] = (await case.redis.xadd(keys.dlq, fields)).decode()
        row = dead_letters.catalog_row(TOPIC, keys.dlq, entry_of[label], fields)
        await ConsumerCatalog(pool).record_dead_letters([row])
    for label, (state, days) in states.items():
        await case.pg.execute(
            f"UPDATE {_DEAD_LETTERS} SET state = $1, updated_at = now() - make_interval(days => $2)"
            " WHERE dlq_stream = $3 AND dlq_entry_id = $4",
            state,
            days,
            keys.dlq,
            entry_of[label],
        )
    keeper = housekeeper(case, pool, dead_letter_retention=86400.0)
    keeper._dead_letter_batch = 1  # exercise several batches

    report = await keeper.run_once([TOPIC])
    kept = ["old-open", "old-reprocessing", "new-resolved"]
    assert report.dead_letters_removed == 2
    assert await stream_ids(case, keys.dlq) == [entry_of[label] for label in kept]
    rows = await case.pg.fetch(
        f"SELECT dlq_entry_id FROM {_DEAD_LETTERS} WHERE dlq_stream = $1 ORDER BY id", keys.dlq
    )
    assert [r[0] for r in rows] == [entry_of[label] for label in kept]


async def test_idle_members_without_pending_entries_are_removed(case: Case, pool: Any) -> None:
    keys = wire.Keys(TOPIC, case.prefix)
    retry = keys.retry("g1")
    await add(case, keys.events, 3)
    for stream, group in ((keys.events, "g1"), (retry, "g1"), (keys.events, "g2")):
        await case.redis.xgroup_create(stream, group, id="0", mkstream=True)
    for stream, group, name in (
        (keys.events, "g1", "idle"),
        (keys.events, "g1", "me"),
        (retry, "g1", "idle"),
        (keys.events, "g2", "other"),
    ):
        await case.redis.xgroup_createconsumer(stream, group, name)
    busy = await read(case, keys.events, "g1", "busy", 2)
    await asyncio.sleep(0.3)
    keeper = housekeeper(case, pool, idle_consumer_timeout=0.2)

    report = await keeper.run_once([TOPIC])
    assert sorted(report.consumers_removed) == sorted([(keys.events, "idle"), (retry, "idle")])
    assert await members(case, keys.events, "g1") == {"busy": 2, "me": 0}
    assert await members(case, retry, "g1") == {}
    assert await members(case, keys.events, "g2") == {"other": 0}, "other groups untouched"
    pending = await case.redis.xpending_range(keys.events, "g1", "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == busy


async def test_member_that_took_entries_since_it_was_listed_is_kept(case: Case, pool: Any) -> None:
    """The removal re-checks pending in the same script, so a read racing it keeps its entries."""
    keys = wire.Keys(TOPIC, case.prefix)
    await add(case, keys.events, 2)
    await case.redis.xgroup_create(keys.events, "g1", id="0")
    await read(case, keys.events, "g1", "late", 2)
    keeper = housekeeper(case, pool)
    script = keeper._delete_idle  # what _remove_idle runs once a member looked idle and empty
    assert await script(keys=[keys.events], args=["g1", "late", 0]) == -1
    assert await members(case, keys.events, "g1") == {"late": 2}


async def members(case: Case, stream: str, group: str) -> dict[str, int]:
    return {
        m["name"].decode(): m["pending"] for m in await case.redis.xinfo_consumers(stream, group)
    }


async def insert_ledger(case: Case, group: str, n: int, days_ago: int) -> None:
    await case.pg.executemany(
        f"INSERT INTO {case.schema}.{database.LEDGER_TABLE} (consumer_group, event_id, event_type,"
        " stream, entry_id, processed_at) VALUES ($1, $2, 't', 's', '1-0', "
        "now() - make_interval(days => $3))",
        [(group, uuid.uuid4(), days_ago) for _ in range(n)],
    )


async def ledger_ages(case: Case) -> dict[tuple[str, bool], int]:
    rows = await case.pg.fetch(
        f"SELECT consumer_group, processed_at < now() - interval '1 day' AS old, count(*) "
        f"FROM {case.schema}.{database.LEDGER_TABLE} GROUP BY 1, 2"
    )
    return {(r[0], r[1]): r[2] for r in rows}


async def test_ledger_rows_past_retention_are_deleted(case: Case, pool: Any) -> None:
    await insert_ledger(case, "g1", 5, days_ago=3)
    await insert_ledger(case, "g1", 2, days_ago=0)
    await insert_ledger(case, "g2", 3, days_ago=3)
    at_least_once = housekeeper(case, pool, mode="at-least-once", ledger_retention=86400.0)
    assert (await at_least_once.run_once([TOPIC])).ledger_deleted == 0
    keeper = Housekeeper(
        pool,
        case.redis,
        settings(case, ledger_retention=86400),
        ConsumerMetrics(),
        catalog=ConsumerCatalog(pool),
        ledger_chunk=2,
    )

    report = await keeper.run_once([TOPIC])
    assert report.ledger_deleted == 5
    assert await ledger_ages(case) == {("g1", False): 2, ("g2", True): 3}


async def test_consumed_stream_is_trimmed_behind_a_real_consumer(case: Case, pool: Any) -> None:
    keys = wire.Keys(TOPIC, case.prefix)
    await case.pg.execute(
        f"CREATE TABLE {case.schema}.effects (consumer_group text, event_id uuid, "
        "aggregate_id text, attempt int, at timestamptz DEFAULT now())"
    )
    await publish(case.redis, case.prefix, 50)
    conf = {
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "group": "g1",
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
        "block": 0.05,
    }
    async with running_consumer(effect_router(case.schema), **conf):

        async def acked() -> bool:
            info = await case.redis.xinfo_groups(keys.events)
            return bool(info) and info[0]["lag"] == 0 and info[0]["pending"] == 0

        await wait_until(acked, what="the consumer acknowledged everything")
    report = await housekeeper(case, pool).run_once([TOPIC])
    assert report.trimmed == {keys.events: 50}
    assert await stream_ids(case, keys.events) == []


def test_retention_warning_when_ledger_expires_inside_redelivery_window() -> None:
    short = ConsumerSettings(group="g", topics=(TOPIC,), ledger_retention=60.0, claim_idle=30.0)
    message = retention_warning(short)
    assert message is not None and "ledger_retention=60s" in message
    assert retention_warning(ConsumerSettings(group="g", topics=(TOPIC,))) is None
    relaxed = ConsumerSettings(
        group="g", topics=(TOPIC,), ledger_retention=60.0, mode="at-least-once"
    )
    assert retention_warning(relaxed) is None, "no ledger, nothing to apply twice"


async def test_ledger_rows_of_entries_still_pending_outlive_retention(
    case: Case, pool: Any
) -> None:
    """Every member was down longer than the ledger retention: 10 events were applied and
    acknowledged, 10 more applied (COMMIT) but never acknowledged. Retention deletes the rows
    of the first 10, trimmed from the stream, and keeps those of the 10 still pending; a consumer
    that then reclaims them acknowledges them without applying them a second time."""
    keys = wire.Keys(TOPIC, case.prefix)
    await case.pg.execute(
        f"CREATE TABLE {case.schema}.effects (consumer_group text, event_id uuid, "
        "aggregate_id text, attempt int, at timestamptz DEFAULT now())"
    )
    ids = await publish(case.redis, case.prefix, 20)
    await case.redis.xgroup_create(keys.events, "g1", id="0")
    entries = await read(case, keys.events, "g1", "dead", 20)
    await case.redis.xack(keys.events, "g1", *entries[:10])
    rows = [("g1", uuid.UUID(e), keys.events, entry) for e, entry in zip(ids, entries, strict=True)]
    await case.pg.executemany(
        f"INSERT INTO {case.schema}.{database.LEDGER_TABLE} (consumer_group, event_id, event_type,"
        " stream, entry_id, processed_at) VALUES ($1, $2, 'conveyor.identity.v1.UserRegistered',"
        " $3, $4, now() - interval '3 days')",
        rows,
    )
    await case.pg.executemany(
        f"INSERT INTO {case.schema}.effects (consumer_group, event_id, attempt) VALUES ($1, $2, 1)",
        [(g, e) for g, e, _s, _x in rows],
    )

    report = await housekeeper(case, pool, ledger_retention=86400.0).run_once([TOPIC])
    assert report.trimmed == {keys.events: 10}
    assert report.ledger_deleted == 10
    kept = await case.pg.fetch(f"SELECT entry_id FROM {case.schema}.{database.LEDGER_TABLE}")
    assert {r[0] for r in kept} == set(entries[10:])

    conf = {
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "group": "g1",
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
        "block": 0.05,
        "claim_idle": 0.1,
    }
    async with running_consumer(effect_router(case.schema), **conf):

        async def drained() -> bool:
            info = await case.redis.xinfo_groups(keys.events)
            return info[0]["pending"] == 0

        await wait_until(drained, what="the pending entries reclaimed and acknowledged")
    counts = await case.pg.fetch(
        f"SELECT event_id::text, count(*) FROM {case.schema}.effects GROUP BY 1"
    )
    assert {r[0]: r[1] for r in counts} == dict.fromkeys(ids, 1)
