"""`conveyor relay replay` over events the group dead-lettered: the repeat is a duplicate while
the dead letter stands (resolved, or open with its entry kept), a new dead letter when Redis lost
the old one, and a reprocess still runs the handler again."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from conveyor import wire
from tests.integration.replay_support import GROUP, TOPIC, Pipeline, pipeline
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
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    # The user resolved bob's rejected sign-up ("not an address"), then replays: the resolved
    # letter stays resolved and no new open dead letter appears for that event.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        event_id, entry = await p.reject("bob.example.com")
        why = ("--reason", "not an address")
        resolved = p.conveyor("dlq", "resolve", "--stream", TOPIC, "--id", entry, *why)
        assert resolved.returncode == 0, resolved.stderr
        await replay(p, redis_client)
        assert await p.states(event_id) == ["resolved"]


async def test_a_replayed_open_dead_letter_stays_one_and_a_reprocess_still_runs_it(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    # An open dead letter and a replay: still the one open letter. A reprocess of it then runs
    # the handler again, which rejects it again: a new dead letter naming the old one.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        event_id, entry = await p.reject("carol.example.com")
        await replay(p, redis_client)
        assert await p.letters(event_id) == [("open", entry, None)]
        again = p.conveyor("dlq", "reprocess", "--stream", TOPIC, "--id", entry)
        assert again.returncode == 0, again.stderr

        async def refailed() -> bool:
            return len(await p.letters(event_id)) == 2

        await wait_until(refailed, what="the reprocessed sign-up rejected again")
        (old, new) = await p.letters(event_id)
        assert old[:2] == ("reprocessed", entry)
        assert new[0] == "open" and new[2] == entry


async def test_a_replay_after_the_dead_letter_was_lost_dead_letters_the_event_again(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    # Redis lost the dead-letter entry (the catalog row, in PostgreSQL, is left pointing at
    # nothing): the replayed event is handled again and becomes a dead letter that can be
    # reprocessed, rather than being dropped as a duplicate of a letter that is gone.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        event_id, entry = await p.reject("dave.example.com")
        assert await redis_client.xdel(wire.Keys(TOPIC, key_prefix).dlq, entry) == 1
        await replay(p, redis_client)

        async def dead_again() -> bool:
            return len(await p.letters(event_id)) == 2

        await wait_until(dead_again, what="the replayed sign-up dead-lettered again")
        (old, new) = await p.letters(event_id)
        assert old == ("open", entry, None)
        assert new[0] == "open" and new[1] != entry
