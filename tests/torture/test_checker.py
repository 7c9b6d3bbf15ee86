"""The checker catches every kind of wrong outcome: crafted journals, outbox rows, effects and dead
letters in a real schema, each with one fault, and the count it must raise."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many
from relay.envelope import uuid7
from tests.torture.checker import backlog, check, settle
from tests.torture.deployment import DEFAULT_GROUPS, Deployment, Group
from tests.torture.report import Report
from tests.torture.workload import EventRecord, Journal, Txn


class World:
    """A deployment filled by hand: committed and failed transactions, effects, dead letters."""

    def __init__(self, deployment: Deployment, conn: asyncpg.Connection, redis: Any) -> None:
        self.d = deployment
        self.conn = conn
        self.redis = redis
        self.journal = Journal()
        self.entry = 0

    def next_entry(self) -> str:
        self.entry += 1
        return f"1700000000000-{self.entry}"

    async def commit(self, n: int = 1, aggregate: str = "agg-1") -> list[uuid.UUID]:
        """A committed transaction of `n` events: its orders row and outbox rows, journaled."""
        txn = Txn(uuid.uuid4(), 0, len(self.journal.txns), [], status="ok", trace_id="ab" * 16)
        txn.events = [EventRecord(uuid7(), aggregate) for _ in range(n)]
        async with self.conn.transaction():
            await self.conn.execute(
                f"INSERT INTO {self.d.schema}.orders (id, producer, number, events) "
                "VALUES ($1, 0, 0, $2)",
                txn.id,
                n,
            )
            await enqueue_many(
                self.conn,
                [
                    NewEvent(
                        events_pb2.UserRegistered(user_id=e.aggregate_id),
                        "user",
                        e.aggregate_id,
                        topic=self.d.topic,
                        event_id=e.event_id,
                        headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"},
                    )
                    for e in txn.events
                ],
                schema=self.d.schema,
            )
        self.journal.txns.append(txn)
        return [e.event_id for e in txn.events]

    def fail(self, status: str = "failed") -> uuid.UUID:
        """A transaction that rolled back (or whose commit is `unknown`), with one event."""
        txn = Txn(uuid.uuid4(), 1, len(self.journal.txns), [EventRecord(uuid7(), "agg-9")])
        txn.status = status  # type: ignore[assignment]
        self.journal.txns.append(txn)
        return txn.events[0].event_id

    async def apply(
        self, group: str, event_id: uuid.UUID, stream: str | None = None, entry: str | None = None
    ) -> str:
        """One effects row, as the router writes it; returns its entry id."""
        entry = entry or self.next_entry()
        await self.conn.execute(
            f"INSERT INTO {self.d.schema}.effects (consumer_group, event_id, aggregate_id, "
            "attempt, stream, entry_id, pid) VALUES ($1, $2, 'agg-1', 1, $3, $4, 0)",
            group,
            event_id,
            stream or self.d.keys.events,
            entry,
        )
        return entry

    async def apply_everywhere(self) -> None:
        """Every committed event applied once in every group, in outbox order."""
        for _txn, event in self.journal.events("ok"):
            for g in DEFAULT_GROUPS:
                await self.apply(g.name, event.event_id)

    async def dead_letter(
        self, group: str, event_id: uuid.UUID, state: str = "open", source: str | None = None
    ) -> str:
        """A catalog dead letter of `group`; returns the entry it was dead-lettered from."""
        source = source or self.next_entry()
        await self.conn.execute(
            "INSERT INTO conveyor.dead_letters (topic, dlq_stream, dlq_entry_id, source_stream, "
            "source_entry_id, consumer_group, event_id, reason, first_failed_at, last_failed_at, "
            "state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'rejected', now(), now(), $8)",
            self.d.topic,
            self.d.keys.dlq,
            self.next_entry(),
            self.d.keys.events,
            source,
            group,
            event_id,
            state,
        )
        return source

    async def check(self, ordered: tuple[str, ...] = ()) -> Report:
        return await check(self.d, DEFAULT_GROUPS, self.journal, seed=4242, ordered=ordered)


@pytest.fixture
async def world(deployment: Deployment, pg: asyncpg.Connection, redis_client: Any) -> World:
    w = World(deployment, pg, redis_client)
    await w.commit(3, "agg-1")
    await w.commit(2, "agg-2")
    w.fail()
    return w


def counts(report: Report) -> dict[tuple[str, str], int]:
    return report.problems()


async def test_a_clean_run_counts_nothing_and_tables_every_group(world: World) -> None:
    await world.apply_everywhere()
    await world.apply("alo-c", world.journal.txns[0].events[0].event_id)  # ALO may double
    report = await world.check(ordered=("eo-a",))
    assert report.clean, report.table()
    report.assert_clean()
    table = report.table().splitlines()
    assert table[0].split() == [
        "group", "mode", "expected", "applied", "effects", "dead",
        "lost", "duplicate", "phantom", "misrouted", "order",
    ]  # fmt: skip
    assert table[1].split() == ["eo-a", "EO", "5", "5", "5", "0", "0", "0", "0", "0", "0"]
    assert table[3].split() == ["alo-c", "ALO", "5", "5", "6", "0", "0", "-", "0", "0", "-"]
    assert "5 committed, 1 failed" in report.table() and "TORTURE_SEED=4242" in report.table()


async def test_lost_events_count_unless_the_group_left_them_dead_lettered(world: World) -> None:
    await world.apply_everywhere()
    await world.conn.execute(f"DELETE FROM {world.d.schema}.effects WHERE consumer_group = 'eo-b'")
    first, second, third = (e.event_id for e in world.journal.txns[0].events)
    await world.dead_letter("eo-b", first, "open")
    await world.dead_letter("eo-b", second, "resolved")
    await world.dead_letter("eo-b", third, "reprocessing")  # a reprocess that never applied
    report = await world.check()
    assert counts(report) == {("eo-b", "lost"): 3}, report.table()
    lost = report.examples[("eo-b", "lost")]
    assert third in lost and first not in lost and second not in lost
    assert report.groups[1].dead_lettered == 2


async def test_duplicates_count_in_exactly_once_groups_only(world: World) -> None:
    await world.apply_everywhere()
    doubled = world.journal.txns[1].events[0].event_id
    for group in ("eo-a", "alo-c"):
        await world.apply(group, doubled)
    report = await world.check()
    assert counts(report) == {("eo-a", "duplicate"): 1}, report.table()
    assert report.examples[("eo-a", "duplicate")] == [doubled]


async def test_effects_of_failed_or_unknown_events_are_phantoms(world: World) -> None:
    await world.apply_everywhere()
    rolled_back = world.journal.txns[2].events[0].event_id
    await world.apply("eo-a", rolled_back)
    await world.apply("alo-c", uuid7())  # an event no producer enqueued
    report = await world.check()
    assert counts(report) == {("eo-a", "phantom"): 1, ("alo-c", "phantom"): 1}, report.table()
    assert report.notes[("eo-a", "phantom", rolled_back)] == "transaction failed"


@pytest.mark.parametrize(
    "shape", ["foreign retry stream", "retry without a letter", "reprocess in topic", "dead entry"]
)
async def test_misrouted_effects_are_counted_in_every_shape(world: World, shape: str) -> None:
    events = [e.event_id for _, e in world.journal.events("ok")]
    for event_id in events[1:]:
        for g in DEFAULT_GROUPS:
            await world.apply(g.name, event_id)
    event, keys = events[0], world.d.keys
    await world.apply("eo-a", event)
    if shape == "foreign retry stream":  # eo-a's reprocess applied by eo-b
        await world.dead_letter("eo-a", event)
        await world.apply("eo-b", event, stream=keys.retry("eo-a"))
        await world.apply("alo-c", event)
        expected = ("eo-b", "misrouted")
    elif shape == "retry without a letter":
        await world.apply("eo-b", event, stream=keys.retry("eo-b"))
        await world.apply("alo-c", event)
        expected = ("eo-b", "misrouted")
    elif shape == "reprocess in topic":  # a reprocess XADDed to the topic stream
        await world.apply("eo-b", event)
        fields = {wire.F_EVENT_ID: str(event).encode(), wire.RT_DEAD_LETTER: b"1-1"}
        entry = (await world.redis.xadd(keys.events, fields)).decode()
        await world.apply("alo-c", event)
        await world.apply("alo-c", event, entry=entry)
        expected = ("alo-c", "misrouted")
    else:  # the entry the group dead-lettered was applied too
        await world.apply("eo-b", event)
        source = await world.dead_letter("alo-c", event)
        await world.apply("alo-c", event, entry=source)
        expected = ("alo-c", "misrouted")
    report = await world.check()
    assert counts(report) == {expected: 1}, report.table()
    assert report.examples[expected] == [event]


async def test_order_violations_count_where_order_is_promised(world: World) -> None:
    first, second, third = (e.event_id for e in world.journal.txns[0].events)
    entries = {event_id: world.next_entry() for event_id in (first, second, third)}  # stream order
    for group in ("eo-a", "eo-b"):
        for event_id in (first, third, second):  # second applied after third: one violation
            await world.apply(group, event_id, entry=entries[event_id])
    for _, event in world.journal.events("ok"):
        if event.aggregate_id == "agg-2":
            await world.apply("eo-a", event.event_id)
            await world.apply("eo-b", event.event_id)
        await world.apply("alo-c", event.event_id)
    report = await world.check(ordered=("eo-a",))
    assert counts(report) == {("eo-a", "order"): 1}, report.table()
    assert report.examples[("eo-a", "order")] == [second]
    assert report.groups[1].order is None


async def test_unknown_commits_resolve_by_their_orders_row(world: World) -> None:
    (committed,) = await world.commit(1)
    world.journal.txns[-1].status = "unknown"
    vanished = world.fail("unknown")
    await world.apply_everywhere()  # the events of the transactions known to be committed
    for g in DEFAULT_GROUPS:
        await world.apply(g.name, committed)
    report = await world.check()
    assert report.clean, report.table()
    by_event = world.journal.index()
    assert by_event[committed].status == "ok" and by_event[committed].was_unknown
    assert by_event[vanished].status == "failed" and by_event[vanished].was_unknown
    assert report.totals["txn_unknown"] == 2 and report.totals["unknown_committed"] == 1


async def test_a_failed_check_shows_the_seed_examples_and_their_traces(world: World) -> None:
    await world.apply_everywhere()
    missing = world.journal.txns[0].events[0].event_id
    await world.conn.execute(
        f"DELETE FROM {world.d.schema}.effects WHERE event_id = $1 AND consumer_group = 'eo-a'",
        missing,
    )
    report = await world.check()
    with pytest.raises(AssertionError) as failed:
        report.assert_clean()
    text = str(failed.value)
    assert "seed 4242: replay with TORTURE_SEED=4242" in text
    assert f"eo-a: 1 lost, e.g.:\n- {missing}" in text
    trace = report.traces[missing]
    assert "trace " + "ab" * 16 in trace and "outbox: id" in trace
    assert "effect: eo-b" in trace and "effect: eo-a" not in trace


async def test_settle_waits_for_the_outbox_and_every_group(world: World) -> None:
    groups = (Group("eo-a"),)
    keys = world.d.keys
    assert "5 outbox rows unpublished" in (await backlog(world.d, groups)).describe()
    await world.conn.execute(f"UPDATE {world.d.schema}.outbox SET published_at = now()")
    assert "missing" in (await backlog(world.d, groups)).describe()
    entry = await world.redis.xadd(keys.events, {wire.F_EVENT_ID: b"x"})
    await world.redis.xgroup_create(keys.events, "eo-a", id="0")
    assert "eo-a@events pending 0 lag 1" in (await backlog(world.d, groups)).describe()
    await world.redis.xreadgroup("eo-a", "m", {keys.events: ">"})
    with pytest.raises(AssertionError) as late:
        await settle(world.d, groups, timeout=0.3, diagnose=lambda: "LOGS")
    assert "not settled after 0.3s: eo-a@events pending 1 lag 0" in str(late.value)
    assert str(late.value).endswith("\nLOGS"), "the diagnosis follows"
    await world.redis.xack(keys.events, "eo-a", entry)
    assert (await settle(world.d, groups, timeout=5)).settled


async def test_the_catalog_must_hold_every_dead_letter_entry(world: World) -> None:
    await world.conn.execute(f"UPDATE {world.d.schema}.outbox SET published_at = now()")
    keys = world.d.keys
    await world.redis.xgroup_create(keys.events, "eo-a", id="$", mkstream=True)
    await world.redis.xadd(keys.dlq, {wire.F_EVENT_ID: b"x"})
    groups = (Group("eo-a"),)
    assert (await backlog(world.d, groups)).describe() == "1 dead-letter entries, 0 in the catalog"
