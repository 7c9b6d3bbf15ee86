"""Conveyor's consumer runtime: handlers applied exactly once in effect, retries, dead letters.

The names below load on first use (PEP 562), so `consumers.settings` can be read, e.g. by the
`conveyor` command line for its options, without loading the engine and its Redis client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor import lazy

if TYPE_CHECKING:
    from consumers.context import EventContext
    from consumers.errors import ConsumerError, GroupLost, RouterError
    from consumers.router import Router
    from consumers.service import Consumer
    from consumers.settings import ConsumerSettings
    from consumers.signals import Reject, Retry
    from consumers.status import ConsumerStatus, WorkerStatus

_HOMES = {
    "ConsumerStatus": "consumers.status",
    "WorkerStatus": "consumers.status",
    "Consumer": "consumers.service",
    "ConsumerError": "consumers.errors",
    "ConsumerSettings": "consumers.settings",
    "EventContext": "consumers.context",
    "GroupLost": "consumers.errors",
    "Reject": "consumers.signals",
    "Retry": "consumers.signals",
    "Router": "consumers.router",
    "RouterError": "consumers.errors",
}

__all__ = [
    "Consumer",
    "ConsumerError",
    "ConsumerSettings",
    "ConsumerStatus",
    "EventContext",
    "GroupLost",
    "Reject",
    "Retry",
    "Router",
    "RouterError",
    "WorkerStatus",
]


__getattr__ = lazy.exports(__name__, _HOMES)
