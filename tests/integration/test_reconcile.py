"""The reconciler records every dead letter of a stream in the catalog, whatever the gap since
the last one recorded, and never races retention into a row that points at nothing
(guarantee 4: the catalog records every dead letter)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from admin.catalog import ConsumerCatalog
from admin.catalog.recording import RECONCILE_PAGE
from consumers import ConsumerSettings
from consumers.dead_letters import catalog_row, reader
from consumers.metrics import ConsumerMetrics
from consumers.retention import Housekeeper
from consumers.streams import TopicStreams
from conveyor import database, wire
from tests.integration.conftest import Case

TOPIC = "identity"
_DEAD_LETTERS = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"
_CURSORS = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTER_CURSORS_TABLE}"


@pytest.fixture
async def pool(case: Case) -> AsyncIterator[asyncpg.Pool]:
    """A pool for the catalog; this test's catalog rows and cursors go with it."""
    p = await asyncpg.create_pool(case.database_url, min_size=1, max_size=4)
    try:
        yield p
    finally:
        for table, column in ((_DEAD_LETTERS, "dlq_stream"), (_CURSORS, "dlq_stream")):
            await p.execute(f"DELETE FROM {table} WHERE {column} LIKE $1", case.prefix + ":%")
        await p.close()


def dead_letters(client: Any, keys: wire.Keys) -> Any:
    """The reconciler's view of the topic's dead-letter stream, read through `client`."""
    return reader(TopicStreams(client, keys, "g", "c"))


def dead_letter_fields(reason: bytes = b"rejected") -> dict[bytes, bytes]:
    return {
        wire.F_EVENT_ID: str(uuid.uuid4()).encode(),
        wire.F_EVENT: b"x",
        wire.DL_GROUP: b"g",
        wire.DL_REASON: reason,
    }


async def recorded(case: Case, keys: wire.Keys) -> list[str]:
    rows = await case.pg.fetch(
        f"SELECT dlq_entry_id FROM {_DEAD_LETTERS} WHERE dlq_stream = $1 ORDER BY id", keys.dlq
    )
    return [r[0] for r in rows]


async def test_a_dead_letter_missed_long_ago_is_recorded_after_a_newer_one(
    case: Case, pool: asyncpg.Pool
) -> None:
    """X reached the stream 15 minutes ago while PostgreSQL was down; when it came back, Y was
    recorded directly before any reconcile round. One round records X."""
    keys = wire.Keys(TOPIC, case.prefix)
    catalog = ConsumerCatalog(pool)
    old = int(time.time() * 1000) - 15 * 60_000
    fields = dead_letter_fields()
    x = (await case.redis.xadd(keys.dlq, fields, id=f"{old}-0")).decode()
    y = (await case.redis.xadd(keys.dlq, fields)).decode()
    await catalog.record_dead_letters([catalog_row(TOPIC, keys.dlq, y, fields)])
    await catalog.reconcile(keys, dead_letters(case.redis, keys))
    assert sorted(await recorded(case, keys)) == sorted([x, y])


async def test_every_entry_is_recorded_once_in_one_round_and_the_next_reads_only_new_ones(
    case: Case, pool: asyncpg.Pool
) -> None:
    keys = wire.Keys(TOPIC, case.prefix)
    catalog = ConsumerCatalog(pool)
    pipe = case.redis.pipeline(transaction=False)
    for _ in range(RECONCILE_PAGE * 2 + 7):
        pipe.xadd(keys.dlq, dead_letter_fields())
    ids = [i.decode() for i in await pipe.execute()]
    assert await catalog.reconcile(keys, dead_letters(case.redis, keys)) == len(ids)
    assert await recorded(case, keys) == ids
    assert await catalog.reconcile(keys, dead_letters(case.redis, keys)) == 0, (
        "the cursor starts after the last one"
    )
    newer = (await case.redis.xadd(keys.dlq, dead_letter_fields())).decode()
    assert await catalog.reconcile(keys, dead_letters(case.redis, keys)) == 1
    assert (await recorded(case, keys))[-1] == newer


class _PausingRedis:
    """A Redis client whose XRANGE replies, then waits for `during` before handing the reply
    back: the window in which a reconcile has read the stream but not yet written the rows."""

    def __init__(self, client: Any, during: Any) -> None:
        self._client = client
        self._during = during

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xrange(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self._client.xrange(*args, **kwargs)
        await self._during()
        return reply


async def test_reconcile_and_retention_racing_leave_no_row_pointing_at_nothing(
    case: Case, pool: asyncpg.Pool
) -> None:
    """A resolved dead letter past retention, not yet recorded by the cursor (the first round
    after an upgrade reads the whole stream). Retention runs while a reconcile holds the entry
    it read: it must wait, so the reconcile cannot insert the entry after it is gone."""
    keys = wire.Keys(TOPIC, case.prefix)
    catalog = ConsumerCatalog(pool)
    fields = dead_letter_fields()
    old = (await case.redis.xadd(keys.dlq, fields)).decode()
    await catalog.record_dead_letters([catalog_row(TOPIC, keys.dlq, old, fields)])
    await case.pg.execute(
        f"UPDATE {_DEAD_LETTERS} SET state = 'resolved', updated_at = now() - interval '3 days' "
        "WHERE dlq_stream = $1",
        keys.dlq,
    )
    settings = ConsumerSettings(
        group="g",
        topics=(TOPIC,),
        database_url=case.database_url,
        redis_url=case.redis_url,
        key_prefix=case.prefix,
        ledger_schema=case.schema,
        dead_letter_retention=86400.0,
    )
    keeper = Housekeeper(pool, case.redis, settings, ConsumerMetrics(), catalog=catalog)
    expiring: list[asyncio.Task[Any]] = []

    async def retention_meanwhile() -> None:
        task = asyncio.create_task(keeper.run_once([TOPIC]))
        expiring.append(task)
        await asyncio.wait([task], timeout=1.0)  # it finishes here only if nothing stops it

    await catalog.reconcile(
        keys, dead_letters(_PausingRedis(case.redis, retention_meanwhile), keys)
    )
    report = await expiring[0]
    assert report.errors == []
    in_stream = {i.decode() for i, _ in await case.redis.xrange(keys.dlq)}
    assert set(await recorded(case, keys)) == in_stream == set(), (
        "the expired dead letter left both the stream and the catalog"
    )
