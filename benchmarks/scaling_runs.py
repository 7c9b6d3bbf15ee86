"""One measured run of benchmarks/scaling.py: N `conveyor consume` members of one group draining
a pre-filled stream, or N `conveyor relay` processes draining one pre-filled outbox.

Starting N processes takes seconds on a small machine, and the first one up would drain a share
of the backlog before the last one is. So every run holds a gate: the table the processes write
first (the handlers' `bench_effects`, the relays' outbox) is locked `IN EXCLUSIVE MODE` (reads
go on, writes wait) while they start, read their first batches and block on their first write;
the clock starts when the gate opens and stops when the last event is applied (the group has
acknowledged every entry, which it does only after the ledger row's COMMIT) or published (no
outbox row left unpublished)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
from redis.exceptions import ResponseError

from admin.bench import load
from admin.bench.harness import Bench, Proc, Scratch, Stall
from admin.bench.model import Sizes
from admin.catalog import layouts as catalog_layouts
from conveyor import database, redis_client
from conveyor import layouts as conveyor_layouts
from conveyor.layouts import PARK, Layouts

GATE_SECONDS = 30.0
"""Longest wait for every process to block on the gate; the run then starts anyway (said on
stderr), so a process that never writes cannot hold it up."""

POLL_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class Measured:
    events: int
    seconds: float
    applied: int
    """Rows the group's ledger holds (consumers) or rows published (relays) at the end."""

    @property
    def rate(self) -> float:
        return self.events / max(self.seconds, 1e-3)


def ratio(values: Sequence[float], bases: Sequence[float]) -> float:
    """The median of the per-round ratios values[i] / bases[i]: the machine's load drifts
    between rounds, and a ratio of two figures of one round is steadier than either."""
    return statistics.median(v / b for v, b in zip(values, bases, strict=True))


@dataclass(slots=True)
class Case:
    """One configuration of a scenario and what its rounds measured."""

    scenario: str
    processes: int
    lanes: int
    run: Callable[[], Awaitable[Measured]]
    rates: list[float] = field(default_factory=list)
    setup: str = ""
    """Where the streams live (shards: `server`, `cluster, 3 masters`)."""
    role: str = ""
    """What runs (shards: `relay` or `consumer`)."""
    partitions: int | None = None
    """The topic's stream partitions (None: one stream)."""
    batch: int = 0
    """`--batch-size` of its processes."""

    @property
    def label(self) -> str:
        if self.setup:
            return f"{self.scenario} {self.setup}, partitions={self.partitions} {self.role}"
        return f"{self.scenario} x{self.processes}" + (f" lanes={self.lanes}" if self.lanes else "")


@dataclass(frozen=True, slots=True)
class Services:
    database_url: str
    redis_url: str
    timeout: float
    """Longest a run may take from the gate's opening to its last event."""


class Gate:
    """A transaction holding `LOCK TABLE ... IN EXCLUSIVE MODE` on one table until opened."""

    def __init__(self, conn: asyncpg.Connection, table: str) -> None:
        self._conn = conn
        self._table = table
        self.opened_at: float | None = None

    async def wait_for(self, procs: Sequence[Proc]) -> None:
        """Wait until each of `procs` has a statement waiting on the lock (at most
        GATE_SECONDS): a process's waiting backends are told by their client ports."""
        deadline = time.monotonic() + GATE_SECONDS
        blocked = 0
        while time.monotonic() < deadline:
            # pg_stat_activity is read once per transaction unless told otherwise
            await self._conn.execute("SELECT pg_stat_clear_snapshot()")
            ports = {
                row[0]
                for row in await self._conn.fetch(
                    "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                    " WHERE l.relation = $1::regclass AND NOT l.granted",
                    self._table,
                )
            }
            blocked = sum(1 for p in procs if ports & _client_ports(p))
            if blocked == len(procs):
                return
            await asyncio.sleep(POLL_SECONDS)
        print(
            f"note: {blocked} of {len(procs)} processes were waiting on {self._table} after"
            f" {GATE_SECONDS:.0f} s; starting the clock anyway",
            file=sys.stderr,
        )

    async def open(self) -> float:
        """Let the writers through; time.monotonic() when the COMMIT returned."""
        if self.opened_at is None:
            await self._conn.execute("COMMIT")
            self.opened_at = time.monotonic()
        return self.opened_at


def _client_ports(proc: Proc) -> set[int]:
    """Local ports of the process's TCP connections."""
    return {c.laddr.port for c in proc.ps.net_connections(kind="tcp") if c.raddr}


