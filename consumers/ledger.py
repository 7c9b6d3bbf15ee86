"""The event ledger of one group: claiming events before their handlers run, undoing claims a
handler's own COMMIT took along, and marking events dead-lettered."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg

from consumers.deliveries import DeadLetterMark, Delivery
from conveyor import database

log = logging.getLogger(__name__)

MARK_LOCK_TIMEOUT = 5
"""Seconds marking dead letters waits for a member still applying one of the events."""


class MarksBusy(Exception):
    """Another member is applying one of the events to be marked; try again later."""


class Ledger:
    """Rows `(group, event id)` in the ledger schema's table: an event whose row a transaction
    inserted is applied by that transaction; in at-least-once mode there is no ledger."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        group: str,
        ledger_schema: str,
        exactly_once: bool,
        retry_stream: str,
    ) -> None:
        self._pool = pool
        self._group = group
        self._exactly_once = exactly_once
        self._retry_stream = retry_stream
        table = f"{database.validate_schema(ledger_schema)}.{database.LEDGER_TABLE}"
        # A 'failure' row (never written by this runtime, but allowed) does not count as applied;
        # nor does a 'dead_letter' mark, which only the group's retry stream ($7, reprocessing)
        # may apply over. Columns travel as one comma-joined text each (ids, type names and
        # entry ids hold no commas): encoding a 1,000-element array costs asyncpg far more than
        # one string.
        self._claim_sql = (
            f"INSERT INTO {table} AS l (consumer_group, event_id, event_type, stream, entry_id, "
            "processing_result) SELECT $1, e::uuid, t, s, x, r FROM unnest("
            "string_to_array($2, ','), string_to_array($3, ','), string_to_array($4, ','), "
            "string_to_array($5, ','), string_to_array($6, ',')) AS u(e, t, s, x, r) "
            "ON CONFLICT (consumer_group, event_id) DO UPDATE SET processing_result = "
            "EXCLUDED.processing_result, processed_at = now(), stream = EXCLUDED.stream, "
            "entry_id = EXCLUDED.entry_id WHERE l.processing_result = 'failure' OR "
            "(l.processing_result = 'dead_letter' AND EXCLUDED.stream = $7) "
            "RETURNING event_id::text"
        )
        self._mark_sql = (
            f"INSERT INTO {table} AS l (consumer_group, event_id, event_type, stream, entry_id, "
            "processing_result) SELECT $1, e, t, s, x, 'dead_letter' FROM unnest($2::uuid[], "
            "$3::text[], $4::text[], $5::text[]) AS u(e, t, s, x) "
            "ON CONFLICT (consumer_group, event_id) DO UPDATE SET processing_result = "
            "'dead_letter', processed_at = now(), stream = EXCLUDED.stream, "
            "entry_id = EXCLUDED.entry_id WHERE l.processing_result IN ('failure', 'dead_letter') "
            "RETURNING event_id::text"
        )
        self._unclaim_sql = (
            f"DELETE FROM {table} WHERE consumer_group = $1 "
            "AND event_id = ANY(string_to_array($2, ',')::uuid[])"
        )

    async def claim(self, conn: asyncpg.Connection, part: Sequence[Delivery]) -> set[str]:
        """Insert the rows of `part` in `conn`'s transaction; the ids of the events won (not
        applied before), whose handlers are to run."""
        if not self._exactly_once:
            return {d.event_id for d in part}
        # Rows go in in event-id order (sorted here rather than by the server), so two members
        # claiming overlapping events take their row locks in the same order.
        part = sorted(part, key=_event_id)
        rows = await conn.fetch(
            self._claim_sql,
            self._group,
            ",".join([d.event_id for d in part]),
            ",".join([d.event_type for d in part]),
            ",".join([d.entry.stream for d in part]),
            ",".join([d.entry.entry_id for d in part]),
            ",".join(["skipped" if d.route is None else "success" for d in part]),
            self._retry_stream,
        )
        return {r[0] for r in rows}

    async def unclaim(
        self, conn: asyncpg.Connection, run_order: Sequence[Delivery], failed: Sequence[Delivery]
    ) -> None:
        """After a handler ended the transaction by SQL: a COMMIT committed the ledger rows of
        the events whose handlers had not run yet (or not finished) without their effects;
        delete those rows (from the `failed` handler call on), so these events are applied
        when they come again."""
        log.error(
            "a handler ended its transaction by SQL: group=%s events=%s",
            self._group,
            [d.event_id for d in failed],
        )
        if not self._exactly_once:
            return
        start = next(i for i, d in enumerate(run_order) if d is failed[0])
        ids = [d.event_id for d in run_order[start:]]
        await conn.execute(self._unclaim_sql, self._group, ",".join(ids))

    @asynccontextmanager
    async def marking(self, marks: Sequence[DeadLetterMark]) -> AsyncIterator[set[str]]:
        """Mark events in the ledger as dead-lettered by the group, in a transaction that
        commits when the block ends (the caller moves them to the dead-letter stream inside
        it), and yield the ids of those the group has applied already: those are neither
        marked nor to be moved. A member still applying one of them is waited for, at most
        MARK_LOCK_TIMEOUT (then MarksBusy); once the marks commit, a member still holding one
        of the events cannot apply it (only the retry stream can, when it is reprocessed).
        In at-least-once mode there is no ledger: nothing is marked or found applied."""
        if not self._exactly_once or not marks:
            yield set()
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{MARK_LOCK_TIMEOUT}s'")
            try:
                rows = await conn.fetch(
                    self._mark_sql,
                    self._group,
                    [uuid.UUID(m.event_id) for m in marks],
                    [m.event_type for m in marks],
                    [m.stream for m in marks],
                    [m.entry_id for m in marks],
                )
            except asyncpg.LockNotAvailableError as exc:
                raise MarksBusy(str(exc)) from exc
            marked = {r[0] for r in rows}
            yield {m.event_id for m in marks} - marked


def _event_id(d: Delivery) -> str:
    return d.event_id
