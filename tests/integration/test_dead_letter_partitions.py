"""Dead letters of two partitions with the same entry id (both written in the same millisecond):
an operator's `--id` must act on the one dead letter meant, never on both. Through the
AdminService servicer, on the real catalog and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from admin.catalog import Catalog
from admin.catalog import layouts as catalog_layouts
from admin.ops.servicer import AdminContext, AdminServicer
from conveyor import wire
from conveyor.v1 import admin_pb2
from tests.integration.catalog_support import (
    add,
    fixture_catalog_url,  # noqa: F401 - a pytest fixture
    new_entry_id,
)
from tests.integration.cli_support import (
    ENTRY,
    FakeAdmin,
    fixture_fake,  # noqa: F401 - a pytest fixture
    fixture_run,  # noqa: F401 - a pytest fixture
    fixture_served,  # noqa: F401 - a pytest fixture
    progress,
)
from tests.integration.test_resolve import _Aborted, _Context, _no_status

TOPIC = "orders"


@pytest.fixture(name="pool")
async def fixture_pool(catalog_url: str, key_prefix: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(catalog_url, min_size=1, max_size=3)
    try:
        yield p
    finally:
        await p.execute("DELETE FROM conveyor.audit WHERE key_prefix = $1", key_prefix)
        await p.close()


@pytest.fixture(name="servicer")
def fixture_servicer(pool: asyncpg.Pool, key_prefix: str, redis_client: Any) -> AdminServicer:
    context = AdminContext(
        catalog=Catalog(pool, key_prefix),
        redis=redis_client,
        token_key=b"k" * 32,
        snapshot=_no_status,
        metrics=None,
    )
    return AdminServicer(context)


class _Streamed(_Context):
    """A servicer context that also takes a server-streaming call's replies."""

    def __init__(self) -> None:
        self.replies: list[admin_pb2.ReprocessDeadLettersResponse] = []

    async def write(self, message: admin_pb2.ReprocessDeadLettersResponse) -> None:
        self.replies.append(message)


async def _twins(pool: asyncpg.Pool, prefix: str) -> tuple[str, wire.Keys, wire.Keys]:
    """Two open dead letters of topic orders, partitions 1 and 3, sharing one entry id."""
    entry = new_entry_id()
    one, three = wire.Keys(TOPIC, prefix, 1), wire.Keys(TOPIC, prefix, 3)
    for keys in (one, three):
        await add(pool, TOPIC, dlq_stream=keys.dlq, dlq_entry_id=entry, source_stream=keys.events)
    return entry, one, three


async def _states(pool: asyncpg.Pool, prefix: str) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT dlq_stream, state FROM conveyor.dead_letters WHERE key_prefix = $1", prefix
    )
    return {r["dlq_stream"]: r["state"] for r in rows}


def _ambiguous(entry: str, *keys: wire.Keys) -> str:
    streams = " and ".join(k.dlq for k in keys)
    return (
        f"dead letter id {entry} of topic {TOPIC} names {len(keys)} dead letters, one in each "
        f"of {streams}: nothing done; name the one you mean by its dead-letter stream "
        f"(--stream {keys[0].dlq})"
    )


async def test_resolving_an_id_two_partitions_share_is_refused_until_the_stream_is_named(
    pool: asyncpg.Pool, servicer: AdminServicer, key_prefix: str, catalog_cleanup: None
) -> None:
    entry, one, three = await _twins(pool, key_prefix)
    ask = admin_pb2.ResolveDeadLettersRequest(topic=TOPIC, entry_ids=[entry], reason="by hand")
    with pytest.raises(_Aborted) as refused:
        await servicer.ResolveDeadLetters(ask, _Context())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == _ambiguous(entry, one, three)
    assert await _states(pool, key_prefix) == {one.dlq: "open", three.dlq: "open"}

    ask = admin_pb2.ResolveDeadLettersRequest(topic=three.dlq, entry_ids=[entry], reason="by hand")
    reply = await servicer.ResolveDeadLetters(ask, _Context())
    assert reply.resolved == 1
    assert await _states(pool, key_prefix) == {one.dlq: "open", three.dlq: "resolved"}


async def test_reprocessing_an_id_two_partitions_share_is_refused_until_the_stream_is_named(
    pool: asyncpg.Pool, servicer: AdminServicer, key_prefix: str, catalog_cleanup: None
) -> None:
    entry, one, three = await _twins(pool, key_prefix)
    ask = admin_pb2.ReprocessDeadLettersRequest(topic=TOPIC, entry_ids=[entry], dry_run=True)
    with pytest.raises(_Aborted) as refused:
        await servicer.ReprocessDeadLetters(ask, _Streamed())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == _ambiguous(entry, one, three)

    ask = admin_pb2.ReprocessDeadLettersRequest(topic=one.dlq, entry_ids=[entry], dry_run=True)
    context = _Streamed()
    await servicer.ReprocessDeadLetters(ask, context)
    assert context.replies[-1].finished and context.replies[-1].total == 1


