"""What the conformance scenarios share: producing through `relay.enqueue`, a recording router,
consumer group members that can be stopped one by one, and reading back what was applied.

The suite follows Watermill's universal pub/sub tests (pubsub/tests/test_pubsub.go): each
scenario commits events with `relay.enqueue` in the producer's own transactions, publishes them
with an in-process `relay.Relay` and consumes them with `consumers.Consumer` members, on the
shared PostgreSQL and Redis (a throwaway Redis where one is restarted). Handlers write one
`applied` row per event through `ctx.db`; that table has no unique key, so an event applied twice
shows as two rows. Scenarios taking the `mode` fixture run exactly-once and at-least-once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from admin.catalog import ConsumerCatalog
from consumers import Consumer, ConsumerSettings, EventContext, Router
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import enqueue

MODES = ("exactly-once", "at-least-once")
EVENT_TYPE = events_pb2.UserRegistered.DESCRIPTOR.full_name

After = Callable[[int, EventContext], None]
"""Called by the recording handler with the event's number after its write: raising fails
this attempt (and rolls the write back)."""


def payload(seq: int) -> events_pb2.UserRegistered:
    """Event number `seq`'s payload: the number travels in `user_id` ("u<seq>")."""
    return events_pb2.UserRegistered(user_id=f"u{seq}", email=f"u{seq}@example.com")


def seq_of(event: events_pb2.UserRegistered) -> int:
    return int(event.user_id.removeprefix("u"))


