"""Peak rates: `conveyor relay` and `conveyor consume` (three forms) against the yardstick's
loops, each round of the yardstick right before Conveyor's, same events and batch size."""

from __future__ import annotations

import asyncio
import statistics
import time

import asyncpg

from admin.bench import load, yardstick
from admin.bench.harness import Bench, Proc, Scratch, Stall
from admin.bench.model import Figure, Target
from conveyor import redis_client

CONSUMER_FORMS = {
    "per-event": ("exactly-once per-event", "per_event", "exactly-once", 0.9),
    "batch": ("exactly-once batch handler", "batch", "exactly-once", 0.8),
    "at-least-once": ("at-least-once no-op", "noop", "at-least-once", 0.6),
}
"""Form: (figure name, router in admin.bench.handlers, mode, target ratio to the yardstick)."""

YARDSTICK_NAMES = {
    "per-event": "yardstick --handler-insert --conns 2",
    "batch": "yardstick ledger-only",
    "at-least-once": "yardstick --bare",
}


async def relay_round(bench: Bench, n: int) -> float:
    """Events/s of one `conveyor relay` draining a pre-filled outbox of `n` rows, from the
    outbox's own published_at stamps (first to last claim: process start-up not counted)."""
    async with bench.scratch() as s:
        bench.progress.stage(f"relay: filling the outbox with {n:,} events", n)
        await load.fill_outbox(bench.database_url, s, n, traced=bench.traced)
        proc = bench.relay(s)
        try:
            await wait_until(bench, s, n)
        finally:
            proc.stop()
        span, last = await _stamps(bench, s)
        return (n - last) / span if span > 0 else float(n)


async def _stamps(bench: Bench, s: Scratch) -> tuple[float, int]:
    conn_sql = (
        "SELECT extract(epoch FROM max(published_at) - min(published_at))::float8, "
        f"count(*) FILTER (WHERE published_at = (SELECT max(published_at) FROM {s.schema}.outbox))"
        f" FROM {s.schema}.outbox"
    )
    conn = await asyncpg.connect(bench.database_url)
    try:
        row = await conn.fetchrow(conn_sql)
    finally:
        await conn.close()
    return float(row[0] or 0.0), int(row[1])


async def wait_until(bench: Bench, s: Scratch, n: int) -> None:
    """Wait for the relay to publish all `n` rows, showing progress."""
    conn = await asyncpg.connect(bench.database_url)
    stall = Stall("the relay")
    try:
        while True:
            left = await conn.fetchval(
                f"SELECT count(*) FROM {s.schema}.outbox WHERE published_at IS NULL"
            )
            bench.progress.advance(n - left)
            stall.check(n - left)
            if not left:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def consumer_round(bench: Bench, form: str, n: int) -> float:
    """Events/s of one `conveyor consume` process draining `n` events of a pre-filled stream,
    from its first acknowledged read to the group having acknowledged all of them."""
    name, router, mode, _ = CONSUMER_FORMS[form]
    async with bench.scratch() as s:
        bench.progress.stage(f"consumer {name}: filling the stream with {n:,} events")
        await load.fill_stream(bench.redis_url, s, n, traced=bench.traced)
        bench.progress.stage(f"consumer {name}: draining {n:,} events", n)
        proc = bench.consume(s, router, "--mode", mode)
        try:
            return await drain_rate(bench, s, n, proc)
        finally:
            proc.stop()


async def drain_rate(bench: Bench, s: Scratch, n: int, proc: Proc) -> float:
    """Events/s the group acknowledges between its first read and its last acknowledgement."""
    r = redis_client.connect(bench.redis_url)
    t0: float | None = None
    done0 = 0
    stall = Stall("the consumer")
    try:
        while True:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"the consumer exited with {proc.popen.returncode}")
            groups = await r.xinfo_groups(s.stream)
            now = time.monotonic()
            read = int(groups[0]["entries-read"] or 0) if groups else 0
            pending = int(groups[0]["pending"]) if groups else 0
            done = read - pending
            bench.progress.advance(done)
            stall.check(done)
            if t0 is None and read > 0:
                t0, done0 = now, done
            if read >= n and pending == 0:
                assert t0 is not None
                return (n - done0) / max(now - t0, 1e-3)
            await asyncio.sleep(0.01)
    finally:
        await r.aclose()


async def relay(bench: Bench) -> list[Figure]:
    z = bench.sizes
    ours, theirs = [], []
    for i in range(z.rounds):
        bench.progress.stage(f"relay: yardstick round {i + 1}/{z.rounds}")
        theirs.append(
            await yardstick.relay_rate(bench.database_url, bench.redis_url, z.events, z.batch)
        )
        ours.append(await relay_round(bench, z.events))
    bench.shared["relay_rate"] = statistics.median(ours)
    return [
        Figure(
            "relay",
            "relay rate",
            statistics.median(ours),
            "events/s",
            statistics.median(theirs),
            "yardstick relay (update mode)",
            Target("ratio>=", 1.0),
            f"{z.events:,} events, batch {z.batch}, median of {z.rounds}",
            tuple(ours) if z.rounds > 1 else (),
        )
    ]


async def consumer(bench: Bench) -> list[Figure]:
    z = bench.sizes
    out = []
    for form, (name, _, _, target) in CONSUMER_FORMS.items():
        ours, theirs = [], []
        for i in range(z.rounds):
            bench.progress.stage(f"consumer {name}: yardstick round {i + 1}/{z.rounds}")
            theirs.append(
                await yardstick.consumer_rate(
                    bench.database_url, bench.redis_url, form, z.events, z.batch
                )
            )
            ours.append(await consumer_round(bench, form, z.events))
        bench.shared[f"consumer_rate:{form}"] = statistics.median(ours)
        out.append(
            Figure(
                "consumer",
                name,
                statistics.median(ours),
                "events/s",
                statistics.median(theirs),
                YARDSTICK_NAMES[form],
                Target("ratio>=", target),
                f"{z.events:,} events, batch {z.batch}, median of {z.rounds}",
                tuple(ours) if z.rounds > 1 else (),
            )
        )
    return out
