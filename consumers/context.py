"""What a handler sees besides the payload: the envelope, the delivery and the transaction."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from conveyor.v1 import event_pb2


class EventContext:
    """One delivery of one event to a handler.

    `db` is the asyncpg connection inside the transaction that also holds this event's ledger row
    (exactly-once mode): writes through it commit or roll back with the ledger row, so they happen
    once. Writes anywhere else (HTTP calls, other databases) are at-least-once. In at-least-once
    mode `db` is a connection inside a transaction too, but no ledger row guards it.

    Anything asyncpg allows inside a transaction works on `db`, `db.transaction()` included: it
    opens a savepoint inside the event's transaction. Never end that transaction with COMMIT or
    ROLLBACK sent as SQL: the event then fails with TransactionEnded.

    Envelope attributes are read from the decoded Event when asked for, so handlers that do not
    look at them pay nothing.
    """

    __slots__ = ("attempt", "db", "entry_id", "envelope", "group", "stream", "topic")

    def __init__(  # noqa: PLR0917 - built once per event on the hot path: positional is cheaper
        self,
        envelope: event_pb2.Event,
        topic: str,
        stream: str,
        entry_id: str,
        group: str,
        attempt: int,
    ) -> None:
        self.envelope = envelope
        """The whole conveyor.v1.Event."""
        self.topic = topic
        self.stream = stream
        """The Redis stream key the entry came from (the topic stream, or the group's retry
        stream when a dead letter is being reprocessed)."""
        self.entry_id = entry_id
        self.group = group
        self.attempt = attempt
        """1 on the first delivery; counts every delivery, including ones a crash cut short."""
        self.db: Any = None

    @property
    def event_id(self) -> str:
        return self.envelope.id

    @property
    def event_type(self) -> str:
        return self.envelope.type

    @property
    def source(self) -> str:
        return self.envelope.source

    @property
    def aggregate_type(self) -> str:
        return self.envelope.aggregate_type

    @property
    def aggregate_id(self) -> str:
        return self.envelope.aggregate_id

    @property
    def occurred_at(self) -> datetime | None:
        """When the change happened in the producer (timezone-aware UTC)."""
        event = self.envelope
        return event.time.ToDatetime(UTC) if event.HasField("time") else None

    @property
    def headers(self) -> Mapping[str, str]:
        """traceparent, tracestate, correlation_id, causation_id and the producer's own."""
        return self.envelope.headers

    def __repr__(self) -> str:
        return (
            f"EventContext(event_id={self.event_id!r}, event_type={self.event_type!r}, "
            f"topic={self.topic!r}, entry_id={self.entry_id!r}, attempt={self.attempt})"
        )
