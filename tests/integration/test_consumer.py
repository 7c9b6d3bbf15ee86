"""Consumers apply every event's effect once per group (BRIEF guarantee 3)."""

from __future__ import annotations

import time
from typing import Any

from consumers import EventContext, Retry
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    publish,
    running_consumer,
)
from tests.processes import wait_until


async def test_two_groups_on_one_stream_each_apply_every_event_once(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 3000)
    router = effect_router(case.schema)
    async with (
        running_consumer(router, **consumer_settings(case, "billing")),
        running_consumer(router, **consumer_settings(case, "mailer")),
    ):
        for group in ("billing", "mailer"):

            async def done(group: str = group) -> bool:
                return len(await effect_counts(case.pg, case.schema, group)) == len(ids)

            await wait_until(done, what=f"group {group} applied everything")
    for group in ("billing", "mailer"):
        counts = await effect_counts(case.pg, case.schema, group)
        assert set(counts) == set(ids)
        assert set(counts.values()) == {1}, "each effect exactly once"


async def test_consumer_registers_heartbeats_and_leaves_the_catalog(case: Case) -> None:
    router = effect_router(case.schema)
    settings = consumer_settings(case, "billing", consumer="worker-1", heartbeat_interval=0.1)

    async def row() -> Any:
        return await case.pg.fetchrow(
            "SELECT * FROM conveyor.consumers WHERE consumer_group = 'billing' "
            "AND consumer_name = 'worker-1'"
        )

    async with running_consumer(router, **settings):
        first = await row()
        assert first is not None
        assert (first["topics"], first["mode"], first["ledger_schema"]) == (
            ["identity"],
            "exactly-once",
            case.schema,
        )

        async def beat() -> bool:
            later = await row()
            return later is not None and later["heartbeat_at"] > first["heartbeat_at"]

        await wait_until(beat, what="a heartbeat")
    assert await row() is None, "a clean stop leaves the registry"


async def test_retry_delay_is_honoured_and_not_cut_short_by_another_consumer(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    seen: list[tuple[int, float]] = []

    def fail(ctx: EventContext) -> None:
        seen.append((ctx.attempt, time.monotonic()))
        if ctx.attempt == 1:
            raise Retry("not yet", delay=2.5)

    ids = await publish(case.redis, case.prefix, 1)
    router = effect_router(case.schema, fail=fail)
    quick = {"claim_idle": 0.5}
    async with (
        running_consumer(router, **consumer_settings(case, consumer="a", **quick)),
        running_consumer(router, **consumer_settings(case, consumer="b", **quick)),
    ):

        async def applied() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 1

        await wait_until(applied, what="applied on the second attempt")
    assert [a for a, _ in seen] == [1, 2], "one failure, one retry, no early steal"
    assert seen[1][1] - seen[0][1] >= 2.4, "the retry waited out its delay"
    assert await effect_counts(case.pg, case.schema, "g") == {ids[0]: 1}