@asynccontextmanager
async def gate(database_url: str, table: str) -> AsyncIterator[Gate]:
    """A Gate on `table`, opened on the way out if it was not."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE")
        g = Gate(conn, table)
        try:
            yield g
        finally:
            await g.open()
    finally:
        await conn.close()


@asynccontextmanager
async def started(starters: Sequence[Callable[[], Proc]]) -> AsyncIterator[list[Proc]]:
    """Start processes at once (each waits for its gRPC port); all are stopped on the way out,
    and all that started are stopped when one fails to."""
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(s) for s in starters), return_exceptions=True
    )
    procs = [p for p in outcomes if isinstance(p, Proc)]
    try:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        yield procs
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))


def _check(procs: Sequence[Proc], what: str, deadline: float, stall: Stall, done: int) -> None:
    for proc in procs:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"a {what} exited with {proc.popen.returncode}")
    if time.monotonic() > deadline:
        raise RuntimeError(
            f"the {what}s did not finish within the run's time limit ({done:,} done)"
        )
    stall.check(done)


async def consumers(
    services: Services,
    *,
    router: str,
    members: int,
    lanes: int,
    events: int,
    batch: int,
    env: dict[str, str] | None = None,
    redis_url: str | None = None,
    partitions: int | None = None,
) -> Measured:
    """`members` exactly-once `conveyor consume` processes of one group (`--partitions lanes`)
    draining a stream pre-filled with `events` events; on `redis_url` instead of the services'
    Redis, and with the topic split into `partitions` streams, when given."""
    bench = Bench(services.database_url, redis_url or services.redis_url, sizes=Sizes(batch=batch))
    async with bench.scratch() as s:
        layouts = await _partition(bench, s, partitions)
        await load.fill_stream(bench.redis_url, s, events, layouts=layouts)
        streams = [k.events for k in conveyor_layouts.streams(s.topic, s.prefix, layouts)]
        starters = [_member(bench, s, router, i, lanes=lanes, env=env) for i in range(members)]
        table = f"{s.schema}.bench_effects"
        async with gate(bench.database_url, table) as g, started(starters) as procs:
            try:
                await g.wait_for(procs)
                t0 = await g.open()
                t1 = await _acknowledged(bench, streams, events, procs, t0 + services.timeout)
            finally:
                await g.open()  # before the members are stopped: none is left blocked
        applied = await _fetchval(
            bench,
            f"SELECT count(*) FROM {s.schema}.{database.LEDGER_TABLE} WHERE consumer_group = $1",
            "bench",
        )
    return Measured(events, t1 - t0, int(applied))


def _member(
    bench: Bench, s: Scratch, router: str, i: int, *, lanes: int, env: dict[str, str] | None
) -> Callable[[], Proc]:
    args = ("--mode", "exactly-once", "--consumer", f"member-{i}", "--partitions", str(lanes))
    return lambda: bench.consume(s, router, *args, env=env)


async def _acknowledged(
    bench: Bench, streams: Sequence[str], n: int, procs: Sequence[Proc], deadline: float
) -> float:
    """time.monotonic() when the group has read all `n` entries of `streams` and has none
    pending."""
    r = redis_client.connect(bench.redis_url)
    stall = Stall("the consumers")
    try:
        while True:
            read = pending = 0
            for stream in streams:
                try:
                    groups = await r.xinfo_groups(stream)
                except ResponseError:  # no stream
                    groups = []
                read += int(groups[0]["entries-read"] or 0) if groups else 0
                pending += int(groups[0]["pending"]) if groups else 0
            now = time.monotonic()
            if read >= n and pending == 0:
                return now
            _check(procs, "consumer", deadline, stall, read - pending)
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await r.aclose()


async def _partition(bench: Bench, s: Scratch, partitions: int | None) -> Layouts:
    """Split the scratch's topic into `partitions` streams (none: leave it one stream); and
    find whether the bench's Redis is a cluster node, for the clients of this process."""
    await redis_client.detect(bench.redis_url)
    if partitions is None:
        return {}
    conn = await asyncpg.connect(bench.database_url)
    try:
        layout = await catalog_layouts.set_layout(
            conn, s.prefix, s.topic, partitions=partitions, ordered=False, on_dead_letter=PARK
        )
    finally:
        await conn.close()
    return {s.topic: layout}


async def relays(
    services: Services,
    *,
    relays: int,
    events: int,
    batch: int,
    redis_url: str | None = None,
    partitions: int | None = None,
) -> Measured:
    """`relays` `conveyor relay` processes on one schema draining an outbox pre-filled with
    `events` rows; on `redis_url`, with the topic split into `partitions` streams, when given."""
    bench = Bench(services.database_url, redis_url or services.redis_url, sizes=Sizes(batch=batch))
    async with bench.scratch() as s:
        await _partition(bench, s, partitions)
        await load.fill_outbox(bench.database_url, s, events)
        outbox = f"{s.schema}.{database.OUTBOX_TABLE}"
        starters = [lambda: bench.relay(s) for _ in range(relays)]
        async with gate(bench.database_url, outbox) as g, started(starters) as procs:
            try:
                await g.wait_for(procs)
                t0 = await g.open()
                t1 = await _published(bench, outbox, events, procs, t0 + services.timeout)
            finally:
                await g.open()  # before the relays are stopped: none is left blocked
        published = await _fetchval(
            bench, f"SELECT count(*) FROM {outbox} WHERE published_at IS NOT NULL"
        )
    return Measured(events, t1 - t0, int(published))


async def _published(
    bench: Bench, outbox: str, n: int, procs: Sequence[Proc], deadline: float
) -> float:
    """time.monotonic() when no row of `outbox` is left unpublished."""
    conn = await asyncpg.connect(bench.database_url)
    stall = Stall("the relays")
    try:
        while True:
            left = await conn.fetchval(f"SELECT count(*) FROM {outbox} WHERE published_at IS NULL")
            now = time.monotonic()
            if not left:
                return now
            _check(procs, "relay", deadline, stall, n - left)
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await conn.close()


async def _fetchval(bench: Bench, sql: str, *args: object) -> int:
    return int(await bench.fetchval(sql, *args))
