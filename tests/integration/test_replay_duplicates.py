"""`conveyor relay replay` over events the group dead-lettered: the repeat is a duplicate while
the dead letter stands (resolved, or open with its entry kept), also when it comes over the
attempts cap, a new dead letter when Redis lost the old one, and a reprocess still runs the
handler again."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    ledger_results,
    publish,
    running_consumer,
)
from tests.integration.rejected_pipeline import (  # noqa: F401 - a pytest fixture
    GROUP,
    TOPIC,
    Pipeline,
    fixture_rejecting,
)
from tests.processes import run_conveyor, wait_until

pytestmark = pytest.mark.slow


async def settled(r: aioredis.Redis, stream: str) -> bool:
    """The group has read every entry of the stream and holds none pending."""
    groups = await r.xinfo_groups(stream)
    mine = [g for g in groups if g["name"] in (GROUP, GROUP.encode())]
    return bool(mine) and mine[0]["lag"] == 0 and mine[0]["pending"] == 0


async def replay(p: Pipeline, r: aioredis.Redis) -> None:
    """`conveyor relay replay --since 2h`, as operations.md says, then wait for the group."""
    done = run_conveyor(["relay", "replay", "--schema", p.schema, "--since", "2h"], p.env)
    assert done.returncode == 0, done.stderr
    stream = wire.Keys(TOPIC, p.key_prefix).events
    await wait_until(lambda: settled(r, stream), what="the replayed entry handled by the group")


async def test_a_replay_does_not_reopen_a_resolved_dead_letter(
    rejecting: Pipeline, redis_client: aioredis.Redis
) -> None:
    # The user resolved bob's rejected sign-up ("not an address"), then replays: the resolved
    # letter stays resolved and no new open dead letter appears for that event.
    event_id, entry = await rejecting.reject("bob.example.com")
    why = ("--reason", "not an address")
    resolved = rejecting.conveyor("dlq", "resolve", "--stream", TOPIC, "--id", entry, *why)
    assert resolved.returncode == 0, resolved.stderr
    await replay(rejecting, redis_client)
    assert await rejecting.states(event_id) == ["resolved"]


async def test_a_replayed_open_dead_letter_stays_one_and_a_reprocess_still_runs_it(
    rejecting: Pipeline, redis_client: aioredis.Redis
) -> None:
    # An open dead letter and a replay: still the one open letter. A reprocess of it then runs
    # the handler again, which rejects it again: a new dead letter naming the old one.
    event_id, entry = await rejecting.reject("carol.example.com")
    await replay(rejecting, redis_client)
    assert await rejecting.letters(event_id) == [("open", entry, None)]
    again = rejecting.conveyor("dlq", "reprocess", "--stream", TOPIC, "--id", entry)
    assert again.returncode == 0, again.stderr

    async def refailed() -> bool:
        return len(await rejecting.letters(event_id)) == 2

    await wait_until(refailed, what="the reprocessed sign-up rejected again")
    (old, new) = await rejecting.letters(event_id)
    assert old[:2] == ("reprocessed", entry)
    assert new[0] == "open" and new[2] == entry


async def test_a_replay_after_the_dead_letter_was_lost_dead_letters_the_event_again(
    rejecting: Pipeline, redis_client: aioredis.Redis
) -> None:
    # Redis lost the dead-letter entry (the catalog row, in PostgreSQL, is left pointing at
    # nothing): the replayed event is handled again and becomes a dead letter that can be
    # reprocessed, rather than being dropped as a duplicate of a letter that is gone.
    event_id, entry = await rejecting.reject("dave.example.com")
    assert await redis_client.xdel(wire.Keys(TOPIC, rejecting.key_prefix).dlq, entry) == 1
    await replay(rejecting, redis_client)

    async def dead_again() -> bool:
        return len(await rejecting.letters(event_id)) == 2

    await wait_until(dead_again, what="the replayed sign-up dead-lettered again")
    (old, new) = await rejecting.letters(event_id)
    assert old == ("open", entry, None)
    assert new[0] == "open" and new[1] != entry


async def _pending_over_the_cap(case: Case, keys: wire.Keys, fields: dict[bytes, bytes]) -> None:
    """A new entry of `fields` pending on a dead member `x`, delivered 3 times."""
    await case.redis.xadd(keys.events, fields)
    reply = await case.redis.xreadgroup("g", "x", {keys.events: ">"}, count=1)
    entry_id = reply[0][1][0][0]
    for _ in range(2):
        await case.redis.xclaim(keys.events, "g", "x", 0, [entry_id])


@pytest.mark.usefixtures("catalog_cleanup")
async def test_an_over_the_cap_repeat_of_a_dead_lettered_event_is_a_duplicate(case: Case) -> None:
    # An event dead-lettered over the cap (its consumers crashed), then a repeat of it (a replay)
    # over the cap again: acknowledged as a duplicate of the open dead letter, not moved a second
    # time, and still marked in the ledger so no stalled member applies it.
    await create_effects(case.pg, case.schema)
    keys = wire.Keys("identity", case.prefix)
    (event_id,) = await publish(case.redis, case.prefix, 1)
    ((_, fields),) = await case.redis.xrange(keys.events)
    await case.redis.delete(keys.events)
    await case.redis.xgroup_create(keys.events, "g", id="0", mkstream=True)
    await case.redis.xgroup_create(keys.retry("g"), "g", id="0", mkstream=True)
    conf = consumer_settings(case, max_attempts=2, claim_idle=0.2, consumer="b")

    async def drained() -> bool:
        info = await case.redis.xinfo_groups(keys.events)
        return bool(info) and info[0]["pending"] == 0 and info[0]["lag"] == 0

    async def recorded() -> bool:
        return await case.pg.fetchval(
            "SELECT count(*) FROM conveyor.dead_letters WHERE dlq_stream = $1", keys.dlq
        ) == await case.redis.xlen(keys.dlq)

    for _ in range(2):  # the event, then its repeat
        await _pending_over_the_cap(case, keys, dict(fields))
        async with running_consumer(effect_router(case.schema), **conf):
            await wait_until(drained, timeout=20, what="the over-cap entry settled")
            await wait_until(recorded, timeout=20, what="the catalog to record the dead letter")
    assert await case.redis.xlen(keys.dlq) == 1
    assert await ledger_results(case) == {event_id: "dead_letter"}
    assert await effect_counts(case.pg, case.schema, "g") == {}
