"""Turning stream entries into deliveries a handler can take, or poison with a reason."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message

from consumers.context import EventContext
from consumers.router import Route, Router
from conveyor import wire
from conveyor.v1 import event_pb2

Fields = dict[bytes, bytes]

_TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
"""A protobuf full name: also keeps commas and NULs out of the ledger's joined columns."""

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_is_uuid = _UUID_RE.fullmatch
_is_type_name = _TYPE_RE.fullmatch
_parse_event = event_pb2.Event.FromString
_F_ID, _F_EVENT = wire.F_EVENT_ID, wire.F_EVENT


class Entry:
    """A stream entry as read from Redis, with how often it has been delivered."""

    __slots__ = ("_fields", "attempt", "delivered_at", "entry_id", "first_failed", "raw", "stream")

    def __init__(
        self, stream: str, entry_id: str, raw: list[bytes] | Fields | None, attempt: int = 1
    ) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.raw = raw
        """Field-value pairs as Redis sent them (flat list or dict); None when the entry was
        deleted or trimmed while pending."""
        self.attempt = attempt
        self.first_failed: float | None = None
        """Unix time of the first failure this process saw, for the dead letter."""
        self._fields: Fields | None = None
        self.delivered_at = time.monotonic()
        """When Redis (re)delivered it to this consumer, which restarted its idle time."""

    @property
    def deleted(self) -> bool:
        return self.raw is None

    @property
    def fields(self) -> Fields:
        """The entry's fields as a dict (empty for a deleted entry)."""
        if self._fields is None:
            raw = self.raw
            if isinstance(raw, dict):
                self._fields = raw
            else:
                it = iter(raw or ())
                self._fields = dict(zip(it, it, strict=True))
        return self._fields

    def event_fields(self) -> tuple[bytes | None, bytes | None]:
        """(event id field, event bytes field). O(1) for entries in the relay's layout, which
        puts `v` and `id` first and `ev` last."""
        raw = self.raw
        if (
            isinstance(raw, list)
            and len(raw) >= 6
            and raw[2] == wire.F_EVENT_ID
            and raw[-2] == wire.F_EVENT
        ):
            return raw[3], raw[-1]
        fields = self.fields
        return fields.get(wire.F_EVENT_ID), fields.get(wire.F_EVENT)

    def __repr__(self) -> str:
        return f"Entry({self.stream!r}, {self.entry_id!r}, attempt={self.attempt})"


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
    lost_connections: int = 0
    """Times this delivery's handler lost its database connection under it (see
    consumers.transactions.LostUnderHandler)."""


@dataclass(frozen=True, slots=True)
class DeadLetterMark:
    """An event about to be dead-lettered, as its ledger row records it."""

    event_id: str
    """Lower-case UUID."""
    event_type: str
    stream: str
    entry_id: str


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


class Decoder:
    """Decodes and validates the entries of one topic for one group."""

    def __init__(self, *, topic: str, group: str, router: Router, max_bytes: int) -> None:
        self._topic = topic
        self._group = group
        self._routes = router.routes_for(topic)
        self._skip_unknown = router.unknown_type == "skip"
        self._max_bytes = max_bytes

    def decode(self, entry: Entry) -> Delivery | Poison:  # noqa: PLR0911 - one per poison reason
        """A delivery for `entry` (its fields must not be None), or why it is poison."""
        raw = entry.raw
        raw_id: bytes | None
        data: bytes | None
        if type(raw) is list and len(raw) >= 6 and raw[2] == _F_ID and raw[-2] == _F_EVENT:
            raw_id, data = raw[3], raw[-1]  # the relay's layout, inlined: this runs per event
        else:
            raw_id, data = entry.event_fields()
            if data is None or raw_id is None:
                missing = [f.decode() for f in wire.REQUIRED_FIELDS if f not in entry.fields]
                return Poison(entry, "validation", f"entry lacks required fields {missing}")
        if len(data) > self._max_bytes:
            size = f"event is {len(data)} bytes, over the {self._max_bytes}-byte cap"
            return Poison(entry, "oversized", size)
        try:
            event = _parse_event(data)
        except DecodeError as exc:
            problem = f"event bytes are not a conveyor.v1.Event: {exc}"
            return Poison(entry, "decode_error", problem, error_class="DecodeError")
        event_id, event_type = event.id, event.type
        route = self._routes.get(event_type)
        if (
            raw_id != event_id.encode()
            or not _is_uuid(event_id)
            or (route is None and not _is_type_name(event_type))  # a handler's type is one
        ):
            return Poison(entry, "validation", _invalid(event, raw_id), None, None)
        event_id = event_id.lower()  # the ledger's uuid column answers in lower case
        payload = None
        if route is not None:
            held = event.data
            if not held.type_url.endswith(route.type_url_suffix):
                problem = f"data holds {held.type_url!r}, not {event_type}"
                return Poison(entry, "validation", problem, event_id, event_type)
            try:
                payload = route.message_type.FromString(held.value)
            except DecodeError as exc:
                problem = f"payload is not a valid {event_type}: {exc}"
                return Poison(entry, "decode_error", problem, event_id, event_type, "DecodeError")
        elif not self._skip_unknown:
            problem = f"no handler for {event_type} on topic {self._topic!r}"
            return Poison(entry, "unknown_type", problem, event_id, event_type)
        ctx = EventContext(
            event, self._topic, entry.stream, entry.entry_id, self._group, entry.attempt
        )
        return Delivery(entry, event_id, event_type, event.aggregate_id, route, payload, ctx)


def dead_letter_mark(entry: Entry) -> DeadLetterMark | None:
    """The ledger mark for dead-lettering `entry` undecoded, from its id and type fields; None
    when its id is not a UUID (then no member can apply it either)."""
    raw_id = entry.fields.get(wire.F_EVENT_ID, b"")
    text = raw_id.decode(errors="replace")
    if not _UUID_RE.fullmatch(text):
        return None
    # PostgreSQL text cannot hold NUL: a type field that has one is kept escaped in the mark.
    raw_type = entry.fields.get(wire.F_EVENT_TYPE, b"")
    event_type = raw_type.decode(errors="replace").replace("\x00", "\\x00")
    return DeadLetterMark(text.lower(), event_type, entry.stream, entry.entry_id)


def _invalid(event: event_pb2.Event, raw_id: bytes) -> str:
    if not _UUID_RE.fullmatch(event.id):
        return f"event id {event.id[:100]!r} is not a UUID"
    if not event.type:
        return "event has no type"
    if not _TYPE_RE.fullmatch(event.type):
        return f"event type {event.type[:200]!r} is not a protobuf message name"
    return f"entry id field {raw_id!r} does not match the event's id {event.id!r}"


def describe(value: Any, limit: int = 200) -> str:
    """`value` made safe for one log line: control characters escaped, long text cut."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit})"
