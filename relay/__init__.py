"""Conveyor's producer API (`enqueue`) and relay engine (outbox -> Redis Streams)."""

from __future__ import annotations

from relay.errors import EventTooLarge, NotAMessage, NotInTransaction, RelayError
from relay.outbox import NewEvent, enqueue, enqueue_many
from relay.service import Relay
from relay.settings import RelaySettings
from relay.status import Backlog, ForwarderStatus, RelayStatus

__all__ = [
    "Backlog",
    "EventTooLarge",
    "ForwarderStatus",
    "NewEvent",
    "NotAMessage",
    "NotInTransaction",
    "Relay",
    "RelayError",
    "RelaySettings",
    "RelayStatus",
    "enqueue",
    "enqueue_many",
]
