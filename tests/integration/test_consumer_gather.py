"""Small batches at everyday rates: gathered into one transaction on one lane, still applied
once each and in aggregate order; slow handlers still get both lanes."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from consumers import EventContext
from conveyor.identity.v1 import events_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    insert_effect,
    publish,
    publish_timed,
    router_of,
    running_consumer,
)
from tests.integration.test_dead_letters import settled
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


async def publish_for(case: Case, aggregates: list[str]) -> list[str]:
    """XADD one event per aggregate in `aggregates`, in that order and in one pipeline (the
    relay's layout); return their ids."""
    return await publish_timed(case, [(aggregate, None) for aggregate in aggregates])


async def transactions_of(case: Case, ids: list[str]) -> int:
    """How many transactions wrote the ledger rows of `ids` (a row's xmin names its writer)."""
    return int(
        await case.pg.fetchval(
            f"SELECT count(DISTINCT xmin::text) FROM {case.schema}.event_ledger "
            "WHERE event_id = ANY($1::uuid[])",
            ids,
        )
    )


def aggregates_on_both_lanes(n: int) -> list[str]:
    """`n` aggregate ids (n >= 2) that a two-lane consumer in this process puts on both lanes
    (lanes go by hash(), which is seeded per process)."""
    by_lane: dict[int, list[str]] = defaultdict(list)
    i = 0
    while min(len(by_lane[0]), len(by_lane[1])) < n:
        name = f"agg{i}"
        by_lane[hash(name) % 2].append(name)
        i += 1
    return [a for pair in zip(by_lane[0], by_lane[1], strict=False) for a in pair][:n]


async def test_a_small_batch_over_both_lanes_commits_in_one_transaction(case: Case) -> None:
    """Ten events of aggregates on both lanes, read in one batch: one transaction writes their
    ledger rows and effects (a batch this small is not worth a transaction per lane)."""
    await create_effects(case.pg, case.schema)
    names = aggregates_on_both_lanes(10)
    ids = await publish_for(case, names)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)

    async with running_consumer(router_of(handler), **consumer_settings(case, partitions=2)):
        await wait_until(lambda: settled(case), what="every event acknowledged")
    assert await effect_counts(case.pg, case.schema, "g") == dict.fromkeys(ids, 1)
    assert await transactions_of(case, ids) == 1


async def test_events_arriving_one_by_one_are_applied_once_in_aggregate_order(
    case: Case,
) -> None:
    """Events published one at a time, a few milliseconds apart, with a gather delay: each is
    applied once, and every aggregate's effects follow its stream order; fewer transactions than
    events were needed."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await insert_effect(ctx, case.schema)

    settings = consumer_settings(case, partitions=2, gather_delay=0.05)
    ids: list[str] = []
    async with running_consumer(router_of(handler), **settings):
        for i in range(60):
            ids += await publish_for(case, [f"a{i % 4}"])
            await asyncio.sleep(0.002)
        await wait_until(lambda: settled(case), what="every event acknowledged")
    assert await effect_counts(case.pg, case.schema, "g") == dict.fromkeys(ids, 1)
    rows = await case.pg.fetch(
        f"SELECT aggregate_id, event_id::text FROM {case.schema}.effects ORDER BY at"
    )
    applied: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        applied[row["aggregate_id"]].append(row["event_id"])
    published: dict[str, list[str]] = defaultdict(list)
    for i, event_id in enumerate(ids):
        published[f"a{i % 4}"].append(event_id)
    assert applied == published
    assert await transactions_of(case, ids) < len(ids)


async def test_handlers_nest_transactions_in_batch_after_batch(case: Case) -> None:
    """A handler's `ctx.db.transaction()` is a savepoint in every batch a lane applies, also
    after the lane's previous transaction was committed together with its guard probe."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        async with ctx.db.transaction():
            await insert_effect(ctx, case.schema)

    ids: list[str] = []
    async with running_consumer(router_of(handler), **consumer_settings(case, partitions=1)):
        for _ in range(5):
            ids += await publish(case.redis, case.prefix, 3)
            await wait_until(lambda: settled(case), what="the batch acknowledged")
    assert await effect_counts(case.pg, case.schema, "g") == dict.fromkeys(ids, 1)
    assert await transactions_of(case, ids) == 5


async def test_slow_handlers_still_run_on_both_lanes(case: Case) -> None:
    """Once handlers are seen to be slow, a small batch over both lanes is split again, one
    transaction per lane, so the lanes work on it side by side."""
    await create_effects(case.pg, case.schema)

    async def handler(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        await asyncio.sleep(0.05)
        await insert_effect(ctx, case.schema)

    names = aggregates_on_both_lanes(4)
    async with running_consumer(router_of(handler), **consumer_settings(case, partitions=2)):
        await publish_for(case, names)
        await wait_until(lambda: settled(case), what="the first batch acknowledged")
        later = await publish_for(case, names)
        await wait_until(lambda: settled(case), what="the second batch acknowledged")
    assert await transactions_of(case, later) == 2
