"""The wire conventions every process relies on."""

from __future__ import annotations

import pytest

from conveyor import database, wire


def test_keys_of_a_topic_share_one_hash_tag() -> None:
    keys = wire.Keys("identity", prefix="acme")
    assert keys.events == "acme:{identity}:events"
    assert keys.dlq == "acme:{identity}:dlq"
    assert keys.retry("billing") == "acme:{identity}:retry:billing"


@pytest.mark.parametrize(
    "topic", ["", "Identity", "a b", "{x}", "x*", "-leading", "a" * 101, "é", "a\nb"]
)
def test_bad_topics_are_refused_with_the_rule(topic: str) -> None:
    with pytest.raises(ValueError, match="invalid topic"):
        wire.validate_topic(topic)


@pytest.mark.parametrize("topic", ["identity", "user.events", "a", "x_y-z.1", "9" * 100])
def test_good_topics_pass(topic: str) -> None:
    assert wire.validate_topic(topic) == topic


def test_prefix_cannot_carry_a_hash_tag() -> None:
    with pytest.raises(ValueError, match="invalid key prefix"):
        wire.Keys("identity", prefix="a{b}")


def test_reason_wire_names_round_trip() -> None:
    assert wire.REASONS == (
        "max_attempts",
        "rejected",
        "decode_error",
        "validation",
        "unknown_type",
        "oversized",
    )
    for name in wire.REASONS:
        assert wire.reason_name(wire.reason_value(name)) == name
    with pytest.raises(ValueError, match="unknown dead-letter reason"):
        wire.reason_value("bogus")


@pytest.mark.parametrize("name", ["", "Public", "1abc", "a-b", "conveyor", "pg_temp", "a" * 64])
def test_bad_schema_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        database.validate_schema(name)


def test_notify_channel_fits_postgres_identifier_limit() -> None:
    assert database.notify_channel("identity") == "conveyor_outbox_identity"
    assert len(database.notify_channel("s" * 63)) == 63
