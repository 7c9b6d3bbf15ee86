"""The README's last command, `conveyor relay replay --schema signup --since 2h` ("after Redis
lost data ... republish the kept window"), on a pipeline whose dead letter the user resolved as
the Quick start has them do."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from admin import migrations
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import enqueue
from tests.integration.test_ops_plane import port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow

GROUP = "mailer"
TOPIC = "demo"  # the bundled demo router's topic: its `welcome` rejects an address without `@`


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
) -> None:
    # The user resolved bob's rejected sign-up ("not an address"). Redis loses data, they replay
    # as the README says, and operations.md promises "consumers absorb the duplicates". A user
    # expects the resolved letter to stay resolved and no new open dead letter for that event;
    # today every replay adds one more open dead letter per rejected event, resolved or not.
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_KEY_PREFIX": key_prefix,
        "CONVEYOR_GRPC_ADDR": "127.0.0.1:0",
        "CONVEYOR_ALLOW_UNAUTHENTICATED": "true",
    }
    relay = start_conveyor(["relay", "--schema", schema], env)
    args = ["--group", GROUP, "--topic", TOPIC, "--router", "admin.cli.demo:router"]
    consumer = start_conveyor(["consume", *args, "--ledger-schema", schema], env)
    r = aioredis.from_url(redis_url)
    try:
        port = port_of(consumer, [])
        async with pg.transaction():
            event_id = await enqueue(
                pg,
                events_pb2.UserRegistered(user_id=f"bob-{uuid.uuid4().hex[:6]}", email="bob"),
                aggregate_type="user",
                aggregate_id="bob",
                topic=TOPIC,
                schema=schema,
                headers={"demo-schema": schema},
            )

        async def letters() -> list[str]:
            rows = await pg.fetch(
                "SELECT state FROM conveyor.dead_letters WHERE key_prefix = $1 AND event_id = $2",
                key_prefix,
                event_id,
            )
            return [str(row["state"]) for row in rows]

        async def dead() -> bool:
            return len(await letters()) == 1

        await wait_until(dead, what="bob's sign-up rejected")
        listed = run_conveyor(
            ["dlq", "list", "--stream", TOPIC, "--json", "--target", f"127.0.0.1:{port}"], env
        )
        entry = listed.stdout.split('"entry_id": "', 1)[1].split('"', 1)[0]
        target = f"127.0.0.1:{port}"
        args = ["--stream", TOPIC, "--id", entry, "--reason", "not an address"]
        resolved = run_conveyor(["dlq", "resolve", *args, "--target", target], env)
        assert resolved.returncode == 0, resolved.stderr

        replay = run_conveyor(["relay", "replay", "--schema", schema, "--since", "2h"], env)
        assert replay.returncode == 0, replay.stderr
        stream = wire.Keys(TOPIC, key_prefix).events
        await wait_until(lambda: settled(r, stream), what="the replayed entry handled by the group")
        states = sorted(await letters())
        assert states == ["resolved"], states
    finally:
        await r.aclose()
        stop(consumer)
        stop(relay)
