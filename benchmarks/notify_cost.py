"""What the outbox's NOTIFY trigger costs producers: single-event commits per second through
`relay.enqueue` with the trigger on and off, at 1, 4 and 16 producer connections.

    python benchmarks/notify_cost.py [--seconds 5] [--rounds 3] [--conns 1,4,16]

Each producer connection loops `BEGIN; enqueue one event; COMMIT` for --seconds; the trigger is
switched with ALTER TABLE ... DISABLE/ENABLE TRIGGER between runs, interleaved round by round.
PostgreSQL takes a database-wide lock on its notification queue while a notifying transaction
commits, so notifying commits serialise there: the ratio shows from how many connections that
starts to matter. Prints every figure and the medians; never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import asyncpg

from admin import migrations
from conveyor import database
from conveyor.identity.v1 import events_pb2
from relay import enqueue

DB = os.environ.get("CONVEYOR_DATABASE_URL", database.DEFAULT_DATABASE_URL)

TRIGGER = "conveyor_outbox_notify"


async def producer(schema: str, stop_at: float) -> int:
    conn = await asyncpg.connect(DB)
    commits = 0
    try:
        while time.perf_counter() < stop_at:
            async with conn.transaction():
                await enqueue(
                    conn,
                    events_pb2.UserRegistered(user_id=f"user-{commits}", email="u@example.com"),
                    aggregate_type="user",
                    aggregate_id=f"user-{commits}",
                    topic="bench",
                    schema=schema,
                )
            commits += 1
    finally:
        await conn.close()
    return commits


async def run(schema: str, conns: int, seconds: float, notify: bool) -> float:
    admin = await asyncpg.connect(DB)
    try:
        state = "ENABLE" if notify else "DISABLE"
        await admin.execute(f"ALTER TABLE {schema}.outbox {state} TRIGGER {TRIGGER}")
        await admin.execute(f"TRUNCATE {schema}.outbox")
    finally:
        await admin.close()
    stop_at = time.perf_counter() + seconds
    counts = await asyncio.gather(*(producer(schema, stop_at) for _ in range(conns)))
    rate = sum(counts) / seconds
    print(f"commits/s {rate:.0f}  ({conns} connections, NOTIFY {'on' if notify else 'off'})")
    return rate


async def main_async(a: argparse.Namespace) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(migrations.upgrade, DB, schema)
    conns = [int(c) for c in a.conns.split(",")]
    rates: dict[tuple[int, bool], list[float]] = {(c, n): [] for c in conns for n in (True, False)}
    try:
        for _ in range(a.rounds):
            for c in conns:
                for notify in (True, False):
                    rates[c, notify].append(await run(schema, c, a.seconds, notify))
    finally:
        await asyncio.to_thread(migrations.downgrade, DB, schema, "base")
        conn = await asyncpg.connect(DB)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
    for c in conns:
        on, off = statistics.median(rates[c, True]), statistics.median(rates[c, False])
        print(
            f"notify cost at {c} connections: {on:.0f} commits/s with NOTIFY, {off:.0f} without, "
            f"ratio {on / off:.2f} (median of {a.rounds} rounds; target >= 0.9 at 4)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", default="1,4,16")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
