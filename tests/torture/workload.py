"""Producers of the torture suite: business transactions that enqueue events, and their journal.

Each transaction INSERTs one `{schema}.orders` row and enqueues `min_events`..`max_events` (1..3)
UserRegistered events (topic `config.topic`, aggregate ids `agg-0`..`agg-{aggregates-1}`, all events
of one transaction sharing one traceparent) with `relay.enqueue_many`, in one asyncpg transaction. A
seeded share (`fail_share`) fails on purpose after the enqueue (a Python error or an SQL error,
rolled back): their events must never have an effect. A seeded share of events
(`poison_share`) carries the poison mark the router understands (`router.POISON`).

Every transaction goes into the `Journal` before it starts, with its event ids (chosen up front,
UUIDv7), and ends as:

    ok        COMMIT answered
    failed    rolled back: on purpose, or any error before COMMIT was sent (the server cannot
              have committed it)
    unknown   the COMMIT's answer was lost (connection error, timeout, cancelled while
              committing); `Journal.resolve` later looks for the orders row: present -> ok,
              absent -> failed (`Txn.was_unknown` stays True, reported as "unknown")

Producers survive outages: a broken connection is dropped and a new one made with backoff
(0.05 s doubling to 1 s) until it works or the workload is stopped.

    workload = Workload(WorkloadConfig(database_url, schema, seed=seed, rate=200))
    workload.start()                      # inside a running event loop
    ...                                   # faults
    journal = await workload.stop()       # or: await workload.wait(timeout) with `total=`
    await journal.resolve(database_url, schema)

The decisions of each producer (events per transaction, aggregates, deliberate failures, poison)
come from `random.Random(f"{seed}:{producer}")`, so one seed gives the same sequence of
transactions per producer; timing (and so the interleaving with faults) is not replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many
from relay.envelope import uuid7
from tests.torture.router import DEFAULT_TOPIC, POISON

Status = Literal["pending", "ok", "failed", "unknown"]


@dataclass(frozen=True)
class WorkloadConfig:
    """What the producers do. `rate` is transactions per second over all producers (None: as
    fast as they can); `total` stops them after that many transactions (None: until `stop`)."""

    database_url: str
    schema: str
    seed: int
    topic: str = DEFAULT_TOPIC
    producers: int = 4
    rate: float | None = 100.0
    total: int | None = None
    aggregates: int = 40
    max_events: int = 3
    min_events: int = 1
    fail_share: float = 0.1
    poison_share: float = 0.0
    command_timeout: float = 10.0


@dataclass(frozen=True)
class EventRecord:
    event_id: uuid.UUID
    aggregate_id: str
    poison: bool = False


@dataclass
class Txn:
    """One business transaction: its orders row id, its events and how it ended."""

    id: uuid.UUID
    producer: int
    number: int
    events: list[EventRecord]
    doomed: bool = False
    trace_id: str = ""
    status: Status = "pending"
    was_unknown: bool = False
    error: str = ""


@dataclass
class Journal:
    """Every transaction the producers began, in the order they began them."""

    txns: list[Txn] = field(default_factory=list)

    def events(self, *statuses: Status) -> Iterator[tuple[Txn, EventRecord]]:
        """(transaction, event) of the transactions in any of `statuses` (all when none given)."""
        for txn in self.txns:
            if not statuses or txn.status in statuses:
                for event in txn.events:
                    yield txn, event

    def index(self) -> dict[uuid.UUID, Txn]:
        """Event id -> its transaction."""
        return {e.event_id: txn for txn, e in self.events()}

    def counts(self) -> Counter[str]:
        """Transactions by final status, plus `was_unknown` and `doomed`."""
        out: Counter[str] = Counter(txn.status for txn in self.txns)
        out["was_unknown"] = sum(txn.was_unknown for txn in self.txns)
        out["doomed"] = sum(txn.doomed for txn in self.txns)
        return out

    async def resolve(self, database_url: str, schema: str, timeout: float = 60.0) -> int:
        """Settle `unknown` (and `pending`: a producer stopped mid-transaction) transactions by
        the presence of their orders row; return how many were settled. Retries the connection
        for up to `timeout` seconds (the database may just be coming back)."""
        open_ = [t for t in self.txns if t.status in ("unknown", "pending")]
        if not open_:
            return 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(database_url, timeout=5)
                break
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        try:
            rows = await conn.fetch(
                f"SELECT id FROM {schema}.orders WHERE id = ANY($1::uuid[])", [t.id for t in open_]
            )
        finally:
            await conn.close()
        present = {r["id"] for r in rows}
        for txn in open_:
            txn.was_unknown = True
            txn.status = "ok" if txn.id in present else "failed"
        return len(open_)


class _Doomed(Exception):
    """The deliberate failure of a doomed transaction."""


def _is_doomed_error(exc: BaseException) -> bool:
    return isinstance(exc, _Doomed | asyncpg.DivisionByZeroError)


class Workload:
    """`config.producers` asyncio tasks running business transactions into `journal`."""

    def __init__(self, config: WorkloadConfig) -> None:
        self.config = config
        self.journal = Journal()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._issued = 0
        self._jitter = random.Random()  # backoff jitter only: not part of the replayed sequence
        self.errors: Counter[str] = Counter()
        """Exception class names of failed or unknown transactions (deliberate ones excluded)."""

    @property
    def done(self) -> int:
        """Transactions that ended (any status but pending)."""
        return sum(t.status != "pending" for t in self.journal.txns)

    def start(self) -> None:
        """Start the producer tasks (call inside the running event loop)."""
        if self._tasks:
            raise RuntimeError("workload already started")
        self._tasks = [
            asyncio.create_task(self._produce(i), name=f"producer-{i}")
            for i in range(self.config.producers)
        ]

    async def wait(self, timeout: float) -> Journal:
        """Wait for the producers to reach `config.total`; AssertionError after `timeout`."""
        if self.config.total is None:
            raise ValueError("wait() needs config.total; use stop()")
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        if pending:
            await self.stop()
            raise AssertionError(
                f"producers did not finish {self.config.total} transactions in {timeout}s "
                f"(done {self.done})"
            )
        return await self.stop()

    async def stop(self, timeout: float = 30.0) -> Journal:
        """Ask the producers to stop after their transaction in flight; cancel them after
        `timeout`. Returns the journal (not resolved yet)."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for task in self._tasks:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc
        return self.journal

    async def __aenter__(self) -> Workload:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _take_slot(self) -> bool:
        total = self.config.total
        if self._stopping.is_set() or (total is not None and self._issued >= total):
            return False
        self._issued += 1
        return True

    def _plan(self, rng: random.Random, producer: int, number: int) -> Txn:
        c = self.config
        events = [
            EventRecord(
                uuid7(), f"agg-{rng.randrange(c.aggregates)}", rng.random() < c.poison_share
            )
            for _ in range(rng.randint(c.min_events, c.max_events))
        ]
        return Txn(
            id=uuid.uuid4(),  # not seeded: two runs of one seed may share a schema
            producer=producer,
            number=number,
            events=events,
            doomed=rng.random() < c.fail_share,
            trace_id=f"{rng.getrandbits(128):032x}",
        )

    async def _produce(self, producer: int) -> None:
        c = self.config
        rng = random.Random(f"{c.seed}:{producer}")
        interval = c.producers / c.rate if c.rate else 0.0
        next_at = time.monotonic() + rng.random() * interval
        conn: asyncpg.Connection | None = None
        number = 0
        try:
            while self._take_slot():
                if interval:
                    now = time.monotonic()
                    next_at = max(next_at + interval, now - 1.0)  # catch up at most 1 s
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                txn = self._plan(rng, producer, number)
                number += 1
                while conn is None or conn.is_closed():
                    conn = await self._connect()
                    if conn is None:
                        return
                self.journal.txns.append(txn)
                if not await self._run(conn, txn):
                    conn.terminate()
                    conn = None
        finally:
            if conn is not None:
                conn.terminate()

    async def _connect(self) -> asyncpg.Connection | None:
        """A new connection, retried with backoff; None once the workload is stopping."""
        delay = 0.05
        while not self._stopping.is_set():
            try:
                conn: asyncpg.Connection = await asyncpg.connect(
                    self.config.database_url, timeout=3, command_timeout=self.config.command_timeout
                )
                return conn
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), delay * self._jitter.uniform(1, 2)
                    )
                delay = min(delay * 2, 1.0)
        return None

    async def _run(self, conn: asyncpg.Connection, txn: Txn) -> bool:
        """Run one transaction; True if the connection is still fit for the next one."""
        c = self.config
        news = [
            NewEvent(
                events_pb2.UserRegistered(
                    user_id=e.aggregate_id,
                    email=f"{txn.id}.{i}@torture.invalid",
                    display_name=POISON if e.poison else "",
                ),
                "user",
                e.aggregate_id,
                topic=c.topic,
                headers={"traceparent": f"00-{txn.trace_id}-{i + 1:016x}-01"},
                event_id=e.event_id,
            )
            for i, e in enumerate(txn.events)
        ]
        committing = False
        tx = conn.transaction()
        try:
            async with asyncio.timeout(c.command_timeout + 5):
                await tx.start()
                await conn.execute(
                    f"INSERT INTO {c.schema}.orders (id, producer, number, events) "
                    "VALUES ($1, $2, $3, $4)",
                    txn.id,
                    txn.producer,
                    txn.number,
                    len(news),
                )
                await enqueue_many(conn, news, schema=c.schema)
                if txn.doomed:
                    if txn.number % 2:
                        await conn.execute("SELECT 1 / 0")
                    raise _Doomed
                committing = True
                await tx.commit()
            txn.status = "ok"
            return True
        except BaseException as exc:
            deliberate = txn.doomed and not committing and _is_doomed_error(exc)
            txn.status = "unknown" if committing else "failed"
            if not deliberate:
                txn.error = f"{type(exc).__name__}: {exc}"[:200]
                self.errors[type(exc).__name__] += 1
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            if not deliberate or committing:
                return False
            with contextlib.suppress(Exception):
                async with asyncio.timeout(c.command_timeout):
                    await tx.rollback()
                return True
            return False
