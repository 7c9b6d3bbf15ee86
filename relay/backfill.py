"""Backfilling one consumer group (`conveyor relay backfill`): kept outbox rows of a time window
appended to that group's retry stream, so a group that joined late catches up on them and no
other group sees them again."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from redis.exceptions import ResponseError

from conveyor import redis_client, wire
from conveyor.replies import text
from relay import store
from relay.errors import RelayError


class GroupMissing(RelayError):
    """The group has no retry stream on a stream of the topic: no member of it ever started."""

    def __init__(self, group: str, topic: str, stream: str) -> None:
        self.group, self.topic, self.stream = group, topic, stream
        super().__init__(
            f"consumer group {group!r} does not exist on topic {topic!r} (no group on {stream}): "
            f"start a consumer of the group first (`conveyor consume --group {group} --topic "
            f"{topic} ...` creates it, with --start latest to take only new events), then "
            "backfill it"
        )


@dataclass(slots=True)
class BackfillResult:
    """What a backfill found and did."""

    matched: int = 0
    """Kept rows of the topic published in the window."""
    sent: int = 0
    """Entries appended to the group's retry streams (0 on a dry run)."""
    by_stream: Counter[str] = field(default_factory=Counter)
    """Rows per retry stream key."""
    first: dict[str, str] = field(default_factory=dict)
    """Retry stream key -> event id of its first row (the lowest outbox id)."""
    last: dict[str, str] = field(default_factory=dict)
    """Retry stream key -> event id of its last row."""

    def count(self, stream: str, event_id: str) -> None:
        """One more row for `stream`."""
        self.by_stream[stream] += 1
        self.first.setdefault(stream, event_id)
        self.last[stream] = event_id


@dataclass(frozen=True)
class Target:
    """The group and topic a backfill writes for, and where each row goes."""

    group: str
    topic: str
    prefix: str = wire.DEFAULT_PREFIX
    partitions: int | None = None
    """The topic's partition count (None: unpartitioned)."""

    def stream(self, aggregate_id: str) -> str:
        """The retry stream of the group on the (partition) stream holding `aggregate_id`."""
        n = self.partitions
        return self._streams[0 if n is None else wire.partition_of(aggregate_id, n)]

    @functools.cached_property
    def _streams(self) -> list[str]:
        return self.streams()

    def streams(self) -> list[str]:
        """Every retry stream of the group on the topic (one per partition)."""
        keys = wire.topic_keys(self.topic, self.prefix, self.partitions)
        return [k.retry(self.group) for k in keys]


async def check_group(client: Any, target: Target, *, round_trip: float) -> None:
    """GroupMissing unless the group exists on every retry stream of the topic."""
    for stream in target.streams():
        try:
            groups = await redis_client.within(round_trip, client.xinfo_groups(stream), "XINFO")
        except ResponseError:  # no such key
            groups = []
        if not any(text(g["name"]) == target.group for g in groups):
            raise GroupMissing(target.group, target.topic, stream)


def entry_fields(row: store.Row) -> dict[bytes, Any]:
    """The retry entry of an outbox row: the fields of the event entry the relay wrote for it
    (conveyor.wire's layout), so the group's consumers apply it like any event; no
    `rt.dead_letter`, as it reprocesses no dead letter."""
    _id, event_id, _topic, event_type, aggregate_id, traceparent, payload = row
    fields: dict[bytes, Any] = {
        wire.F_VERSION: wire.LAYOUT_VERSION,
        wire.F_EVENT_ID: str(event_id),
        wire.F_EVENT_TYPE: event_type,
        wire.F_AGGREGATE_ID: aggregate_id,
    }
    if traceparent:
        fields[wire.F_TRACEPARENT] = traceparent
    fields[wire.F_EVENT] = payload
    return fields


async def backfill(
    pool: asyncpg.Pool,
    client: Any,
    schema: str,
    target: Target,
    *,
    since: datetime,
    until: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
    on_progress: Callable[[int], None] | None = None,
    round_trip: float = redis_client.COMMAND_TIMEOUT,
) -> BackfillResult:
    """Append every kept row of `target.topic` in `schema` published in [since, until) to the
    group's retry stream (the partition's for a partitioned topic), in id order, a page of
    `batch_size` rows at a time. GroupMissing, before anything is written, unless the group
    exists on each. Rows the group already applied are absorbed by its ledger (exactly-once
    groups). `on_progress(n)` is called after each page with the rows it held."""
    await check_group(client, target, round_trip=round_trip)
    result = BackfillResult()
    after_id = 0
    while rows := await store.replay_rows(
        pool,
        schema,
        since=since,
        until=until,
        topic=target.topic,
        after_id=after_id,
        limit=batch_size,
    ):
        after_id = rows[-1][0]
        result.matched += len(rows)
        streams = [target.stream(row[4]) for row in rows]
        for stream, row in zip(streams, rows, strict=True):
            result.count(stream, str(row[1]))
        if not dry_run:
            pipe = client.pipeline(transaction=False)
            for stream, row in zip(streams, rows, strict=True):
                pipe.xadd(stream, entry_fields(row))
            await redis_client.within(round_trip, pipe.execute(), "XADD")
            result.sent += len(rows)
        if on_progress is not None:
            on_progress(len(rows))
    return result
