"""Relay throughput: `conveyor relay` vs the yardstick relay loop, same events, batch and run.

    python benchmarks/relay_throughput.py [--events 200000] [--batch 1000] [--rounds 2]

Each round pre-fills a fresh schema with N identity events (enqueue_many), starts the real
`conveyor relay` process on it, and takes the rate from the outbox's own published_at stamps
(the span between the first and the last batch's claim, over the events published in it), so
process start-up is not counted; the wall-clock rate including start-up is printed too. Then it
runs ../shared/bench/ideal_pipeline.py with the same --events/--batch in update mode and reads
its relay_eps line. Prints every figure and the ratio of the medians. Never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

import yardstick
from admin import migrations
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many
from yardstick import DB, REDIS


def sampled_traceparent() -> str:
    """A W3C traceparent of a fresh, sampled trace: an event whose producer's trace is sampled."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


async def prefill(schema: str, n: int, *, traced: bool = False) -> None:
    """N identity events; with `traced`, each carries the traceparent of a sampled trace."""
    conn = await asyncpg.connect(DB)
    try:
        for start in range(0, n, 5000):
            batch = [
                NewEvent(
                    events_pb2.UserRegistered(user_id=f"user-{i}", email=f"u{i}@example.com"),
                    "user",
                    f"user-{i}",
                    topic="bench",
                    headers={"traceparent": sampled_traceparent()} if traced else None,
                )
                for i in range(start, min(n, start + 5000))
            ]
            async with conn.transaction():
                await enqueue_many(conn, batch, schema=schema)
        await conn.execute(f"VACUUM ANALYZE {schema}.outbox")
    finally:
        await conn.close()


async def wait_drained(schema: str, n: int) -> tuple[float, float]:
    """Wait for the outbox to drain; return (rate by published_at stamps, stamp span)."""
    conn = await asyncpg.connect(DB)
    try:
        while await conn.fetchval(
            f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"
        ):
            await asyncio.sleep(0.05)
        row = await conn.fetchrow(
            "SELECT extract(epoch FROM max(published_at) - min(published_at))::float8 AS span, "
            f"count(*) FILTER (WHERE published_at = (SELECT max(published_at) "
            f"FROM {schema}.outbox)) AS last FROM {schema}.outbox"
        )
        return (n - row["last"]) / row["span"], row["span"]
    finally:
        await conn.close()


async def conveyor_round(
    n: int, batch: int, *, env: dict[str, str] | None = None, traced: bool = False
) -> float:
    """One round of the real `conveyor relay` process, with `env` added to its environment."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(migrations.upgrade, DB, schema)
    r = aioredis.from_url(REDIS)
    try:
        await prefill(schema, n, traced=traced)
        env = {
            **(env or {}),
            "CONVEYOR_DATABASE_URL": DB,
            "CONVEYOR_REDIS_URL": REDIS,
            "CONVEYOR_LOG_LEVEL": "warning",
        }
        cmd = [
            str(Path(sys.executable).with_name("conveyor")),
            "relay",
            "--schema",
            schema,
            "--key-prefix",
            prefix,
            "--batch-size",
            str(batch),
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, **env})
        try:
            rate, span = await wait_drained(schema, n)
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)
        xlen = await r.xlen(wire.Keys("bench", prefix).events)
        print(
            f"conveyor relay_eps {rate:.0f}  ({n} events, {span:.2f}s between first and last "
            f"claim; {n / wall:.0f}/s wall-clock incl. start-up; stream holds {xlen})"
        )
        return rate
    finally:
        await r.delete(wire.Keys("bench", prefix).events)
        await r.aclose()
        await asyncio.to_thread(migrations.downgrade, DB, schema, "base")
        conn = await asyncpg.connect(DB)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


def yardstick_round(n: int, batch: int) -> float:
    args = ["--events", str(n), "--batch", str(batch), "--mode", "update"]
    return yardstick.events_per_second(args, r"relay_eps\[update\]")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    yardstick.require()
    ours, theirs = [], []
    for _ in range(a.rounds):
        theirs.append(yardstick_round(a.events, a.batch))
        ours.append(asyncio.run(conveyor_round(a.events, a.batch)))
    o, y = statistics.median(ours), statistics.median(theirs)
    print(
        f"relay: conveyor {o:.0f}/s, yardstick {y:.0f}/s, ratio {o / y:.2f} (median of "
        f"{a.rounds} rounds, {a.events} events, batch {a.batch}; target >= 0.90)"
    )


if __name__ == "__main__":
    main()
