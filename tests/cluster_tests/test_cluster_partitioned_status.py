"""The status of a Redis Cluster whose deployment has a partitioned topic: every master is read,
and each names the partition streams its slots hold."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from admin.catalog import Catalog
from admin.ops.status import StatusChecker
from conveyor import redis_client, wire
from tests.cluster import RedisCluster
from tests.conftest import delete_catalog_rows
from tests.integration.ordered_support import TOPIC, make_ordered, member, ordered_router

pytestmark = pytest.mark.slow


class _Probe:
    def components(self, redis: Any, groups: Any, now: float) -> list[Any]:
        return []

    def outboxes(self) -> list[Any]:
        return []


async def test_status_names_the_partitions_each_master_serves(
    database_url: str,
    migrated_schema: str,
    key_prefix: str,
    pg: asyncpg.Connection,
    redis_cluster: RedisCluster,
) -> None:
    await make_ordered(pg, key_prefix, 4)
    settings = {
        "group": "g",
        "database_url": database_url,
        "redis_url": redis_cluster.url,
        "ledger_schema": migrated_schema,
        "key_prefix": key_prefix,
    }
    client = redis_client.connect(redis_cluster.cluster_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with member(ordered_router(migrated_schema), "m-a", **settings):
            checker = StatusChecker(redis=client, catalog=Catalog(pool, key_prefix), probe=_Probe())
            snapshot = await checker.refresh()
        served = {n.address: set(n.topics) for n in snapshot.redis.nodes}
        want: dict[str, set[str]] = {}
        for p in range(4):
            node = redis_cluster.master_of(wire.Keys(TOPIC, key_prefix, p).events)
            want.setdefault(f"127.0.0.1:{node.port}", set()).add(f"{TOPIC}:{p}")
        assert {a: t for a, t in served.items() if t} == want
        assert {g.topic for g in snapshot.groups} == {f"{TOPIC}:{p}" for p in range(4)}
    finally:
        await pool.close()
        await client.aclose()
        await delete_catalog_rows(database_url, key_prefix)
