"""Ordered partitions without servers: the fair share of partitions, and the gate that holds an
aggregate's later events behind its failing or dead-lettered one."""

from __future__ import annotations

from collections import deque
from typing import Any, cast

import pytest

from consumers.deliveries import Delivery, Entry
from consumers.leases import share
from consumers.ordering import OrderedGate, block_after
from conveyor.entry_ids import EntryId

EVENTS, RETRY = "p:{orders:0}:events", "p:{orders:0}:retry:g"


def _d(agg: str, n: int, stream: str = EVENTS) -> Delivery:
    entry = Entry(stream, f"{1000 + n}-0", [])
    return Delivery(entry, f"e{n}", "T", agg, None, None, cast(Any, None))


def _ids(ds: list[Delivery]) -> list[str]:
    return [d.event_id for d in ds]


def test_the_share_is_round_robin_over_sorted_members_and_covers_every_partition() -> None:
    members = ["m-c", "m-a", "m-b"]
    shares = {m: share(members, 8, m) for m in members}
    assert shares == {"m-a": {0, 3, 6}, "m-b": {1, 4, 7}, "m-c": {2, 5}}
    assert share([], 4, "m-a") == {0, 1, 2, 3}  # a member not yet seen counts itself


def test_a_retry_holds_its_aggregate_and_lets_the_others_pass() -> None:
    gate = OrderedGate(RETRY)
    a1, b1, a2, b2, a3 = _d("a", 1), _d("b", 2), _d("a", 3), _d("b", 4), _d("a", 5)
    assert _ids(gate.admit([a1, b1])) == ["e1", "e2"]
    gate.retry_scheduled(a1)
    assert _ids(gate.admit([a2, b2])) == ["e4"]
    assert gate.released() == []
    # The retry comes due: it runs first, its held events right behind it, then the new one.
    assert _ids(gate.admit([a3, a1])) == ["e1", "e3", "e5"]
    assert gate.waiting() == 0


def test_park_holds_until_the_catalog_no_longer_has_the_dead_letter() -> None:
    gate = OrderedGate(RETRY, "park")
    a1, a2, b3 = _d("a", 1), _d("a", 2), _d("b", 3)
    gate.dead_lettered("a")
    assert _ids(gate.admit([a2, b3])) == ["e3"]
    redelivered = _d("a", 9, RETRY)  # the dead letter reprocessed runs though a is parked
    assert _ids(gate.admit([redelivered])) == ["e9"]
    gate.set_parked({"a"})
    assert gate.released() == []
    gate.set_parked(set())
    assert _ids(gate.released()) == ["e2"]
    assert _ids(gate.admit([a1])) == ["e1"]


def test_pass_lets_an_aggregate_go_on_after_its_dead_letter() -> None:
    gate = OrderedGate(RETRY, "pass")
    a1, a2 = _d("a", 1), _d("a", 2)
    gate.retry_scheduled(a1)
    assert gate.admit([a2]) == []
    gate.dead_lettered("a")
    assert _ids(gate.released()) == ["e2"]


def test_block_after_takes_only_the_later_events_of_the_failed_aggregate() -> None:
    before, after, later = [_d("a", 1), _d("b", 2)], [_d("b", 4), _d("a", 5)], [_d("a", 6)]
    pieces = deque([before, after, later])
    blocked: list[Delivery] = []
    block_after(pieces, "a", blocked)
    assert _ids(blocked) == ["e5", "e6"]
    assert [_ids(p) for p in pieces] == [["e1", "e2"], ["e4"], []]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="park or pass"):
        OrderedGate(RETRY, "drop")


def test_past_the_cap_a_parked_aggregates_later_events_are_left_to_redis() -> None:
    """Held in memory up to the cap; the later events of the aggregate that goes over it are
    dropped from memory from a spill mark on (even one read later, and even once the
    aggregate is released, until they are taken back); the aggregate's spill mark is handed
    over once it is released, and the other aggregates pass all along."""
    gate = OrderedGate(RETRY, "park", cap=3)
    gate.dead_lettered("a")
    held = [_d("a", n) for n in range(1, 6)]
    assert _ids(gate.admit([*held, _d("b", 6)])) == ["e6"]
    assert gate.waiting() == 3 and _ids(gate.held["a"]) == ["e1", "e2", "e3"]
    assert gate.spilled == {"a": EntryId.parse("1004-0")}
    assert _ids(gate.admit([_d("a", 7), _d("b", 8)])) == ["e8"]  # a's 7 is left in Redis
    assert gate.waiting() == 3
    assert gate.take_spilled() == {}  # still parked
    gate.set_parked(set())
    assert _ids(gate.released()) == ["e1", "e2", "e3"]
    # Released but not yet taken back: a's events from the mark on still wait in Redis.
    assert _ids(gate.admit([_d("a", 9), _d("b", 10)])) == ["e10"]
    assert gate.take_spilled() == {"a": EntryId.parse("1004-0")}
    assert _ids(gate.admit([_d("a", 4), _d("a", 5)])) == ["e4", "e5"]
    assert gate.waiting() == 0


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OrderedGate(RETRY, cap=0)
