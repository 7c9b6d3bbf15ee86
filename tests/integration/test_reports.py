"""The ops plane's dead-letter report and event trace, on real PG and Redis."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from admin import migrations
from admin.catalog import reports, traces
from admin.errors import InvalidInput
from conveyor import wire
from tests.integration.catalog_support import (
    NOW,
    PREFIX,
    add,
    fixture_catalog_url,  # noqa: F401 - a pytest fixture
    fixture_pool,  # noqa: F401 - a pytest fixture
    fixture_topic,  # noqa: F401 - a pytest fixture
)

# --- report ----------------------------------------------------------------------------------


def ago(minutes: int) -> datetime:
    return NOW - timedelta(minutes=minutes)


REPORT_ROWS: list[dict[str, Any]] = [
    {"created_at": ago(5), "error_message": f"user {uuid.uuid4()} not found"},
    {"created_at": ago(20), "error_message": f"user {uuid.uuid4()} not found"},
    {"created_at": ago(80), "error_message": f"user {uuid.uuid4()} not found"},
    {
        "created_at": ago(90),
        "error_message": "timeout after 1500 ms on 'db-1'",
        "consumer_group": "billing",
        "reason": "rejected",
    },
    {
        "created_at": ago(200),
        "error_message": 'timeout after 30 ms on "db-2"',
        "consumer_group": "billing",
        "event_type": "conveyor.test.v1.Other",
    },
    {
        "created_at": ago(299),
        "error_class": "ValueError",
        "error_message": "checksum deadbeef42 mismatch",
    },
    {"created_at": ago(301), "error_message": "outside the window"},
    {"created_at": NOW + timedelta(minutes=1), "error_message": "after now"},
]
"""Six dead letters in the five hours up to NOW, one just before and one just after."""


async def test_report_counts_and_fingerprints(pool: asyncpg.Pool, topic: str) -> None:
    for values in REPORT_ROWS:
        await add(pool, topic, **values)
    report = await reports.dead_letter_report(pool, PREFIX, topic, 5, now=NOW, processed=60)
    assert report.total == 6
    assert (report.window_start, report.window_end) == (NOW - timedelta(hours=5), NOW)
    assert [(c.key, c.count) for c in report.by_group] == [("g", 4), ("billing", 2)]
    assert [(c.key, c.count) for c in report.by_reason] == [("max_attempts", 5), ("rejected", 1)]
    assert [(c.key, c.count) for c in report.by_event_type] == [
        ("conveyor.test.v1.Thing", 5),
        ("conveyor.test.v1.Other", 1),
    ]
    prints = [(f.error_class, f.message, f.count) for f in report.fingerprints]
    assert prints == [
        ("RuntimeError", "user <uuid> not found", 3),
        ("RuntimeError", "timeout after <n> ms on <str>", 2),
        ("ValueError", "checksum <hex> mismatch", 1),
    ]
    first = report.fingerprints[0]
    assert (first.first_seen, first.last_seen) == (ago(80), ago(5))
    assert report.success_rate == pytest.approx(0.9)


async def test_report_histogram_is_zero_filled(pool: asyncpg.Pool, topic: str) -> None:
    for values in REPORT_ROWS:
        await add(pool, topic, **values)
    report = await reports.dead_letter_report(pool, PREFIX, topic, 5, now=NOW)
    assert [(h.hour, h.count) for h in report.histogram] == [
        (datetime(2030, 1, 1, 6, tzinfo=UTC), 1),  # 05:31: the window's partial first hour
        (datetime(2030, 1, 1, 7, tzinfo=UTC), 1),
        (datetime(2030, 1, 1, 8, tzinfo=UTC), 0),
        (datetime(2030, 1, 1, 9, tzinfo=UTC), 2),
        (datetime(2030, 1, 1, 10, tzinfo=UTC), 2),
    ]
    assert report.success_rate is None, "no processed count given"
    quiet = await reports.dead_letter_report(pool, PREFIX, topic, 720, now=NOW - timedelta(days=60))
    assert quiet.total == 0 and quiet.fingerprints == () and quiet.by_group == ()
    assert len(quiet.histogram) == 720 and {h.count for h in quiet.histogram} == {0}
    for bad in (0, 721, -1):
        with pytest.raises(InvalidInput) as err:
            await reports.dead_letter_report(pool, PREFIX, topic, bad, now=NOW)
        assert err.value.field == "hours"


# --- trace -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traced:
    """An event with a trace everywhere: outbox, topic stream, two ledger rows, a dead letter."""

    event_id: uuid.UUID
    schema: str
    outbox_id: int
    stream: str
    entry_id: str
    dead_letter: dict[str, Any]


@pytest.fixture
async def traced(
    pool: asyncpg.Pool,
    topic: str,
    database_url: str,
    schema: str,
    key_prefix: str,
    redis_client: aioredis.Redis,
) -> Traced:
    # Alembic runs its own event loop, so in a worker thread.
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    event_id = uuid.uuid4()
    outbox_id = await pool.fetchval(
        f"INSERT INTO {schema}.outbox (event_id, topic, event_type, aggregate_type, aggregate_id, "
        "payload, published_at) VALUES ($1, $2, 'conveyor.test.v1.Thing', 'thing', 'a1', 'x', "
        "now()) RETURNING id",
        event_id,
        topic,
    )
    stream = wire.Keys(topic, key_prefix).events
    await redis_client.xadd(stream, {wire.F_EVENT_ID: str(uuid.uuid4()), wire.F_EVENT: b"x"})
    entry = await redis_client.xadd(stream, {wire.F_EVENT_ID: str(event_id), wire.F_EVENT: b"x"})
    await redis_client.xadd(stream, {b"other": b"1"})
    entry_id = entry.decode() if isinstance(entry, bytes) else entry
    await pool.executemany(
        f"INSERT INTO {schema}.event_ledger (consumer_group, event_id, event_type, stream, "
        "entry_id, processing_result) VALUES ($1, $2, 'conveyor.test.v1.Thing', $3, $4, $5)",
        [(g, event_id, stream, entry_id, r) for g, r in (("g1", "success"), ("g2", "failure"))],
    )
    dead = await add(
        pool,
        topic,
        event_id=event_id,
        consumer_group="g2",
        dlq_stream=wire.Keys(topic, key_prefix).dlq,
    )
    await add(pool, topic)  # another event's
    await pool.execute(
        "INSERT INTO conveyor.audit (detail, principal, action, target_ids, outcome) "
        "VALUES (jsonb_build_object('key_prefix', $1::text), $2, 'reprocess', $3, 'ok')",
        key_prefix,
        topic,
        [dead["dlq_entry_id"]],
    )
    return Traced(event_id, schema, outbox_id, stream, entry_id, dead)


async def test_trace_event_finds_every_trace_of_an_event(
    pool: asyncpg.Pool, traced: Traced, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    trace = await traces.trace_event(
        pool,
        redis_client,
        str(traced.event_id),
        schemas=[traced.schema, "t_no_such_schema"],
        key_prefix=key_prefix,
    )
    assert trace.outbox is not None
    assert (trace.outbox.schema, trace.outbox.id) == (traced.schema, traced.outbox_id)
    assert trace.stream_entries == (traces.StreamRecord(traced.stream, traced.entry_id),)
    assert [(r.group, r.result, r.entry_id) for r in trace.ledger] == [
        ("g1", "success", traced.entry_id),
        ("g2", "failure", traced.entry_id),
    ]
    assert [d.id for d in trace.dead_letters] == [traced.dead_letter["id"]]
    assert [a.action for a in trace.actions] == ["reprocess"]
    assert trace.unreachable == (
        "schema t_no_such_schema: no outbox table",
        "schema t_no_such_schema: no event_ledger table",
    )


async def test_trace_event_without_redis_reports_it_unreachable(
    pool: asyncpg.Pool, traced: Traced, key_prefix: str
) -> None:
    down = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        trace = await traces.trace_event(
            pool, down, str(traced.event_id), schemas=[traced.schema], key_prefix=key_prefix
        )
    finally:
        await down.aclose()
    assert trace.outbox is not None and len(trace.dead_letters) == 1 and len(trace.ledger) == 2
    assert trace.stream_entries == ()
    assert len(trace.unreachable) == 1 and trace.unreachable[0].startswith("redis: ")


async def test_trace_event_of_unknown_or_malformed_id(
    pool: asyncpg.Pool, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    trace = await traces.trace_event(
        pool, redis_client, str(uuid.uuid4()), schemas=[], key_prefix=key_prefix
    )
    assert trace.outbox is None and trace.dead_letters == () and trace.unreachable == ()
    for bad in ("abc", "", "1" * 10_000, "' OR 1=1 --"):
        with pytest.raises(InvalidInput) as err:
            await traces.trace_event(pool, redis_client, bad, schemas=[], key_prefix=key_prefix)
        assert err.value.field == "event_id"
    with pytest.raises(InvalidInput) as err:
        await traces.trace_event(
            pool, redis_client, str(uuid.uuid4()), schemas=["x; DROP"], key_prefix=key_prefix
        )
    assert err.value.field == "schemas"
