"""A redelivery over the attempts cap beside a reprocess of the same event: neither may be lost."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from admin.catalog.recording import ConsumerCatalog
from consumers import dead_letters
from consumers.applier import Applier
from consumers.metrics import ConsumerMetrics
from consumers.poison_queue import PoisonQueue
from consumers.settings import ConsumerSettings
from consumers.streams import TopicStreams
from conveyor import database, redis_client, wire

TABLE = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"


async def test_a_reprocess_reclaimed_beside_a_replayed_copy_is_not_lost(
    database_url: str, redis_url: str, migrated_schema: str, key_prefix: str
) -> None:
    # Event E crashes its consumers: it was dead-lettered over max_attempts (D1), the operator
    # reprocessed D1 (D1 'reprocessing', T on the group's retry stream) and a relay replay
    # sent E again (R on the event stream). Both crash consumers again, so one reclaim round
    # brings R and T over the cap together, R first (the reader reclaims the event stream,
    # then the retry stream). E is not lost: afterwards a dead letter of E is open (a
    # reprocess can run it again) or D1 is still 'reprocessing' with T still pending. (A dead
    # letter being reprocessed does not "stand": R is not taken for a duplicate of it.)
    redis: Any = redis_client.connect(redis_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    keys = wire.Keys("t", key_prefix)
    try:
        settings = ConsumerSettings(
            group="g",
            topics=("t",),
            database_url=database_url,
            redis_url=redis_url,
            key_prefix=key_prefix,
            ledger_schema=migrated_schema,
            max_attempts=3,
        )
        streams = TopicStreams(redis, keys, "g", "c1")
        await streams.ensure_groups()
        catalog = ConsumerCatalog(pool)
        applier = Applier(
            pool, group="g", ledger_schema=migrated_schema, exactly_once=True, partitions=1
        )
        poison = PoisonQueue(
            streams=streams,
            catalog=catalog,
            marking=applier.marking_dead_letter,
            settings=settings,
            metrics=ConsumerMetrics(),
        )
        event: dict[Any, Any] = {
            wire.F_EVENT_ID: str(uuid.uuid4()).encode(),
            wire.F_EVENT_TYPE: b"demo.V1",
        }
        d1_fields: dict[Any, Any] = {
            **event,
            wire.DL_GROUP: b"g",
            wire.DL_REASON: b"max_attempts",
            wire.DL_SOURCE_STREAM: keys.events.encode(),
            wire.DL_SOURCE_ENTRY: b"1-1",
        }
        d1 = (await redis.xadd(keys.dlq, d1_fields)).decode()
        await catalog.record_dead_letters([dead_letters.catalog_row("t", keys.dlq, d1, d1_fields)])
        await pool.execute(
            f"UPDATE {TABLE} SET state = 'reprocessing' WHERE dlq_stream = $1", keys.dlq
        )
        await redis.xadd(keys.events, event)  # R, the replayed copy
        await redis.xadd(streams.retry, {**event, wire.RT_DEAD_LETTER: d1.encode()})  # T
        replayed = (await streams.read(keys.events, 10, None))[0]
        reprocess = (await streams.read(streams.retry, 10, None))[0]
        for entry in (replayed, reprocess):
            entry.attempt = settings.max_attempts + 1  # both crashed consumers since

        # One reclaim round, as TopicWorker.prepare and finish run it.
        settled = await poison.over_attempts([replayed, reprocess])
        await streams.ack(settled)
        await poison.mark_reprocessed(settled)

        letters = await pool.fetch(
            f"SELECT dlq_entry_id, state FROM {TABLE} WHERE dlq_stream = $1", keys.dlq
        )
        states = {r["dlq_entry_id"]: r["state"] for r in letters}
        t_left = await redis.xrange(streams.retry)
        assert "open" in states.values() or (states.get(d1) == "reprocessing" and t_left), (
            f"event lost: dead letters {states}, retry stream {t_left}"
        )
    finally:
        await pool.execute(f"DELETE FROM {TABLE} WHERE dlq_stream = $1", keys.dlq)
        await pool.close()
        await redis.aclose()
