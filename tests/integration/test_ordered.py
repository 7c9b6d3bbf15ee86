"""Ordered partitioned topics: one owner per partition per group by leases, rebalanced as
members come and go; per-aggregate order across retries; dead letters park or pass their
aggregate's later events."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from rich.console import Console

from admin.catalog import Catalog, dead_letters
from admin.catalog.audit import AuditLog
from admin.catalog.leases import ConsumerLeases
from admin.catalog.reprocess import reprocess
from admin.cli.status_groups import groups_table
from admin.ops.convert import status_response
from admin.ops.status import StatusChecker
from consumers import EventContext, Reject, Router
from consumers.leases import LeaseScope
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from tests.integration.ordered_support import (
    TOPIC,
    applied,
    create_applied,
    leases,
    make_ordered,
    member,
    ordered_router,
    per_aggregate,
    publish,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("catalog_cleanup")
GROUP = "orders-app"


def _settings(case: Any, **extra: Any) -> dict[str, Any]:
    return {
        "group": GROUP,
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
        **extra,
    }


def _events(aggregates: int, per: int, start: int = 1) -> list[tuple[str, int]]:
    """Interleaved: seq 1 of every aggregate, then seq 2, ..."""
    return [(f"a{a}", s) for s in range(start, start + per) for a in range(aggregates)]


async def test_two_members_split_the_partitions_and_the_survivor_takes_all(case: Any) -> None:
    await make_ordered(case.pg, case.prefix, 4)
    await create_applied(case.pg, case.schema)
    a, b = ordered_router(case.schema, "m-a"), ordered_router(case.schema, "m-b")
    async with member(a, "m-a", **_settings(case)):
        async with member(b, "m-b", **_settings(case)):

            async def split() -> bool:
                owners = await leases(case.pg, case.prefix, GROUP)
                mine = sorted(owners.get(p) or "" for p in range(4))
                return mine == ["m-a", "m-a", "m-b", "m-b"]

            await wait_for(split, "two members holding two partitions each")
            await publish(case.redis, case.prefix, 4, _events(12, 5))
            await wait_for(
                lambda: _count(case.pg, case.schema, 60), "every event applied while split"
            )
            members = {m for _, _, m in await applied(case.pg, case.schema)}
            assert members == {"m-a", "m-b"}  # both applied their partitions' events

        # m-b stopped cleanly and handed its leases back: m-a owns every partition.
        async def all_a() -> bool:
            owners = await leases(case.pg, case.prefix, GROUP)
            return [owners.get(p) for p in range(4)] == ["m-a"] * 4

        await wait_for(all_a, "the remaining member holding all four partitions")
        await publish(case.redis, case.prefix, 4, _events(12, 3, start=6))
        await wait_for(lambda: _count(case.pg, case.schema, 96), "later events applied")
    rows = await applied(case.pg, case.schema)
    assert per_aggregate(rows) == {f"a{a}": list(range(1, 9)) for a in range(12)}
    assert {m for _, s, m in rows if s >= 6} == {"m-a"}


async def test_a_retrying_event_holds_back_its_aggregate_only(case: Any) -> None:
    await make_ordered(case.pg, case.prefix, 4)
    await create_applied(case.pg, case.schema)

    def fail(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 1 and ctx.attempt <= 2:
            raise RuntimeError(f"attempt {ctx.attempt} fails")

    async with member(ordered_router(case.schema, "m-a", fail), "m-a", **_settings(case)):
        await publish(case.redis, case.prefix, 4, _events(8, 4))
        await wait_for(lambda: _count(case.pg, case.schema, 32), "every event applied")
    rows = await applied(case.pg, case.schema)
    assert per_aggregate(rows) == {f"a{a}": [1, 2, 3, 4] for a in range(8)}
    first_a0 = next(i for i, (agg, _, _) in enumerate(rows) if agg == "a0")
    # While a0's first event waited for its third attempt, the other aggregates went on.
    assert len({agg for agg, _, _ in rows[:first_a0]}) == 7


async def test_park_holds_an_aggregate_after_its_dead_letter_until_resolved(case: Any) -> None:
    await make_ordered(case.pg, case.prefix, 4)
    await create_applied(case.pg, case.schema)

    def fail(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 2:
            raise Reject("refused for good")

    async with member(ordered_router(case.schema, "m-a", fail), "m-a", **_settings(case)):
        await publish(case.redis, case.prefix, 4, _events(6, 4))
        await wait_for(lambda: _count(case.pg, case.schema, 21), "all but a0's later events")
        await publish(case.redis, case.prefix, 4, [("a0", 5), ("a1", 5)])
        await wait_for(lambda: _count(case.pg, case.schema, 22), "a1's next event")
        assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1]
        assert await _pending(case, "a0") == 3  # held, unacknowledged: seq 3, 4 and 5
        shown = {g.topic: g for g in (await _status(case)).groups}
        part = f"{TOPIC}:{wire.partition_of('a0', 4)}"
        assert (shown[part].lease_owner, shown[part].lease_epoch) == ("m-a", 1)
        assert list(shown[part].parked_aggregates) == ["a0"]
        assert [list(shown[f"{TOPIC}:{p}"].parked_aggregates) for p in range(4)].count([]) == 3
        table = _render(groups_table(shown.values()))
        assert "m-a (epoch 1)" in table and " a0 " in table
        await _resolve_all(case.pg, case.prefix)
        await wait_for(lambda: _count(case.pg, case.schema, 25), "a0's held events")
    assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1, 3, 4, 5]


async def test_park_holds_an_aggregate_until_its_dead_letter_is_reprocessed(case: Any) -> None:
    await make_ordered(case.pg, case.prefix, 4)
    await create_applied(case.pg, case.schema)
    broken = {"a0": True}

    def fail(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 2 and broken["a0"]:
            raise Reject("refused until fixed")

    async with member(ordered_router(case.schema, "m-a", fail), "m-a", **_settings(case)):
        await publish(case.redis, case.prefix, 4, _events(4, 4))
        await wait_for(lambda: _count(case.pg, case.schema, 13), "all but a0's later events")
        broken["a0"] = False  # the handler is fixed; the dead letter is reprocessed
        pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=4)
        try:
            ids = [
                r[0]
                for r in await case.pg.fetch(
                    "SELECT dlq_entry_id FROM conveyor.dead_letters WHERE key_prefix = $1",
                    case.prefix,
                )
            ]
            records = await dead_letters.get_dead_letters(pool, case.prefix, TOPIC, ids)
            progress = await reprocess(
                pool,
                case.redis,
                topic=TOPIC,
                records=records,
                key_prefix=case.prefix,
                principal="me",
                audit=AuditLog(pool, case.prefix),
                ledger_schemas={GROUP: case.schema},
            )
            assert progress.requeued == 1
        finally:
            await pool.close()
        await wait_for(lambda: _count(case.pg, case.schema, 16), "a0's events after reprocess")
    assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1, 2, 3, 4]


async def test_pass_lets_an_aggregate_go_on_after_its_dead_letter(case: Any) -> None:
    await make_ordered(case.pg, case.prefix, 4, policy="pass")
    await create_applied(case.pg, case.schema)

    def fail(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 2:
            raise Reject("refused for good")

    async with member(ordered_router(case.schema, "m-a", fail), "m-a", **_settings(case)):
        await publish(case.redis, case.prefix, 4, _events(6, 4))
        await wait_for(lambda: _count(case.pg, case.schema, 23), "all but the dead letter")
    assert per_aggregate(await applied(case.pg, case.schema))["a0"] == [1, 3, 4]


async def _count(pg: asyncpg.Connection, schema: str, n: int) -> bool:
    got = await pg.fetchval(f"SELECT count(*) FROM {schema}.applied")
    assert got <= n, f"{got} effects, more than the {n} expected"
    return bool(got == n)


async def _pending(case: Any, agg: str) -> int:
    key = wire.Keys("orders", case.prefix, wire.partition_of(agg, 4)).events
    summary = await case.redis.xpending(key, GROUP)
    return int(summary["pending"])


class _Probe:
    def components(self, redis: Any, groups: Any, now: float) -> list[Any]:
        return []

    def outboxes(self) -> list[Any]:
        return []


async def _status(case: Any) -> Any:
    """What GetStatus answers (`conveyor status`): the groups of every partition stream."""
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        checker = StatusChecker(
            redis=case.redis, catalog=Catalog(pool, case.prefix), probe=_Probe()
        )
        await checker.refresh()
        return status_response(checker.snapshot)
    finally:
        await pool.close()


def _render(table: Any) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


async def _resolve_all(pg: asyncpg.Connection, prefix: str) -> None:
    ids = await pg.fetch(
        "SELECT id FROM conveyor.dead_letters WHERE key_prefix = $1 AND state = 'open'", prefix
    )
    assert ids, "no dead letter recorded"
    await dead_letters.resolve(pg, [r[0] for r in ids], reason="fixed by hand", principal="me")


async def test_an_owner_that_lost_its_lease_cannot_commit(case: Any) -> None:
    """m-a's transaction is held open in the handler (its effect written) while its lease runs
    out and m-b takes the partition: m-a's COMMIT is refused, nothing of it is in the ledger or
    the effects, and m-b applies the event once."""
    await make_ordered(case.pg, case.prefix, 1)
    await create_applied(case.pg, case.schema)
    entered, go = asyncio.Event(), asyncio.Event()
    router = Router()

    @router.handler(events_pb2.UserRegistered, topic=TOPIC)
    async def hold(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await ctx.db.execute(
            f"INSERT INTO {case.schema}.applied (event_id, aggregate_id, seq, member) "
            "VALUES ($1, $2, 1, 'm-a')",
            uuid.UUID(ctx.event_id),
            event.user_id,
        )
        entered.set()
        await go.wait()

    [event_id] = await publish(case.redis, case.prefix, 1, [("a0", 1)])
    async with member(router, "m-a", **_settings(case, lease_ttl=30.0)) as a:
        await asyncio.wait_for(entered.wait(), 60)
        # m-a is paused past its lease (as under SIGSTOP): the lease runs out, m-b takes it.
        await case.pg.execute(
            "UPDATE conveyor.partition_leases SET expires_at = now() - interval '1 second' "
            "WHERE key_prefix = $1",
            case.prefix,
        )
        store = ConsumerLeases(case.pg)  # type: ignore[arg-type]  # a connection will do
        taken = await store.acquire(LeaseScope(case.prefix, GROUP, TOPIC), 0, "m-b", 30.0)
        assert taken == 2
        go.set()

        async def fenced() -> bool:
            return not a.all_workers()  # m-a's partition worker ended on the refused commit

        await wait_for(fenced, "m-a giving the partition up")
        assert await applied(case.pg, case.schema) == []
        ledger = await case.pg.fetchval(f"SELECT count(*) FROM {case.schema}.event_ledger")
        assert ledger == 0
        assert await leases(case.pg, case.prefix, GROUP) == {0: "m-b"}
    await case.pg.execute(
        "UPDATE conveyor.partition_leases SET owner = NULL WHERE key_prefix = $1", case.prefix
    )
    async with member(ordered_router(case.schema, "m-b"), "m-b", **_settings(case)):
        await wait_for(lambda: _count(case.pg, case.schema, 1), "m-b applying the event")
    assert await applied(case.pg, case.schema) == [("a0", 1, "m-b")]
    ledger_ids = await case.pg.fetch(f"SELECT event_id::text FROM {case.schema}.event_ledger")
    assert [r[0] for r in ledger_ids] == [event_id]
