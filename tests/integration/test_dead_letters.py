"""Failing and poison events leave their stream for the dead-letter stream (guarantees 4 and 6)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest

from consumers import EventContext, Reject, Router
from consumers.streams import TopicStreams
from conveyor import redis_client, wire
from conveyor.identity.v1 import events_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    Meters,
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    publish,
    running_consumer,
)
from tests.processes import wait_until


def keys(case: Case) -> wire.Keys:
    return wire.Keys("identity", case.prefix)


async def dead_letters(case: Case) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in await case.redis.xrange(keys(case).dlq)]


async def dlq_length(case: Case, n: int) -> bool:
    return await case.redis.xlen(keys(case).dlq) >= n


async def settled(case: Case, group: str = "g") -> bool:
    """The group has read up to the stream's last entry and acknowledged everything (the
    housekeeper may already have trimmed what every group acknowledged)."""
    stream = keys(case).events
    last = await case.redis.xrevrange(stream, count=1)
    for info in await case.redis.xinfo_groups(stream):
        if info["name"].decode() == group:
            read_all = not last or info["last-delivered-id"] == last[0][0]
            return read_all and info["pending"] == 0
    return False


async def catalog(case: Case) -> list[Any]:
    return await case.pg.fetch(
        "SELECT * FROM conveyor.dead_letters WHERE dlq_stream = $1 ORDER BY id", keys(case).dlq
    )


async def test_always_failing_event_is_dead_lettered_after_exactly_max_attempts(
    case: Case,
) -> None:
    await create_effects(case.pg, case.schema)
    attempts: list[int] = []

    def fail(ctx: EventContext) -> None:
        if ctx.aggregate_id == "agg7":
            attempts.append(ctx.attempt)
            raise RuntimeError(f"cannot handle {ctx.event_id}")

    ids = await publish(case.redis, case.prefix, 40, aggregates=50)  # agg7 is event 7 alone
    router = effect_router(case.schema, fail=fail)
    async with running_consumer(router, **consumer_settings(case, max_attempts=3)) as consumer:
        await wait_until(lambda: dlq_length(case, 1), what="the dead letter")
        await wait_until(lambda: settled(case), what="pending list drained")
    assert sorted(attempts) == [1, 2, 3], "exactly max_attempts attempts, counted from 1"
    (dead,) = await dead_letters(case)
    original = (await case.redis.xrange(keys(case).events, min="-", max="+"))[7]
    assert dead[wire.F_EVENT] == original[1][wire.F_EVENT], "the original event bytes"
    assert dead[wire.F_EVENT_ID].decode() == ids[7]
    assert dead[wire.DL_SOURCE_STREAM].decode() == keys(case).events
    assert dead[wire.DL_SOURCE_ENTRY] == original[0]
    assert dead[wire.DL_GROUP] == b"g"
    assert dead[wire.DL_CONSUMER].decode() == consumer.settings.consumer
    assert dead[wire.DL_ATTEMPTS] == b"3"
    assert dead[wire.DL_REASON] == b"max_attempts"
    assert dead[wire.DL_ERROR_CLASS] == b"RuntimeError"
    assert dead[wire.DL_ERROR].decode() == f"cannot handle {ids[7]}"
    assert b"RuntimeError: cannot handle" in dead[wire.DL_TRACEBACK]
    assert int(dead[wire.DL_FIRST_FAILED]) < int(dead[wire.DL_LAST_FAILED])
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts) == set(ids) - {ids[7]}, "its neighbours were applied"
    assert set(counts.values()) == {1}, "once each"
    (row,) = await catalog(case)
    assert (row["state"], row["reason"], row["attempts"]) == ("open", "max_attempts", 3)
    assert str(row["event_id"]) == ids[7]
    assert row["consumer_group"] == "g"


async def test_event_failing_twice_then_succeeding_is_applied_once(case: Case) -> None:
    await create_effects(case.pg, case.schema)

    def fail(ctx: EventContext) -> None:
        if ctx.aggregate_id == "agg3" and ctx.attempt <= 2:
            raise ConnectionResetError("flaky downstream")

    meters = Meters()
    ids = await publish(case.redis, case.prefix, 20)
    router = effect_router(case.schema, fail=fail)
    async with running_consumer(router, meters.metrics, **consumer_settings(case)):

        async def all_applied() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == len(ids)

        await wait_until(all_applied, what="all applied")
        await wait_until(lambda: settled(case), what="pending list drained")
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts.values()) == {1}
    rows = await case.pg.fetch(
        f"SELECT attempt FROM {case.schema}.effects WHERE aggregate_id = 'agg3'"
    )
    assert [r["attempt"] for r in rows] == [3]
    assert await dead_letters(case) == []
    assert meters.total("events_retried") == 2


def _entry(event_id: str, ev: bytes, **extra: bytes) -> dict[bytes, bytes]:
    return {wire.F_VERSION: b"1", wire.F_EVENT_ID: event_id.encode(), wire.F_EVENT: ev} | {
        k.encode(): v for k, v in extra.items()
    }


async def test_poison_entries_go_to_the_dead_letter_stream_at_once(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    events = keys(case).events
    good = await publish(case.redis, case.prefix, 1)
    await case.redis.xadd(events, _entry(str(uuid.uuid4()), b"\xff\xfe not protobuf"))
    await publish(case.redis, case.prefix, 1, make=lambda i: events_pb2.EmailVerified(user_id="x"))
    await publish(
        case.redis,
        case.prefix,
        1,
        make=lambda i: events_pb2.UserRegistered(display_name="x" * 5000),
    )
    await case.redis.xadd(events, {wire.F_EVENT_ID: str(uuid.uuid4()).encode(), b"other": b"1"})
    await publish(
        case.redis, case.prefix, 1, make=lambda i: events_pb2.UserRegistered(user_id="no")
    )
    rejected = (await case.redis.xrange(events))[-1][1][wire.F_EVENT_ID].decode()

    router = effect_router(case.schema, fail=_reject_user("no"))
    async with running_consumer(router, **consumer_settings(case, max_event_bytes=2000)):
        await wait_until(lambda: dlq_length(case, 5), what="five dead letters")
        await wait_until(lambda: settled(case), what="pending list drained")
    reasons = {d[wire.DL_REASON].decode(): d for d in await dead_letters(case)}
    assert set(reasons) == {"decode_error", "unknown_type", "oversized", "validation", "rejected"}
    assert all(d[wire.DL_ATTEMPTS] == b"1" for d in reasons.values()), "no retries"
    assert reasons["rejected"][wire.F_EVENT_ID].decode() == rejected
    assert reasons["rejected"][wire.DL_ERROR] == b"user no is banned"
    assert b"lacks required fields ['ev']" in reasons["validation"][wire.DL_ERROR]
    assert reasons["decode_error"][wire.F_EVENT] == b"\xff\xfe not protobuf", "kept verbatim"
    assert reasons["unknown_type"][wire.F_EVENT_TYPE] == b"conveyor.identity.v1.EmailVerified"
    assert list(await effect_counts(case.pg, case.schema, "g")) == good
    assert {r["reason"] for r in await catalog(case)} == set(reasons)


def _reject_user(user: str) -> Any:
    def fail(ctx: EventContext) -> None:
        if ctx.envelope.data.value and user.encode() in ctx.envelope.data.value:
            raise Reject(f"user {user} is banned")

    return fail


async def test_unknown_types_can_be_skipped_by_policy_and_are_counted(case: Case) -> None:
    router = Router(unknown_type="skip")

    @router.handler(events_pb2.UserDeleted, topic="identity")
    async def deleted(event: Any, ctx: EventContext) -> None:
        return None

    meters = Meters()
    ids = await publish(case.redis, case.prefix, 5)
    async with running_consumer(router, meters.metrics, **consumer_settings(case)):
        await wait_until(lambda: settled(case), what="acknowledged")
    rows = await case.pg.fetch(
        f"SELECT event_id::text, processing_result FROM {case.schema}.event_ledger"
    )
    assert {r[0]: r[1] for r in rows} == dict.fromkeys(ids, "skipped")
    assert meters.total("events_processed", result="skipped") == 5
    assert await dead_letters(case) == []


async def test_entry_deleted_while_pending_is_counted_and_never_handled(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 10)
    events = keys(case).events
    await case.redis.xgroup_create(events, "g", id="0")
    claimed = await case.redis.xreadgroup("g", "gone", {events: ">"}, count=10)
    trimmed = claimed[0][1][4][0]
    await case.redis.xdel(events, trimmed)
    meters = Meters()
    router = effect_router(case.schema)
    with caplog.at_level(logging.WARNING):
        async with running_consumer(
            router, meters.metrics, **consumer_settings(case, claim_idle=0.2)
        ):
            await wait_until(lambda: settled(case), what="pending list drained")
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts) == set(ids) - {ids[4]}, "the deleted entry was never handled"
    assert meters.total("events_deleted_pending") == 1
    assert trimmed.decode() in caplog.text


async def test_batch_handler_failure_isolates_the_failing_event(case: Case) -> None:
    router = Router()
    calls: list[int] = []

    @router.batch_handler(events_pb2.UserRegistered, topic="identity")
    async def many(items: list[tuple[Any, EventContext]], db: Any) -> None:
        calls.append(len(items))
        if any(event.user_id == "u13" for event, _ in items):
            raise ValueError("u13 is broken")
        await db.executemany(
            f"INSERT INTO {case.schema}.effects (consumer_group, event_id, attempt) "
            "VALUES ($1, $2, $3)",
            [("g", uuid.UUID(ctx.event_id), ctx.attempt) for _, ctx in items],
        )

    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 32)
    async with running_consumer(router, **consumer_settings(case, max_attempts=2, partitions=1)):
        await wait_until(lambda: dlq_length(case, 1), what="the dead letter")
        await wait_until(lambda: settled(case), what="pending list drained")
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts) == set(ids) - {ids[13]}
    assert set(counts.values()) == {1}
    assert 1 in calls, "halved down to the single failing event"
    (dead,) = await dead_letters(case)
    assert dead[wire.F_EVENT_ID].decode() == ids[13]


async def test_the_same_event_twice_in_the_stream_is_applied_once(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    meters = Meters()
    ids = await publish(case.redis, case.prefix, 5)
    for _id, fields in await case.redis.xrange(keys(case).events):
        await case.redis.xadd(keys(case).events, fields)  # a relay that crashed before COMMIT
    async with running_consumer(
        effect_router(case.schema), meters.metrics, **consumer_settings(case)
    ):
        await wait_until(lambda: settled(case), what="acknowledged")
        assert await case.redis.xlen(keys(case).events) == 10
    counts = await effect_counts(case.pg, case.schema, "g")
    assert counts == dict.fromkeys(ids, 1)
    assert meters.total("events_duplicate") == 5


async def test_reclaimed_entries_keep_their_delivery_counts_among_many_pending(
    case: Case,
) -> None:
    """A member holding hundreds of pending entries (waiting retries, batches in flight) between
    the ids it reclaims still gives each reclaimed entry its true delivery count as its attempt,
    so the attempts cap catches an event that keeps crashing its consumers."""
    r = redis_client.connect(case.redis_url)
    try:
        stream = keys(case).events
        dead = TopicStreams(r, keys(case), "g", "dead")
        live = TopicStreams(r, keys(case), "g", "live")
        await dead.ensure_groups()
        await publish(case.redis, case.prefix, 1)
        await dead.read(stream, 1, None)  # the dead member holds the first entry...
        await publish(case.redis, case.prefix, 300)
        await live.read(stream, 300, None)  # ...the live one 300 after it...
        await publish(case.redis, case.prefix, 1)
        await dead.read(stream, 1, None)  # ...and the dead one the last entry too
        ids = [e for e, _ in await r.xrange(stream)]
        for entry in (ids[0], ids[-1]):
            for _ in range(3):  # delivered 4 times each, by crashing members
                await r.xclaim(stream, "g", "dead", 0, [entry])
        await asyncio.sleep(0.3)
        await r.xclaim(stream, "g", "live", 0, ids[1:-1], justid=True)  # the live ones: fresh
        claimed, _, _ = await live.autoclaim(stream, 200, 100)
        assert sorted(e.entry_id for e in claimed) == sorted(i.decode() for i in (ids[0], ids[-1]))
        assert {e.attempt for e in claimed} == {5}  # 4 earlier deliveries + this one
    finally:
        await r.aclose()
