"""Reprocessing dead letters (guarantee 5): once, to the failing group only, audited, cancellable
between entries, idempotent under a key; against the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from admin.catalog import Progress
from admin.catalog import dead_letters as catalog
from admin.catalog.registry import group_ledgers
from admin.catalog.reprocess import check_reprocessable
from admin.catalog.requests import request_fingerprint
from admin.errors import FailedPrecondition, InvalidInput
from conveyor import wire
from tests.integration.reprocess_support import (
    Fixture,
    fixture_catalog_at_head,  # noqa: F401 - a pytest fixture
    fixture_conveyor_redis,  # noqa: F401 - a pytest fixture
    fixture_f,  # noqa: F401 - a pytest fixture
    fixture_pool,  # noqa: F401 - a pytest fixture
    fixture_topic,  # noqa: F401 - a pytest fixture
)


async def test_requeue_goes_to_the_failing_groups_retry_stream_only(f: Fixture) -> None:
    (billing,) = await f.dead_letters(1, group="billing")
    (mailer,) = await f.dead_letters(1, group="mailer")  # at-least-once: no ledger to consult
    seen: list[Progress] = []

    async def report(p: Progress) -> None:
        seen.append(p)

    result = await f.run([billing, mailer], on_progress=report)

    assert result == Progress(done=2, total=2, requeued=2, finished=True)
    assert [(p.done, p.finished) for p in seen] == [(1, False), (2, False), (2, True)]
    for record, group in ((billing, "billing"), (mailer, "mailer")):
        dead = (await f.case.redis.xrange(f.keys.dlq, record.entry_id, record.entry_id))[0][1]
        original = {k: v for k, v in dead.items() if not k.startswith(b"dl.")}
        retries = await f.retries(group)
        assert len(retries) == 1, f"one retry entry for {group}"
        assert retries[0][1] == original | {wire.RT_DEAD_LETTER: record.entry_id.encode()}
        assert not any(k.startswith(b"dl.") for k in retries[0][1])
    assert await f.case.redis.xlen(f.keys.events) == 2, "nothing re-sent to the topic stream"
    assert await f.states() == {billing.entry_id: "reprocessing", mailer.entry_id: "reprocessing"}
    rows = await f.audit_rows()
    assert [(r["action"], list(r["target_ids"]), r["outcome"]) for r in rows] == [
        ("reprocess", [billing.entry_id], "requeued"),
        ("reprocess", [mailer.entry_id], "requeued"),
    ]
    assert f'"retry_entry_id": "{(await f.retries())[0][0]}"' in rows[0]["detail"]


async def test_event_already_applied_by_its_group_is_resolved_as_duplicate(f: Fixture) -> None:
    applied, failed, fresh = await f.dead_letters(3)
    await f.mark_applied(applied, "success")
    await f.mark_applied(failed, "failure")  # a failure row is not an applied event

    result = await f.run([applied, failed, fresh])

    assert result == Progress(done=3, total=3, requeued=2, duplicates=1, finished=True)
    sent = {fields[wire.RT_DEAD_LETTER].decode() for _i, fields in await f.retries()}
    assert sent == {failed.entry_id, fresh.entry_id}
    (after,) = await f.records([applied.entry_id])
    assert (after.state, after.resolution, after.resolved_by) == (
        "resolved",
        "duplicate: already applied by billing",
        f.principal,
    )
    outcomes = {r["target_ids"][0]: r["outcome"] for r in await f.audit_rows()}
    assert outcomes[applied.entry_id] == "duplicate"


async def test_dry_run_counts_and_changes_nothing(f: Fixture) -> None:
    fresh, applied, resolved, busy = await f.dead_letters(4)
    await f.mark_applied(applied)
    async with f.pool.acquire() as conn:
        await catalog.resolve(conn, [resolved.id], reason="x", principal="p")
        await catalog.set_state(conn, [busy.id], "reprocessing", expect=["open"])
    records = await f.records([r.entry_id for r in (fresh, applied, resolved, busy)])
    before = await f.states()

    result = await f.run(records, dry_run=True, idempotency_key=f.key("dry"))

    assert replace(result, skips=()) == Progress(
        done=4, total=4, requeued=1, duplicates=1, skipped=2, finished=True
    )
    assert [(s.entry_id, s.reason, s.detail) for s in result.skips] == [
        (resolved.entry_id, "resolved", "resolved by p: x"),
        (busy.entry_id, "reprocessing", "already requeued; group billing has not applied it yet"),
    ]
    assert await f.states() == before
    assert await f.retries() == []
    assert await f.audit_rows() == []
    assert (
        await f.pool.fetchval(
            "SELECT count(*) FROM conveyor.reprocess_requests WHERE idempotency_key = $1",
            f.key("dry"),
        )
        == 0
    )


async def test_same_idempotency_key_twice_gives_the_same_answer_and_one_requeue(
    f: Fixture,
) -> None:
    records = await f.dead_letters(3)
    digest = request_fingerprint(f.topic, [r.entry_id for r in records], None, f.case.prefix)

    first = await f.run(records, idempotency_key=f.key("k"), request_hash=digest)
    second = await f.run(records, idempotency_key=f.key("k"), request_hash=digest)

    assert first == Progress(done=3, total=3, requeued=3, finished=True)
    assert second == replace(first, replayed=True), "the first answer, marked as a replay"
    assert len(await f.retries()) == 3
    assert len(await f.audit_rows()) == 3
    row = await f.pool.fetchrow(
        "SELECT principal, outcome::text, finished_at FROM conveyor.reprocess_requests "
        "WHERE idempotency_key = $1",
        f.key("k"),
    )
    assert row["principal"] == f.principal and row["finished_at"] is not None
    assert '"requeued": 3' in row["outcome"]


async def test_a_used_key_refuses_a_different_request(f: Fixture) -> None:
    one, two = await f.dead_letters(2)
    await f.run(
        [one],
        idempotency_key=f.key("k"),
        request_hash=request_fingerprint(f.topic, [one.entry_id], None, f.case.prefix),
    )

    other = request_fingerprint(f.topic, [two.entry_id], None, f.case.prefix)
    with pytest.raises(InvalidInput) as caught:
        await f.run([two], idempotency_key=f.key("k"), request_hash=other)
    assert caught.value.field == "idempotency_key"
    same = request_fingerprint(f.topic, [one.entry_id], None, f.case.prefix)
    with pytest.raises(InvalidInput, match="different reprocess request"):
        await f.run([one], idempotency_key=f.key("k"), request_hash=same, principal="mallory")
    elsewhere = request_fingerprint(f.topic, [one.entry_id], None, "another-deployment")
    with pytest.raises(InvalidInput, match="different reprocess request"):
        await f.run([one], idempotency_key=f.key("k"), request_hash=elsewhere)
    assert len(await f.retries()) == 1
    assert (await f.states())[two.entry_id] == "open"


@pytest.mark.parametrize("keyed", [True, False], ids=["same-key", "no-key"])
async def test_concurrent_calls_requeue_each_dead_letter_once(f: Fixture, keyed: bool) -> None:
    records = await f.dead_letters(30)
    key = f.key("double-click") if keyed else None

    results = await asyncio.gather(*(f.run(records, idempotency_key=key) for _ in range(3)))

    sent = [fields[wire.RT_DEAD_LETTER].decode() for _i, fields in await f.retries()]
    assert sorted(sent) == sorted(r.entry_id for r in records), "each once"
    if keyed:  # the calls wait for each other: the later ones get the first one's answer
        first = Progress(done=30, total=30, requeued=30, finished=True)
        assert sorted(results, key=lambda r: r.replayed) == [
            first,
            replace(first, replayed=True),
            replace(first, replayed=True),
        ]
    else:  # the calls interleave: each entry goes to whichever call moves it first
        assert sum(r.requeued for r in results) == 30
        assert all(r.requeued + r.skipped == 30 for r in results)
    assert set((await f.states()).values()) == {"reprocessing"}
    assert len(await f.audit_rows()) == 30


async def test_check_reprocessable_names_resolved_entries(f: Fixture) -> None:
    open_, resolved, busy, done = await f.dead_letters(4)
    async with f.pool.acquire() as conn:
        await catalog.resolve(conn, [resolved.id], reason="x", principal="p")
        await catalog.set_state(conn, [busy.id], "reprocessing", expect=["open"])
        await catalog.set_state(conn, [done.id], "reprocessed", expect=["open"])
    records = await f.records([r.entry_id for r in (open_, resolved, busy, done)])

    with pytest.raises(FailedPrecondition) as caught:
        check_reprocessable(records)
    assert caught.value.ids == (resolved.entry_id,)
    assert resolved.entry_id in str(caught.value)
    check_reprocessable([r for r in records if r.state != "resolved"])

    result = await f.run([r for r in records if r.state != "resolved"])
    assert replace(result, skips=()) == Progress(
        done=3, total=3, requeued=1, skipped=2, finished=True
    )
    assert [(s.entry_id, s.reason) for s in result.skips] == [
        (busy.entry_id, "reprocessing"),
        (done.entry_id, "reprocessed"),
    ]


async def _assert_each_requeued_or_untouched(f: Fixture) -> set[str]:
    """Every dead letter either requeued (reprocessing, one retry entry, audited) or untouched
    (open, nothing sent); return the untouched ones."""
    states = await f.states()
    requeued = {e for e, s in states.items() if s == "reprocessing"}
    untouched = {e for e, s in states.items() if s == "open"}
    assert len(requeued) + len(untouched) == len(states) == 200
    assert 0 < len(requeued) < 200, "cancelled midway"
    sent = [fields[wire.RT_DEAD_LETTER].decode() for _i, fields in await f.retries()]
    assert sorted(sent) == sorted(requeued), "a retry entry for each requeued one, and only them"
    audited = [r["target_ids"][0] for r in await f.audit_rows()]
    assert sorted(audited) == sorted(requeued)
    return untouched


async def test_deadline_on_a_paced_reprocess_leaves_each_entry_requeued_or_untouched(
    f: Fixture,
) -> None:
    records = await f.dead_letters(200)
    key = f.key("slow")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(f.run(records, rate_limit=200, idempotency_key=key), 0.4)

    untouched = await _assert_each_requeued_or_untouched(f)
    # The same request again carries on where the cancelled one stopped.
    result = await f.run(records, idempotency_key=key)
    assert (result.requeued, result.skipped) == (len(untouched), 200 - len(untouched))
    assert len(await f.retries()) == 200
    assert set((await f.states()).values()) == {"reprocessing"}


@pytest.mark.parametrize("delay", [0.0, 0.0003, 0.0011])
@pytest.mark.parametrize("client", ["conveyor", "redis-py-defaults"])
async def test_cancel_at_any_point_leaves_each_entry_requeued_or_untouched(
    f: Fixture, delay: float, client: str
) -> None:
    if client != "conveyor":
        # redis-py's default socket timeout runs each command under asyncio.wait_for, which on
        # Python 3.11 can drop a cancellation arriving as the command completes.
        f.client = f.case.redis
    records = await f.dead_letters(200)
    halfway = asyncio.Event()

    async def report(p: Progress) -> None:
        if p.done == 50:
            halfway.set()

    task = asyncio.create_task(f.run(records, on_progress=report))
    await halfway.wait()
    await asyncio.sleep(delay)  # lands in a read, a write or between entries
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await _assert_each_requeued_or_untouched(f)


async def test_group_ledgers_reads_the_consumer_registry(f: Fixture) -> None:
    tag = f.topic
    rows = [
        (f"{tag}-eo", "c1", "exactly-once", "app_schema", 0),
        (f"{tag}-alo", "c1", "at-least-once", None, 0),
        (f"{tag}-mixed", "c1", "exactly-once", "old_schema", 60),
        (f"{tag}-mixed", "c2", "exactly-once", "new_schema", 0),
        (f"{tag}-mixed", "c3", "at-least-once", None, 0),
    ]
    insert = (
        "INSERT INTO conveyor.consumers (consumer_group, consumer_name, topics, mode, "
        "ledger_schema, heartbeat_at, key_prefix) VALUES ($1, $2, '{t}', $3, $4, "
        "now() - make_interval(secs => $5), $6)"
    )
    await f.pool.executemany(insert, [(*row, "conveyor") for row in rows])
    # Another deployment on the same database: a same-named group with another ledger.
    await f.pool.execute(insert, f"{tag}-eo", "c1", "exactly-once", "their_schema", 0, "theirs")
    try:
        ledgers = await group_ledgers(f.pool, "conveyor")
        theirs = await group_ledgers(f.pool, "theirs")
    finally:
        await f.pool.execute(
            "DELETE FROM conveyor.consumers WHERE starts_with(consumer_group, $1)", tag
        )
    assert {g: s for g, s in ledgers.items() if g.startswith(tag)} == {
        f"{tag}-eo": "app_schema",
        f"{tag}-alo": None,
        f"{tag}-mixed": "new_schema",
    }
    assert {g: s for g, s in theirs.items() if g.startswith(tag)} == {f"{tag}-eo": "their_schema"}
