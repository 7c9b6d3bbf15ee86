"""Consumers apply every event's effect once per group (BRIEF guarantee 3)."""

from __future__ import annotations

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
