"""`conveyor verify` over a window in which the topic's partition count changed: an event
published before the change is in the old stream, not in the partition the new layout gives it."""

from __future__ import annotations

import asyncio
import json

import pytest

from admin.verify.verdicts import CLOCK_SKEW_MS
from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    running_consumer,
)
from tests.integration.partition_support import TOPIC, enqueue
from tests.integration.relay_support import drained
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("catalog_cleanup")]


async def _publish(case: Case, n: int) -> list[tuple[str, object]]:
    relay = start_conveyor(["relay"], case.env)
    try:
        sent = await enqueue(case.pg, case.schema, n, aggregates=n)
        await wait_until(lambda: drained(case.pg, case.schema), what="published")
    finally:
        stop(relay)
    return sent


async def test_an_event_left_in_the_old_stream_by_a_forced_change_is_not_reported_lost(
    case: Case,
) -> None:
    await create_effects(case.pg, case.schema)
    plain = wire.Keys(TOPIC, case.prefix)
    await case.redis.xgroup_create(plain.events, "g", id="0", mkstream=True)
    ((_, stranded),) = await _publish(case, 1)  # in the old stream, not yet delivered
    forced = await asyncio.to_thread(
        run_conveyor, ["topic", "partition", TOPIC, "--partitions", "4", "--force"], case.env
    )
    assert forced.returncode == 0, forced.stderr
    await asyncio.sleep(CLOCK_SKEW_MS / 1000 + 0.5)
    await _publish(case, 16)
    settings = consumer_settings(case, "g", housekeeping_interval=3600, topics=(TOPIC,))
    async with running_consumer(effect_router(case.schema, topic=TOPIC), **settings):

        async def applied() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 16

        await wait_until(applied, what="the 16 events published after the change applied")
        result = await asyncio.to_thread(run_conveyor, ["verify", "--json"], case.env, 60)
    data = json.loads(result.stdout)
    (group,) = [g for g in data["groups"] if g["group"] == "g"]
    assert str(stranded) not in group["examples"].get("lost", []), group
    assert result.returncode == 0, (group, result.stderr)
    assert str(stranded) in group["examples"]["unknown"], group
    assert group["counts"]["unknown"]["other-layout"] == 1, group
