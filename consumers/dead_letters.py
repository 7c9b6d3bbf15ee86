"""Dead letters: the entry written to the topic's dead-letter stream, and the row the catalog
records of it."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from opentelemetry import trace

from consumers import spans
from consumers.catalog import Catalog, DeadLetterRow, ReadAfter
from consumers.deliveries import Entry, dead_letter_mark
from consumers.streams import TopicStreams
from conveyor import telemetry as t
from conveyor import wire
from conveyor.replies import uuid_or_none

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
def span(
    entry: Entry, reason: str, error_class: str, *, dlq: str, enabled: bool
) -> Iterator[str | None]:
    """A span for moving `entry` to the dead-letter stream; yields the traceparent the dead
    letter records (None when tracing is off), which a reprocess of it links to.

    After a failed handler call, whose span is current (`spans.settling`), the move is a child of
    that span, which gets a `conveyor.dead_letter` event with the error class and reason, and the
    dead letter records that span. Otherwise (poison, an entry over its attempts) the move
    continues the event's own trace and the dead letter records the move's span."""
    if not enabled:
        yield None
        return
    parent = spans.dead_letter_parent(entry, reason, error_class)
    recorded = spans.current_traceparent() if parent is None else None
    with _tracer.start_as_current_span(
        t.SPAN_DEAD_LETTER,
        context=parent,
        kind=trace.SpanKind.PRODUCER,
        attributes={
            t.ATTR_MESSAGING_SYSTEM: t.MESSAGING_SYSTEM,
            t.ATTR_MESSAGING_OPERATION_TYPE: t.OPERATION_SEND,
            t.ATTR_MESSAGING_OPERATION_NAME: t.OPERATION_SEND,
            t.ATTR_MESSAGING_DESTINATION: dlq,
            t.ATTR_REASON: reason,
            t.ATTR_ERROR_TYPE: error_class,
        },
    ):
        yield recorded or spans.current_traceparent()


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
) -> DeadLetterRow:
    """The catalog's row describing one dead-letter entry."""
    reason = _field(f, wire.DL_REASON) or "validation"
    return DeadLetterRow(
        topic=topic,
        dlq_stream=dlq_stream,
        dlq_entry_id=dlq_entry_id,
        source_stream=_field(f, wire.DL_SOURCE_STREAM) or "",
        source_entry_id=_field(f, wire.DL_SOURCE_ENTRY) or "",
        group=_field(f, wire.DL_GROUP) or "",
        consumer=_field(f, wire.DL_CONSUMER),
        event_id=uuid_or_none(_field(f, wire.F_EVENT_ID)),
        event_type=_field(f, wire.F_EVENT_TYPE),
        reason=reason if reason in wire.REASONS else "validation",
        error_class=_field(f, wire.DL_ERROR_CLASS),
        error=_field(f, wire.DL_ERROR),
        attempts=int(_field(f, wire.DL_ATTEMPTS) or 0),
        first_failed_at=_when(f, wire.DL_FIRST_FAILED),
        last_failed_at=_when(f, wire.DL_LAST_FAILED),
        retry_of=_field(f, wire.RT_DEAD_LETTER),
    )


_STANDING = ("open",)
"""States of a dead letter that stands while the dead-letter stream still holds its entry. One
being reprocessed does not: its reprocess may yet fail or be dropped, so a copy of the event
arriving meanwhile becomes a dead letter of its own rather than be taken for a duplicate."""


async def standing(catalog: Catalog, streams: TopicStreams, entry: Entry) -> str | None:
    """The entry id of the group's dead letter of `entry`'s event that still stands: resolved,
    or open with its entry still in the dead-letter stream; None when
    there is none, so `entry` is to become a dead letter itself. An entry of the retry stream
    (a reprocess) never finds one: failing again, it becomes a new dead letter naming the old
    one. A dead letter whose entry Redis lost does not stand, so a replay brings the event
    back."""
    mark = dead_letter_mark(entry)
    if mark is None or entry.stream == streams.retry:
        return None
    letters = await catalog.dead_letters_of(streams.keys.dlq, streams.group, UUID(mark.event_id))
    resolved = [dlq_entry for dlq_entry, state in letters if state == "resolved"]
    if resolved:
        return resolved[0]
    for dlq_entry, state in letters:
        if state in _STANDING and await streams.exists(streams.keys.dlq, dlq_entry):
            return dlq_entry
    return None


def reader(streams: TopicStreams) -> ReadAfter:
    """Reads the topic's dead-letter stream as catalog rows (what the reconciler records)."""
    keys = streams.keys

    async def read(after: str | None, count: int) -> list[DeadLetterRow]:
        page = await streams.dead_letters_after(after, count)
        return [catalog_row(keys.topic, keys.dlq, i, f) for i, f in page]

    return read
