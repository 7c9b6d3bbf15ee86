"""NOTIFY between producers and relays: the LISTEN connection, and the listeners table through
which a relay tells producers' outbox trigger whether it is waiting for a NOTIFY (app_0005)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg

from conveyor import database
from conveyor.deadlines import DEPENDENCY_TIMEOUT, postgres_keepalive
from relay.registry import process_name

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listener:
    """A LISTEN connection, as the listeners table knows it: its backend's pid and start time
    (the pair tells a live connection from a later one that reused the pid)."""

    pid: int
    backend_start: datetime | None


class NotifyListener:
    """A dedicated connection LISTENing on the outbox channels; calls `wake(schema)` on NOTIFY."""

    def __init__(
        self,
        dsn: str,
        schemas: Sequence[str],
        wake: Callable[[str], None],
        *,
        timeout: float = DEPENDENCY_TIMEOUT,
    ) -> None:
        self._dsn = dsn
        self._channels = {database.notify_channel(s): s for s in schemas}
        self._wake = wake
        self._timeout = timeout
        """Bound on connecting and on each statement of the connection."""
        self._conn: asyncpg.Connection | None = None
        self.me: Listener | None = None
        """This connection's backend, once connected; None before."""

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> Listener:
        """(Re)open the connection and LISTEN; raises what asyncpg raises when PG is down."""
        await self.close()
        named = database.server_settings(self._dsn, "relay listen", process_name())
        t = self._timeout
        conn = await asyncpg.connect(self._dsn, timeout=t, command_timeout=t, server_settings=named)
        try:
            await postgres_keepalive(self._timeout)(conn)
            for channel in self._channels:
                await conn.add_listener(channel, self._on_notify)
            started = await conn.fetchval(
                "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.me = Listener(conn.get_server_pid(), started)
        return self.me

    async def check(self) -> None:
        """One round trip on the connection, which otherwise only receives: a connection whose
        server stopped answering (or vanished without a word) would never deliver a NOTIFY
        again. One that does not answer within the timeout is closed, so `connected` turns False
        and the relay reconnects; raises what the round trip raised."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return
        try:
            await conn.fetchval("SELECT 1", timeout=self._timeout)
        except BaseException:
            conn.terminate()
            raise

    def _on_notify(self, _conn: object, _pid: int, channel: str, _payload: str) -> None:
        schema = self._channels.get(channel)
        if schema is not None:
            self._wake(schema)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=min(5.0, self._timeout))
            except Exception:  # noqa: BLE001 - no answer to the goodbye: closed without one
                conn.terminate()


class WaitFlag(Protocol):
    """What producers read to decide whether to NOTIFY, for one relay and schema (real:
    ListenerRow; tests may fake it)."""

    async def waiting(self) -> bool:
        """Say "waiting: notify me". True once it holds: every producer that read "busy" before
        has finished, so a claim now sees its rows. False when one is still open: stay busy,
        claim again shortly and try later."""

    async def busy(self) -> None:
        """Say "busy: I claim again without being woken", so producers skip the NOTIFY."""


class Listeners:
    """The listeners table of one schema: a row per relay LISTEN connection, waiting or busy.

    The outbox trigger notifies unless every row says busy. A row turns to waiting in a
    transaction that first takes the table's ACCESS EXCLUSIVE lock with NOWAIT: each producer's
    trigger holds ACCESS SHARE on the table until its transaction ends, so the lock is only
    granted when no producer that read "busy" is still open.
    """

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.schema = database.validate_schema(schema)
        self._pool = pool
        self._table = table = f"{schema}.{database.RELAY_LISTENERS_TABLE}"
        self._upsert = (
            f"INSERT INTO {table} (pid, backend_start, waiting) VALUES ($1, $2, false) "
            "ON CONFLICT (pid) DO UPDATE SET backend_start = EXCLUDED.backend_start, "
            "waiting = false, changed_at = now()"
        )
        self._busy = f"UPDATE {table} SET waiting = false, changed_at = now() WHERE pid = $1"
        self._delete = f"DELETE FROM {table} WHERE pid = $1"
        # Rows of LISTEN connections that ended without deleting theirs (a relay killed, a
        # connection lost): a waiting one would make producers notify for nobody.
        self._sweep = (
            f"DELETE FROM {table} l WHERE NOT EXISTS (SELECT FROM pg_stat_activity a "
            "WHERE a.pid = l.pid AND (a.backend_start IS NULL OR l.backend_start IS NULL "
            "OR a.backend_start = l.backend_start))"
        )
        self._missing_logged = False

    def row(self, me: Listener) -> ListenerRow:
        """The WaitFlag of the relay listening on `me`."""
        return ListenerRow(self, me)

    async def register(self, me: Listener) -> None:
        """Add (or reset) the row of `me` as busy, and delete the rows of connections gone."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(self._upsert, me.pid, me.backend_start)
                await conn.execute(self._sweep)
        except asyncpg.UndefinedTableError:
            self._table_missing()

    async def waiting(self, me: Listener) -> bool:
        started = "NULL" if me.backend_start is None else f"'{me.backend_start.isoformat()}'"
        # One round trip, one implicit transaction: the lock is held until the row committed.
        # pid and start time are our own backend's, not input.
        announce = (
            f"LOCK TABLE {self._table} IN ACCESS EXCLUSIVE MODE NOWAIT; "
            f"INSERT INTO {self._table} (pid, backend_start, waiting) "
            f"VALUES ({int(me.pid)}, {started}::timestamptz, true) ON CONFLICT (pid) "
            "DO UPDATE SET waiting = true, changed_at = now()"
        )
        try:
            await self._pool.execute(announce)
        except asyncpg.LockNotAvailableError:
            return False
        except asyncpg.UndefinedTableError:
            # A schema downgraded under a running relay: its trigger notifies on every
            # statement again, so waiting for a NOTIFY is safe.
            self._table_missing()
        return True

    async def busy(self, me: Listener) -> None:
        try:
            await self._pool.execute(self._busy, me.pid)
        except asyncpg.UndefinedTableError:
            self._table_missing()

    async def unregister(self, me: Listener) -> None:
        """Delete the row of `me` (a clean stop)."""
        try:
            await self._pool.execute(self._delete, me.pid)
        except asyncpg.UndefinedTableError:
            self._table_missing()

    async def sweep(self) -> None:
        """Delete the rows of LISTEN connections that no longer exist."""
        try:
            await self._pool.execute(self._sweep)
        except asyncpg.UndefinedTableError:
            self._table_missing()

    def _table_missing(self) -> None:
        if not self._missing_logged:
            self._missing_logged = True
            log.warning(
                "schema %s has no %s table (downgraded below app_0005 under a running relay?): "
                "its outbox trigger notifies on every commit",
                self.schema,
                database.RELAY_LISTENERS_TABLE,
            )


@dataclass(frozen=True, slots=True)
class ListenerRow:
    """One relay's row of one schema's listeners table, as the forwarder's WaitFlag."""

    table: Listeners
    me: Listener

    async def waiting(self) -> bool:
        return await self.table.waiting(self.me)

    async def busy(self) -> None:
        await self.table.busy(self.me)
