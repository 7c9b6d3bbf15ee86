"""PostgreSQL side of the relay: claim, mark, count and clean up outbox rows of one schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol, TypeVar

import asyncpg

from conveyor import database
from conveyor.deadlines import DEPENDENCY_TIMEOUT, NoReply

Row = Any
"""An outbox row as the claim query returns it: id, event_id (text from a claim, a UUID from
replay), topic, event_type, aggregate_id, traceparent, payload (asyncpg.Record, indexable by
position and name)."""

T = TypeVar("T")
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

    async def rest(self) -> None:
        """Called before the forwarder waits for a NOTIFY or the poll interval."""

    async def backlog(self) -> tuple[int, float]:
        """(unpublished rows, age in seconds of the oldest one, 0 when none)."""

    async def clean_up(self, retention_seconds: float, limit: int) -> int:
        """Delete up to `limit` rows published longer ago than the retention; return how many."""


class OutboxStore:
    """Outbox of one application schema, over an asyncpg pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        *,
        keep_published: bool,
        timeout: float = DEPENDENCY_TIMEOUT,
    ) -> None:
        self.schema = database.validate_schema(schema)
        self._pool = pool
        self._timeout = timeout
        """The pool's statement timeout, for the message of a statement that timed out."""
        # Claims keep their connections between batches (a pool's acquire and release cost about
        # as much CPU as the claim's round trips), and while claims keep finding rows, the COMMIT
        # of one batch also opens the next one's transaction: one round trip fewer per batch.
        self._idle: list[asyncpg.Connection] = []
        self._begun: set[asyncpg.Connection] = set()
        """Idle connections in a transaction opened for the next claim."""
        self._hot = True
        """Claims are coming one after another (false from `rest()` to the next claim)."""
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
        self._hot = True
        conn = self._idle.pop() if self._idle else await self._pool.acquire()
        try:
            if conn in self._begun:
                self._begun.discard(conn)
            else:
                await self._ask(conn.execute("BEGIN"), "BEGIN")
            rows = await self._ask(conn.fetch(self._claim_sql, limit), "the claim")
            yield rows
            if rows and self._hot:
                # More rows are coming: the next claim's BEGIN rides on this COMMIT.
                await self._ask(conn.execute("COMMIT; BEGIN"), "COMMIT")
                self._begun.add(conn)
            else:
                await self._ask(conn.execute("COMMIT"), "COMMIT")
        except BaseException as exc:
            await self._discard(conn, exc)
            raise
        self._idle.append(conn)

    async def pending(self) -> bool:
        conn = self._idle.pop() if self._idle else await self._pool.acquire()
        try:
            found = bool(await self._ask(conn.fetchval(self._pending_sql), "a look for rows"))
        except BaseException as exc:
            await self._discard(conn, exc)
            raise
        self._idle.append(conn)
        return found

    async def rest(self) -> None:
        """The forwarder is about to wait: end the transactions opened for the next claim, so
        no connection stays idle in a transaction while nothing comes."""
        self._hot = False
        for conn in [c for c in self._idle if c in self._begun]:
            self._begun.discard(conn)
            try:
                await self._ask(conn.execute("ROLLBACK"), "ROLLBACK")
            except BaseException as exc:
                self._idle.remove(conn)
                await self._discard(conn, exc)
                raise

    async def _ask(self, statement: Awaitable[T], what: str) -> T:
        """The reply to one of the claim's statements; NoReply naming PostgreSQL when it
        did not come within the pool's statement timeout."""
        try:
            return await statement
        except TimeoutError as exc:
            raise NoReply("postgres", self._timeout, what) from exc

    async def _discard(self, conn: asyncpg.Connection, exc: BaseException) -> None:
        """Give a connection a failure may have broken back to the pool (which replaces it).
        One whose statement PostgreSQL did not answer in time, or that was cancelled, is closed
        at once: its server may not answer at all (a ROLLBACK would wait for the cancel of the
        statement), and its late reply must never be read as another's."""
        self._begun.discard(conn)
        if isinstance(exc, asyncio.CancelledError) or (
            isinstance(exc, NoReply) and exc.dependency == "postgres"
        ):
            conn.terminate()
        try:
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - broken: the pool closes it
            pass
        finally:
            await self._pool.release(conn)

    async def close(self) -> None:
        """Give the connections kept for claims back to the pool."""
        await self.rest()
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
    until: datetime | None = None,
) -> Sequence[Row]:
    """Published rows still kept, published at or after `since` (and before `until` when
    given), in id order after `after_id`."""
    table = f"{database.validate_schema(schema)}.{database.OUTBOX_TABLE}"
    return await pool.fetch(  # type: ignore[no-any-return]
        f"SELECT {_RETURNING} FROM {table} WHERE published_at IS NOT NULL AND published_at >= $1 "
        "AND ($2::text IS NULL OR topic = $2) AND id > $3 "
        "AND ($5::timestamptz IS NULL OR published_at < $5) ORDER BY id LIMIT $4",
        since,
        topic,
        after_id,
        limit,
        until,
    )


async def count_replayable(
    pool: asyncpg.Pool,
    schema: str,
    since: datetime,
    topic: str | None,
    until: datetime | None = None,
) -> int:
    """How many rows `replay_rows` would walk through."""
    table = f"{database.validate_schema(schema)}.{database.OUTBOX_TABLE}"
    n = await pool.fetchval(
        f"SELECT count(*) FROM {table} WHERE published_at IS NOT NULL AND published_at >= $1 "
        "AND ($2::text IS NULL OR topic = $2) "
        "AND ($3::timestamptz IS NULL OR published_at < $3)",
        since,
        topic,
        until,
    )
    return int(n)
