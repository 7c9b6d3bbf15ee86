"""PostgreSQL side of the relay: claim, mark, count and clean up outbox rows of one schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from conveyor import database

Row = Any
"""An outbox row as the claim query returns it: id, event_id, topic, event_type, aggregate_id,
traceparent, payload (asyncpg.Record, indexable by position and name)."""

_RETURNING = "id, event_id, topic, event_type, aggregate_id, traceparent, payload"


class Outbox(Protocol):
    """What the forwarder needs from the outbox store (real: OutboxStore; tests may fake it)."""

    schema: str

    def claim(self, limit: int) -> Any:
        """Async context manager yielding up to `limit` unpublished rows in id order.

        The rows are locked (and marked published, or deleted) in a transaction that commits when
        the block exits normally and rolls back, leaving them unpublished, when it raises.
        """

    async def backlog(self) -> tuple[int, float]:
        """(unpublished rows, age in seconds of the oldest one, 0 when none)."""

    async def clean_up(self, retention_seconds: float, limit: int) -> int:
        """Delete up to `limit` rows published longer ago than the retention; return how many."""


class OutboxStore:
    """Outbox of one application schema, over an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str, *, keep_published: bool) -> None:
        self.schema = database.validate_schema(schema)
        self._pool = pool
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
        self._claim_sql = f"WITH claimed AS ({change}) SELECT * FROM claimed ORDER BY id"
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
        async with self._pool.acquire() as conn, conn.transaction():
            yield await conn.fetch(self._claim_sql, limit)

    async def backlog(self) -> tuple[int, float]:
        row = await self._pool.fetchrow(self._backlog_sql)
        return int(row[0]), float(row[1])

    async def clean_up(self, retention_seconds: float, limit: int) -> int:
        status: str = await self._pool.execute(self._cleanup_sql, retention_seconds, limit)
        return int(status.rsplit(" ", 1)[1])


class NotifyListener:
    """A dedicated connection LISTENing on the outbox channels; calls `wake(schema)` on NOTIFY."""

    def __init__(self, dsn: str, schemas: Sequence[str], wake: Callable[[str], None]) -> None:
        self._dsn = dsn
        self._channels = {database.notify_channel(s): s for s in schemas}
        self._wake = wake
        self._conn: asyncpg.Connection | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        """(Re)open the connection and LISTEN; raises what asyncpg raises when PG is down."""
        await self.close()
        conn = await asyncpg.connect(self._dsn, timeout=10)
        for channel in self._channels:
            await conn.add_listener(channel, self._on_notify)
        self._conn = conn

    def _on_notify(self, _conn: object, _pid: int, channel: str, _payload: str) -> None:
        schema = self._channels.get(channel)
        if schema is not None:
            self._wake(schema)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=5)


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
