"""A lane's transactions, and the failures the applier tells apart in them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

import asyncpg
from asyncpg.transaction import Transaction, TransactionState

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
    """The part's transaction, asyncpg's own so that handlers can nest theirs in it. It ends with
    one query of two statements (one round trip): the first both lets the commit guard pass
    (app_0004) and checks that no handler caught a database error and carried on — PostgreSQL
    would answer COMMIT of such an aborted transaction with a silent ROLLBACK, and then nothing
    of the part was written — and COMMIT runs only when it succeeded."""
    started = conn.transaction()
    await started.start()
    try:
        yield
    except BaseException:
        await _roll_back(conn, started)
        raise
    await _commit(conn, started, part)


async def _commit(conn: asyncpg.Connection, started: Transaction, part: Sequence[Delivery]) -> None:
    if not _MERGED_COMMIT:  # asyncpg's internals are not as expected: two round trips
        try:
            await check_usable(conn, part, commit=True)
        except BaseException:
            await _roll_back(conn, started)
            raise
        try:
            await started.commit()
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise HandlerFailed(part, exc) from exc
        return
    try:
        await conn.execute(_COMMIT)
    except BaseException as exc:
        # An error in the first statement leaves the transaction open (and aborted): the COMMIT
        # never ran. One in the COMMIT ended it.
        if not is_dead(conn) and conn.is_in_transaction():
            await _roll_back(conn, started)
        else:
            _ended(started, TransactionState.FAILED)
        if isinstance(exc, asyncpg.InFailedSQLTransactionError):
            raise HandlerFailed(part, SwallowedDatabaseError()) from exc
        if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
            # A deferred constraint of a handler's tables failed at COMMIT: a handler failure,
            # though not yet pinned on one of the part's events.
            raise HandlerFailed(part, exc) from exc
        raise
    _ended(started, TransactionState.COMMITTED)


async def _roll_back(conn: asyncpg.Connection, started: Transaction) -> None:
    if not is_dead(conn):
        with suppress(Exception):
            await started.rollback()


def _ended(started: Transaction, state: TransactionState) -> None:
    """Tell asyncpg's transaction object that the COMMIT it did not send ended it, as its own
    commit() would have, so the connection's next transaction() is a transaction again and not
    a savepoint."""
    con = started._connection  # asyncpg's private state: see _MERGED_COMMIT
    if con._top_xact is started:
        con._top_xact = None
    started._state = state


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
_COMMIT = f"{_COMMIT_OK}; COMMIT"
"""The probe and the COMMIT as one simple query: PostgreSQL skips the rest of such a query at
its first error, so an aborted transaction is never sent a COMMIT."""


def _asyncpg_internals_known() -> bool:
    """Whether asyncpg keeps a transaction's state where `_ended` updates it (true of every
    release since 0.18): otherwise the probe and the COMMIT go as two round trips."""
    return "_state" in getattr(Transaction, "__slots__", ()) and "_top_xact" in getattr(
        asyncpg.Connection, "__slots__", ()
    )


_MERGED_COMMIT = _asyncpg_internals_known()
