"""The README's last command, `conveyor relay replay --schema signup --since 2h` ("after Redis
lost data ... republish the kept window"), on a pipeline whose dead letter the user resolved as
the Quick start has them do."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from conveyor import wire
from tests.processes import run_conveyor, wait_until
from tests.review5.rejected import GROUP, TOPIC, pipeline

pytestmark = pytest.mark.slow


async def settled(r: aioredis.Redis, stream: str) -> bool:
    """The group has read every entry of the stream and holds none pending."""
    groups = await r.xinfo_groups(stream)
    mine = [g for g in groups if g["name"] in (GROUP, GROUP.encode())]
    return bool(mine) and mine[0]["lag"] == 0 and mine[0]["pending"] == 0


async def test_a_replay_does_not_reopen_a_resolved_dead_letter(
    database_url: str,
    redis_url: str,
    schema: str,
    key_prefix: str,
    catalog_cleanup: None,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    # The user resolved bob's rejected sign-up ("not an address"). Redis loses data, they replay
    # as the README says, and operations.md promises "consumers absorb the duplicates". A user
    # expects the resolved letter to stay resolved and no new open dead letter for that event;
    # today every replay adds one more open dead letter per rejected event, resolved or not.
    async with pipeline(database_url, redis_url, schema, key_prefix, pg) as p:
        event_id, entry = await p.reject("bob.example.com")
        why = ("--reason", "not an address")
        resolved = p.conveyor("dlq", "resolve", "--stream", TOPIC, "--id", entry, *why)
        assert resolved.returncode == 0, resolved.stderr
        replay = run_conveyor(["relay", "replay", "--schema", schema, "--since", "2h"], p.env)
        assert replay.returncode == 0, replay.stderr
        stream = wire.Keys(TOPIC, key_prefix).events
        await wait_until(
            lambda: settled(redis_client, stream), what="the replayed entry handled by the group"
        )
        assert await p.states(event_id) == ["resolved"]