async def create_applied(pg: asyncpg.Connection, schema: str) -> None:
    """The handlers' business table. No unique key: an event applied twice shows as two rows."""
    await pg.execute(
        f"CREATE TABLE {schema}.applied (consumer_group text NOT NULL, member text NOT NULL, "
        "topic text NOT NULL, event_id uuid NOT NULL, seq int NOT NULL, attempt int NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


def recording_router(
    schema: str,
    topics: Iterable[str],
    *,
    member: str = "",
    after: After | None = None,
    pause: float = 0,
) -> Router:
    """A router whose UserRegistered handler, on every topic, writes one `applied` row through
    ctx.db, then calls `after` (which may raise: the attempt fails and its row rolls back), then
    sleeps `pause` seconds inside the transaction (a handler doing some work)."""
    router = Router()

    async def record(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        seq = seq_of(event)
        await ctx.db.execute(
            f"INSERT INTO {schema}.applied "
            "(consumer_group, member, topic, event_id, seq, attempt) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            ctx.group,
            member,
            ctx.topic,
            uuid.UUID(ctx.event_id),
            seq,
            ctx.attempt,
        )
        if after is not None:
            after(seq, ctx)
        if pause:
            await asyncio.sleep(pause)

    for topic in topics:
        router.handler(events_pb2.UserRegistered, topic=topic)(record)
    return router


async def produce(
    conn: Any,
    schema: str,
    seqs: Iterable[int],
    *,
    topic: str,
    per_transaction: int = 10,
    aggregates: int = 7,
) -> list[str]:
    """Commit events number `seqs` on `topic` with `relay.enqueue`, `per_transaction` to a
    transaction, event `seq` of aggregate `user-<seq % aggregates>`; their ids, in order."""
    ids: list[str] = []
    numbers = list(seqs)
    for start in range(0, len(numbers), per_transaction):
        async with conn.transaction():
            for seq in numbers[start : start + per_transaction]:
                event_id = await enqueue(
                    conn,
                    payload(seq),
                    aggregate_type="user",
                    aggregate_id=f"user-{seq % aggregates}",
                    topic=topic,
                    schema=schema,
                )
                ids.append(str(event_id))
    return ids


@dataclass
class Flow:
    """Commits `per_wave` events every `interval` seconds on `topic`, on a connection of its
    own, until stopped."""

    database_url: str
    schema: str
    topic: str
    per_wave: int = 10
    interval: float = 0.02
    ids: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            seq = 0
            while not self._stop.is_set():
                wave = range(seq, seq + self.per_wave)
                self.ids += await produce(conn, self.schema, wave, topic=self.topic)
                seq += self.per_wave
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    async def stop(self) -> list[str]:
        """Stop after the wave in flight; every committed id."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
        return self.ids


class Member:
    """One member of a consumer group running in this event loop, stopped on demand."""

    def __init__(self, router: Router, settings: dict[str, Any]) -> None:
        settings.setdefault("topics", router.topics)
        self.consumer = Consumer(router, ConsumerSettings(**settings), catalog=ConsumerCatalog)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self.consumer.run())

    @property
    def running(self) -> bool:
        """`run()` has not returned (or raised) yet."""
        return self._task is not None and not self._task.done()

    def begin_stop(self) -> None:
        """Ask for a graceful stop (what SIGTERM does in `conveyor consume`)."""
        self.consumer.stop()

    async def stopped(self, timeout: float = 20) -> None:
        """Wait for `run()` to return, re-raising what it raised; then release the member."""
        if self._closed:
            return
        self._closed = True
        self.consumer.stop()
        try:
            if self._task is not None:
                await asyncio.wait_for(self._task, timeout)
        finally:
            await self.consumer.close()


@asynccontextmanager
async def members(*pairs: tuple[Router, dict[str, Any]]) -> AsyncIterator[list[Member]]:
    """Members started together; any still running at the end of the block are stopped."""
    started: list[Member] = []
    try:
        for router, settings in pairs:
            member = Member(router, settings)
            await member.start()
            started.append(member)
        yield started
    finally:
        for member in started:
            member.begin_stop()
        for member in started:
            await member.stopped()


def settings_for(case: Any, group: str, member: str, mode: str, **overrides: Any) -> dict[str, Any]:
    """ConsumerSettings arguments: the case's servers, schema and prefix, quick polls and
    retries (the claim idle stays the default 30 s unless given)."""
    base = {
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "group": group,
        "consumer": member,
        "mode": mode,
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
        "block": 0.05,
        "retry_backoff": 0.05,
        "retry_backoff_max": 0.2,
    }
    return base | overrides


async def applied(pg: asyncpg.Connection, schema: str, group: str) -> dict[str, int]:
    """Event id -> how many times the group's handlers committed its effect."""
    rows = await pg.fetch(
        f"SELECT event_id::text, count(*) FROM {schema}.applied WHERE consumer_group = $1 "
        "GROUP BY 1",
        group,
    )
    return {r[0]: r[1] for r in rows}


async def applied_rows(pg: asyncpg.Connection, schema: str, group: str) -> list[asyncpg.Record]:
    """Every committed effect of the group, in commit order."""
    return await pg.fetch(
        f"SELECT * FROM {schema}.applied WHERE consumer_group = $1 ORDER BY at", group
    )


async def settled(redis: Any, prefix: str, topic: str, group: str) -> bool:
    """The group has read its topic's stream to the end and acknowledged every entry: nothing
    of it can be delivered again."""
    stream = wire.Keys(topic, prefix).events
    last = await redis.xrevrange(stream, count=1)
    for info in await redis.xinfo_groups(stream):
        if info["name"].decode() == group:
            read_all = not last or info["last-delivered-id"] == last[0][0]
            return bool(read_all and info["pending"] == 0)
    return False


async def wait_applied(
    case: Any,
    group: str,
    ids: Sequence[str],
    *,
    topic: str,
    timeout: float = 30,
    redis: Any = None,
) -> dict[str, int]:
    """Wait until the group applied every one of `ids` and settled its topic; its counts."""
    want = set(ids)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    counts: dict[str, int] = {}
    while True:
        counts = await applied(case.pg, case.schema, group)
        if want <= counts.keys() and await settled(redis or case.redis, case.prefix, topic, group):
            return counts
        if loop.time() > deadline:
            missing = len(want - counts.keys())
            raise AssertionError(
                f"group {group} after {timeout}s: {missing} of {len(want)} events never applied"
            )
        await asyncio.sleep(0.05)


def assert_delivered(counts: dict[str, int], ids: Sequence[str], mode: str) -> None:
    """Exactly `ids` were applied: once each in exactly-once mode, at least once otherwise."""
    assert len(set(ids)) == len(ids), "the producer returned distinct event ids"
    assert set(counts) == set(ids), (
        f"{len(set(ids) - set(counts))} events missing, "
        f"{len(set(counts) - set(ids))} applied that were never committed"
    )
    if mode == "exactly-once":
        twice = {i: n for i, n in counts.items() if n != 1}
        assert not twice, f"{len(twice)} events applied more than once: {list(twice.items())[:5]}"
    else:
        assert min(counts.values()) >= 1
