"""Building the conveyor.v1.Event envelope around a payload message."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from datetime import datetime

from conveyor import telemetry
from conveyor.v1 import event_pb2
from google.protobuf.message import Message
from opentelemetry import propagate

from relay.errors import NotAMessage


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7), so event ids index well and sort by time."""
    ms = time.time_ns() // 1_000_000
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)


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
