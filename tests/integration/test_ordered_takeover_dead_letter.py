"""An old owner's dead letter racing a takeover of its ordered partition."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from admin.catalog import dead_letters
from consumers import EventContext, Reject, service
from consumers.ordered import ordered_parts
from conveyor import wire
from tests.integration.ordered_support import (
    TOPIC,
    applied,
    create_applied,
    make_ordered,
    member,
    ordered_router,
    per_aggregate,
    publish,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("catalog_cleanup")
GROUP = "orders-app"


async def test_an_old_owner_does_not_dead_letter_an_entry_taken_over(
    case: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """m-a rejects a0's first event and checks its lease (held), then pauses before it writes
    the dead letter (as under SIGSTOP). Meanwhile its lease runs out, m-b takes the partition
    over and applies a0's events (m-b's handler accepts them). m-a, woken, must not dead-letter
    the entry m-b owns now: that dead letter would be of an event applied, and would park a0's
    later events on m-b."""
    await make_ordered(case.pg, case.prefix, 2)  # a0 is in partition 1: m-b's share of two
    await create_applied(case.pg, case.schema)
    checked, go = asyncio.Event(), asyncio.Event()

    def parts(held: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        built = ordered_parts(held, *args, **kwargs)
        if held.owner == "m-a":
            check = built["check_lease"]

            async def check_then_pause() -> None:
                await check()
                checked.set()
                await go.wait()

            built["check_lease"] = check_then_pause
        return built

    monkeypatch.setattr(service, "ordered_parts", parts)

    def reject(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 1:
            raise Reject("m-a's handler refuses it")

    settings = {
        "group": GROUP,
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
        "lease_ttl": 30.0,
    }
    await publish(case.redis, case.prefix, 2, [("a0", 1), ("a0", 2)])
    async with member(ordered_router(case.schema, "m-a", reject), "m-a", **settings) as a:
        await asyncio.wait_for(checked.wait(), 60)
        await case.pg.execute(
            "UPDATE conveyor.partition_leases SET expires_at = now() - interval '1 second' "
            "WHERE key_prefix = $1 AND partition = 1",
            case.prefix,
        )
        async with member(ordered_router(case.schema, "m-b"), "m-b", **settings):

            async def both() -> bool:
                return per_aggregate(await applied(case.pg, case.schema)).get("a0") == [1, 2]

            await wait_for(both, "m-b applying a0's events it took over")
            go.set()

            async def given_up() -> bool:
                return 1 not in a.ordered[TOPIC].running

            await wait_for(given_up, "m-a's worker of partition 1 ending")
            dead = await case.pg.fetchval(
                "SELECT count(*) FROM conveyor.dead_letters WHERE key_prefix = $1", case.prefix
            )
            assert dead == 0, "a dead letter of an event the new owner applied"
            await publish(case.redis, case.prefix, 2, [("a0", 3)])

            async def third() -> bool:
                return per_aggregate(await applied(case.pg, case.schema)).get("a0") == [1, 2, 3]

            await wait_for(third, "a0's next event applied", limit=30)
    assert {m for agg, _, m in await applied(case.pg, case.schema) if agg == "a0"} == {"m-b"}


async def test_entries_a_former_owner_read_do_not_count_against_held_events(case: Any) -> None:
    """a0 is parked behind its dead letter, its later events held by the owner m-a. A former
    owner reads entries of the partition after losing its lease (here `ghost`, twelve times): m-a
    claims them back each time, but the events it holds were not delivered again: they are not
    dead-lettered over max_attempts (5) without ever being tried, and apply once the dead letter
    is resolved."""
    await make_ordered(case.pg, case.prefix, 1)
    await create_applied(case.pg, case.schema)

    def reject(agg: str, seq: int, ctx: EventContext) -> None:
        if agg == "a0" and seq == 1:
            raise Reject("refused for good")

    settings = {
        "group": GROUP,
        "database_url": case.database_url,
        "redis_url": case.redis_url,
        "ledger_schema": case.schema,
        "key_prefix": case.prefix,
    }
    key = wire.Keys(TOPIC, case.prefix, 0).events
    await publish(case.redis, case.prefix, 1, [("a0", 1), ("a0", 2)])
    async with member(ordered_router(case.schema, "m-a", reject), "m-a", **settings):

        async def parked() -> bool:
            dead = await case.pg.fetchval(
                "SELECT count(*) FROM conveyor.dead_letters WHERE key_prefix = $1", case.prefix
            )
            return bool(dead == 1 and (await case.redis.xpending(key, GROUP))["pending"] == 1)

        await wait_for(parked, "a0's first event dead-lettered, its second held")
        for seq in range(1, 13):
            await publish(case.redis, case.prefix, 1, [("b0", seq)])
            await case.redis.xreadgroup(GROUP, "ghost", {key: ">"}, count=1)

            async def claimed() -> bool:
                pending = await case.redis.xpending_range(key, GROUP, "-", "+", 10, "ghost")
                return not pending

            await wait_for(claimed, "the ghost's entry claimed by the owner")
        await wait_for(
            lambda: _count_of(case, "b0", 12), "b0's events applied after the ghost's reads"
        )
        rows = await case.pg.fetch(
            "SELECT id FROM conveyor.dead_letters WHERE key_prefix = $1", case.prefix
        )
        assert len(rows) == 1, "a held event dead-lettered without being tried"
        await dead_letters.resolve(case.pg, [r[0] for r in rows], reason="ok", principal="me")
        await wait_for(lambda: _count_of(case, "a0", 1), "a0's held event applied")


async def _count_of(case: Any, agg: str, n: int) -> bool:
    got = await case.pg.fetchval(
        f"SELECT count(*) FROM {case.schema}.applied WHERE aggregate_id = $1", agg
    )
    return bool(got == n)
