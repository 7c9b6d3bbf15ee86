"""Dead letters: the entry written to the topic's dead-letter stream, and its catalog record."""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import propagate, trace

from consumers.deliveries import Entry
from conveyor import database, wire
from conveyor import telemetry as t

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


def _text(fields: dict[bytes, Any], key: bytes) -> str | None:
    """A field as text for the catalog: PostgreSQL text cannot hold NUL, so it is escaped
    (the dead-letter stream keeps the bytes verbatim)."""
    value = fields.get(key)
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return text.replace("\x00", "\\x00")


def _when(fields: dict[bytes, Any], key: bytes) -> datetime | None:
    value = _text(fields, key)
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC) if value else None
    except ValueError:
        return None


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def catalog_row(
    topic: str, dlq_stream: str, dlq_entry_id: str, f: dict[bytes, Any]
) -> tuple[Any, ...]:
    """The conveyor.dead_letters row describing one dead-letter entry."""
    reason = _text(f, wire.DL_REASON) or "validation"
    return (
        topic,
        dlq_stream,
        dlq_entry_id,
        _text(f, wire.DL_SOURCE_STREAM) or "",
        _text(f, wire.DL_SOURCE_ENTRY) or "",
        _text(f, wire.DL_GROUP) or "",
        _text(f, wire.DL_CONSUMER),
        _uuid(_text(f, wire.F_EVENT_ID)),
        _text(f, wire.F_EVENT_TYPE),
        reason if reason in wire.REASONS else "validation",
        _text(f, wire.DL_ERROR_CLASS),
        _text(f, wire.DL_ERROR),
        int(_text(f, wire.DL_ATTEMPTS) or 0),
        _when(f, wire.DL_FIRST_FAILED),
        _when(f, wire.DL_LAST_FAILED),
    )


_INSERT = (
    f"INSERT INTO {database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE} (topic, dlq_stream, "
    "dlq_entry_id, source_stream, source_entry_id, consumer_group, consumer_name, event_id, "
    "event_type, reason, error_class, error_message, attempts, first_failed_at, last_failed_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
    "ON CONFLICT (dlq_stream, dlq_entry_id) DO NOTHING"
)


class DeadLetterCatalog:
    """Records dead letters in the catalog (state `open`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows; those already recorded are left as they are."""
        if rows:
            await self._pool.executemany(_INSERT, rows)

    async def mark_reprocessed(self, dlq_stream: str, entry_ids: Sequence[str]) -> None:
        """Dead letters whose re-delivery was applied (or found applied) leave `reprocessing`."""
        if entry_ids:
            await self._pool.execute(
                f"UPDATE {database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE} "
                "SET state = 'reprocessed', updated_at = now() WHERE dlq_stream = $1 "
                "AND dlq_entry_id = ANY($2::text[]) AND state IN ('open', 'reprocessing')",
                dlq_stream,
                list(entry_ids),
            )

    async def reconcile(self, client: Any, keys: wire.Keys, *, window_ms: int = 600_000) -> int:
        """Record every dead letter of the topic's stream newer than the last recorded one minus
        `window_ms` (covering records lost to a crash between the stream write and the insert);
        return how many entries were looked at."""
        last = await self._pool.fetchval(
            f"SELECT dlq_entry_id FROM {database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE} "
            "WHERE dlq_stream = $1 ORDER BY id DESC LIMIT 1",
            keys.dlq,
        )
        start = "-" if last is None else str(max(int(last.split("-")[0]) - window_ms, 0))
        seen = 0
        while True:
            page = await client.xrange(keys.dlq, min=start, max="+", count=500)
            if not page:
                return seen
            await self.record([catalog_row(keys.topic, keys.dlq, _id(i), f) for i, f in page])
            seen += len(page)
            start = "(" + _id(page[-1][0])
            if len(page) < 500:
                return seen


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
