"""The event ledger of one group: claiming events before their handlers run, and marking events
dead-lettered."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg

from consumers.deliveries import DeadLetterMark, Delivery
from consumers.transactions import DatabaseDown
from conveyor import database

log = logging.getLogger(__name__)

_OTHER_ENTRY = "(l.stream, l.entry_id) IS DISTINCT FROM (EXCLUDED.stream, EXCLUDED.entry_id)"
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
        timeout: float | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        """Bound on the claim, which runs on a lane's connection (the pool's own statements are
        bounded by the pool)."""
        self._group = group
        self._exactly_once = exactly_once
        schema = database.validate_schema(ledger_schema)
        table = f"{schema}.{database.LEDGER_TABLE}"
        # The claim also touches this connection's row of the commit guard, whose deferred
        # trigger fails any COMMIT but the one `transactions.transaction` sends (app_0004).
        guard = (
            f"WITH guard AS (INSERT INTO {schema}.{database.COMMIT_GUARD_TABLE} AS g (pid) "
            "VALUES (pg_backend_pid()) ON CONFLICT (pid) DO UPDATE SET claims = g.claims + 1) "
        )
        # A 'failure' row (never written by this runtime, but allowed) does not count as applied;
        # nor does a 'dead_letter' mark, which stops only the very entry it was written for (a
        # member still holding it); a reprocess, a replay or a duplicate entry applies over it.
        # Columns travel as one comma-joined text each (ids, type names and entry ids hold no
        # commas): encoding a 1,000-element array costs asyncpg far more than one string.
        self._claim_sql = (
            f"{guard}INSERT INTO {table} AS l (consumer_group, event_id, event_type, stream, "
            "entry_id, processing_result) SELECT $1, e::uuid, t, s, x, r FROM unnest("
            "string_to_array($2, ','), string_to_array($3, ','), string_to_array($4, ','), "
            "string_to_array($5, ','), string_to_array($6, ',')) AS u(e, t, s, x, r) "
            "ON CONFLICT (consumer_group, event_id) DO UPDATE SET processing_result = "
            "EXCLUDED.processing_result, processed_at = now(), stream = EXCLUDED.stream, "
            "entry_id = EXCLUDED.entry_id WHERE l.processing_result = 'failure' OR "
            f"(l.processing_result = 'dead_letter' AND {_OTHER_ENTRY}) "
            "RETURNING event_id::text"
        )
        # Marks an event over its attempts; a mark of this same entry means it was moved
        # already (marks commit after the move), so it is not marked or moved again.
        self._mark_sql = (
            f"INSERT INTO {table} AS l (consumer_group, event_id, event_type, stream, entry_id, "
            "processing_result) SELECT $1, e, t, s, x, 'dead_letter' FROM unnest($2::uuid[], "
            "$3::text[], $4::text[], $5::text[]) AS u(e, t, s, x) "
            "ON CONFLICT (consumer_group, event_id) DO UPDATE SET processing_result = "
            "'dead_letter', processed_at = now(), stream = EXCLUDED.stream, "
            "entry_id = EXCLUDED.entry_id WHERE l.processing_result = 'failure' OR "
            f"(l.processing_result = 'dead_letter' AND {_OTHER_ENTRY}) "
            "RETURNING event_id::text"
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
            timeout=self._timeout,
        )
        return {r[0] for r in rows}

    @asynccontextmanager
    async def marking(self, mark: DeadLetterMark) -> AsyncIterator[bool]:
        """Mark one event in the ledger as dead-lettered by the group, in a transaction that
        commits when the block ends (the caller moves its entry to the dead-letter stream inside
        it), and yield whether it needs no move: the group applied the event already, or this
        very entry was moved already (marks commit after their move). A member still applying
        the event is waited for, at most MARK_LOCK_TIMEOUT (then MarksBusy); once the mark
        commits, a member still holding this entry cannot apply it. A database failure is
        DatabaseDown. In at-least-once mode there is no ledger: nothing is marked."""
        if not self._exactly_once:
            yield False
            return
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{MARK_LOCK_TIMEOUT}s'")
                try:
                    marked = await conn.fetchval(
                        self._mark_sql,
                        self._group,
                        [uuid.UUID(mark.event_id)],
                        [mark.event_type],
                        [mark.stream],
                        [mark.entry_id],
                    )
                except asyncpg.LockNotAvailableError as exc:
                    raise MarksBusy(str(exc)) from exc
                yield marked is None
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if isinstance(exc, asyncpg.LockNotAvailableError):
                raise MarksBusy(str(exc)) from exc
            raise DatabaseDown(f"marking a dead letter: {type(exc).__name__}: {exc}") from exc


def _event_id(d: Delivery) -> str:
    return d.event_id
