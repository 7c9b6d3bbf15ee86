"""A reprocessed dead letter through a running consumer (guarantee 5): applied once; or, failing
again, settled and chained to the new dead letter; against the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from admin.catalog import DeadLetterRecord, Progress, traces
from admin.ops import convert
from consumers import EventContext, Reject, Router
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    running_consumer,
)
from tests.integration.reprocess_support import (
    Fixture,
    fixture_catalog_at_head,  # noqa: F401 - a pytest fixture
    fixture_conveyor_redis,  # noqa: F401 - a pytest fixture
    fixture_f,  # noqa: F401 - a pytest fixture
    fixture_pool,  # noqa: F401 - a pytest fixture
    fixture_topic,  # noqa: F401 - a pytest fixture
)
from tests.processes import wait_until


async def test_reprocessed_dead_letter_is_applied_once_by_a_running_consumer(
    f: Fixture, case: Case
) -> None:
    await create_effects(case.pg, case.schema)
    (record,) = await f.dead_letters(1, group="g")
    f.ledgers = {"g": case.schema}
    # The group had read past the original long ago: only the retry stream can bring it back.
    await case.redis.xgroup_create(f.keys.events, "g", id="$")
    router = effect_router(case.schema, topic=f.topic)
    async with running_consumer(router, **consumer_settings(case, group="g")):
        # A double click: two calls at once, no key.
        await asyncio.gather(f.run([record]), f.run([record]))

        async def applied() -> bool:
            return bool(await effect_counts(case.pg, case.schema, "g"))

        await wait_until(applied, what="the reprocessed event applied", timeout=10)
        await wait_until(
            lambda: _state_is(f, record, "reprocessed"),
            timeout=10,
            what="the dead letter marked reprocessed",
        )
        assert await f.retries("g") == [], "the retry entry is acknowledged and deleted"
    assert await effect_counts(case.pg, case.schema, "g") == {record.event_id: 1}

    # Reprocessing it again finds it reprocessed: nothing is sent, and the answer says why.
    (again,) = await f.records([record.entry_id])
    result = await f.run([again])
    assert replace(result, skips=()) == Progress(done=1, total=1, skipped=1, finished=True)
    (skip,) = result.skips
    assert (skip.entry_id, skip.reason) == (record.entry_id, "reprocessed")
    assert skip.detail.startswith(
        f"already reprocessed: group g applied it; requeued by {f.principal}"
    )


async def _state_is(f: Fixture, record: DeadLetterRecord, state: str) -> bool:
    return (await f.states())[record.entry_id] == state


async def test_reprocessed_dead_letter_that_fails_again_is_settled_and_chained(
    f: Fixture, case: Case
) -> None:
    """The retry fails again: a new dead letter D2 records the failure, and D1 leaves
    `reprocessing` (as `reprocessed`, pointing at D2), so it expires and the chain shows in the
    catalog both ways. D2 can be reprocessed in turn."""
    (d1,) = await f.dead_letters(1, group="g")
    f.ledgers = {"g": case.schema}
    await case.redis.xgroup_create(f.keys.events, "g", id="$")
    router = Router()

    @router.handler(events_pb2.UserRegistered, topic=f.topic)
    async def still_broken(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        raise Reject("still broken")

    async with running_consumer(router, **consumer_settings(case, group="g")):
        await f.run([d1])

        async def settled() -> bool:
            return len(await f.states()) == 2 and (await f.states())[d1.entry_id] != "reprocessing"

        await wait_until(settled, what="the re-failed dead letter settled", timeout=10)
    (d1_now,) = await f.records([d1.entry_id])
    (d2_id,) = set(await f.states()) - {d1.entry_id}
    (d2,) = await f.records([d2_id])
    assert (d1_now.state, d1_now.retried_as, d1_now.retry_of) == ("reprocessed", d2_id, None)
    assert (d2.state, d2.retry_of, d2.event_id) == ("open", d1.entry_id, d1.event_id)
    assert d1.event_id is not None
    trace = await traces.trace_event(
        f.pool, case.redis, d1.event_id, schemas=[case.schema], key_prefix=case.prefix
    )
    shown = convert.trace_response(trace).dead_letters
    assert [(d.entry_id, d.retry_of_entry_id, d.retried_as_entry_id) for d in shown] == [
        (d1.entry_id, "", d2_id),
        (d2_id, d1.entry_id, ""),
    ]
    # Reprocessing the chain's end requeues it; the settled one is skipped.
    progress = await f.run([d1_now, d2])
    assert (progress.requeued, progress.skipped) == (1, 1)
    ((_retry_id, retry),) = await f.retries("g")
    assert retry[wire.RT_DEAD_LETTER] == d2_id.encode()
