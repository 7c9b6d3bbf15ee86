"""The trace of one event: its outbox row, stream entries, ledger rows, dead letters and the
audit trail of those, each part looked at on its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from redis.exceptions import RedisError

from admin.catalog.audit import audit_entries
from admin.catalog.dead_letters import dead_letters_for_event
from admin.catalog.layouts import layouts, name_of_event, named_keys
from admin.catalog.records import AuditEntry, DeadLetterRecord
from admin.errors import InvalidInput
from conveyor import database, wire

TRACE_WINDOW_MS: Final = 5000
"""How far, either side of the outbox row's publish time, the topic stream is searched."""

TRACE_SCAN_LIMIT: Final = 10_000

REDIS_TIMEOUT: Final = 1.0
"""Seconds one Redis call may take before the trace reports Redis as unreachable."""

_SCAN_PAGE: Final = 1000


@dataclass(frozen=True)
class OutboxRecord:
    """An event's outbox row, while the outbox still keeps it."""

    schema: str
    id: int
    topic: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True)
class LedgerRecord:
    """One consumer group's ledger row for an event."""

    schema: str
    group: str
    result: str
    processed_at: datetime
    stream: str
    entry_id: str


@dataclass(frozen=True)
class StreamRecord:
    """An entry of a topic stream carrying the event."""

    stream: str
    entry_id: str


@dataclass(frozen=True)
class EventTrace:
    """Everything the deployment knows about one event id."""

    event_id: str
    outbox: OutboxRecord | None
    stream_entries: tuple[StreamRecord, ...]
    ledger: tuple[LedgerRecord, ...]
    dead_letters: tuple[DeadLetterRecord, ...]
    actions: tuple[AuditEntry, ...]
    """Audit entries naming any of the event's dead letters (by entry id) or the event id."""
    unreachable: tuple[str, ...]
    """Parts that could not be looked at, and why, e.g. "schema billing: no outbox table"."""
    schemas: tuple[str, ...] = ()
    """Schemas looked in for the outbox row and ledger rows."""


def _event_id(text: str) -> str:
    try:
        if len(text) > 64:
            raise ValueError("too long")
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidInput(
            f"invalid event id {text[:64]!r}: use a UUID, "
            "e.g. 0190c1f8-9f6e-7b7a-8d1e-3f2a4b5c6d7e",
            field="event_id",
            value=text[:64],
        ) from None


def _check_config(schemas: Sequence[str], key_prefix: str) -> None:
    # Schema names are interpolated into SQL as identifiers, so they are checked before use.
    for field, value, check in [
        *(("schemas", s, database.validate_schema) for s in schemas),
        ("key_prefix", key_prefix, wire.validate_prefix),
    ]:
        try:
            check(value)
        except ValueError as exc:
            raise InvalidInput(str(exc), field=field, value=value[:64]) from None


async def trace_event(
    pool: asyncpg.Pool,
    redis_client: Any,
    event_id: str,
    *,
    schemas: Sequence[str],
    key_prefix: str,
    redis_timeout: float = REDIS_TIMEOUT,
) -> EventTrace:
    """Where one event has been: its outbox row (in the first of `schemas` holding it), the
    topic stream entries carrying it, ledger rows, dead letters and the audit trail of those.

    Parts that cannot be looked at (a schema without the tables, Redis down) are listed in
    `unreachable` instead of failing the whole trace.
    """
    eid = _event_id(event_id)
    _check_config(schemas, key_prefix)
    unreachable: list[str] = []
    outbox, ledger = await _app_rows(pool, eid, schemas, unreachable)
    dead = tuple(await dead_letters_for_event(pool, key_prefix, uuid.UUID(eid)))
    actions = await audit_entries(pool, key_prefix, [*(d.entry_id for d in dead), eid])
    entries: list[StreamRecord] = []
    if outbox is not None and outbox.published_at is not None:
        found = await layouts(pool, key_prefix)  # a partitioned topic: the event's partition
        name = name_of_event(outbox.topic, outbox.aggregate_id, found)
        stream = named_keys(name, key_prefix).events
        entries = await _stream_entries(
            redis_client,
            stream,
            eid,
            outbox.published_at,
            call_timeout=redis_timeout,
            unreachable=unreachable,
        )
    return EventTrace(
        event_id=eid,
        outbox=outbox,
        stream_entries=tuple(entries),
        ledger=tuple(ledger),
        dead_letters=dead,
        actions=tuple(actions),
        unreachable=tuple(unreachable),
        schemas=tuple(schemas),
    )


