"""Dead letters as consumers record them: insert, settle a reprocess that failed again, reconcile
from the dead-letter stream by cursor, mark reprocessed, expire settled ones; and the member
registry's writes. `ConsumerCatalog` is what a consumer process is given as its catalog."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final
from uuid import UUID

import asyncpg

from admin.catalog import layouts as topic_layouts
from admin.catalog import registry
from consumers.catalog import DeadLetterRow, DeleteEntries, Member, ReadAfter
from conveyor import database, wire
from conveyor.layouts import Layout

log = logging.getLogger(__name__)

_DEAD_LETTERS: Final = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"
_CURSORS: Final = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTER_CURSORS_TABLE}"
_INSERT: Final = (
    f"INSERT INTO {_DEAD_LETTERS} (topic, dlq_stream, "
    "dlq_entry_id, source_stream, source_entry_id, consumer_group, consumer_name, event_id, "
    "event_type, reason, error_class, error_message, attempts, first_failed_at, last_failed_at, "
    "retry_of) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) "
    "ON CONFLICT (dlq_stream, dlq_entry_id) DO NOTHING"
)
# A reprocessed dead letter whose retry failed again is settled by the dead letter it became.
_SETTLE: Final = (
    f"UPDATE {_DEAD_LETTERS} AS d SET retried_as = coalesce(d.retried_as, n.entry), "
    "state = CASE WHEN d.state IN ('open', 'reprocessing') THEN 'reprocessed' ELSE d.state END, "
    "updated_at = now() FROM unnest($2::text[], $3::text[]) AS n(entry, earlier) "
    "WHERE d.dlq_stream = $1 AND d.dlq_entry_id = n.earlier "
    "AND (d.retried_as IS NULL OR d.state IN ('open', 'reprocessing'))"
)
_STREAM_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtextextended('conveyor.dlq:' || $1, 0))"
"""Transaction lock on one dead-letter stream ($1): reconciling it and expiring its entries
take it, so a reconcile never records an entry that retention is removing."""
# SKIP LOCKED: housekeepers of other groups on the same topic take other batches, not turns.
_EXPIRED: Final = (
    f"SELECT id, dlq_entry_id FROM {_DEAD_LETTERS} WHERE topic = $1 AND dlq_stream = $2 "
    "AND state IN ('resolved', 'reprocessed') AND updated_at < now() - make_interval(secs => $3) "
    "ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED"
)
RECONCILE_PAGE: Final = 500
"""Dead-letter entries read and recorded per transaction."""


class ConsumerCatalog:
    """The catalog as a consumer process uses it (`consumers.catalog.Catalog`), on its pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        """Insert rows; those already recorded are left as they are. A row that re-failed a
        reprocessed dead letter settles that one as `reprocessed`, pointing at the new row."""
        if rows:
            async with self._pool.acquire() as conn, conn.transaction():
                await _record(conn, rows)

    async def mark_reprocessed(self, dlq_stream: str, entry_ids: Sequence[str]) -> None:
        """Dead letters whose re-delivery was applied (or found applied) leave `reprocessing`."""
        if entry_ids:
            await self._pool.execute(
                f"UPDATE {_DEAD_LETTERS} "
                "SET state = 'reprocessed', updated_at = now() WHERE dlq_stream = $1 "
                "AND dlq_entry_id = ANY($2::text[]) AND state IN ('open', 'reprocessing')",
                dlq_stream,
                list(entry_ids),
            )

    async def dead_letters_of(
        self, dlq_stream: str, group: str, event_id: UUID
    ) -> list[tuple[str, str]]:
        """The dead letters of `event_id` that `group` wrote to `dlq_stream`: (entry id, state)."""
        rows = await self._pool.fetch(
            f"SELECT dlq_entry_id, state FROM {_DEAD_LETTERS} "
            "WHERE event_id = $1 AND dlq_stream = $2 AND consumer_group = $3",
            event_id,
            dlq_stream,
            group,
        )
        return [(str(r["dlq_entry_id"]), str(r["state"])) for r in rows]

    async def reconcile(self, keys: wire.Keys, read_after: ReadAfter) -> int:
        """Record every entry of the topic's dead-letter stream after the stream's cursor (the
        last entry reconciled, kept in the catalog) and move the cursor on; return how many
        entries were looked at. Entry ids only grow, so nothing before the cursor is missing,
        however long the catalog was unreachable."""
        seen = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(_STREAM_LOCK, keys.dlq)
                last = await conn.fetchval(
                    f"SELECT entry_id FROM {_CURSORS} WHERE dlq_stream = $1", keys.dlq
                )
                page = await read_after(last, RECONCILE_PAGE)
                if page:
                    await _record(conn, page)
                    await conn.execute(
                        f"INSERT INTO {_CURSORS} (dlq_stream, entry_id) VALUES ($1, $2) "
                        "ON CONFLICT (dlq_stream) DO UPDATE SET entry_id = EXCLUDED.entry_id, "
                        "updated_at = now()",
                        keys.dlq,
                        page[-1].dlq_entry_id,
                    )
            seen += len(page)
            if len(page) < RECONCILE_PAGE:
                return seen

    async def expire_dead_letters(
        self, keys: wire.Keys, older_than: float, batch: int, delete_entries: DeleteEntries
    ) -> int:
        """Remove the topic's resolved and reprocessed dead letters settled more than
        `older_than` seconds ago, stream entry first: a row left behind by a crash is found and
        removed again next time."""
        removed = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                # Not while the stream is being reconciled: a reconcile that has read an entry
                # would record it again after it is gone, as a new `open` row pointing nowhere.
                await conn.execute(_STREAM_LOCK, keys.dlq)
                rows = await conn.fetch(_EXPIRED, keys.topic, keys.dlq, older_than, batch)
                if rows:
                    await delete_entries([r["dlq_entry_id"] for r in rows])
                    await conn.execute(
                        f"DELETE FROM {_DEAD_LETTERS} WHERE id = ANY($1::bigint[])",
                        [r["id"] for r in rows],
                    )
                    log.info("removed old dead letters: stream=%s count=%d", keys.dlq, len(rows))
            removed += len(rows)
            if len(rows) < batch:
                return removed

    async def layouts(self, key_prefix: str) -> dict[str, Layout]:
        """The partitioned topics of the deployment with key prefix `key_prefix`."""
        return await topic_layouts.layouts(self._pool, key_prefix)

    async def register(self, member: Member) -> None:
        """Register (or re-register) the member."""
        await registry.register(self._pool, member)

    async def heartbeat(self, member: Member) -> None:
        """Tell the registry the member is alive."""
        await registry.heartbeat(self._pool, member)

    async def unregister(self, member: Member) -> None:
        """Remove the member from the registry (a clean stop)."""
        await registry.unregister(self._pool, member)


async def _record(conn: asyncpg.Connection, rows: Sequence[DeadLetterRow]) -> None:
    await conn.executemany(
        _INSERT,
        [
            (
                r.topic,
                r.dlq_stream,
                r.dlq_entry_id,
                r.source_stream,
                r.source_entry_id,
                r.group,
                r.consumer,
                r.event_id,
                r.event_type,
                r.reason,
                r.error_class,
                r.error,
                r.attempts,
                r.first_failed_at,
                r.last_failed_at,
                r.retry_of,
            )
            for r in rows
        ],
    )
    by_stream: dict[str, tuple[list[str], list[str]]] = {}
    for r in rows:
        if r.retry_of:
            entries, earlier = by_stream.setdefault(r.dlq_stream, ([], []))
            entries.append(r.dlq_entry_id)
            earlier.append(r.retry_of)
    for stream, (entries, earlier) in by_stream.items():
        await conn.execute(_SETTLE, stream, entries, earlier)
