"""The full pipeline: producers, `conveyor relay` and `conveyor consume` running at once on one
scratch. Its maximum sustained rate against the slower stage alone, and the running pipeline
and everyday load the CPU and ops scenarios measure on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from admin.bench import load, throughput
from admin.bench.harness import Bench, Proc, Progress, Scratch, Stall
from admin.bench.meter import CpuMeter
from admin.bench.model import Figure, Target
from conveyor import redis_client


@dataclass(frozen=True, slots=True)
class Running:
    """A relay and an exactly-once per-event consumer running on one scratch."""

    scratch: Scratch
    relay: Proc
    consumer: Proc
    redis: Any

    @property
    def procs(self) -> tuple[Proc, Proc]:
        return self.relay, self.consumer

    async def applied(self) -> int:
        """Events the consumer has applied (its group acknowledges only after COMMIT)."""
        try:
            groups = await self.redis.xinfo_groups(self.scratch.stream)
        except ResponseError:  # no stream yet
            return 0
        if not groups:
            return 0
        return int(groups[0]["entries-read"] or 0) - int(groups[0]["pending"])

    async def wait_applied(
        self, n: int, progress: Progress | None = None, load: Load | None = None
    ) -> float:
        """Wait until `n` events are applied; time.monotonic() when they were seen to be.
        RuntimeError when a process exits or nothing is applied for a minute; what the
        producers of `load` raised, if they fail meanwhile."""
        stall = Stall("the pipeline")
        while True:
            if load is not None:
                load.check()
            for name, proc in (("relay", self.relay), ("consumer", self.consumer)):
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"the {name} exited with {proc.popen.returncode}")
            done = await self.applied()
            now = time.monotonic()
            if progress is not None:
                progress.advance(done)
            if done >= n:
                return now
            stall.check(done)
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running(bench: Bench, env: dict[str, str] | None = None) -> AsyncIterator[Running]:
    """A fresh scratch with `conveyor relay` and `conveyor consume` (router `per_event`,
    exactly-once) on it; both are stopped and the scratch removed on the way out."""
    async with bench.scratch() as s:
        started = await asyncio.gather(
            asyncio.to_thread(bench.relay, s, env=env),
            asyncio.to_thread(bench.consume, s, "per_event", "--mode", "exactly-once", env=env),
            return_exceptions=True,
        )
        procs = [p for p in started if isinstance(p, Proc)]
        r = redis_client.connect(bench.redis_url)
        try:
            for outcome in started:
                if isinstance(outcome, BaseException):
                    raise outcome
            yield Running(s, procs[0], procs[1], r)
        finally:
            await r.aclose()
            await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))


@dataclass(slots=True)
class Load:
    """Producers running in the background: what they committed so far, when the first COMMIT
    returned, and their PostgreSQL backends (left out of CPU figures)."""

    committed: int = 0
    first_ns: int = 0
    """time.monotonic_ns() when the first COMMIT returned (0: none yet)."""
    last_ns: int = 0
    """time.monotonic_ns() when the latest COMMIT returned."""
    backends: set[int] = field(default_factory=set)
    task: asyncio.Task[int] | None = None

    def count(self, ids: Sequence[uuid.UUID], ns: int) -> None:
        self.first_ns = self.first_ns or ns
        self.last_ns = ns
        self.committed += len(ids)

    def check(self) -> None:
        """Raise what the producers raised, if they failed."""
        if self.task is not None and self.task.done():
            self.task.result()


@asynccontextmanager
async def producing(
    bench: Bench,
    run: Running,
    *,
    rate: float | None,
    per_txn: int,
    connections: int,
    total: int | None = None,
    wait_for_flush: bool = True,
) -> AsyncIterator[Load]:
    """Producers committing `per_txn` events per transaction on `connections` connections at
    `rate` events/s in all (None: flat out) until `total` are written or the block ends."""
    state = Load()
    stop = asyncio.Event()
    state.task = asyncio.create_task(
        load.produce(
            bench.database_url,
            run.scratch,
            rate=rate,
            per_txn=per_txn,
            connections=connections,
            total=total,
            stop=stop,
            on_commit=state.count,
            backend_pids=state.backends,
            wait_for_flush=wait_for_flush,
        )
    )
    try:
        yield state
    finally:
        stop.set()
        await state.task


def everyday_load(bench: Bench, run: Running, rate: float) -> AbstractAsyncContextManager[Load]:
    """Paced producers in the everyday shape: one event per transaction on 4 connections, not
    waiting for their WAL flushes (see load.produce), so the offered rate is reached."""
    return producing(bench, run, rate=rate, per_txn=1, connections=4, wait_for_flush=False)


async def max_sustained_rate(bench: Bench) -> float:
    """Events/s the whole pipeline applies with producers committing flat out, 100 events per
    transaction on 2 connections; measured once per run (bench.shared["max_rate"]), with what
    it cost in CPU (bench.shared["cpu_at_max"]) and the rate the producers committed at
    (bench.shared["max_commit_rate"])."""
    if "max_rate" not in bench.shared:
        await _flat_out(bench, bench.sizes.pipeline_events)
    return float(bench.shared["max_rate"])


async def _flat_out(bench: Bench, n: int) -> None:
    async with running(bench) as run:
        bench.progress.stage(
            f"pipeline: {n:,} events, 100 per transaction on 2 connections, flat out", n
        )
        meter = CpuMeter(run.procs, bench.database_url)
        meter.start()
        started = time.monotonic()
        async with producing(bench, run, rate=None, per_txn=100, connections=2, total=n) as flat:
            done = await run.wait_applied(n, bench.progress, flat)
            bench.shared["cpu_at_max"] = meter.stop(n, done - started, flat.backends)
        first = flat.first_ns / 1e9
        bench.shared["max_rate"] = n / max(done - first, 1e-3)
        bench.shared["max_commit_rate"] = n / max(flat.last_ns / 1e9 - first, 1e-3)


async def run(bench: Bench) -> list[Figure]:
    """The full pipeline's maximum sustained rate as a ratio to the slower stage alone."""
    z = bench.sizes
    rate = await max_sustained_rate(bench)
    stages = []
    for key, name, form in (
        ("relay_rate", "relay alone", None),
        ("consumer_rate:per-event", "exactly-once per-event consumer alone", "per-event"),
    ):
        value, where = bench.shared.get(key), "this run's scenario"
        if value is None:
            where = f"measured here, {z.events:,} events"
            if form is None:
                value = await throughput.relay_round(bench, z.events)
            else:
                value = await throughput.consumer_round(bench, form, z.events)
        stages.append((float(value), name, where))
    slower, name, _ = min(stages)
    alone = "; ".join(f"{n} {v:,.0f}/s ({w})" for v, n, w in stages)
    return [
        Figure(
            "pipeline",
            "full pipeline",
            rate,
            "events/s",
            slower,
            name,
            Target("ratio>=", 0.6),
            f"{z.pipeline_events:,} events, 100 per transaction on 2 connections, first commit"
            f" to last applied; {_producers(rate, bench.shared['max_commit_rate'])}; {alone}",
        )
    ]


def _producers(rate: float, committed: float) -> str:
    """What the producers' own rate says: when the pipeline kept up with them, they (the bench's
    one Python process) bound the figure, not Conveyor."""
    said = f"the producers committed at {committed:,.0f}/s"
    return said + (", the pipeline kept up: they bound it" if rate >= 0.9 * committed else "")
