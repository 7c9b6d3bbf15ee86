"""Consumer groups of partitioned topics in the status snapshot: one row per partition, named
`topic:N` (as the partition's hash tag and its consumer worker are; rows from
`admin.catalog.Catalog.stream_groups`)."""

from __future__ import annotations

from conveyor import wire


def stream_key(name: str, prefix: str) -> str:
    """The event stream of a status row's topic: `orders`, or `orders:3` for a partition."""
    topic, _, partition = name.partition(":")
    return wire.Keys(topic, prefix, int(partition) if partition else None).events
