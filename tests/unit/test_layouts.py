"""Topic layouts: what a layout accepts, which changes make a relay restart, and how a stream of
a partitioned topic is named and found again from its keys."""

from __future__ import annotations

import pytest

from admin.catalog.layouts import dlq_keys, name_of_event, named_keys, per_stream, stream_names
from admin.catalog.registry import RegisteredGroup
from conveyor import wire
from conveyor.layouts import Layout, routing_changes, streams


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"partitions": 0}, "partitions must be 1-1024, not 0"),
        ({"partitions": 1025}, "partitions must be 1-1024, not 1025"),
        ({"partitions": 4, "on_dead_letter": "drop"}, "on_dead_letter must be park or pass"),
    ],
)
def test_a_layout_outside_the_catalogs_rules_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Layout(**kwargs)


def test_only_a_new_partition_count_is_a_routing_change() -> None:
    four = Layout(4)
    assert routing_changes({"orders": four}, {"orders": Layout(4, ordered=True, version=2)}) == []
    assert routing_changes({"orders": four}, {"orders": Layout(8, version=2)}) == [
        "orders: 4 -> 8 partitions"
    ]
    assert routing_changes({}, {"orders": four}) == ["orders: 1 (unpartitioned) -> 4 partitions"]
    assert routing_changes({"orders": four}, {}) == ["orders: 4 -> 1 (unpartitioned) partitions"]
    # One partition is not the plain stream: {b:0} is another key than {b}.
    assert routing_changes({}, {"b": Layout(1)}) == ["b: 1 (unpartitioned) -> 1 partitions"]


def test_streams_follow_the_layout_and_plain_topics_keep_their_key() -> None:
    layouts = {"orders": Layout(3)}
    assert [k.events for k in streams("orders", "p", layouts)] == [
        "p:{orders:0}:events",
        "p:{orders:1}:events",
        "p:{orders:2}:events",
    ]
    assert [k.events for k in streams("identity", "p", layouts)] == ["p:{identity}:events"]


def test_stream_names_lead_back_to_their_keys() -> None:
    layouts = {"orders": Layout(4)}
    for name in [*stream_names("orders", layouts), *stream_names("identity", layouts)]:
        keys = named_keys(name, "p")
        tag = wire.parse_tag(keys.events)
        assert tag is not None and name == (tag[0] if tag[1] is None else f"{tag[0]}:{tag[1]}")
    agg = "customer-42"
    assert name_of_event("orders", agg, layouts) == f"orders:{wire.partition_of(agg, 4)}"
    assert name_of_event("identity", agg, layouts) == "identity"


def test_a_dead_letter_stream_names_the_partition_its_reprocess_goes_back_to() -> None:
    keys = dlq_keys("p:{orders:3}:dlq", "orders", "p")
    assert keys is not None and keys.retry("g") == "p:{orders:3}:retry:g"
    plain = dlq_keys("p:{orders}:dlq", "orders", "p")
    assert plain is not None and plain.retry("g") == "p:{orders}:retry:g"
    assert dlq_keys("p:{orders:3}:dlq", "billing", "p") is None, "another topic's"
    assert dlq_keys("q:{orders:3}:dlq", "orders", "p") is None, "another deployment's"
    assert dlq_keys("p:{orders:3}:events", "orders", "p") is None, "not a dead-letter stream"


def test_status_rows_repeat_a_group_for_each_partition() -> None:
    groups = [RegisteredGroup("identity", "g", "exactly-once", 1),
              RegisteredGroup("orders", "g", "exactly-once", 2)]  # fmt: skip
    rows = per_stream(groups, {"orders": Layout(2)})
    assert [(r.topic, r.group, r.members) for r in rows] == [
        ("identity", "g", 1),
        ("orders:0", "g", 2),
        ("orders:1", "g", 2),
    ]
