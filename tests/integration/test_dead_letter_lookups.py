"""Dead-lettering entries over the attempts cap while PostgreSQL is away."""

from __future__ import annotations

import logging
import uuid

import asyncpg
import pytest

from admin.catalog.recording import ConsumerCatalog
from consumers.applier import Applier
from consumers.deliveries import Entry
from consumers.metrics import ConsumerMetrics
from consumers.poison_queue import PoisonQueue
from consumers.settings import ConsumerSettings
from consumers.streams import TopicStreams
from conveyor import redis_client, wire

REDIS_URL = "redis://127.0.0.1:6379/0"
AWAY = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens: PostgreSQL is away
ENTRIES = 20


async def test_lookups_of_earlier_dead_letters_do_not_warn_per_entry_during_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # While PostgreSQL is unreachable, a reclaim round of entries over max_attempts (left
    # pending, to be tried again after the back-off) does not log one WARNING per entry about
    # looking up earlier dead letters: the consumer's outage line says PostgreSQL is away, once,
    # and the round repeats every few seconds for as long as the outage lasts.
    prefix = f"lookups-{uuid.uuid4().hex[:10]}"
    redis = redis_client.connect(REDIS_URL)
    pool = await asyncpg.create_pool(AWAY, min_size=0, max_size=2)
    try:
        settings = ConsumerSettings(
            group="g",
            topics=("t",),
            database_url=AWAY,
            redis_url=REDIS_URL,
            key_prefix=prefix,
            ledger_schema="public",
            max_attempts=3,
        )
        streams = TopicStreams(redis, wire.Keys("t", prefix), "g", "c1")
        applier = Applier(pool, group="g", ledger_schema="public", exactly_once=True, partitions=1)
        poison = PoisonQueue(
            streams=streams,
            catalog=ConsumerCatalog(pool),
            marking=applier.marking_dead_letter,
            settings=settings,
            metrics=ConsumerMetrics(),
        )
        entries = [
            Entry(
                streams.keys.events,
                f"1-{i}",
                {wire.F_EVENT_ID: str(uuid.uuid4()).encode(), wire.F_EVENT_TYPE: b"demo.V1"},
                attempt=4,
            )
            for i in range(ENTRIES)
        ]
        with (
            caplog.at_level(logging.WARNING, logger="consumers"),
            pytest.raises(OSError),  # left pending, to be reclaimed after the back-off
        ):
            await poison.over_attempts(entries)
        lookups = [r for r in caplog.records if "earlier dead letters" in r.getMessage()]
        assert len(lookups) <= 1, f"{len(lookups)} warnings in one round, e.g. {lookups[0]}"
    finally:
        await pool.close()
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
