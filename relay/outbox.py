"""The producer API: write events into the outbox inside the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from opentelemetry import trace

from conveyor import database, telemetry, wire
from relay import envelope
from relay.errors import EventTooLarge, NotInTransaction

_tracer = trace.get_tracer(telemetry.TRACER)

_COLUMNS = "event_id, topic, event_type, aggregate_type, aggregate_id, traceparent, payload"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event for `enqueue_many`; the fields mean what `enqueue`'s arguments mean."""

    message: Message
    aggregate_type: str
    aggregate_id: str
    topic: str | None = None
    headers: Mapping[str, str] | None = None
    event_id: uuid.UUID | None = None
    occurred_at: datetime | None = None


async def enqueue(
    conn: Any,
    message: Message,
    *,
    aggregate_type: str,
    aggregate_id: str,
    topic: str | None = None,
    headers: Mapping[str, str] | None = None,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
    source: str | None = None,
    schema: str = database.DEFAULT_SCHEMA,
    max_event_bytes: int = wire.MAX_EVENT_BYTES,
) -> uuid.UUID:
    """Write one event into `schema`'s outbox in the open transaction of `conn`; return its id.

    `conn` is an asyncpg connection (or pool connection) inside `conn.transaction()`, so the event
    exists if and only if the caller's business transaction commits. The topic defaults to the
    aggregate type. Raises NotInTransaction, NotAMessage (a TypeError), EventTooLarge or ValueError
    for a bad topic, aggregate or schema, all before anything is written; a duplicate `event_id`
    raises asyncpg.UniqueViolationError and so fails the business transaction.
    """
    ids = await enqueue_many(
        conn,
        [NewEvent(message, aggregate_type, aggregate_id, topic, headers, event_id, occurred_at)],
        source=source,
        schema=schema,
        max_event_bytes=max_event_bytes,
    )
    return ids[0]


async def enqueue_many(
    conn: Any,
    events: Iterable[NewEvent],
    *,
    source: str | None = None,
    schema: str = database.DEFAULT_SCHEMA,
    max_event_bytes: int = wire.MAX_EVENT_BYTES,
) -> list[uuid.UUID]:
    """Write several events in one statement, all or none; return their ids in order."""
    database.validate_schema(schema)
    if not conn.is_in_transaction():
        raise NotInTransaction
    rows = [_row(e, source or f"urn:conveyor:{schema}", max_event_bytes) for e in events]
    if not rows:
        return []
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        f"INSERT INTO {schema}.{database.OUTBOX_TABLE} ({_COLUMNS}) SELECT * FROM unnest("
        "$1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[])",
        *columns,
    )
    return list(columns[0])


def _row(e: NewEvent, source: str, max_event_bytes: int) -> tuple[Any, ...]:
    if not e.aggregate_type or not isinstance(e.aggregate_type, str):
        raise ValueError(f"aggregate_type must be a non-empty string, got {e.aggregate_type!r}")
    if not e.aggregate_id or not isinstance(e.aggregate_id, str):
        raise ValueError(f"aggregate_id must be a non-empty string, got {e.aggregate_id!r}")
    topic = wire.validate_topic(e.topic if e.topic is not None else e.aggregate_type)
    event_id = e.event_id or envelope.uuid7()
    with _tracer.start_as_current_span(
        telemetry.SPAN_ENQUEUE,
        kind=trace.SpanKind.PRODUCER,
        attributes={
            telemetry.ATTR_MESSAGING_SYSTEM: telemetry.MESSAGING_SYSTEM,
            telemetry.ATTR_MESSAGING_OPERATION_TYPE: telemetry.OPERATION_CREATE,
            telemetry.ATTR_MESSAGING_OPERATION_NAME: telemetry.OPERATION_CREATE,
            telemetry.ATTR_MESSAGING_DESTINATION: topic,
            telemetry.ATTR_MESSAGE_ID: str(event_id),
        },
    ):
        headers = envelope.trace_headers(e.headers)
    event = envelope.build(
        e.message,
        event_id=event_id,
        source=source,
        aggregate_type=e.aggregate_type,
        aggregate_id=e.aggregate_id,
        occurred_at=e.occurred_at,
        headers=headers,
    )
    payload = event.SerializeToString()
    if len(payload) > max_event_bytes:
        raise EventTooLarge(event_type=event.type, size=len(payload), limit=max_event_bytes)
    traceparent = headers.get(telemetry.HEADER_TRACEPARENT)
    return (event_id, topic, event.type, e.aggregate_type, e.aggregate_id, traceparent, payload)
