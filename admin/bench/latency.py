"""Commit-to-handler latency: single-event producer commits at a fixed rate through `conveyor
relay` (woken by NOTIFY, or polling with --no-listen) and `conveyor consume`, p50/p95/p99."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from admin.bench import load
from admin.bench.harness import Bench, Proc, Scratch
from admin.bench.model import Figure, Target
from relay.settings import RelaySettings

WARM_UP = 1.0
"""Seconds of events left out at the start (connections, plans and caches settle); half the
run when it is shorter than two seconds."""
PRODUCER_CONNECTIONS = 2
"""Producer connections: one alone cannot always commit 1,000 single-event transactions a
second on a busy 2-core machine, and a producer that falls behind bunches its commits."""
DRAIN_SECONDS = 15.0
"""How long, beyond one poll interval, the consumer gets to handle the last events."""

NOTIFY_ON_TARGETS = {50: Target("value<=", 3), 95: None, 99: Target("value<=", 15)}
"""Percentile: target (ms) with the relay woken by the outbox trigger's NOTIFY."""


def poll_interval() -> float:
    """The relay's default poll interval, seconds: what `--no-listen` waits between claims."""
    return RelaySettings().poll_interval


def notify_off_targets() -> dict[int, Target | None]:
    """Percentile: target (ms) with NOTIFY off; p99 may take one poll interval and 20 ms."""
    return {50: None, 95: None, 99: Target("value<=", poll_interval() * 1000 + 20)}


@dataclass(frozen=True, slots=True)
class Run:
    """One measurement: latencies of the events after the warm-up, and what was left out."""

    latencies_ms: list[float]
    """Sorted."""
    produced: int
    handled: int
    warm_up: float
    """Seconds left out at the start."""
    seconds: float
    """From the first commit to the last."""

    @property
    def measured(self) -> int:
        return len(self.latencies_ms)


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank `p`th percentile of sorted values (NaN when there are none)."""
    if not ordered:
        return math.nan
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def join(commits: dict[str, int], handled: Sequence[tuple[str, int]], since_ns: int) -> list[float]:
    """Latencies in ms, sorted, commit stamp to handler stamp, of the handled events committed
    at or after `since_ns`."""
    out = []
    for event_id, handled_ns in handled:
        committed = commits.get(event_id)
        if committed is not None and committed >= since_ns:
            out.append((handled_ns - committed) / 1e6)
    out.sort()
    return out


async def run(bench: Bench) -> list[Figure]:
    """p50, p95 and p99 of commit-to-handler latency with NOTIFY on, then with it off."""
    figures = []
    interval = poll_interval()
    for listen, label, targets in (
        (True, "NOTIFY on", NOTIFY_ON_TARGETS),
        (False, "NOTIFY off", notify_off_targets()),
    ):
        measured = await measure(bench, listen=listen, label=label)
        how = "relay woken by NOTIFY" if listen else f"relay --no-listen, {interval:g} s poll"
        detail = describe(measured, bench.sizes.latency_rate, how)
        for p, target in targets.items():
            figures.append(
                Figure(
                    "latency",
                    f"p{p}, {label}",
                    percentile(measured.latencies_ms, p),
                    "ms",
                    target=target,
                    detail=detail,
                )
            )
    return figures


def describe(m: Run, offered: int, how: str) -> str:
    """The detail line of a latency figure: what was offered and reached, what was measured."""
    rate = m.produced / m.seconds if m.seconds > 0 else 0.0
    missing = m.produced - m.handled
    late = f", {missing:,} not handled in time" if missing else ""
    return (
        f"{m.measured:,} of {m.produced:,} events ({m.warm_up:g} s warm-up out{late}), "
        f"1 per commit, {rate:,.0f}/s of {offered:,}/s offered; {how}"
    )


async def measure(bench: Bench, *, listen: bool, label: str) -> Run:
    """Start a consumer and a relay on a scratch schema, produce at the offered rate, wait for
    the consumer to handle every event (bounded), then join commit and handler stamps."""
    z = bench.sizes
    commits: dict[str, int] = {}

    def on_commit(ids: Sequence[object], at_ns: int) -> None:
        for event_id in ids:
            commits[str(event_id)] = at_ns

    async with bench.scratch() as s:
        bench.progress.stage(f"latency, {label}: starting relay and consumer")
        consumer = bench.consume(s, "latency")
        relay: Proc | None = None
        try:
            relay = bench.relay(s, "--listen" if listen else "--no-listen")
            bench.progress.stage(
                f"latency, {label}: {z.latency_rate:,} events/s for {z.latency_seconds:g} s",
                z.latency_seconds,
            )
            started_ns = time.monotonic_ns()
            ticker = asyncio.create_task(_tick(bench, started_ns))
            try:
                produced = await load.produce(
                    bench.database_url,
                    s,
                    rate=z.latency_rate,
                    per_txn=1,
                    connections=PRODUCER_CONNECTIONS,
                    seconds=z.latency_seconds,
                    on_commit=on_commit,
                )
            finally:
                ticker.cancel()
            bench.progress.stage(f"latency, {label}: waiting for the consumer", produced)
            handled = await _drain(bench, s, produced, (consumer, relay))
        finally:
            consumer.stop()
            if relay is not None:
                relay.stop()
    first = min(commits.values(), default=started_ns)
    last = max(commits.values(), default=started_ns)
    warm_up = min(WARM_UP, z.latency_seconds / 2)
    latencies = join(commits, handled, first + int(warm_up * 1e9))
    if not latencies:
        raise RuntimeError(
            f"latency, {label}: none of the {produced:,} events committed after the warm-up "
            f"was handled within {poll_interval() + DRAIN_SECONDS:g} s of the last commit"
        )
    return Run(latencies, produced, len(handled), warm_up, (last - first) / 1e9)


async def _tick(bench: Bench, started_ns: int) -> None:
    """Report the seconds produced so far; sleeps between reports, so the producer's commit
    stamps are not held back by work in this process."""
    while True:
        await asyncio.sleep(0.25)
        bench.progress.advance((time.monotonic_ns() - started_ns) / 1e9)


async def _drain(
    bench: Bench, s: Scratch, produced: int, procs: Sequence[Proc]
) -> list[tuple[str, int]]:
    """Wait until the consumer has handled `produced` events, or one poll interval plus
    DRAIN_SECONDS have passed; return (event id, handler stamp) of every handled event."""
    deadline = time.monotonic() + poll_interval() + DRAIN_SECONDS
    conn = await asyncpg.connect(bench.database_url)
    try:
        while True:
            done = await conn.fetchval(f"SELECT count(*) FROM {s.schema}.bench_effects")
            bench.progress.advance(done)
            if done >= produced or time.monotonic() >= deadline:
                break
            for proc in procs:
                if proc.popen.poll() is not None:
                    raise RuntimeError(
                        f"a `conveyor` process of the latency scenario exited with "
                        f"{proc.popen.returncode}"
                    )
            await asyncio.sleep(0.1)
        rows = await conn.fetch(
            f"SELECT event_id::text, handled_ns FROM {s.schema}.bench_effects "
            "WHERE handled_ns IS NOT NULL"
        )
    finally:
        await conn.close()
    return [(r[0], int(r[1])) for r in rows]
