"""The wire conventions every process relies on."""

from __future__ import annotations

import zlib

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


def test_partition_keys_share_one_tag_per_partition_and_never_another_topics() -> None:
    keys = wire.Keys("orders", "conveyor", 3)
    assert keys.events == "conveyor:{orders:3}:events"
    assert keys.dlq == "conveyor:{orders:3}:dlq"
    assert keys.retry("billing") == "conveyor:{orders:3}:retry:billing"
    # A topic named like a partition is refused before its keys could collide.
    with pytest.raises(ValueError):
        wire.Keys("orders:3")
    assert wire.parse_tag(keys.events) == ("orders", 3)
    assert wire.parse_tag(wire.Keys("orders.3").events) == ("orders.3", None)
    assert wire.parse_tag("unrelated") is None
    assert [k.events for k in wire.topic_keys("o", partitions=2)] == [
        "conveyor:{o:0}:events",
        "conveyor:{o:1}:events",
    ]
    with pytest.raises(ValueError, match="partition must be 0-1023"):
        wire.Keys("orders", partition=1024)


def test_an_aggregate_always_lands_in_one_partition_and_ids_spread() -> None:
    # CRC-32 of the UTF-8 id, as zlib computes it: any language can route the same way.
    assert wire.partition_of("user-42", 8) == zlib.crc32(b"user-42") % 8
    assert {wire.partition_of("user-42", 8) for _ in range(3)} == {wire.partition_of("user-42", 8)}
    spread = {wire.partition_of(f"user-{i}", 8) for i in range(200)}
    assert spread == set(range(8))
    for bad in (0, 1025):
        with pytest.raises(ValueError, match="partitions must be 1-1024"):
            wire.partition_of("x", bad)
