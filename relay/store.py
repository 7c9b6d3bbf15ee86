"""PostgreSQL side of the relay: claim, mark, count and clean up outbox rows of one schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from conveyor import database

Row = Any
"""An outbox row as the claim query returns it: id, event_id (text from a claim, a UUID from
replay), topic, event_type, aggregate_id, traceparent, payload (asyncpg.Record, indexable by
position and name)."""

_RETURNING = "id, event_id, topic, event_type, aggregate_id, traceparent, payload"


class Outbox(Protocol):
    """What the forwarder needs from the outbox store (real: OutboxStore; tests may fake it)."""

    schema: str

    def claim(self, limit: int) -> Any:
        """Async context manager yielding up to `limit` unpublished rows in id order.

        The rows are locked (and marked published, or deleted) in a transaction that commits when
        the block exits normally and rolls back, leaving them unpublished, when it raises.
        """

    async def pending(self) -> bool:
        """Whether any row is unpublished (or claimed by a transaction still open): one cheap
        look before a claim that is expected to find nothing."""

    async def backlog(self) -> tuple[int, float]:
        """(unpublished rows, age in seconds of the oldest one, 0 when none)."""

    async def clean_up(self, retention_seconds: float, limit: int) -> int:
        """Delete up to `limit` rows published longer ago than the retention; return how many."""


class OutboxStore:
    """Outbox of one application schema, over an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str, *, keep_published: bool) -> None:
        self.schema = database.validate_schema(schema)
        self._pool = pool
        self._idle: list[asyncpg.Connection] = []
        table = f"{schema}.{database.OUTBOX_TABLE}"
        pick = (
            f"SELECT id FROM {table} WHERE published_at IS NULL "
            "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        # Claiming and marking is one statement; the mark is undone if publishing fails, because
        # the transaction stays open until the entries are in Redis.
        change = (
            f"UPDATE {table} SET published_at = now() WHERE id IN ({pick}) RETURNING {_RETURNING}"
            if keep_published
            else f"DELETE FROM {table} WHERE id IN ({pick}) RETURNING {_RETURNING}"
        )
        # The event id as text: the stream entry carries it so, and PostgreSQL writes it faster
        # than Python formats a UUID.
        self._claim_sql = (
            f"WITH claimed AS ({change}) SELECT id, event_id::text, topic, event_type, "
            "aggregate_id, traceparent, payload FROM claimed ORDER BY id"
        )
        self._pending_sql = f"SELECT EXISTS (SELECT FROM {table} WHERE published_at IS NULL)"
        self._backlog_sql = (
            f"SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 "
            f"FROM {table} WHERE published_at IS NULL"
        )
        self._cleanup_sql = (
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
            "WHERE published_at < now() - make_interval(secs => $1) "
            "LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[Sequence[Row]]:
        async with self._connection() as conn, conn.transaction():
            yield await conn.fetch(self._claim_sql, limit)

    async def pending(self) -> bool:
        async with self._connection() as conn:
            return bool(await conn.fetchval(self._pending_sql))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        # Claims keep their connections between batches: a pool's acquire and release cost
        # about as much CPU as the claim's own round trips.
        conn = self._idle.pop() if self._idle else await self._pool.acquire()
        try:
            yield conn
        except BaseException:
            await self._pool.release(conn)  # the pool replaces it if the failure broke it
            raise
        self._idle.append(conn)

    async def close(self) -> None:
        """Give the connections kept for claims back to the pool."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._pool.release(conn)

    async def backlog(self) -> tuple[int, float]:
        row = await self._pool.fetchrow(self._backlog_sql)
        return int(row[0]), float(row[1])

    async def clean_up(self, retention_seconds: float, limit: int) -> int:
        status: str = await self._pool.execute(self._cleanup_sql, retention_seconds, limit)
        return int(status.rsplit(" ", 1)[1])


async def replay_rows(
    pool: asyncpg.Pool,
    schema: str,
    *,
    since: datetime,
    topic: str | None,
    after_id: int,
    limit: int,
) -> Sequence[Row]:
    """Published rows still kept, published at or after `since`, in id order after `after_id`."""
    table = f"{database.validate_schema(schema)}.{database.OUTBOX_TABLE}"
    return await pool.fetch(  # type: ignore[no-any-return]
        f"SELECT {_RETURNING} FROM {table} WHERE published_at IS NOT NULL AND published_at >= $1 "
        "AND ($2::text IS NULL OR topic = $2) AND id > $3 ORDER BY id LIMIT $4",
        since,
        topic,
        after_id,
        limit,
    )


async def count_replayable(
    pool: asyncpg.Pool, schema: str, since: datetime, topic: str | None
) -> int:
    """How many rows `replay_rows` would walk through."""
    table = f"{database.validate_schema(schema)}.{database.OUTBOX_TABLE}"
    n = await pool.fetchval(
        f"SELECT count(*) FROM {table} WHERE published_at IS NOT NULL AND published_at >= $1 "
        "AND ($2::text IS NULL OR topic = $2)",
        since,
        topic,
    )
    return int(n)
