"""Conveyor's producer API (`enqueue`) and relay engine (outbox -> Redis Streams).

The names below load on first use (PEP 562), so `relay.settings` can be read, e.g. by the
`conveyor` command line for its options, without loading the engine and its Redis client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor import lazy

if TYPE_CHECKING:
    from relay.errors import EventTooLarge, NotAMessage, NotInTransaction, RelayError
    from relay.outbox import NewEvent, enqueue, enqueue_many
    from relay.service import Relay
    from relay.settings import RelaySettings
    from relay.status import Backlog, ForwarderStatus, RelayStatus

_HOMES = {
    "Backlog": "relay.status",
    "ForwarderStatus": "relay.status",
    "RelayStatus": "relay.status",
    "EventTooLarge": "relay.errors",
    "NewEvent": "relay.outbox",
    "NotAMessage": "relay.errors",
    "NotInTransaction": "relay.errors",
    "Relay": "relay.service",
    "RelayError": "relay.errors",
    "RelaySettings": "relay.settings",
    "enqueue": "relay.outbox",
    "enqueue_many": "relay.outbox",
}

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


__getattr__ = lazy.exports(__name__, _HOMES)
