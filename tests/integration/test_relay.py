"""The relay publishes every committed outbox event to its stream (BRIEF guarantee 2)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import uuid

import asyncpg

from conveyor import wire
from conveyor.identity.v1 import events_pb2
from conveyor.v1 import event_pb2
from relay import enqueue
from tests.integration.conftest import Case
from tests.integration.relay_support import (
    drained,
    fill,
    running_relay,
    stream_ids,
    unpublished,
)
from tests.processes import run_conveyor, start_conveyor, stop, wait_until


async def has(case: Case, wanted: set[uuid.UUID]) -> bool:
    return wanted <= set(await stream_ids(case.redis, case.prefix))


async def outbox_rows(case: Case) -> int:
    return int(await case.pg.fetchval(f"SELECT count(*) FROM {case.schema}.outbox"))


async def test_every_committed_event_reaches_its_stream_with_the_wire_fields(case: Case) -> None:
    ids = await fill(case.pg, case.schema, 2500)
    async with running_relay(**case.relay_settings()):
        await wait_until(lambda: has(case, set(ids)), what="every event in the stream")
    assert await stream_ids(case.redis, case.prefix) == ids, "each once, in outbox order"
    assert await drained(case.pg, case.schema)
    _id, fields = (await case.redis.xrange(wire.Keys("identity", case.prefix).events, count=1))[0]
    assert fields[wire.F_VERSION] == wire.LAYOUT_VERSION
    assert fields[wire.F_EVENT_TYPE] == b"conveyor.identity.v1.UserRegistered"
    assert fields[wire.F_AGGREGATE_ID] == b"u0"
    assert event_pb2.Event.FromString(fields[wire.F_EVENT]).id == str(ids[0])


async def test_rows_committing_out_of_id_order_are_still_published(case: Case) -> None:
    slow = await asyncpg.connect(case.database_url)
    try:
        tx_a = slow.transaction()
        await tx_a.start()
        id_a = await enqueue(
            slow,
            events_pb2.UserRegistered(user_id="a"),
            aggregate_type="user",
            aggregate_id="a",
            topic="identity",
            schema=case.schema,
        )
        async with case.pg.transaction():
            id_b = await enqueue(
                case.pg,
                events_pb2.UserRegistered(user_id="b"),
                aggregate_type="user",
                aggregate_id="b",
                topic="identity",
                schema=case.schema,
            )
        async with running_relay(**case.relay_settings(poll_interval=0.05)):
            await wait_until(lambda: has(case, {id_b}), what="B published while A is open")
            assert not await has(case, {id_a})
            await tx_a.commit()
            await wait_until(lambda: has(case, {id_a, id_b}), what="A published after its commit")
    finally:
        await slow.close()
    rows = await case.pg.fetch(f"SELECT event_id FROM {case.schema}.outbox ORDER BY id")
    assert [r["event_id"] for r in rows] == [id_a, id_b], "A holds the lower id"


async def test_notify_wakes_the_relay_long_before_its_poll(case: Case) -> None:
    async with running_relay(**case.relay_settings(poll_interval=3600)):
        await asyncio.sleep(0.3)  # the relay's first, empty claim is behind it
        (event_id,) = await fill(case.pg, case.schema, 1)
        await wait_until(lambda: has(case, {event_id}), timeout=10, what="NOTIFY wake-up")


async def test_retention_keeps_published_rows_and_cleanup_removes_old_ones(case: Case) -> None:
    await fill(case.pg, case.schema, 30)
    async with running_relay(**case.relay_settings(retention=3600)):
        await wait_until(lambda: drained(case.pg, case.schema), what="outbox drained")
    assert await outbox_rows(case) == 30, "kept for replay"
    await case.pg.execute(
        f"UPDATE {case.schema}.outbox SET published_at = now() - interval '2 hours' "
        f"WHERE id IN (SELECT id FROM {case.schema}.outbox ORDER BY id LIMIT 10)"
    )

    async def cleaned() -> bool:
        return await outbox_rows(case) == 20

    async with running_relay(**case.relay_settings(retention=3600)):
        await wait_until(cleaned, what="rows past retention deleted")


async def test_zero_retention_deletes_rows_as_they_are_published(case: Case) -> None:
    ids = await fill(case.pg, case.schema, 100)

    async def empty() -> bool:
        return await outbox_rows(case) == 0

    async with running_relay(**case.relay_settings(retention=0)):
        await wait_until(empty, what="rows deleted")
    assert await stream_ids(case.redis, case.prefix) == ids


async def test_three_relay_processes_lose_none_of_20000_events(case: Case) -> None:
    args = ["relay", "--batch-size", "200", "--poll-interval", "0.05"]
    procs = [start_conveyor(args, case.env) for _ in range(3)]
    try:
        ids = await fill(case.pg, case.schema, 20_000, chunk=500)  # while the relays run
        await wait_until(lambda: drained(case.pg, case.schema), timeout=120, what="drained")
    finally:
        outputs = [stop(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    published = await stream_ids(case.redis, case.prefix)
    assert set(published) == set(ids), "no event lost"
    assert len(published) == len(ids), "no duplicates without a crash"
    assert [o.count("relay stopped") for o in outputs] == [1, 1, 1], outputs


async def test_relay_killed_mid_batch_loses_nothing_after_restart(case: Case) -> None:
    ids = await fill(case.pg, case.schema, 20_000)
    args = ["relay", "--batch-size", "500"]

    async def some_published() -> bool:
        return await case.redis.xlen(wire.Keys("identity", case.prefix).events) >= 3000

    proc = start_conveyor(args, case.env)
    try:
        await wait_until(some_published, timeout=60, interval=0.005, what="a first part out")
    finally:
        stop(proc, signal.SIGKILL)
    assert await unpublished(case.pg, case.schema) > 0, "killed before the end"
    proc = start_conveyor(args, case.env)
    try:
        await wait_until(lambda: drained(case.pg, case.schema), timeout=60, what="drained")
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    published = await stream_ids(case.redis, case.prefix)
    assert set(published) == set(ids), "every event reached the stream"
    assert len(published) - len(ids) <= 2 * 500, "duplicates only from the batches in flight"


def test_relay_refuses_a_schema_that_is_not_migrated(
    schema: str, database_url: str, redis_url: str
) -> None:
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_GRPC_ADDR": "127.0.0.1:0",  # the default port may be another process's
    }
    result = run_conveyor(["relay", "--schema", schema], env)
    assert result.returncode == 6
    assert f"conveyor migrate up --schema {schema}" in result.stderr


def test_relay_rejects_bad_flags_with_the_usage_exit_code(database_url: str) -> None:
    env = {"CONVEYOR_DATABASE_URL": database_url}
    bad_schema = run_conveyor(["relay", "--schema", "Bad-Name"], env)
    assert bad_schema.returncode == 2
    assert "invalid schema name 'Bad-Name'" in bad_schema.stderr
    bad_retention = run_conveyor(["relay", "--retention", "forever"], env)
    assert bad_retention.returncode == 2
    assert "invalid --retention 'forever'" in bad_retention.stderr


async def test_replay_republishes_the_kept_window(case: Case) -> None:
    old = await fill(case.pg, case.schema, 40)
    recent = await fill(case.pg, case.schema, 60)
    async with running_relay(**case.relay_settings()):
        await wait_until(lambda: drained(case.pg, case.schema), what="outbox drained")
    await case.pg.execute(
        f"UPDATE {case.schema}.outbox SET published_at = now() - interval '3 hours' "
        "WHERE event_id = ANY($1::uuid[])",
        old,
    )
    await case.redis.delete(wire.Keys("identity", case.prefix).events)  # Redis lost the stream
    base = ["relay", "replay", "--since", "1h", "--json"]
    narrow = {"COLUMNS": "80"}

    dry = run_conveyor([*base, "--dry-run"], case.env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["matched"] == 60
    assert await stream_ids(case.redis, case.prefix) == []

    done = run_conveyor(base, case.env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["matched"], report["published"]) == (60, 60)
    assert await stream_ids(case.redis, case.prefix) == recent

    other_topic = run_conveyor([*base, "--topic", "billing"], case.env)
    assert json.loads(other_topic.stdout)["matched"] == 0
    # As text, piped at 80 columns: no blank line first, the time whole on the first line.
    text = run_conveyor(["relay", "replay", "--since", "1h", "--dry-run"], case.env | narrow)
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0]
    assert first.startswith(f"would republish 60 events of schema {case.schema} published since ")
    assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*\+00:00$", first), first
