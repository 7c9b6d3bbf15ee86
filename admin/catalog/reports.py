"""Read-only views for operators: the dead-letter report of a window, and the trace of one event."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
from redis.exceptions import RedisError

from admin.catalog import dead_letters as catalog
from admin.catalog.dead_letters import AuditEntry, DeadLetterRecord
from admin.errors import InvalidInput
from conveyor import database, wire

MAX_HOURS: Final = 720
TOP_FINGERPRINTS: Final = 20
FINGERPRINT_CHARS: Final = 1000
"""Characters of an error message that make its fingerprint (messages run up to 64 KiB)."""
TRACE_WINDOW_MS: Final = 5000
"""How far, either side of the outbox row's publish time, the topic stream is searched."""
TRACE_SCAN_LIMIT: Final = 10_000
REDIS_TIMEOUT: Final = 1.0
"""Seconds one Redis call may take before the trace reports Redis as unreachable."""

_DEAD_LETTERS: Final = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"
_IN_WINDOW: Final = "{scope} = $1 AND created_at >= $2 AND created_at <= $3"
"""Completed with the column `catalog.scope` names (a constant, never user text)."""
_SCAN_PAGE: Final = 1000

# Applied in this order: quoted text first (it may hold anything), a UUID before the hex run its
# first group would otherwise become, and numbers last. A hex run needs a letter, so plain
# numbers of eight digits or more read as <n>.
_NORMALISERS: Final = (
    (r"""'[^']*'|"[^"]*\"""", "<str>", "g"),
    (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", "gi"),
    (r"\m(0x)?(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\M", "<hex>", "gi"),
    (r"\d+(\.\d+)?", "<n>", "g"),
)


@dataclass(frozen=True)
class CountByKey:
    """How many dead letters share one value of a dimension ("" when the value is unknown)."""

    key: str
    count: int


@dataclass(frozen=True)
class ErrorFingerprint:
    """Dead letters whose error class and message agree once ids and numbers are blanked out."""

    error_class: str
    message: str
    """The normalised message: `<uuid>`, `<hex>`, `<n>` and `<str>` stand for what varied."""
    count: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class HourCount:
    """Dead letters created in the clock hour (UTC) starting at `hour`."""

    hour: datetime
    count: int


@dataclass(frozen=True)
class DeadLetterReport:
    """Dead letters of one topic created in [window_start, window_end]."""

    topic: str
    hours: int
    window_start: datetime
    window_end: datetime
    total: int
    by_event_type: tuple[CountByKey, ...]
    by_reason: tuple[CountByKey, ...]
    by_group: tuple[CountByKey, ...]
    fingerprints: tuple[ErrorFingerprint, ...]
    """The most frequent first, at most TOP_FINGERPRINTS."""
    histogram: tuple[HourCount, ...]
    """Exactly `hours` clock hours, oldest first, ending with the one holding window_end; the
    first also counts the partial hour before it that the rolling window starts in."""
    success_rate: float | None
    """1 - total / processed, clamped to 0..1; None when the processed count was not given."""


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


# --- dead-letter report ------------------------------------------------------------------------


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _check_hours(hours: int) -> None:
    if type(hours) is not int or not 1 <= hours <= MAX_HOURS:
        raise InvalidInput(
            f"invalid hours {hours!r}: use 1 to {MAX_HOURS}", field="hours", value=str(hours)
        )


def _check_processed(processed: int | None) -> None:
    if processed is not None and processed < 0:
        raise InvalidInput(
            "processed must be zero or more", field="processed", value=str(processed)
        )


def _success_rate(total: int, processed: int | None) -> float | None:
    if not processed:  # unknown, or nothing processed: no rate to speak of
        return None
    # Clamped: dead letters of at-least-once groups are not in the ledger's processed count.
    return min(1.0, max(0.0, 1.0 - total / processed))


async def dead_letter_report(
    pool: asyncpg.Pool,
    topic: str,
    hours: int,
    *,
    now: datetime | None = None,
    processed: int | None = None,
    prefix: str | None = None,
) -> DeadLetterReport:
    """Counts, error fingerprints and an hourly histogram of the topic's dead letters created in
    the `hours` hours up to `now` (default: the current time).

    `processed` is how many events the topic's groups processed in the window, when the caller
    knows it (the ledger only knows exactly-once groups); it yields the success rate.
    """
    _check_hours(hours)
    _check_processed(processed)
    column, value = catalog.scope(topic, prefix)  # checks the topic, with its InvalidInput
    end = now or datetime.now(UTC)
    if end.utcoffset() is None:
        raise InvalidInput("now must carry a time zone", field="now", value=end.isoformat())
    start = end - timedelta(hours=hours)
    first_hour = _hour(end) - timedelta(hours=hours - 1)
    window = _Window(_IN_WINDOW.format(scope=column), (value, start, end))
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # One snapshot, so the total, the breakdowns and the histogram add up.
        total, by_type, by_reason, by_group = await _counts(conn, window)
        fingerprints = await _fingerprints(conn, window)
        per_hour = await _per_hour(conn, window, first_hour)
    histogram = tuple(
        HourCount(h, per_hour.get(h, 0))
        for h in (first_hour + timedelta(hours=i) for i in range(hours))
    )
    return DeadLetterReport(
        topic=topic,
        hours=hours,
        window_start=start,
        window_end=end,
        total=total,
        by_event_type=by_type,
        by_reason=by_reason,
        by_group=by_group,
        fingerprints=fingerprints,
        histogram=histogram,
        success_rate=_success_rate(total, processed),
    )


@dataclass(frozen=True, slots=True)
class _Window:
    """The report's rows: the WHERE clause (constants only) and its three parameters."""

    where: str
    params: tuple[str, datetime, datetime]


# GROUPING() sets a bit per column left out of the grouping set: event_type is the high bit.
_BY_EVENT_TYPE, _BY_REASON, _BY_GROUP, _ALL = 0b011, 0b101, 0b110, 0b111


async def _counts(
    conn: Any, window: _Window
) -> tuple[int, tuple[CountByKey, ...], tuple[CountByKey, ...], tuple[CountByKey, ...]]:
    rows = await conn.fetch(
        "SELECT GROUPING(event_type, reason, consumer_group) AS g, "
        "coalesce(event_type, reason, consumer_group, '') AS key, count(*) AS n "
        f"FROM {_DEAD_LETTERS} WHERE {window.where} "
        "GROUP BY GROUPING SETS ((), (event_type), (reason), (consumer_group))",
        *window.params,
    )

    def by(g: int) -> tuple[CountByKey, ...]:
        counts = [CountByKey(r["key"], r["n"]) for r in rows if r["g"] == g]
        return tuple(sorted(counts, key=lambda c: (-c.count, c.key)))

    total = next((r["n"] for r in rows if r["g"] == _ALL), 0)
    return total, by(_BY_EVENT_TYPE), by(_BY_REASON), by(_BY_GROUP)


def _normalised(column: str, first_param: int) -> str:
    """SQL replacing the varying parts of `column`; patterns go in as parameters from
    `first_param` on (they are constants, but parameters spare escaping them into SQL text)."""
    sql = column
    for i, (_pattern, placeholder, flags) in enumerate(_NORMALISERS):
        sql = f"regexp_replace({sql}, ${first_param + i}, '{placeholder}', '{flags}')"
    return sql


async def _fingerprints(conn: Any, window: _Window) -> tuple[ErrorFingerprint, ...]:
    message = _normalised(f"left(coalesce(error_message, ''), {FINGERPRINT_CHARS})", 5)
    rows = await conn.fetch(
        f"SELECT coalesce(error_class, '') AS error_class, {message} AS message, count(*) AS n, "
        "min(created_at) AS first_seen, max(created_at) AS last_seen "
        f"FROM {_DEAD_LETTERS} WHERE {window.where} GROUP BY 1, 2 "
        "ORDER BY n DESC, last_seen DESC, 1, 2 LIMIT $4",
        *window.params,
        TOP_FINGERPRINTS,
        *(pattern for pattern, _placeholder, _flags in _NORMALISERS),
    )
    return tuple(
        ErrorFingerprint(r["error_class"], r["message"], r["n"], r["first_seen"], r["last_seen"])
        for r in rows
    )


async def _per_hour(conn: Any, window: _Window, first_hour: datetime) -> dict[datetime, int]:
    # Clock hours in UTC (not the session's zone, which may be offset by half an hour); the
    # rolling window starts inside the hour before the first bucket, which that bucket absorbs.
    rows = await conn.fetch(
        "SELECT greatest(date_trunc('hour', created_at, 'UTC'), $4) AS hour, count(*) AS n "
        f"FROM {_DEAD_LETTERS} WHERE {window.where} GROUP BY 1",
        *window.params,
        first_hour,
    )
    return {r["hour"]: r["n"] for r in rows}


# --- event trace -------------------------------------------------------------------------------


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
    dead = tuple(await catalog.dead_letters_for_event(pool, uuid.UUID(eid), prefix=key_prefix))
    actions = await catalog.audit_for(pool, [*(d.entry_id for d in dead), eid], prefix=key_prefix)
    entries: list[StreamRecord] = []
    if outbox is not None and outbox.published_at is not None:
        stream = wire.Keys(outbox.topic, key_prefix).events
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
