"""Turning stream entries into deliveries a handler can take, or poison with a reason."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message

from consumers.context import EventContext
from consumers.router import Route, Router
from conveyor import wire
from conveyor.v1 import event_pb2

Fields = dict[bytes, bytes]

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


@dataclass(slots=True)
class Entry:
    """A stream entry as read from Redis, with how often it has been delivered."""

    stream: str
    entry_id: str
    fields: Fields | None
    """None when the entry was deleted or trimmed while pending."""
    attempt: int = 1
    first_failed: float | None = None
    """Unix time of the first failure this process saw, for the dead letter."""


@dataclass(slots=True)
class Delivery:
    """An entry that decoded into an event with a handler (or an unknown type to skip)."""

    entry: Entry
    event_id: str
    event_type: str
    aggregate_id: str
    route: Route | None
    """None for an event of unknown type that the router's policy skips."""
    payload: Message | None
    ctx: EventContext


@dataclass(slots=True)
class Poison:
    """An entry that can never be handled: it goes to the dead-letter stream at once."""

    entry: Entry
    reason: str
    """A wire reason name: decode_error, validation, unknown_type or oversized."""
    error: str
    event_id: str | None = None
    event_type: str | None = None
    error_class: str = field(default="")


def decode(  # noqa: PLR0911 - one return per reason an entry can be poison
    entry: Entry, *, topic: str, group: str, router: Router, max_bytes: int
) -> Delivery | Poison:
    """Decode and validate `entry` (its fields must not be None)."""
    fields = entry.fields
    assert fields is not None
    raw = fields.get(wire.F_EVENT)
    raw_id = fields.get(wire.F_EVENT_ID)
    if raw is None or raw_id is None:
        missing = [f.decode() for f in wire.REQUIRED_FIELDS if f not in fields]
        return Poison(entry, "validation", f"entry lacks required fields {missing}")
    if len(raw) > max_bytes:
        return Poison(
            entry, "oversized", f"event is {len(raw)} bytes, over the {max_bytes}-byte cap"
        )
    try:
        event = event_pb2.Event.FromString(raw)
    except DecodeError as exc:
        return Poison(
            entry,
            "decode_error",
            f"event bytes are not a conveyor.v1.Event: {exc}",
            error_class="DecodeError",
        )
    problem = _invalid(event, raw_id)
    if problem is not None:
        return Poison(entry, "validation", problem, event.id or None, event.type or None)
    route = router.route(topic, event.type)
    if route is None:
        if router.unknown_type == "dead_letter":
            return Poison(
                entry,
                "unknown_type",
                f"no handler for {event.type} on topic {topic!r}",
                event.id,
                event.type,
            )
        return _delivery(entry, event, None, None, topic=topic, group=group)
    if event.data.type_url.rpartition("/")[2] != event.type:
        return Poison(
            entry,
            "validation",
            f"data holds {event.data.type_url!r}, not {event.type}",
            event.id,
            event.type,
        )
    try:
        payload = route.message_type.FromString(event.data.value)
    except DecodeError as exc:
        return Poison(
            entry,
            "decode_error",
            f"payload is not a valid {event.type}: {exc}",
            event.id,
            event.type,
            "DecodeError",
        )
    return _delivery(entry, event, route, payload, topic=topic, group=group)


def _invalid(event: event_pb2.Event, raw_id: bytes) -> str | None:
    if not _UUID_RE.fullmatch(event.id):
        return f"event id {event.id!r} is not a UUID"
    if raw_id != event.id.encode():
        return f"entry id field {raw_id!r} does not match the event's id {event.id!r}"
    if not event.type:
        return "event has no type"
    return None


def _delivery(
    entry: Entry,
    event: event_pb2.Event,
    route: Route | None,
    payload: Message | None,
    *,
    topic: str,
    group: str,
) -> Delivery:
    ctx = EventContext(
        event,
        topic=topic,
        stream=entry.stream,
        entry_id=entry.entry_id,
        group=group,
        attempt=entry.attempt,
    )
    return Delivery(entry, event.id, event.type, event.aggregate_id, route, payload, ctx)


def describe(value: Any, limit: int = 200) -> str:
    """`value` made safe for one log line: control characters escaped, long text cut."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit})"