async def test_inspecting_an_id_two_partitions_share_names_both_and_shows_the_one_named(
    pool: asyncpg.Pool, servicer: AdminServicer, key_prefix: str, catalog_cleanup: None
) -> None:
    entry, one, three = await _twins(pool, key_prefix)
    with pytest.raises(_Aborted) as refused:
        await servicer.GetDeadLetter(
            admin_pb2.GetDeadLetterRequest(topic=TOPIC, entry_id=entry), _Context()
        )
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == _ambiguous(entry, one, three)
    shown = await servicer.GetDeadLetter(
        admin_pb2.GetDeadLetterRequest(topic=three.dlq, entry_id=entry), _Context()
    )
    assert shown.dead_letter.source_stream == three.events


@pytest.mark.parametrize("stream", ["conveyor:{orders:3}:dlq", "other:{orders:3}:dlq"])
async def test_a_stream_key_of_another_deployment_is_refused(
    servicer: AdminServicer, key_prefix: str, stream: str, catalog_cleanup: None
) -> None:
    ask = admin_pb2.ResolveDeadLettersRequest(topic=stream, entry_ids=["1-0"], reason="x")
    with pytest.raises(_Aborted) as refused:
        await servicer.ResolveDeadLetters(ask, _Context())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == (
        f"{stream!r} is no dead-letter stream of this deployment (key prefix {key_prefix})"
    )


def test_the_cli_sends_a_dead_letter_stream_key_with_id_and_the_topic_otherwise(
    fake: FakeAdmin, run: Any
) -> None:
    """`--stream conveyor:{orders:3}:dlq --id X` asks for X in that stream only; a filter
    (no --id) still means the whole topic; what is printed names the topic."""
    key = "conveyor:{orders:3}:dlq"
    fake.answers["ResolveDeadLetters"] = admin_pb2.ResolveDeadLettersResponse(resolved=1)
    fake.answers["ReprocessDeadLetters"] = progress((1, 1, 1))
    resolved = run("dlq", "resolve", "--stream", key, "--id", ENTRY, "--reason", "by hand")
    assert resolved.exit_code == 0, resolved.output
    assert "resolved 1 of 1 dead letters of topic orders" in resolved.output
    by_id = run("dlq", "reprocess", "--stream", key, "--id", ENTRY, "--json")
    assert by_id.exit_code == 0, by_id.output
    assert '"topic": "orders"' in by_id.output
    by_filter = run("dlq", "reprocess", "--stream", key, "--group", "g", "--yes", "--json")
    assert by_filter.exit_code == 0, by_filter.output
    (resolve,) = fake.requests("ResolveDeadLetters")
    first, second = fake.requests("ReprocessDeadLetters")
    assert (resolve.topic, first.topic, second.topic) == (key, key, "orders")
    assert second.filter.topic == "orders"


async def test_a_dead_letter_of_an_earlier_layout_is_not_requeued_where_no_consumer_reads(
    pool: asyncpg.Pool, servicer: AdminServicer, key_prefix: str, catalog_cleanup: None
) -> None:
    """A dead letter of the unpartitioned stream, reprocessed after the topic was split in 4:
    its own retry stream is read by no consumer of the new layout (they read the partitions'),
    so it would wait there for good with its dead letter `reprocessing`. It is skipped, saying
    why, and stays open."""
    old = wire.Keys(TOPIC, key_prefix)
    entry = await redis_entry(servicer, old)
    await add(pool, TOPIC, dlq_stream=old.dlq, dlq_entry_id=entry, source_stream=old.events)
    await catalog_layouts.set_layout(
        pool, key_prefix, TOPIC, partitions=4, ordered=False, on_dead_letter="park"
    )
    context = _Streamed()
    ask = admin_pb2.ReprocessDeadLettersRequest(topic=TOPIC, entry_ids=[entry])
    await servicer.ReprocessDeadLetters(ask, context)
    last = context.replies[-1]
    read_now = {k.retry("g") for k in wire.topic_keys(TOPIC, key_prefix, 4)}
    written = {k for k in [old.retry("g")] if await servicer._c.redis.xlen(k)}
    assert not written - read_now, "requeued to a retry stream no consumer reads"
    assert last.requeued == 0 and [s.reason for s in last.skips] == [
        admin_pb2.SKIP_REASON_EARLIER_LAYOUT
    ]
    assert last.skips[0].detail == (
        f"its dead-letter stream {old.dlq} is of an earlier layout of topic {TOPIC} (now 4 "
        "partitions): no consumer reads its retry stream; resolve it, and send the event to "
        "group g with `conveyor relay backfill`"
    )
    assert await _states(pool, key_prefix) == {old.dlq: "open"}


async def redis_entry(servicer: AdminServicer, keys: wire.Keys) -> str:
    """A dead-letter entry in `keys.dlq`, as a consumer writes one; its entry id."""
    fields = {wire.F_EVENT_ID: "0190a6d2-0000-7000-8000-000000000001", wire.F_AGGREGATE_ID: "a1"}
    return (await servicer._c.redis.xadd(keys.dlq, fields)).decode()
