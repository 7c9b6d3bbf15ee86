"""Dead letters: the entry written to the topic's dead-letter stream, and its catalog record."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import propagate, trace

from consumers.deliveries import Entry
from conveyor import database, redis_client, wire
from conveyor import telemetry as t
from conveyor.replies import text, uuid_or_none

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(t.TRACER)

TRACEBACK_LIMIT = 4000
"""Characters of traceback kept (the end of it, where the error was raised)."""
ERROR_LIMIT = 65536


def fields(
    entry: Entry,
    *,
    reason: str,
    group: str,
    consumer: str,
    error_class: str,
    error: str,
    exc: BaseException | None = None,
    traceparent: str | None = None,
) -> dict[bytes, bytes | str]:
    """The dead-letter entry: the original fields verbatim plus why, where and when it failed."""
    now_ms = int(time.time() * 1000)
    first = int(entry.first_failed * 1000) if entry.first_failed else now_ms
    out: dict[bytes, bytes | str] = dict(entry.fields)
    out.update(
        {
            wire.DL_SOURCE_STREAM: entry.stream,
            wire.DL_SOURCE_ENTRY: entry.entry_id,
            wire.DL_GROUP: group,
            wire.DL_CONSUMER: consumer,
            wire.DL_ATTEMPTS: str(entry.attempt),
            wire.DL_REASON: reason,
            wire.DL_ERROR_CLASS: error_class,
            wire.DL_ERROR: error[:ERROR_LIMIT],
            wire.DL_FIRST_FAILED: str(first),
            wire.DL_LAST_FAILED: str(now_ms),
        }
    )
    if exc is not None:
        text = "".join(traceback.format_exception(exc))
        out[wire.DL_TRACEBACK] = text[-TRACEBACK_LIMIT:]
    if traceparent:
        out[wire.DL_TRACEPARENT] = traceparent
    return out


@contextmanager
def span(entry: Entry, reason: str, *, enabled: bool) -> Iterator[str | None]:
    """A span for moving `entry` to the dead-letter stream, in the original event's trace;
    yields its traceparent for the dead letter (None when tracing is off)."""
    if not enabled:
        yield None
        return
    original = entry.fields.get(wire.F_TRACEPARENT)
    carrier = {"traceparent": original.decode(errors="replace")} if original else {}
    with _tracer.start_as_current_span(
        t.SPAN_DEAD_LETTER,
        context=propagate.extract(carrier),
        attributes={t.ATTR_REASON: reason, t.ATTR_MESSAGING_DESTINATION: entry.stream},
    ):
        out: dict[str, str] = {}
        propagate.inject(out)
        yield out.get(t.HEADER_TRACEPARENT)


def _field(fields: dict[bytes, Any], key: bytes) -> str | None:
    """A field as text for the catalog: PostgreSQL text cannot hold NUL, so it is escaped
    (the dead-letter stream keeps the bytes verbatim)."""
    value = fields.get(key)
    if value is None:
        return None
    decoded = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return decoded.replace("\x00", "\\x00")


def _when(fields: dict[bytes, Any], key: bytes) -> datetime | None:
    value = _field(fields, key)
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC) if value else None
    except ValueError:
        return None


def catalog_row(
    topic: str, dlq_stream: str, dlq_entry_id: str, f: dict[bytes, Any]
) -> tuple[Any, ...]:
    """The conveyor.dead_letters row describing one dead-letter entry."""
    reason = _field(f, wire.DL_REASON) or "validation"
    return (
        topic,
        dlq_stream,
        dlq_entry_id,
        _field(f, wire.DL_SOURCE_STREAM) or "",
        _field(f, wire.DL_SOURCE_ENTRY) or "",
        _field(f, wire.DL_GROUP) or "",
        _field(f, wire.DL_CONSUMER),
        uuid_or_none(_field(f, wire.F_EVENT_ID)),
        _field(f, wire.F_EVENT_TYPE),
        reason if reason in wire.REASONS else "validation",
        _field(f, wire.DL_ERROR_CLASS),
        _field(f, wire.DL_ERROR),
        int(_field(f, wire.DL_ATTEMPTS) or 0),
        _when(f, wire.DL_FIRST_FAILED),
        _when(f, wire.DL_LAST_FAILED),
        _field(f, wire.RT_DEAD_LETTER),
    )


_DEAD_LETTERS = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"
_CURSORS = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTER_CURSORS_TABLE}"
_INSERT = (
    f"INSERT INTO {_DEAD_LETTERS} (topic, dlq_stream, "
    "dlq_entry_id, source_stream, source_entry_id, consumer_group, consumer_name, event_id, "
    "event_type, reason, error_class, error_message, attempts, first_failed_at, last_failed_at, "
    "retry_of) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) "
    "ON CONFLICT (dlq_stream, dlq_entry_id) DO NOTHING"
)
# A reprocessed dead letter whose retry failed again is settled by the dead letter it became.
_SETTLE = (
    f"UPDATE {_DEAD_LETTERS} AS d SET retried_as = coalesce(d.retried_as, n.entry), "
    "state = CASE WHEN d.state IN ('open', 'reprocessing') THEN 'reprocessed' ELSE d.state END, "
    "updated_at = now() FROM unnest($2::text[], $3::text[]) AS n(entry, earlier) "
    "WHERE d.dlq_stream = $1 AND d.dlq_entry_id = n.earlier "
    "AND (d.retried_as IS NULL OR d.state IN ('open', 'reprocessing'))"
)
RECONCILE_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('conveyor.dlq:' || $1, 0))"
"""Transaction lock on one dead-letter stream ($1): reconciling it and expiring its entries
take it, so a reconcile never records an entry that retention is removing."""
RECONCILE_PAGE = 500
"""Dead-letter entries read and recorded per transaction."""


class DeadLetterCatalog:
    """Records dead letters in the catalog (state `open`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows; those already recorded are left as they are. A row that re-failed a
        reprocessed dead letter settles that one as `reprocessed`, pointing at the new row."""
        if rows:
            async with self._pool.acquire() as conn, conn.transaction():
                await _record(conn, rows)

    async def mark_reprocessed(self, dlq_stream: str, entry_ids: Sequence[str]) -> None:
        """Dead letters whose re-delivery was applied (or found applied) leave `reprocessing`."""
        if entry_ids:
            await self._pool.execute(
                f"UPDATE {_DEAD_LETTERS} "
                "SET state = 'reprocessed', updated_at = now() WHERE dlq_stream = $1 "
                "AND dlq_entry_id = ANY($2::text[]) AND state IN ('open', 'reprocessing')",
                dlq_stream,
                list(entry_ids),
            )

    async def reconcile(self, client: Any, keys: wire.Keys) -> int:
        """Record every entry of the topic's dead-letter stream after the stream's cursor (the
        last entry reconciled, kept in the catalog) and move the cursor on; return how many
        entries were looked at. Entry ids only grow, so nothing before the cursor is missing,
        however long the catalog was unreachable."""
        seen = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(RECONCILE_LOCK_SQL, keys.dlq)
                last = await conn.fetchval(
                    f"SELECT entry_id FROM {_CURSORS} WHERE dlq_stream = $1", keys.dlq
                )
                async with asyncio.timeout(redis_client.COMMAND_TIMEOUT):
                    page = await client.xrange(
                        keys.dlq,
                        min="-" if last is None else f"({last}",
                        max="+",
                        count=RECONCILE_PAGE,
                    )
                if page:
                    await _record(
                        conn, [catalog_row(keys.topic, keys.dlq, text(i), f) for i, f in page]
                    )
                    await conn.execute(
                        f"INSERT INTO {_CURSORS} (dlq_stream, entry_id) VALUES ($1, $2) "
                        "ON CONFLICT (dlq_stream) DO UPDATE SET entry_id = EXCLUDED.entry_id, "
                        "updated_at = now()",
                        keys.dlq,
                        text(page[-1][0]),
                    )
            seen += len(page)
            if len(page) < RECONCILE_PAGE:
                return seen


async def _record(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    await conn.executemany(_INSERT, rows)
    by_stream: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        if row[15]:
            entries, earlier = by_stream.setdefault(row[1], ([], []))
            entries.append(row[2])
            earlier.append(row[15])
    for stream, (entries, earlier) in by_stream.items():
        await conn.execute(_SETTLE, stream, entries, earlier)
