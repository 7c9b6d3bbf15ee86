"""What a handler sees besides the payload: the envelope, the delivery and the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class EventContext:
    """One delivery of one event to a handler.

    `db` is the asyncpg connection inside the transaction that also holds this event's ledger row
    (exactly-once mode): writes through it commit or roll back with the ledger row, so they happen
    once. Writes anywhere else (HTTP calls, other databases) are at-least-once. In at-least-once
    mode `db` is a connection inside a transaction too, but no ledger row guards it.
    """

    event_id: str
    event_type: str
    source: str
    aggregate_type: str
    aggregate_id: str
    occurred_at: datetime | None
    headers: dict[str, str]
    topic: str
    stream: str
    """The Redis stream key the entry came from (the topic stream, or the group's retry stream)."""
    entry_id: str
    group: str
    attempt: int
    """1 on the first delivery; counts every delivery, including ones a crash cut short."""
    db: Any = None
