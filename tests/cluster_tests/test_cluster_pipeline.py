"""The whole pipeline over a Redis Cluster: the relay publishes topics whose streams sit on
different masters, a consumer applies every event once, failing events end as dead letters
(the MULTI of dead-lettering runs on the cluster), and every URL form reaches the cluster."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from conveyor import redis_client, wire
from tests.cluster import RedisCluster
from tests.cluster_tests.support import ClusterCase, effects, effects_router, spread_topics
from tests.integration.consumer_support import create_effects, running_consumer
from tests.integration.relay_support import drained, fill, running_relay


@pytest.fixture
def ccase(database_url: str, migrated_schema: str, redis_cluster: RedisCluster) -> ClusterCase:
    return ClusterCase(
        database_url, redis_cluster.url, migrated_schema, f"t{uuid.uuid4().hex[:12]}"
    )


async def _until(check: Any, what: str, timeout: float = 120) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.2)
    assert await check(), what


async def test_connect_forms_and_detection(redis_cluster: RedisCluster) -> None:
    """redis+cluster:// forces the cluster client; a plain redis:// URL of a node is detected
    as one by open(); connect() of a plain URL alone stays a single-server client."""
    forced = redis_client.connect(redis_cluster.cluster_url)
    detected = await redis_client.open(redis_cluster.url)
    try:
        assert redis_client.is_cluster(forced)
        assert redis_client.is_cluster(detected)
        # Keys of every slot work through either: the client follows the slot map.
        for i in range(50):
            await detected.set(f"{{probe{i}}}:k", i)
            assert int(await forced.get(f"{{probe{i}}}:k")) == i
    finally:
        await forced.aclose()
        await detected.aclose()
    assert not redis_client.is_cluster(redis_client.connect("redis://127.0.0.1:1/0"))


async def test_pipeline_over_cluster_applies_each_event_once(
    ccase: ClusterCase, redis_cluster: RedisCluster, pg: asyncpg.Connection
) -> None:
    topics = spread_topics(redis_cluster, ccase.prefix)
    masters = {redis_cluster.master_of(wire.Keys(t, ccase.prefix).events).port for t in topics}
    assert len(masters) == 3
    await create_effects(pg, ccase.schema)
    ids: list[uuid.UUID] = []
    for topic in topics:
        ids += await fill(pg, ccase.schema, 400, topic=topic)
    router = effects_router(ccase.schema, topics)
    settings = {
        "database_url": ccase.database_url,
        "redis_url": ccase.redis_url,
        "group": "g",
        "ledger_schema": ccase.schema,
        "key_prefix": ccase.prefix,
        "block": 0.05,
    }
    # The relay detects the cluster from the plain URL; the in-process consumer is given the
    # forcing form (a `conveyor consume` process detects it at its startup check).
    async with (
        running_relay(
            database_url=ccase.database_url,
            redis_url=ccase.redis_url,
            schemas=(ccase.schema,),
            key_prefix=ccase.prefix,
            batch_size=250,
        ),
        running_consumer(router, **(settings | {"redis_url": redis_cluster.cluster_url})),
    ):

        async def applied() -> bool:
            return len(await effects(pg, ccase.schema, "g")) == len(ids)

        await _until(lambda: drained(pg, ccase.schema), "outbox drained")
        await _until(applied, "every event applied")
    counts = await effects(pg, ccase.schema, "g")
    assert counts == {str(i): 1 for i in ids}
    client = redis_client.connect(redis_cluster.cluster_url)
    try:
        for topic in topics:
            assert await client.xlen(wire.Keys(topic, ccase.prefix).events) == 400
    finally:
        await client.aclose()


async def test_dead_letters_over_cluster(
    ccase: ClusterCase, redis_cluster: RedisCluster, pg: asyncpg.Connection
) -> None:
    """Failing events go to the dead-letter stream of their topic (XADD + XACK in one MULTI on
    the topic's master), the others are applied."""
    topics = spread_topics(redis_cluster, ccase.prefix, 2)
    await create_effects(pg, ccase.schema)
    ids: list[uuid.UUID] = []
    for topic in topics:
        ids += await fill(pg, ccase.schema, 20, topic=topic)
    router = effects_router(ccase.schema, topics, fail_on=frozenset({"u3", "u7"}))
    async with (
        running_relay(
            database_url=ccase.database_url,
            redis_url=ccase.redis_url,
            schemas=(ccase.schema,),
            key_prefix=ccase.prefix,
        ),
        running_consumer(
            router,
            database_url=ccase.database_url,
            redis_url=redis_cluster.cluster_url,
            group="g",
            ledger_schema=ccase.schema,
            key_prefix=ccase.prefix,
            block=0.05,
            retry_backoff=0.05,
            retry_backoff_max=0.1,
            max_attempts=2,
        ),
    ):
        client = redis_client.connect(redis_cluster.cluster_url)
        try:

            async def parked() -> bool:
                n = 0
                for topic in topics:
                    n += await client.xlen(wire.Keys(topic, ccase.prefix).dlq)
                return n == 4

            await _until(parked, "4 dead letters")
        finally:
            await client.aclose()
    assert len(await effects(pg, ccase.schema, "g")) == len(ids) - 4
