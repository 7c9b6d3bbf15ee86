"""Partition leases of ordered topics (`conveyor.partition_leases`, catalog_0007): taken,
renewed, handed back and checked by consumers (`consumers.leases.LeaseStore`), listed by the ops
plane. Liveness of members comes from the registry (`conveyor.consumers`), whose heartbeat a
member holding leases refreshes every lease round."""

from __future__ import annotations

from typing import Final

import asyncpg

from consumers.leases import Lease, LeaseScope
from conveyor import database

_LEASES: Final = f"{database.CATALOG_SCHEMA}.partition_leases"
_CONSUMERS: Final = f"{database.CATALOG_SCHEMA}.{database.CONSUMERS_TABLE}"
_DEAD_LETTERS: Final = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"
_SCOPE: Final = "key_prefix = $1 AND consumer_group = $2 AND topic = $3"

_ACQUIRE: Final = (
    f"INSERT INTO {_LEASES} AS l (key_prefix, consumer_group, topic, partition, owner, epoch, "
    "expires_at, changed_at) VALUES ($1, $2, $3, $4, $5, 1, now() + make_interval(secs => $6), "
    "now()) ON CONFLICT (key_prefix, consumer_group, topic, partition) DO UPDATE SET "
    "owner = EXCLUDED.owner, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at, "
    "changed_at = now() WHERE l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at < now() "
    "RETURNING epoch"
)
_RENEW: Final = (
    f"UPDATE {_LEASES} AS l SET expires_at = now() + make_interval(secs => $5) "
    f"FROM unnest($6::int[], $7::bigint[]) AS h(p, e) WHERE l.{_SCOPE.replace(' AND ', ' AND l.')} "
    "AND l.partition = h.p AND l.epoch = h.e AND l.owner = $4 RETURNING l.partition"
)
_RELEASE: Final = (
    f"UPDATE {_LEASES} AS l SET owner = NULL, expires_at = NULL, changed_at = now() "
    f"FROM unnest($5::int[], $6::bigint[]) AS h(p, e) WHERE l.{_SCOPE.replace(' AND ', ' AND l.')} "
    "AND l.partition = h.p AND l.epoch = h.e AND l.owner = $4"
)
FENCE: Final = (
    f"SELECT 1 FROM {_LEASES} WHERE {_SCOPE} AND partition = $4 AND owner = $5 AND epoch = $6 "
    "FOR SHARE"
)
"""The lease check in a batch's transaction: no row, no commit. FOR SHARE keeps a takeover (an
UPDATE of the row) waiting until the transaction ends."""


class ConsumerLeases:
    """`consumers.leases.LeaseStore` on a consumer's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def live_members(self, scope: LeaseScope, within: float) -> list[str]:
        rows = await self._pool.fetch(
            f"SELECT consumer_name FROM {_CONSUMERS} WHERE key_prefix = $1 "
            "AND consumer_group = $2 AND $3 = ANY(topics) "
            "AND heartbeat_at > now() - make_interval(secs => $4) ORDER BY consumer_name",
            scope.key_prefix,
            scope.group,
            scope.topic,
            within,
        )
        return [r[0] for r in rows]

    async def touch(self, scope: LeaseScope, member: str) -> None:
        await self._pool.execute(
            f"UPDATE {_CONSUMERS} SET heartbeat_at = now() "
            "WHERE key_prefix = $1 AND consumer_group = $2 AND consumer_name = $3",
            scope.key_prefix,
            scope.group,
            member,
        )

    async def acquire(
        self, scope: LeaseScope, partition: int, owner: str, ttl: float
    ) -> int | None:
        epoch = await self._pool.fetchval(
            _ACQUIRE, scope.key_prefix, scope.group, scope.topic, partition, owner, ttl
        )
        return None if epoch is None else int(epoch)

    async def renew(
        self, scope: LeaseScope, owner: str, held: dict[int, int], ttl: float
    ) -> set[int]:
        parts = sorted(held)
        rows = await self._pool.fetch(
            _RENEW,
            scope.key_prefix,
            scope.group,
            scope.topic,
            owner,
            ttl,
            parts,
            [held[p] for p in parts],
        )
        return {int(r[0]) for r in rows}

    async def release(self, scope: LeaseScope, owner: str, held: dict[int, int]) -> None:
        parts = sorted(held)
        await self._pool.execute(
            _RELEASE,
            scope.key_prefix,
            scope.group,
            scope.topic,
            owner,
            parts,
            [held[p] for p in parts],
        )

    async def leases(self, scope: LeaseScope) -> list[Lease]:
        return await leases_of(self._pool, scope)

    async def fence(
        self,
        conn: asyncpg.Connection,
        scope: LeaseScope,
        *,
        partition: int,
        owner: str,
        epoch: int,
        bound: float | None = None,
    ) -> bool:
        held = await conn.fetchval(
            FENCE,
            scope.key_prefix,
            scope.group,
            scope.topic,
            partition,
            owner,
            epoch,
            timeout=bound,
        )
        return held is not None

    async def open_dead_letters(self, dlq_stream: str, group: str) -> list[str]:
        rows = await self._pool.fetch(
            f"SELECT dlq_entry_id FROM {_DEAD_LETTERS} WHERE dlq_stream = $1 "
            "AND consumer_group = $2 AND state IN ('open', 'reprocessing') ORDER BY id",
            dlq_stream,
            group,
        )
        return [str(r[0]) for r in rows]


async def leases_of(pool: asyncpg.Pool | asyncpg.Connection, scope: LeaseScope) -> list[Lease]:
    """The scope's lease rows by partition, each with the seconds until it runs out."""
    rows = await pool.fetch(
        "SELECT partition, owner, epoch, "
        "extract(epoch FROM expires_at - now())::float8 AS expires_in "
        f"FROM {_LEASES} WHERE {_SCOPE} ORDER BY partition",
        scope.key_prefix,
        scope.group,
        scope.topic,
    )
    return [Lease(int(r["partition"]), r["owner"], int(r["epoch"]), r["expires_in"]) for r in rows]


async def deployment_leases(pool: asyncpg.Pool, key_prefix: str) -> list[tuple[str, str, Lease]]:
    """Every lease of the deployment, as (topic, group, lease), by topic, group and partition."""
    rows = await pool.fetch(
        "SELECT topic, consumer_group, partition, owner, epoch, "
        "extract(epoch FROM expires_at - now())::float8 AS expires_in "
        f"FROM {_LEASES} WHERE key_prefix = $1 ORDER BY topic, consumer_group, partition",
        key_prefix,
    )
    return [
        (
            r["topic"],
            r["consumer_group"],
            Lease(int(r["partition"]), r["owner"], int(r["epoch"]), r["expires_in"]),
        )
        for r in rows
    ]
