"""Publishing events straight to a stream, an effects table and running consumers, for tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from google.protobuf.message import Message
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from admin.catalog import ConsumerCatalog
from consumers import Consumer, ConsumerSettings, EventContext, Router
from consumers.metrics import ConsumerMetrics
from conveyor.identity.v1 import events_pb2
from relay import envelope
from relay.publisher import StreamPublisher


def registered(i: int) -> events_pb2.UserRegistered:
    return events_pb2.UserRegistered(user_id=f"u{i}", email=f"u{i}@example.com")


async def publish(
    r: Any,
    prefix: str,
    n: int,
    *,
    topic: str = "identity",
    aggregates: int = 50,
    make: Callable[[int], Message] = registered,
) -> list[str]:
    """XADD `n` events (wire layout as the relay writes it); return their ids in order."""
    rows, ids = [], []
    for i in range(n):
        event_id = envelope.uuid7()
        event = envelope.build(
            make(i),
            event_id=event_id,
            source="test",
            aggregate_type="user",
            aggregate_id=f"agg{i % aggregates}",
            occurred_at=None,
            headers={},
        )
        rows.append(
            (i, event_id, topic, event.type, event.aggregate_id, None, event.SerializeToString())
        )
        ids.append(str(event_id))
    publisher = StreamPublisher(r, prefix)
    for start in range(0, n, 1000):
        await publisher.publish(rows[start : start + 1000])
    return ids


async def create_effects(pg: asyncpg.Connection, schema: str) -> None:
    """An effects table with no unique constraint: a double effect shows up as two rows."""
    await pg.execute(
        f"CREATE TABLE {schema}.effects (consumer_group text NOT NULL, event_id uuid NOT NULL, "
        "aggregate_id text, attempt int NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


def effect_router(
    schema: str, *, fail: Callable[[EventContext], None] | None = None, topic: str = "identity"
) -> Router:
    """A router whose UserRegistered handler inserts one effects row through ctx.db."""
    router = Router()

    @router.handler(events_pb2.UserRegistered, topic=topic)
    async def on_registered(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        if fail is not None:
            fail(ctx)
        await ctx.db.execute(
            f"INSERT INTO {schema}.effects (consumer_group, event_id, aggregate_id, attempt) "
            "VALUES ($1, $2, $3, $4)",
            ctx.group,
            uuid.UUID(ctx.event_id),
            ctx.aggregate_id,
            ctx.attempt,
        )

    return router


async def effect_counts(pg: asyncpg.Connection, schema: str, group: str) -> dict[str, int]:
    rows = await pg.fetch(
        f"SELECT event_id::text, count(*) FROM {schema}.effects WHERE consumer_group = $1 "
        "GROUP BY 1",
        group,
    )
    return {r[0]: r[1] for r in rows}


@asynccontextmanager
async def running_consumer(
    router: Router, metrics: ConsumerMetrics | None = None, **settings: Any
) -> AsyncIterator[Consumer]:
    """A Consumer running in this event loop until the block ends (then stopped gracefully)."""
    settings.setdefault("topics", router.topics)
    consumer = Consumer(router, ConsumerSettings(**settings), metrics, catalog=ConsumerCatalog)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await consumer.close()


class Meters:
    """Consumer metrics read back from an in-memory OpenTelemetry reader."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[self.reader])
        self.metrics = ConsumerMetrics(provider.get_meter("test"))

    def total(self, name: str, **attrs: str) -> float:
        """Sum of `name`'s data points whose attributes include `attrs`."""
        data = self.reader.get_metrics_data()
        total = 0.0
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        if all(point.attributes.get(k) == v for k, v in attrs.items()):
                            total += getattr(point, "value", 0)
        return total


def consumer_settings(case: Any, group: str = "g", **overrides: Any) -> dict[str, Any]:
    """Consumer settings for a test case: fast polling, fast retries, its schema and prefix."""
    base = {
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "group": group,
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
        "block": 0.05,
        "retry_backoff": 0.05,
        "retry_backoff_max": 0.2,
    }
    return base | overrides


def router_of(handler: Any, topic: str = "identity") -> Router:
    """A router with `handler` for UserRegistered on `topic`."""
    router = Router()
    router.handler(events_pb2.UserRegistered, topic=topic)(handler)
    return router


async def insert_effect(ctx: EventContext, schema: str, attempt: int | None = None) -> None:
    """One effects row for the event, through ctx.db (attempt: the delivery's, unless given)."""
    await ctx.db.execute(
        f"INSERT INTO {schema}.effects (consumer_group, event_id, aggregate_id, attempt) "
        "VALUES ($1, $2, $3, $4)",
        ctx.group,
        uuid.UUID(ctx.event_id),
        ctx.aggregate_id,
        ctx.attempt if attempt is None else attempt,
    )


async def ledger_results(case: Any, group: str | None = None) -> dict[str, str]:
    """Event id -> processing_result of the test schema's ledger (of `group` when given)."""
    rows = await case.pg.fetch(
        f"SELECT event_id::text, processing_result FROM {case.schema}.event_ledger "
        "WHERE $1::text IS NULL OR consumer_group = $1",
        group,
    )
    return {r[0]: r[1] for r in rows}


async def publish_timed(
    case: Any, events: list[tuple[str, datetime | None]], first: int = 0
) -> list[str]:
    """XADD one event per (aggregate, time) in order, in the relay's layout, their payloads
    numbered from `first`; their ids."""
    rows, ids = [], []
    for i, (aggregate, at) in enumerate(events, start=first):
        event_id = envelope.uuid7()
        event = envelope.build(
            registered(i),
            event_id=event_id,
            source="test",
            aggregate_type="user",
            aggregate_id=aggregate,
            occurred_at=at,
            headers={},
        )
        rows.append(
            (i, event_id, "identity", event.type, aggregate, None, event.SerializeToString())
        )
        ids.append(str(event_id))
    await StreamPublisher(case.redis, case.prefix).publish(rows)
    return ids
