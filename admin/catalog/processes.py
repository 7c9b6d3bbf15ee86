"""The process registry as a sweep reads it: every relay and consumer of one deployment with the
address its ops plane answers on; and the relay registry's writes (`RelayRegistry`, what a relay
process is given as its registry)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from conveyor import database
from relay.registry import RelayProcess

_RELAYS: Final = f"{database.CATALOG_SCHEMA}.{database.RELAYS_TABLE}"
_CONSUMERS: Final = f"{database.CATALOG_SCHEMA}.{database.CONSUMERS_TABLE}"

ABSENT_AFTER: Final = 30.0
"""Seconds without a heartbeat after which a registered process counts as absent: three missed
beats at the default interval (10 s, relays and consumers alike)."""
PRUNE_AFTER: Final = 86_400.0
"""Seconds without a heartbeat after which a row is removed, when a relay of the deployment (a
relay's row) or a member of the same group (a consumer's row) starts: a process that died shows
as absent in at least one daily sweep, and is gone the day after. The last rows of a group stay
until one of its members starts again, so a group nobody runs stays in sight."""

_PRUNE_RELAYS: Final = (
    f"DELETE FROM {_RELAYS} WHERE key_prefix = $1 AND relay_name <> $2 "
    "AND heartbeat_at < now() - make_interval(secs => $3)"
)
_PRUNE_MEMBERS: Final = (
    f"DELETE FROM {_CONSUMERS} WHERE key_prefix = $1 AND consumer_group = $2 "
    "AND consumer_name <> $3 AND heartbeat_at < now() - make_interval(secs => $4)"
)
# A heartbeat inserts the row again when it is gone (a catalog restored from a backup, a row
# deleted by hand), so a running relay is never missing from the sweep for long.
_UPSERT_RELAY: Final = (
    f"INSERT INTO {_RELAYS} (key_prefix, relay_name, schemas, host, pid, grpc_addr) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_prefix, relay_name) DO UPDATE SET "
    "schemas = EXCLUDED.schemas, host = EXCLUDED.host, pid = EXCLUDED.pid, "
    "grpc_addr = EXCLUDED.grpc_addr, heartbeat_at = now()"
)
_REGISTER_RELAY: Final = _UPSERT_RELAY + ", started_at = now()"
_LIST: Final = (
    "SELECT 'relay' AS role, relay_name AS name, '' AS consumer_group, '{}'::text[] AS topics, "
    "schemas, '' AS mode, host, pid, grpc_addr, started_at, heartbeat_at, "
    "extract(epoch FROM now() - heartbeat_at)::float8 AS age "
    f"FROM {_RELAYS} WHERE key_prefix = $1 "
    "UNION ALL "
    "SELECT 'consumer', consumer_name, consumer_group, topics, "
    "CASE WHEN ledger_schema IS NULL THEN '{}'::text[] ELSE ARRAY[ledger_schema] END, mode, "
    "coalesce(host, ''), pid, grpc_addr, started_at, heartbeat_at, "
    "extract(epoch FROM now() - heartbeat_at)::float8 "
    f"FROM {_CONSUMERS} WHERE key_prefix = $1 "
    "ORDER BY role DESC, consumer_group, name"
)


@dataclass(frozen=True, slots=True)
class RegisteredProcess:
    """A relay or consumer process as the registry shows it."""

    role: str
    """`relay` or `consumer`."""
    name: str
    """A relay's `host-pid`; a consumer's member name."""
    group: str
    """A consumer's group; '' for a relay."""
    topics: tuple[str, ...]
    schemas: tuple[str, ...]
    """The schemas a relay drains; a consumer's ledger schema (none when at-least-once)."""
    mode: str
    host: str
    pid: int | None
    grpc_addr: str | None
    """Where its ops plane answers; None when it registered none."""
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age: float
    """Seconds since the last heartbeat, by the catalog's clock."""

    @property
    def absent(self) -> bool:
        """No heartbeat for ABSENT_AFTER seconds: the process died or cannot reach the catalog."""
        return self.heartbeat_age > ABSENT_AFTER


async def list_processes(pool: asyncpg.Pool, prefix: str) -> list[RegisteredProcess]:
    """Every relay, then every consumer by group, registered in the deployment with key prefix
    `prefix` — those that stopped cleanly are gone, those that died stay (absent) until pruned."""
    rows = await pool.fetch(_LIST, prefix)
    return [
        RegisteredProcess(
            role=r["role"],
            name=r["name"],
            group=r["consumer_group"],
            topics=tuple(r["topics"]),
            schemas=tuple(r["schemas"]),
            mode=r["mode"],
            host=r["host"],
            pid=r["pid"],
            grpc_addr=r["grpc_addr"],
            started_at=r["started_at"],
            heartbeat_at=r["heartbeat_at"],
            heartbeat_age=max(float(r["age"]), 0.0),
        )
        for r in rows
    ]


async def prune_members(conn: asyncpg.Connection, prefix: str, group: str, name: str) -> None:
    """Remove the rows of the group's members that have been absent past PRUNE_AFTER (a member
    of the group, `name`, is starting)."""
    await conn.execute(_PRUNE_MEMBERS, prefix, group, name, PRUNE_AFTER)


class RelayRegistry:
    """The relay registry's writes, on a relay's own pool:
    `Relay(settings, registry=RelayRegistry)`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def register(self, relay: RelayProcess) -> None:
        """Insert or refresh the relay's row (started now), and remove the rows of relays of the
        deployment absent past PRUNE_AFTER."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_PRUNE_RELAYS, relay.key_prefix, relay.name, PRUNE_AFTER)
            await conn.execute(_REGISTER_RELAY, *_values(relay))

    async def heartbeat(self, relay: RelayProcess) -> None:
        """Refresh the relay's heartbeat (its row again, if it went)."""
        await self._pool.execute(_UPSERT_RELAY, *_values(relay))

    async def unregister(self, relay: RelayProcess) -> None:
        """Remove the relay's row."""
        await self._pool.execute(
            f"DELETE FROM {_RELAYS} WHERE key_prefix = $1 AND relay_name = $2",
            relay.key_prefix,
            relay.name,
        )


def _values(relay: RelayProcess) -> tuple[object, ...]:
    return (
        relay.key_prefix,
        relay.name,
        list(relay.schemas),
        relay.host,
        relay.pid,
        relay.grpc_addr,
    )
