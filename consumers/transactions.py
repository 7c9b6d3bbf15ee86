"""A lane's transactions, and the failures the applier tells apart in them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

import asyncpg

from consumers.deliveries import Delivery


class DatabaseDown(Exception):
    """The database connection failed mid-batch; nothing of the part was committed."""


class SwallowedDatabaseError(Exception):
    """A handler caught a database error and carried on: its transaction was already aborted,
    so nothing it or its neighbours wrote could commit."""

    def __init__(self) -> None:
        super().__init__(
            "a handler caught a database error and returned normally; the transaction was "
            "aborted by that error (let it propagate, or wrap the statement in "
            "`async with ctx.db.transaction():` to contain it)"
        )


class TransactionEnded(Exception):
    """A handler ended the transaction that holds the ledger rows (COMMIT or ROLLBACK sent as
    SQL), so its effects no longer commit together with them."""

    def __init__(self) -> None:
        super().__init__(
            "a handler ended the event's transaction with COMMIT or ROLLBACK sent as SQL; "
            "handlers must leave the transaction open (use `async with ctx.db.transaction():` "
            "for a part that may fail on its own)"
        )


class HandlerFailed(Exception):
    """A handler call failed with `error` (or left the transaction unusable) for `deliveries`."""

    def __init__(self, deliveries: Sequence[Delivery], error: BaseException) -> None:
        super().__init__(str(error))
        self.deliveries = deliveries
        self.error = error


def is_dead(conn: asyncpg.Connection) -> bool:
    """True when the connection is closed, or was already handed back to the pool (asyncpg
    does that itself when a pooled connection breaks)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


@asynccontextmanager
async def transaction(conn: asyncpg.Connection, part: Sequence[Delivery]) -> AsyncIterator[None]:
    """The part's transaction, asyncpg's own so that handlers can nest theirs in it. Just before
    the COMMIT one statement both lets the commit guard pass (app_0004) and checks that no
    handler caught a database error and carried on: PostgreSQL would answer COMMIT of such an
    aborted transaction with a silent ROLLBACK, and then nothing of the part was written."""
    started = conn.transaction()
    await started.start()
    try:
        yield
        await check_usable(conn, part, commit=True)
    except BaseException:
        if not is_dead(conn):
            with suppress(Exception):
                await started.rollback()
        raise
    try:
        await started.commit()
    except asyncpg.IntegrityConstraintViolationError as exc:
        # A deferred constraint of a handler's tables failed at COMMIT: a handler failure,
        # though not yet pinned on one of the part's events.
        raise HandlerFailed(part, exc) from exc


async def check_usable(
    conn: asyncpg.Connection, deliveries: Sequence[Delivery], *, commit: bool = False
) -> None:
    """HandlerFailed(SwallowedDatabaseError) when the transaction is aborted (a handler caught
    a database error and returned normally); with `commit`, also let the commit guard pass."""
    try:
        await conn.execute(_COMMIT_OK if commit else "SELECT")
    except asyncpg.InFailedSQLTransactionError as exc:
        raise HandlerFailed(deliveries, SwallowedDatabaseError()) from exc


def handler_failed(
    conn: asyncpg.Connection, deliveries: Sequence[Delivery], exc: Exception
) -> HandlerFailed:
    """A handler call raised `exc`: its failure, or TransactionEnded when the transaction is gone
    too (a COMMIT sent as SQL, which the commit guard failed, or a ROLLBACK)."""
    if not is_dead(conn) and not conn.is_in_transaction():
        return HandlerFailed(deliveries, TransactionEnded())
    return HandlerFailed(deliveries, exc)


_COMMIT_OK = "SELECT set_config('conveyor.ledger_commit', 'on', true)"
