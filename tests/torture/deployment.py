"""Where a torture scenario runs (`Deployment`) and which consumer groups it runs (`Group`).

A Deployment names the PostgreSQL and Redis that producers and the checker use, the application
schema (outbox, ledger, `orders`, `effects`), the key prefix and the topic. Processes may be
pointed elsewhere (a proxy, a throwaway server): see `pipeline.Pipeline`'s URL overrides.

    deployment = Deployment(database_url, redis_url, schema, key_prefix)
    await prepare(deployment)     # migrate the schema (and the catalog), create orders + effects
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import asyncpg

from admin import migrations
from conveyor import wire
from tests.torture.router import DEFAULT_TOPIC, create_effects


@dataclass(frozen=True)
class Group:
    """A consumer group of the pipeline and of the check.

    `members` consumer processes run it (0: none is started; the check still expects its
    effects). `exactly_once=False` runs `--mode at-least-once`: duplicates are allowed and not
    counted. `args`, `env` and `command` are added to / replace the pipeline's for its members.
    """

    name: str
    members: int = 1
    exactly_once: bool = True
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None

    @property
    def mode(self) -> str:
        return "exactly-once" if self.exactly_once else "at-least-once"


DEFAULT_GROUPS: tuple[Group, ...] = (
    Group("eo-a"),
    Group("eo-b"),
    Group("alo-c", exactly_once=False),
)
"""Two exactly-once groups and one at-least-once group, one member each."""


@dataclass(frozen=True)
class Deployment:
    """The servers, schema, key prefix and topic of one scenario, as producers and the checker
    see them."""

    database_url: str
    redis_url: str
    schema: str
    key_prefix: str
    topic: str = DEFAULT_TOPIC
    partitions: int | None = None
    """The topic's stream partitions (its layout must say so), None when unpartitioned."""

    @property
    def keys(self) -> wire.Keys:
        """Redis key names of the topic (events, dlq, retry streams); of an unpartitioned one."""
        return wire.Keys(self.topic, self.key_prefix)

    @property
    def streams(self) -> list[wire.Keys]:
        """Redis key names of every stream of the topic: one, or one per partition."""
        return wire.topic_keys(self.topic, self.key_prefix, self.partitions)


def orders_ddl(schema: str) -> str:
    """CREATE TABLE of the producers' domain table `{schema}.orders` (idempotent)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {schema}.orders (id uuid PRIMARY KEY, producer int NOT NULL, "
        "number int NOT NULL, events int NOT NULL, "
        "created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


async def create_tables(database_url: str, schema: str) -> None:
    """Create `{schema}.orders` and `{schema}.effects` in an existing schema."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(orders_ddl(schema))
        await create_effects(conn, schema)
    finally:
        await conn.close()


async def prepare(deployment: Deployment) -> None:
    """Migrate the deployment's schema and the catalog to head, then create its tables."""
    await asyncio.to_thread(migrations.upgrade, deployment.database_url, deployment.schema)
    await create_tables(deployment.database_url, deployment.schema)
