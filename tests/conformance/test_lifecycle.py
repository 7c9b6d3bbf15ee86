"""Publish/subscribe conformance, starting and stopping: consumers stopped mid-stream (one after
another, or several at once) and a producer closing lose nothing and apply nothing twice."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from relay import enqueue
from tests.conformance.support import (
    Flow,
    Member,
    applied,
    assert_delivered,
    create_applied,
    members,
    payload,
    produce,
    recording_router,
    settings_for,
    wait_applied,
)
from tests.integration.conftest import Case
from tests.integration.relay_support import drained, running_relay
from tests.processes import wait_until


async def _applied_at_least(case: Case, group: str, n: int) -> None:
    async def enough() -> bool:
        return sum((await applied(case.pg, case.schema, group)).values()) >= n

    await wait_until(enough, timeout=30, what=f"{n} events applied by {group}")


async def test_a_consumer_stopped_mid_stream_leaves_the_rest_to_the_next(
    case: Case, mode: str
) -> None:
    """300 events; a consumer is stopped gracefully mid-stream, a new one (another member
    name, as a restarted process gets) started, stopped again, and a third finishes. Every
    event is applied, none twice in exactly-once mode, and the rest arrives at once: a graceful
    stop leaves nothing pending for the next member to wait out (claim idle stays 30 s)."""
    await create_applied(case.pg, case.schema)
    router = recording_router(case.schema, ["orders"], pause=0.003)
    async with running_relay(**case.relay_settings()):
        ids = await produce(case.pg, case.schema, range(300), topic="orders")
        stopped_at: list[int] = []
        for generation, goal in enumerate((60, 160)):
            member = Member(
                router, settings_for(case, "search", f"gen{generation}", mode, batch_size=20)
            )
            await member.start()
            try:
                await _applied_at_least(case, "search", goal)
            finally:
                await member.stopped()
            stopped_at.append(len(await applied(case.pg, case.schema, "search")))
        async with members((router, settings_for(case, "search", "gen2", mode, batch_size=20))):
            counts = await wait_applied(case, "search", ids, topic="orders", timeout=20)
    assert stopped_at[0] < stopped_at[1] < len(ids), f"stopped mid-stream: at {stopped_at}"
    assert_delivered(counts, ids, mode)


async def test_members_stopped_at_the_same_time_while_events_flow_lose_nothing(
    case: Case, mode: str
) -> None:
    """Four members of a group working through a backlog while more events keep coming are all
    stopped at once: each exits cleanly, and a member started afterwards applies the rest
    without waiting out a claim idle (30 s); every committed event is applied (once in
    exactly-once mode)."""
    await create_applied(case.pg, case.schema)
    pairs = [
        (
            recording_router(case.schema, ["orders"], member=name, pause=0.002),
            settings_for(case, "billing", name, mode, batch_size=20),
        )
        for name in ("m1", "m2", "m3", "m4")
    ]
    flow = Flow(case.database_url, case.schema, "orders")
    async with running_relay(**case.relay_settings()):
        backlog = await produce(case.pg, case.schema, range(10_000, 10_600), topic="orders")
        async with members(*pairs) as running:
            flow.start()
            await _applied_at_least(case, "billing", 100)
            for member in running:
                member.begin_stop()
            results = await asyncio.gather(*(m.stopped() for m in running), return_exceptions=True)
        assert results == [None] * 4, f"every member exits cleanly: {results}"
        at_stop = len(await applied(case.pg, case.schema, "billing"))
        await asyncio.sleep(0.3)  # events keep coming while no member runs
        ids = backlog + await flow.stop()
        assert at_stop < len(ids), "the members were stopped with events still to apply"
        async with members(
            (recording_router(case.schema, ["orders"]), settings_for(case, "billing", "m5", mode))
        ):
            counts = await wait_applied(case, "billing", ids, topic="orders", timeout=20)
    assert_delivered(counts, ids, mode)


async def test_members_started_and_closed_together_leave_the_group_working(case: Case) -> None:
    """Twice, five members of a new group start at the same time and are closed at the same
    time, before any event exists: each exits cleanly. Events committed afterwards all reach
    the next member, once each."""
    await create_applied(case.pg, case.schema)
    router = recording_router(case.schema, ["orders"])
    for round_ in range(2):
        group = [
            Member(router, settings_for(case, "audit", f"r{round_}m{n}", "exactly-once"))
            for n in range(5)
        ]
        await asyncio.gather(*(m.start() for m in group))
        for member in group:
            member.begin_stop()
        results = await asyncio.gather(*(m.stopped() for m in group), return_exceptions=True)
        assert results == [None] * 5, f"every member exits cleanly: {results}"
    async with running_relay(**case.relay_settings()):
        ids = await produce(case.pg, case.schema, range(50), topic="orders")
        async with members((router, settings_for(case, "audit", "last", "exactly-once"))):
            counts = await wait_applied(case, "audit", ids, topic="orders")
    assert_delivered(counts, ids, "exactly-once")


class _Abort(Exception):
    """The business transaction fails after its events were enqueued."""


async def test_every_event_committed_before_the_producer_closed_is_delivered(
    case: Case,
) -> None:
    """Eight producer tasks share a pool; half their transactions commit, half roll back after
    enqueueing; one more producer's connection is cut with its transaction open; the pool is
    closed right after the last commit. Every committed event is applied once; no rolled-back
    or cut-off one ever is."""
    await create_applied(case.pg, case.schema)
    pool = await asyncpg.create_pool(case.database_url, min_size=4, max_size=4)
    committed: list[str] = []
    rolled_back: list[str] = []

    async def business(worker: int) -> None:
        for n in range(10):
            ids: list[str] = []
            async with pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        for k in range(3):
                            seq = worker * 100 + n * 3 + k
                            ids.append(str(await _enqueue(conn, case.schema, seq)))
                        if n % 2:
                            raise _Abort
                except _Abort:
                    rolled_back.extend(ids)
                else:
                    committed.extend(ids)

    router = recording_router(case.schema, ["orders"])
    async with (
        running_relay(**case.relay_settings()),
        members((router, settings_for(case, "fulfil", "m1", "exactly-once"))),
    ):
        cut = await asyncpg.connect(case.database_url)
        await cut.execute("BEGIN")
        cut_off = str(await _enqueue(cut, case.schema, 9999))
        await asyncio.gather(*(business(w) for w in range(8)))
        cut.terminate()  # the producer dies with its transaction open
        await pool.close()
        assert (len(committed), len(rolled_back)) == (120, 120)
        await wait_until(lambda: drained(case.pg, case.schema), what="outbox published")
        counts = await wait_applied(case, "fulfil", committed, topic="orders")
    assert_delivered(counts, committed, "exactly-once")
    assert not set(counts) & {*rolled_back, cut_off}


async def _enqueue(conn: asyncpg.Connection, schema: str, seq: int) -> uuid.UUID:
    return await enqueue(
        conn,
        payload(seq),
        aggregate_type="user",
        aggregate_id=f"user-{seq}",
        topic="orders",
        schema=schema,
    )
