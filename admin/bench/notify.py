"""What the outbox's NOTIFY trigger costs producers: single-event commits/s with the trigger
enabled and disabled, at several producer connection counts, a `conveyor relay` listening and
draining throughout (its waiting state may decide whether a commit notifies at all).

PostgreSQL serialises notifying commits on a database-wide lock of its notification queue, so
the ratio shows from how many connections that starts to matter."""

from __future__ import annotations

import asyncio
import statistics
import time

import asyncpg

from admin.bench import load
from admin.bench.harness import Bench, Proc, Scratch
from admin.bench.model import Figure, Target
from conveyor import database

TARGET_CONNECTIONS = 4
"""The connection count the issue's target (>= 0.9x without the trigger) speaks of."""
SETTLE_SECONDS = 30.0
"""Longest wait for the relay to publish what one measurement wrote before the next begins."""

_NOTIFYING = (
    "SELECT t.tgname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
    "WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal "
    "AND (p.prosrc ILIKE '%notify%' OR t.tgname ILIKE '%notify%') ORDER BY t.tgname"
)
"""The outbox's triggers that notify (their function says so, or their name), whatever
migrations named them or however they decide when to notify."""


async def notifying_triggers(conn: asyncpg.Connection, scratch: Scratch) -> list[str]:
    """Names of the triggers on the scratch's outbox that NOTIFY; fails when there is none."""
    table = f"{scratch.schema}.{database.OUTBOX_TABLE}"
    names = [str(r[0]) for r in await conn.fetch(_NOTIFYING, table)]
    if not names:
        raise RuntimeError(f"no trigger on {table} calls pg_notify or NOTIFY: nothing to measure")
    return names


async def switch(conn: asyncpg.Connection, scratch: Scratch, triggers: list[str], on: bool) -> None:
    """Enable or disable every notifying trigger of the outbox, in one statement."""
    verb = "ENABLE" if on else "DISABLE"
    actions = ", ".join(f'{verb} TRIGGER "{name}"' for name in triggers)
    await conn.execute(f"ALTER TABLE {scratch.schema}.{database.OUTBOX_TABLE} {actions}")


async def caught_up(conn: asyncpg.Connection, scratch: Scratch, relay: Proc) -> None:
    """Wait until the relay has published every row (so each measurement starts with the relay
    idle and waiting); fails when the relay exits or takes longer than SETTLE_SECONDS."""
    sql = (
        f"SELECT count(*) FROM {scratch.schema}.{database.OUTBOX_TABLE} WHERE published_at IS NULL"
    )
    deadline = time.monotonic() + SETTLE_SECONDS
    while await conn.fetchval(sql):
        if relay.popen.poll() is not None:
            raise RuntimeError(f"the relay exited with {relay.popen.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the relay did not catch up within {SETTLE_SECONDS:.0f}s")
        await asyncio.sleep(0.05)


async def round_rates(
    bench: Bench,
    scratch: Scratch,
    conn: asyncpg.Connection,
    relay: Proc,
    triggers: list[str],
    *,
    connections: int,
    first: bool,
) -> tuple[float, float]:
    """(commits/s with the trigger, without) at `connections` producer connections: the state
    `first` for half the time, the other for the whole time, `first` again for the other half,
    so a drift over the round weighs on both alike."""
    seconds = bench.sizes.notify_seconds
    committed = {True: 0, False: 0}
    plan = ((first, seconds / 2), (not first, seconds), (first, seconds / 2))
    for on, span in plan:
        await switch(conn, scratch, triggers, on)
        await caught_up(conn, scratch, relay)
        committed[on] += await load.produce(
            bench.database_url, scratch, rate=None, per_txn=1, connections=connections, seconds=span
        )
    return committed[True] / seconds, committed[False] / seconds


async def rates(bench: Bench, scratch: Scratch) -> dict[int, tuple[list[float], list[float]]]:
    """Per connection count: the commits/s of each round with the trigger, and without."""
    z = bench.sizes
    out: dict[int, tuple[list[float], list[float]]] = {}
    conn = await asyncpg.connect(bench.database_url)
    relay: Proc | None = None
    try:
        triggers = await notifying_triggers(conn, scratch)
        relay = bench.relay(scratch)
        for k in z.notify_connections:
            bench.progress.stage(f"notify: {k} producer connections, trigger on and off", z.rounds)
            on, off = out.setdefault(k, ([], []))
            for i in range(z.rounds):
                with_, without = await round_rates(
                    bench, scratch, conn, relay, triggers, connections=k, first=i % 2 == 0
                )
                on.append(with_)
                off.append(without)
                bench.progress.advance(i + 1)
    finally:
        if relay is not None:
            relay.stop()
        await conn.close()
    return out


async def run(bench: Bench) -> list[Figure]:
    z = bench.sizes
    async with bench.scratch() as s:
        measured = await rates(bench, s)
    figures = []
    for k, (on, off) in measured.items():
        figures.append(
            Figure(
                "notify",
                f"producer commits/s with the NOTIFY trigger, {k} connection{'s' * (k != 1)}",
                statistics.median(on),
                "commits/s",
                statistics.median(off),
                "the same without the trigger",
                Target("ratio>=", 0.9) if k == TARGET_CONNECTIONS else None,
                f"single-event transactions, {z.notify_seconds:g} s each way interleaved, "
                f"relay listening, median of {z.rounds}",
                tuple(on) if z.rounds > 1 else (),
            )
        )
    return figures
