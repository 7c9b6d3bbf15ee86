"""Consumer throughput: Conveyor's consumer vs the yardstick's consumer loops, same run.

    python benchmarks/consumer_throughput.py [--events 100000] [--batch 1000] [--rounds 1]
                                             [--only per-event,batch,at-least-once]
                                             [--conveyor-only] [--traced]

Three comparisons (BRIEF targets in brackets):
  per-event      exactly-once, a handler doing one INSERT per event through ctx.db, 2 connections
                 vs ideal_pipeline.py --handler-insert --conns 2            [>= 0.8]
  batch          exactly-once, a batch handler doing one INSERT ... unnest per call
                 vs ideal_pipeline.py (ledger-only)                         [>= 0.7]
  at-least-once  no ledger, a no-op handler
                 vs ideal_pipeline.py --bare                                [>= 0.5]
Each Conveyor round publishes N events to a fresh stream (the relay's wire layout), starts a
Consumer in this process and times from its first read to the group having acknowledged all N.
Telemetry is set up as `conveyor consume` sets it up (an in-memory metric reader for
GetMetrics; OTLP export when the standard OTEL_EXPORTER_OTLP_* variables say so). `--traced`
gives every event the traceparent of a sampled producer trace; `--conveyor-only` skips the
yardstick (benchmarks/export_overhead.py runs this script so, once per telemetry set-up).
Prints every figure and the ratios; never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import yardstick
from admin import migrations
from admin.catalog import ConsumerCatalog
from admin.ops import observability
from admin.ops.process import tune_for_throughput
from consumers import Consumer, ConsumerSettings, EventContext, Router
from conveyor import redis_client, wire
from conveyor.identity.v1 import events_pb2
from relay import envelope
from relay.publisher import StreamPublisher
from relay_throughput import sampled_traceparent
from yardstick import DB, REDIS

TOPIC = "bench"
KINDS = {
    "per-event": ["--handler-insert", "--conns", "2"],
    "batch": [],
    "at-least-once": ["--bare"],
}
TARGETS = {"per-event": 0.8, "batch": 0.7, "at-least-once": 0.5}


def router_for(kind: str, schema: str) -> Router:
    router = Router()
    insert = f"INSERT INTO {schema}.bench_effects (event_id) VALUES ($1)"
    if kind == "per-event":

        @router.handler(events_pb2.UserRegistered, topic=TOPIC)
        async def one(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
            await ctx.db.execute(insert, ctx.event_id)

    elif kind == "batch":

        @router.batch_handler(events_pb2.UserRegistered, topic=TOPIC)
        async def many(items: list[tuple[Any, EventContext]], db: Any) -> None:
            await db.execute(
                f"INSERT INTO {schema}.bench_effects (event_id) SELECT unnest($1::uuid[])",
                [ctx.event_id for _, ctx in items],
            )

    else:

        @router.handler(events_pb2.UserRegistered, topic=TOPIC)
        async def noop(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
            return None

    return router


async def publish(r: Any, prefix: str, n: int, *, traced: bool = False) -> None:
    publisher = StreamPublisher(r, prefix)
    for start in range(0, n, 1000):
        rows = []
        for i in range(start, min(n, start + 1000)):
            event_id = envelope.uuid7()
            event = envelope.build(
                events_pb2.UserRegistered(user_id=f"user-{i}", email=f"u{i}@example.com"),
                event_id=event_id,
                source="bench",
                aggregate_type="user",
                aggregate_id=f"user-{i}",
                occurred_at=None,
                headers={"traceparent": sampled_traceparent()} if traced else {},
            )
            rows.append(
                (
                    i,
                    event_id,
                    TOPIC,
                    event.type,
                    event.aggregate_id,
                    None,
                    event.SerializeToString(),
                )
            )
        await publisher.publish(rows)


async def conveyor_round(kind: str, n: int, batch: int, *, traced: bool = False) -> float:
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(migrations.upgrade, DB, schema)
    conn = await asyncpg.connect(DB)
    await conn.execute(f"CREATE TABLE {schema}.bench_effects (event_id uuid NOT NULL)")
    r = redis_client.connect(REDIS)
    key = wire.Keys(TOPIC, prefix).events
    try:
        await publish(r, prefix, n, traced=traced)
        settings = ConsumerSettings(
            group="bench",
            topics=(TOPIC,),
            database_url=DB,
            redis_url=REDIS,
            ledger_schema=schema,
            key_prefix=prefix,
            batch_size=batch,
            mode="at-least-once" if kind == "at-least-once" else "exactly-once",
        )
        consumer = Consumer(router_for(kind, schema), settings, catalog=ConsumerCatalog)
        await consumer.start()
        t0 = time.perf_counter()
        task = asyncio.create_task(consumer.run())
        while True:
            groups = await r.xinfo_groups(key)
            if groups and groups[0]["entries-read"] == n and groups[0]["pending"] == 0:
                break
            await asyncio.sleep(0.01)
        dt = time.perf_counter() - t0
        consumer.stop()
        await task
        await consumer.close()
        effects = await conn.fetchval(f"SELECT count(*) FROM {schema}.bench_effects")
        print(
            f"conveyor consumer_eps[{kind}] {n / dt:.0f}  ({n} events in {dt:.2f}s, "
            f"{effects} effect rows)"
        )
        return n / dt
    finally:
        await r.delete(key, wire.Keys(TOPIC, prefix).retry("bench"))
        await r.aclose()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def yardstick_round(kind: str, n: int, batch: int) -> float:
    args = ["--events", str(n), "--batch", str(batch), *KINDS[kind]]
    return yardstick.events_per_second(args, r"consumer_eps\[[^\]]+\]")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default=",".join(KINDS))
    ap.add_argument("--conveyor-only", action="store_true", help="skip the yardstick")
    ap.add_argument("--traced", action="store_true", help="events carry sampled traceparents")
    a = ap.parse_args()
    if not a.conveyor_only:
        yardstick.require()
    # As `conveyor consume` does.
    observability.configure("conveyor-consumer-bench", readers=[InMemoryMetricReader()])
    tune_for_throughput()
    summary = []
    for kind in a.only.split(","):
        ours, theirs = [], []
        for _ in range(a.rounds):
            if not a.conveyor_only:
                theirs.append(yardstick_round(kind, a.events, a.batch))
            ours.append(asyncio.run(conveyor_round(kind, a.events, a.batch, traced=a.traced)))
        o = statistics.median(ours)
        if a.conveyor_only:
            summary.append(f"consumer {kind}: conveyor {o:.0f}/s")
            continue
        y = statistics.median(theirs)
        summary.append(
            f"consumer {kind}: conveyor {o:.0f}/s, yardstick {y:.0f}/s, ratio "
            f"{o / y:.2f} (target >= {TARGETS[kind]})"
        )
    print("\n".join(summary))


if __name__ == "__main__":
    main()
