"""Conveyor's consumer runtime: handlers applied exactly once in effect, retries, dead letters."""

from __future__ import annotations

from consumers.context import EventContext
from consumers.errors import ConsumerError, GroupLost, RouterError
from consumers.router import Router
from consumers.service import Consumer
from consumers.settings import ConsumerSettings
from consumers.signals import Reject, Retry
from consumers.status import ConsumerStatus, WorkerStatus

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
