"""Decoding stream entries: what is poison and why; logs never carry raw control characters."""

from __future__ import annotations

import uuid

import pytest

from consumers import Router
from consumers.deliveries import Decoder, Delivery, Entry, Poison, describe
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import envelope


def router() -> Router:
    r = Router()

    @r.handler(events_pb2.UserRegistered, topic="identity")
    async def handle(event: object, ctx: object) -> None:
        return None

    return r


def entry(message: object = None, **override: bytes) -> Entry:
    event_id = envelope.uuid7()
    event = envelope.build(
        message or events_pb2.UserRegistered(user_id="u1"),
        event_id=event_id,
        source="t",
        aggregate_type="user",
        aggregate_id="u1",
        occurred_at=None,
        headers={},
    )
    fields = {
        wire.F_VERSION: b"1",
        wire.F_EVENT_ID: str(event_id).encode(),
        wire.F_EVENT_TYPE: event.type.encode(),
        wire.F_AGGREGATE_ID: b"u1",
        wire.F_EVENT: event.SerializeToString(),
    }
    flat = [x for kv in (fields | {k.encode(): v for k, v in override.items()}).items() for x in kv]
    return Entry("s", "1-0", flat)


DECODER = Decoder(topic="identity", group="g", router=router(), max_bytes=4096)


def test_a_well_formed_entry_decodes_with_its_payload() -> None:
    d = DECODER.decode(entry())
    assert isinstance(d, Delivery)
    assert d.payload == events_pb2.UserRegistered(user_id="u1")
    assert d.ctx.aggregate_id == "u1"
    assert d.ctx.occurred_at is not None and d.ctx.occurred_at.tzinfo is not None


def test_extra_fields_are_ignored() -> None:
    assert isinstance(DECODER.decode(entry(**{"x-extra": b"whatever"})), Delivery)


@pytest.mark.parametrize(
    ("change", "reason", "says"),
    [
        ({"ev": b"\xff\x00garbage"}, "decode_error", "not a conveyor.v1.Event"),
        ({"id": str(uuid.uuid4()).encode()}, "validation", "does not match"),
        ({"ev": b""}, "validation", "is not a UUID"),
        ({"ev": b"x" * 5000}, "oversized", "over the 4096-byte cap"),
    ],
)
def test_poison_entries_say_why(change: dict[str, bytes], reason: str, says: str) -> None:
    p = DECODER.decode(entry(**change))
    assert isinstance(p, Poison)
    assert p.reason == reason
    assert says in p.error


def test_unknown_type_is_poison_unless_the_router_skips_it() -> None:
    unknown = entry(events_pb2.UserDeleted(user_id="u1"))
    p = DECODER.decode(unknown)
    assert isinstance(p, Poison) and p.reason == "unknown_type"
    skipping = Router(unknown_type="skip")
    d = Decoder(topic="identity", group="g", router=skipping, max_bytes=4096).decode(unknown)
    assert isinstance(d, Delivery) and d.route is None


def test_log_text_escapes_control_characters_and_is_cut() -> None:
    text = describe("\x1b[31mred\x1b[0m\nnext line" + "y" * 500, limit=50)
    assert "\x1b" not in text and "\n" not in text
    assert text.startswith("\\x1b[31mred")
    assert text.endswith(")") and "...(+" in text
