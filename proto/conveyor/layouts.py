"""Topic layouts: how many stream partitions a topic's events are split into, and how consumer
groups treat them. The catalog (`conveyor.topic_layouts`) holds one row per partitioned topic of
a deployment; a topic without one is unpartitioned and keeps its single stream. Relays and
consumers are given a `LayoutSource` (the catalog's, `admin.catalog.layouts.CatalogLayouts`) and
route or read by what it says."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from conveyor import wire

PARK: Final = "park"
"""A dead-lettered event holds the later events of its aggregate (ordered topics)."""
PASS: Final = "pass"
"""A dead-lettered event lets the later events of its aggregate through."""
DEAD_LETTER_POLICIES: Final = (PARK, PASS)


@dataclass(frozen=True, slots=True)
class Layout:
    """One partitioned topic's layout, as its catalog row says."""

    partitions: int
    """Stream partitions (1 to wire.MAX_PARTITIONS), by `wire.partition_of(aggregate_id, n)`."""
    ordered: bool = False
    """Consumer groups apply each aggregate's events in order (partition leases)."""
    on_dead_letter: str = PARK
    """PARK or PASS: what a dead letter of an ordered topic does to its aggregate's later events."""
    version: int = 1
    """Raised by every change; a process that loaded another version is out of date."""

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= wire.MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1-{wire.MAX_PARTITIONS}, not {self.partitions}")
        if self.on_dead_letter not in DEAD_LETTER_POLICIES:
            raise ValueError(
                f"on_dead_letter must be {' or '.join(DEAD_LETTER_POLICIES)}, "
                f"not {self.on_dead_letter!r}"
            )


Layouts = Mapping[str, Layout]
"""Topic -> its layout, for the partitioned topics of one deployment."""


def streams(topic: str, prefix: str, layouts: Layouts) -> list[wire.Keys]:
    """Keys of every stream of `topic`: one for an unpartitioned topic, one per partition."""
    layout = layouts.get(topic)
    return wire.topic_keys(topic, prefix, None if layout is None else layout.partitions)


def routing_changes(before: Layouts, now: Layouts) -> list[str]:
    """The topics whose streams differ between two loads of the layouts (partitioned,
    unpartitioned, or another partition count), each as `topic: OLD -> NEW partitions`, sorted.
    A change of `ordered` or `on_dead_letter` alone moves no event and is not listed."""
    out = []
    for topic in sorted(before.keys() | now.keys()):
        old, new = before.get(topic), now.get(topic)
        if _count(old) != _count(new):
            out.append(f"{topic}: {_count(old)} -> {_count(new)} partitions")
    return out


def _count(layout: Layout | None) -> str:
    return "1 (unpartitioned)" if layout is None else str(layout.partitions)


class LayoutSource(Protocol):
    """Where a relay or consumer reads its deployment's layouts (the catalog)."""

    async def layouts(self, key_prefix: str) -> dict[str, Layout]:
        """The partitioned topics of the deployment with key prefix `key_prefix`."""
