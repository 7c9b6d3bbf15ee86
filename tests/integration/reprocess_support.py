"""The reprocess tests' fixtures: dead letters made as a consumer makes them, reprocessed as the
AdminService servicer does, in a topic of one test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from admin import migrations
from admin.catalog import ConsumerCatalog, DeadLetterRecord, Progress
from admin.catalog import dead_letters as catalog
from admin.catalog.audit import AuditLog
from admin.catalog.reprocess import reprocess
from consumers import dead_letters
from consumers.deliveries import Entry
from conveyor import redis_client, wire
from conveyor.identity.v1 import events_pb2
from relay import envelope
from tests.integration.conftest import Case


@pytest.fixture(name="catalog_at_head", scope="session")
def fixture_catalog_at_head(services: tuple[str, str]) -> str:
    """The catalog migrated to head (with reprocess_requests), once per session."""
    migrations.upgrade_catalog(services[0])
    return services[0]


@pytest.fixture(name="pool")
async def fixture_pool(catalog_at_head: str, case: Case) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(case.database_url, min_size=1, max_size=6) as p:
        yield p


@pytest.fixture(name="conveyor_redis")
async def fixture_conveyor_redis(case: Case) -> AsyncIterator[Any]:
    """A Redis client made as the processes make theirs (no per-command socket timeout)."""
    client = redis_client.connect(case.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(name="topic")
async def fixture_topic(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A topic of this test alone; its catalog rows are deleted afterwards."""
    name = f"rp-{uuid.uuid4().hex[:12]}"
    yield name
    await pool.execute("DELETE FROM conveyor.dead_letters WHERE topic = $1", name)
    await pool.execute("DELETE FROM conveyor.audit WHERE principal = $1", principal_of(name))
    await pool.execute(
        "DELETE FROM conveyor.reprocess_requests WHERE starts_with(idempotency_key, $1)", name
    )


def principal_of(topic: str) -> str:
    return f"op-{topic}"


class Fixture:
    """Makes dead letters the way a consumer does, and reprocesses them as the servicer would."""

    def __init__(self, case: Case, pool: asyncpg.Pool, topic: str, client: Any) -> None:
        self.case = case
        self.client = client
        """The client reprocess calls use."""
        self.pool = pool
        self.topic = topic
        self.keys = wire.Keys(topic, case.prefix)
        self.principal = principal_of(topic)
        self.audit = AuditLog(pool, case.prefix)
        self.ledgers: dict[str, str | None] = {"billing": case.schema, "mailer": None}

    async def dead_letters(self, n: int, group: str = "billing") -> list[DeadLetterRecord]:
        """`n` events published to the topic, each dead-lettered by `group` and recorded."""
        pipe = self.case.redis.pipeline(transaction=False)
        originals = [self._original(i) for i in range(n)]
        for fields in originals:
            pipe.xadd(self.keys.events, fields)
        source_ids = await pipe.execute()
        entries = [
            _dead_letter_fields(Entry(self.keys.events, i.decode(), fields, attempt=3), group)
            for i, fields in zip(source_ids, originals, strict=True)
        ]
        for dead in entries:
            pipe.xadd(self.keys.dlq, dead)
        dl_ids = [i.decode() for i in await pipe.execute()]
        rows = [
            dead_letters.catalog_row(self.topic, self.keys.dlq, i, dead)
            for i, dead in zip(dl_ids, entries, strict=True)
        ]
        await ConsumerCatalog(self.pool).record_dead_letters(rows)
        return await self.records(dl_ids)

    def _original(self, i: int) -> dict[bytes, bytes]:
        event_id = envelope.uuid7()
        message = events_pb2.UserRegistered(user_id=f"u{i}", email=f"u{i}@example.com")
        event = envelope.build(
            message,
            event_id=event_id,
            source="test",
            aggregate_type="user",
            aggregate_id=f"agg{i}",
            occurred_at=None,
            headers={},
        )
        return {
            wire.F_VERSION: wire.LAYOUT_VERSION,
            wire.F_EVENT_ID: str(event_id).encode(),
            wire.F_EVENT_TYPE: event.type.encode(),
            wire.F_AGGREGATE_ID: event.aggregate_id.encode(),
            wire.F_TRACEPARENT: b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            wire.F_EVENT: event.SerializeToString(),
        }

    async def records(self, entry_ids: list[str]) -> list[DeadLetterRecord]:
        return await catalog.get_dead_letters(self.pool, self.case.prefix, self.topic, entry_ids)

    async def run(self, records: list[DeadLetterRecord], **options: Any) -> Progress:
        return await reprocess(
            self.pool,
            self.client,
            topic=self.topic,
            records=records,
            key_prefix=self.case.prefix,
            principal=options.pop("principal", self.principal),
            audit=self.audit,
            ledger_schemas=self.ledgers,
            **options,
        )

    def key(self, name: str) -> str:
        return f"{self.topic}:{name}"

    async def retries(self, group: str = "billing") -> list[tuple[str, dict[bytes, bytes]]]:
        return [(i.decode(), f) for i, f in await self.case.redis.xrange(self.keys.retry(group))]

    async def states(self) -> dict[str, str]:
        rows = await self.pool.fetch(
            "SELECT dlq_entry_id, state FROM conveyor.dead_letters WHERE topic = $1", self.topic
        )
        return {r["dlq_entry_id"]: r["state"] for r in rows}

    async def audit_rows(self) -> list[Any]:
        rows: list[Any] = await self.pool.fetch(
            "SELECT action, target_ids, outcome, reason, detail::text FROM conveyor.audit "
            "WHERE principal = $1 ORDER BY id",
            self.principal,
        )
        return rows

    async def mark_applied(self, record: DeadLetterRecord, result: str = "success") -> None:
        await self.pool.execute(
            f"INSERT INTO {self.case.schema}.event_ledger (consumer_group, event_id, event_type, "
            "stream, entry_id, processing_result) VALUES ($1, $2, $3, $4, $5, $6)",
            record.group,
            uuid.UUID(record.event_id),
            record.event_type,
            record.source_stream,
            record.source_entry_id,
            result,
        )


def _dead_letter_fields(entry: Entry, group: str) -> dict[bytes, bytes | str]:
    """What a consumer of `group` writes to the dead-letter stream after three failures."""
    return dead_letters.fields(
        entry,
        reason="max_attempts",
        group=group,
        consumer="c1",
        error_class="RuntimeError",
        error="boom",
    )


@pytest.fixture(name="f")
def fixture_f(case: Case, pool: asyncpg.Pool, topic: str, conveyor_redis: Any) -> Fixture:
    return Fixture(case, pool, topic, conveyor_redis)
