"""What the cluster tests share: topics whose streams sit on different masters, a pipeline case
(schema, key prefix, the cluster's URL) in the shape the integration helpers take, and a write
that clogs a master's link to its paused replica."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis

from consumers import EventContext, Router
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from tests.cluster import RedisCluster


@dataclass(frozen=True)
class ClusterCase:
    """A migrated schema on the shared PostgreSQL and a key prefix on the throwaway cluster."""

    database_url: str
    redis_url: str
    schema: str
    prefix: str

    @property
    def env(self) -> dict[str, str]:
        """Environment pointing a `conveyor` process at this case."""
        return {
            "CONVEYOR_DATABASE_URL": self.database_url,
            "CONVEYOR_REDIS_URL": self.redis_url,
            "CONVEYOR_KEY_PREFIX": self.prefix,
            "CONVEYOR_SCHEMA": self.schema,
            "CONVEYOR_LOG_LEVEL": "info",
            "CONVEYOR_GRPC_ADDR": "127.0.0.1:0",
        }


def spread_topics(cluster: RedisCluster, prefix: str, count: int = 3) -> list[str]:
    """`count` topics whose event streams are served by `count` different masters."""
    found: dict[int, str] = {}
    for i in range(1000):
        topic = f"orders{i}"
        node = cluster.master_of(wire.Keys(topic, prefix).events)
        found.setdefault(node.port, topic)
        if len(found) == count:
            return sorted(found.values())
    raise AssertionError(f"no {count} topics on {count} masters")


def effects_router(schema: str, topics: list[str], fail_on: frozenset[str] = frozenset()) -> Router:
    """UserRegistered handlers on every topic of `topics`, each inserting one effects row;
    events whose user id is in `fail_on` raise instead (they end as dead letters)."""
    router = Router()

    async def on_registered(event: events_pb2.UserRegistered, ctx: EventContext) -> None:
        if event.user_id in fail_on:
            raise RuntimeError(f"refusing {event.user_id}")
        await ctx.db.execute(
            f"INSERT INTO {schema}.effects (consumer_group, event_id, aggregate_id, attempt) "
            "VALUES ($1, $2, $3, $4)",
            ctx.group,
            uuid.UUID(ctx.event_id),
            ctx.aggregate_id,
            ctx.attempt,
        )

    for topic in topics:
        router.handler(events_pb2.UserRegistered, topic=topic)(on_registered)
    return router


async def effects(pg: Any, schema: str, group: str) -> dict[str, int]:
    """Event id -> effects rows the group's handler wrote for it."""
    rows = await pg.fetch(
        f"SELECT event_id::text, count(*) FROM {schema}.effects WHERE consumer_group = $1 "
        "GROUP BY 1",
        group,
    )
    return {r[0]: r[1] for r in rows}


CLOG = 48 * 1024 * 1024
"""Bytes `clog` writes: more than the loopback socket buffers between a master and its paused
replica hold, less than the replica output buffer limit (256 MiB)."""


def clog(port: int, key: str) -> None:
    """Write CLOG bytes to the master at `port`, in `key`'s slot (a key no one reads): with its
    replica paused, the writes after it stay on the master alone, as with a lagging replica."""
    tag = key[key.index("{") : key.index("}") + 1]
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=30) as client:
        client.set(f"{tag}:clog", b"x" * CLOG)
