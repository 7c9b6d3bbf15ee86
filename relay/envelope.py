"""Building the conveyor.v1.Event envelope around a payload message."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime

from google.protobuf.message import Message
from opentelemetry import propagate

from conveyor import telemetry
from conveyor.v1 import event_pb2
from relay.errors import NotAMessage


class _Uuid7:
    """RFC 9562 version 7 UUIDs, strictly increasing within the process (method 3: when the
    clock has not moved on, the previous value plus one in its random bits)."""

    _VERSION_VARIANT = 0x7 << 76 | 0x2 << 62
    _FIXED_BITS = 0xF << 76 | 0x3 << 62

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> uuid.UUID:
        ms = time.time_ns() // 1_000_000
        fresh = (ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10))
        fresh = fresh & ~self._FIXED_BITS | self._VERSION_VARIANT
        with self._lock:
            if fresh <= self._last:
                # +1 lands in the 62 low random bits; carrying out of them would take 2**62 ids.
                fresh = self._last + 1
            self._last = fresh
        return uuid.UUID(int=fresh)


uuid7 = _Uuid7()
"""A time-ordered UUID (RFC 9562 version 7), so event ids index well and sort by time."""


def trace_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """`headers` plus the current trace context, unless the caller already set a traceparent."""
    merged = dict(headers or {})
    if telemetry.HEADER_TRACEPARENT not in merged:
        propagate.inject(merged)
    return merged


def build(
    message: Message,
    *,
    event_id: uuid.UUID,
    source: str,
    aggregate_type: str,
    aggregate_id: str,
    occurred_at: datetime | None,
    headers: dict[str, str],
) -> event_pb2.Event:
    """Wrap `message` in an Event envelope; NotAMessage if it is not a protobuf message."""
    if not isinstance(message, Message):
        raise NotAMessage(message)
    event = event_pb2.Event(
        id=str(event_id),
        type=message.DESCRIPTOR.full_name,
        source=source,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        headers=headers,
    )
    if occurred_at is None:
        event.time.GetCurrentTime()
    else:
        event.time.FromDatetime(occurred_at)
    event.data.Pack(message)
    return event
