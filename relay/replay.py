"""Republishing kept outbox rows after Redis lost streams (`conveyor relay replay`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from conveyor import telemetry as t
from relay import store
from relay.metrics import RelayMetrics
from relay.publisher import Publisher
from relay.spans import publish_traced, tracing_enabled


@dataclass(slots=True)
class ReplayResult:
    """What a replay found and did."""

    matched: int = 0
    """Kept rows in the window (and topic)."""
    published: int = 0
    """Entries appended again (0 on a dry run)."""
    by_stream: Counter[str] = field(default_factory=Counter)
    """Rows per stream key in the window."""


async def replay(
    pool: asyncpg.Pool,
    publisher: Publisher,
    schema: str,
    *,
    since: datetime,
    topic: str | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
    on_progress: Callable[[int], None] | None = None,
    metrics: RelayMetrics | None = None,
) -> ReplayResult:
    """Append again every kept row of `schema` published at or after `since`, in id order.

    Rows stay as they are; consumers absorb the duplicates (exactly-once groups through their
    ledger; an event a group dead-lettered is not dead-lettered again while its dead letter
    stands). `on_progress(n)` is called after each batch with the rows it held. Each batch
    republished is traced as the relay's are (`relay.spans.publish_traced`), named
    `conveyor replay`, so a sampled event's trace shows its second publish.
    """
    result = ReplayResult()
    after_id = 0
    tracing = tracing_enabled()
    while rows := await store.replay_rows(
        pool, schema, since=since, topic=topic, after_id=after_id, limit=batch_size
    ):
        after_id = rows[-1][0]
        result.matched += len(rows)
        if dry_run:
            result.by_stream.update(publisher.stream_key(row[2], row[4]) for row in rows)
        else:
            counts = await (
                publish_traced(
                    publisher.publish,
                    rows,
                    name=t.SPAN_RELAY_REPLAY,
                    attributes={t.ATTR_SCHEMA: schema},
                )
                if tracing
                else publisher.publish(rows)
            )
            result.by_stream.update(counts)
            result.published += len(rows)
            if metrics is not None:
                for stream, n in counts.items():
                    metrics.replayed.add(n, {t.ATTR_STREAM: stream})
        if on_progress is not None:
            on_progress(len(rows))
    return result
