"""A topic's slot migrated to another master while the relay publishes it and a consumer reads
it: the relay's pipelined XADDs meet ASK and MOVED, reload the slot map and retry; every event
ends in the stream on its new master and is applied once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from conveyor import redis_client, wire
from relay.publisher import StreamPublisher
from relay.store import Row
from tests.cluster import RedisCluster, key_slot, migrate_slot
from tests.cluster_tests.support import effects, effects_router
from tests.integration.consumer_support import create_effects, running_consumer
from tests.integration.relay_support import drained, fill, running_relay
from tests.processes import wait_until

pytestmark = pytest.mark.slow


async def test_slot_migrated_under_load(
    database_url: str,
    migrated_schema: str,
    redis_cluster: RedisCluster,
    pg: asyncpg.Connection,
) -> None:
    prefix, schema, topic = f"t{uuid.uuid4().hex[:12]}", migrated_schema, "moving"
    stream = wire.Keys(topic, prefix).events
    slot = key_slot(stream)
    source = redis_cluster.master_of(stream)
    target = next(n for n in redis_cluster.master_nodes() if n is not source)
    await create_effects(pg, schema)
    ids = await fill(pg, schema, 500, topic=topic)
    router = effects_router(schema, [topic])
    async with (
        running_relay(
            database_url=database_url,
            redis_url=redis_cluster.url,
            schemas=(schema,),
            key_prefix=prefix,
            batch_size=50,
            backoff_initial=0.05,
            backoff_max=0.2,
        ),
        running_consumer(
            router,
            database_url=database_url,
            redis_url=redis_cluster.cluster_url,
            group="g",
            ledger_schema=schema,
            key_prefix=prefix,
            block=0.05,
        ),
    ):
        await wait_until(lambda: drained(pg, schema), timeout=120, what="first events out")
        producing = asyncio.create_task(_produce(pg, schema, topic, ids))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(migrate_slot, redis_cluster, slot, target)
        await producing

        async def applied() -> bool:
            return len(await effects(pg, schema, "g")) == len(ids)

        await wait_until(lambda: drained(pg, schema), timeout=120, what="outbox drained")
        await wait_until(applied, timeout=120, what="every event applied")
    assert redis_cluster.master_of(stream) is target
    assert await effects(pg, schema, "g") == {str(i): 1 for i in ids}
    client = redis_client.connect(redis_cluster.cluster_url)
    try:
        entries = await client.xrange(stream)
    finally:
        await client.aclose()
    in_stream = {uuid.UUID(f[wire.F_EVENT_ID].decode()) for _, f in entries}
    assert in_stream == set(ids), "every event in the stream on its new master"


async def _produce(pg: asyncpg.Connection, schema: str, topic: str, ids: list[uuid.UUID]) -> None:
    """Commit events in small transactions for a while (the relay publishes them as they come)."""
    for _ in range(40):
        ids += await fill(pg, schema, 25, topic=topic)
        await asyncio.sleep(0.02)


async def test_publisher_meets_moved_reloads_and_retries(redis_cluster: RedisCluster) -> None:
    """The publisher's own pipelined path (not redis-py's command retries): a batch sent on the
    old slot map gets MOVED, raises ClusterUnavailable (the forwarder retries the batch) after
    reloading the map, and the retry lands on the new master."""
    prefix, topic = f"t{uuid.uuid4().hex[:12]}", "moved"
    stream = wire.Keys(topic, prefix).events
    client = redis_client.connect(redis_cluster.cluster_url)
    publisher = StreamPublisher(client, prefix)
    try:
        assert await publisher.publish([_row(1, topic)]) == {stream: 1}
        target = next(
            n for n in redis_cluster.master_nodes() if n is not redis_cluster.master_of(stream)
        )
        await asyncio.to_thread(migrate_slot, redis_cluster, key_slot(stream), target)
        with pytest.raises(redis_client.ClusterUnavailable, match=r"slot map changed \(MovedError"):
            await publisher.publish([_row(2, topic)])
        assert await publisher.publish([_row(2, topic)]) == {stream: 1}
        entries = await client.xrange(stream)
    finally:
        await client.aclose()
    assert redis_cluster.master_of(stream) is target
    assert [f[wire.F_EVENT_ID].decode() for _, f in entries] == [
        str(_row(1, topic)[1]),
        str(_row(2, topic)[1]),
    ], "the batch that met MOVED appended nothing: the stream holds each event once"


def _row(i: int, topic: str) -> Row:
    return (i, uuid.UUID(int=i), topic, "t.v1.T", f"agg{i}", None, b"payload")