async def _app_rows(
    pool: asyncpg.Pool, eid: str, schemas: Sequence[str], unreachable: list[str]
) -> tuple[OutboxRecord | None, list[LedgerRecord]]:
    outbox: OutboxRecord | None = None
    ledger: list[LedgerRecord] = []
    key = uuid.UUID(eid)
    async with pool.acquire() as conn:
        for schema in schemas:
            tables = await conn.fetchrow(
                "SELECT to_regclass($1) IS NOT NULL AS outbox, "
                "to_regclass($2) IS NOT NULL AS ledger",
                f"{schema}.{database.OUTBOX_TABLE}",
                f"{schema}.{database.LEDGER_TABLE}",
            )
            try:
                if not tables["outbox"]:
                    unreachable.append(f"schema {schema}: no {database.OUTBOX_TABLE} table")
                elif outbox is None:
                    outbox = await _outbox_row(conn, schema, key)
                if not tables["ledger"]:
                    unreachable.append(f"schema {schema}: no {database.LEDGER_TABLE} table")
                else:
                    ledger += await _ledger_rows(conn, schema, key)
            except asyncpg.UndefinedTableError as exc:  # dropped since the check above
                unreachable.append(f"schema {schema}: {exc}")
    return outbox, ledger


async def _outbox_row(conn: Any, schema: str, key: uuid.UUID) -> OutboxRecord | None:
    row = await conn.fetchrow(
        "SELECT id, topic, event_type, aggregate_type, aggregate_id, created_at, published_at "
        f"FROM {schema}.{database.OUTBOX_TABLE} WHERE event_id = $1",
        key,
    )
    return None if row is None else OutboxRecord(schema=schema, **dict(row))


async def _ledger_rows(conn: Any, schema: str, key: uuid.UUID) -> list[LedgerRecord]:
    rows = await conn.fetch(
        "SELECT consumer_group, processing_result, processed_at, stream, entry_id "
        f"FROM {schema}.{database.LEDGER_TABLE} WHERE event_id = $1 "
        "ORDER BY processed_at, consumer_group",
        key,
    )
    return [
        LedgerRecord(
            schema=schema,
            group=r["consumer_group"],
            result=r["processing_result"],
            processed_at=r["processed_at"],
            stream=r["stream"],
            entry_id=r["entry_id"],
        )
        for r in rows
    ]


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def _stream_entries(
    client: Any,
    stream: str,
    eid: str,
    published_at: datetime,
    *,
    call_timeout: float,
    unreachable: list[str],
) -> list[StreamRecord]:
    """Entries of `stream` whose event id field is `eid`, looked for among the entries added
    within TRACE_WINDOW_MS of the publish time (entry ids start with their add time)."""
    ms = int(published_at.timestamp() * 1000)
    # An incomplete end id means its last sequence number, so the whole millisecond is in range.
    start, end = f"{max(ms - TRACE_WINDOW_MS, 0)}-0", str(ms + TRACE_WINDOW_MS)
    found: list[StreamRecord] = []
    scanned = 0
    try:
        while scanned < TRACE_SCAN_LIMIT:
            count = min(_SCAN_PAGE, TRACE_SCAN_LIMIT - scanned)
            async with asyncio.timeout(call_timeout):
                page = await client.xrange(stream, min=start, max=end, count=count)
            for entry_id, fields in page:
                value = fields.get(wire.F_EVENT_ID, fields.get(wire.F_EVENT_ID.decode()))
                if value is not None and _text(value) == eid:
                    found.append(StreamRecord(stream, _text(entry_id)))
            scanned += len(page)
            if len(page) < count:
                return found
            start = "(" + _text(page[-1][0])
    except (RedisError, OSError, TimeoutError) as exc:
        unreachable.append(f"redis: {exc or type(exc).__name__}")
        return found
    unreachable.append(
        f"stream {stream}: searched the first {TRACE_SCAN_LIMIT} entries around the publish time "
        "only"
    )
    return found
