"""The relay publishes every committed outbox event to its stream (BRIEF guarantee 2)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from typing import Any

import asyncpg
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from conveyor.v1 import event_pb2

from relay import enqueue
from tests.integration.relay_support import drained, fill, running_relay, stream_ids, unpublished
from tests.processes import run_conveyor, start_conveyor, stop, wait_until


async def test_every_committed_event_reaches_its_stream_with_the_wire_fields(
    pg: asyncpg.Connection, migrated_schema: str, database_url: str, redis_url: str,
    key_prefix: str, redis_client: Any,
) -> None:  # fmt: skip
    ids = await fill(pg, migrated_schema, 2500)
    async with running_relay(database_url=database_url, redis_url=redis_url,
                             schemas=(migrated_schema,), key_prefix=key_prefix):  # fmt: skip
        await wait_until(lambda: drained(pg, migrated_schema), what="outbox drained")

        async def all_in() -> bool:
            return len(await stream_ids(redis_client, key_prefix)) >= len(ids)

        await wait_until(all_in, what="entries in the stream")
    assert await stream_ids(redis_client, key_prefix) == ids, "each once, in outbox order"
    _id, fields = (await redis_client.xrange(wire.Keys("identity", key_prefix).events, count=1))[0]
    assert fields[wire.F_VERSION] == wire.LAYOUT_VERSION
    assert fields[wire.F_EVENT_TYPE] == b"conveyor.identity.v1.UserRegistered"
    assert fields[wire.F_AGGREGATE_ID] == b"u0"
    event = event_pb2.Event.FromString(fields[wire.F_EVENT])
    assert event.id == str(ids[0])


async def test_rows_committing_out_of_id_order_are_still_published(
    pg: asyncpg.Connection, migrated_schema: str, database_url: str, redis_url: str,
    key_prefix: str, redis_client: Any,
) -> None:  # fmt: skip
    s = migrated_schema
    slow = await asyncpg.connect(database_url)
    try:
        tx_a = slow.transaction()
        await tx_a.start()
        id_a = await enqueue(slow, events_pb2.UserRegistered(user_id="a"), aggregate_type="user",
                             aggregate_id="a", topic="identity", schema=s)  # fmt: skip
        async with pg.transaction():
            id_b = await enqueue(pg, events_pb2.UserRegistered(user_id="b"), aggregate_type="user",
                                 aggregate_id="b", topic="identity", schema=s)  # fmt: skip
        ids = await pg.fetch(f"SELECT id, event_id FROM {s}.outbox ORDER BY id")
        assert [r["event_id"] for r in ids] == [id_b], "A's row is not visible yet"
        async with running_relay(database_url=database_url, redis_url=redis_url, schemas=(s,),
                                 key_prefix=key_prefix, poll_interval=0.05):  # fmt: skip
            await wait_until(lambda: _has(redis_client, key_prefix, {id_b}), what="B published")
            await tx_a.commit()
            await wait_until(lambda: _has(redis_client, key_prefix, {id_a, id_b}), what="A too")
    finally:
        await slow.close()
    row_ids = await pg.fetch(f"SELECT id, event_id FROM {s}.outbox ORDER BY id")
    assert [r["event_id"] for r in row_ids] == [id_a, id_b], "A took the lower id"


async def _has(r: Any, prefix: str, wanted: set[uuid.UUID]) -> bool:
    return wanted <= set(await stream_ids(r, prefix))


async def test_notify_wakes_the_relay_long_before_its_poll(
    pg: asyncpg.Connection, migrated_schema: str, database_url: str, redis_url: str,
    key_prefix: str, redis_client: Any,
) -> None:  # fmt: skip
    async with running_relay(database_url=database_url, redis_url=redis_url,
                             schemas=(migrated_schema,), key_prefix=key_prefix,
                             poll_interval=3600):  # fmt: skip
        await asyncio.sleep(0.3)  # the relay's first, empty claim is behind it
        (event_id,) = await fill(pg, migrated_schema, 1)
        await wait_until(lambda: _has(redis_client, key_prefix, {event_id}), timeout=10,
                         what="NOTIFY to wake the relay")  # fmt: skip


async def test_retention_keeps_published_rows_and_cleanup_removes_old_ones(
    pg: asyncpg.Connection, migrated_schema: str, database_url: str, redis_url: str,
    key_prefix: str,
) -> None:  # fmt: skip
    s = migrated_schema
    await fill(pg, s, 30)
    async with running_relay(database_url=database_url, redis_url=redis_url, schemas=(s,),
                             key_prefix=key_prefix, retention=3600):  # fmt: skip
        await wait_until(lambda: drained(pg, s), what="outbox drained")
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.outbox") == 30, "kept for replay"
    await pg.execute(f"UPDATE {s}.outbox SET published_at = now() - interval '2 hours' "
                     f"WHERE id IN (SELECT id FROM {s}.outbox ORDER BY id LIMIT 10)")  # fmt: skip
    async with running_relay(database_url=database_url, redis_url=redis_url, schemas=(s,),
                             key_prefix=key_prefix, retention=3600):  # fmt: skip

        async def cleaned() -> bool:
            return await pg.fetchval(f"SELECT count(*) FROM {s}.outbox") == 20

        await wait_until(cleaned, what="rows past retention deleted")


async def test_zero_retention_deletes_rows_as_they_are_published(
    pg: asyncpg.Connection, migrated_schema: str, database_url: str, redis_url: str,
    key_prefix: str, redis_client: Any,
) -> None:  # fmt: skip
    ids = await fill(pg, migrated_schema, 100)
    async with running_relay(database_url=database_url, redis_url=redis_url,
                             schemas=(migrated_schema,), key_prefix=key_prefix, retention=0):  # fmt: skip

        async def empty() -> bool:
            return await pg.fetchval(f"SELECT count(*) FROM {migrated_schema}.outbox") == 0

        await wait_until(empty, what="rows deleted")
    assert await stream_ids(redis_client, key_prefix) == ids


def _relay_env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    return {"CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_REDIS_URL": redis_url,
            "CONVEYOR_KEY_PREFIX": prefix, "CONVEYOR_LOG_LEVEL": "info"}  # fmt: skip


async def test_three_relay_processes_lose_none_of_20000_events(
    pg: asyncpg.Connection, migrated_schema: str, database_url: str, redis_url: str,
    key_prefix: str, redis_client: Any,
) -> None:  # fmt: skip
    s = migrated_schema
    env = _relay_env(database_url, redis_url, key_prefix)
    args = ["relay", "--schema", s, "--batch-size", "200", "--poll-interval", "0.05"]
    procs = [start_conveyor(args, env) for _ in range(3)]
    try:
        ids = await fill(pg, s, 20_000, chunk=500)  # produced while the relays run
        await wait_until(lambda: drained(pg, s), timeout=120, what="outbox drained")
    finally:
        outputs = [stop(p) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    published = await stream_ids(redis_client, key_prefix)
    assert set(published) == set(ids), "no event lost"
    assert len(published) == len(ids), "no duplicates without a crash"
    per_relay = [o.count("relay stopped") for o in outputs]
    assert per_relay == [1, 1, 1], outputs


async def test_relay_killed_mid_batch_loses_nothing_after_restart(
    pg: asyncpg.Connection, migrated_schema: str, database_url: str, redis_url: str,
    key_prefix: str, redis_client: Any,
) -> None:  # fmt: skip
    s = migrated_schema
    ids = await fill(pg, s, 20_000)
    env = _relay_env(database_url, redis_url, key_prefix)
    args = ["relay", "--schema", s, "--batch-size", "500"]
    proc = start_conveyor(args, env)

    async def some_published() -> bool:
        return len(await stream_ids(redis_client, key_prefix)) >= 3000

    try:
        await wait_until(some_published, timeout=60, interval=0.005, what="a first part out")
    finally:
        stop(proc, signal.SIGKILL)
    assert await unpublished(pg, s) > 0, "killed before the end"
    proc = start_conveyor(args, env)
    try:
        await wait_until(lambda: drained(pg, s), timeout=60, what="outbox drained")
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    published = await stream_ids(redis_client, key_prefix)
    assert set(published) == set(ids), "every event reached the stream"
    assert len(published) - len(ids) <= 2 * 500, "duplicates only from the batches in flight"


def test_relay_refuses_a_schema_that_is_not_migrated(
    schema: str, database_url: str, redis_url: str, key_prefix: str
) -> None:
    result = run_conveyor(["relay", "--schema", schema],
                          _relay_env(database_url, redis_url, key_prefix))  # fmt: skip
    assert result.returncode == 1
    assert f"conveyor migrate up --schema {schema}" in result.stderr


def test_relay_rejects_bad_flags_with_usage_exit_code(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    env = _relay_env(database_url, redis_url, key_prefix)
    bad_schema = run_conveyor(["relay", "--schema", "Bad-Name"], env)
    assert bad_schema.returncode == 2
    assert "invalid schema name 'Bad-Name'" in bad_schema.stderr
    bad_retention = run_conveyor(["relay", "--retention", "forever"], env)
    assert bad_retention.returncode == 2
    assert "invalid duration 'forever'" in bad_retention.stderr


async def test_replay_republishes_the_kept_window(
    pg: asyncpg.Connection, migrated_schema: str, database_url: str, redis_url: str,
    key_prefix: str, redis_client: Any,
) -> None:  # fmt: skip
    s = migrated_schema
    old = await fill(pg, s, 40)
    recent = await fill(pg, s, 60)
    async with running_relay(database_url=database_url, redis_url=redis_url, schemas=(s,),
                             key_prefix=key_prefix):  # fmt: skip
        await wait_until(lambda: drained(pg, s), what="outbox drained")
    await pg.execute(f"UPDATE {s}.outbox SET published_at = now() - interval '3 hours' "
                     "WHERE event_id = ANY($1::uuid[])", old)  # fmt: skip
    await redis_client.delete(wire.Keys("identity", key_prefix).events)  # Redis lost the stream
    env = _relay_env(database_url, redis_url, key_prefix)
    base = ["relay", "replay", "--schema", s, "--since", "1h", "--json"]

    dry = run_conveyor([*base, "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["matched"] == 60
    assert await stream_ids(redis_client, key_prefix) == []

    done = run_conveyor(base, env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["matched"], report["published"]) == (60, 60)
    assert await stream_ids(redis_client, key_prefix) == recent

    other_topic = run_conveyor([*base, "--topic", "billing"], env)
    assert json.loads(other_topic.stdout)["matched"] == 0
