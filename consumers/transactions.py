"""A lane's transactions, and the failures the applier tells apart in them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress

import asyncpg
from asyncpg.transaction import Transaction, TransactionState

from consumers.deliveries import Delivery


class DatabaseDown(Exception):
    """The database connection failed mid-batch; nothing of the part was committed."""


LOSSES_FORGIVEN = 2
"""Connections an event's handler may lose under it (reset, terminated, closed) in one delivery
without the attempt counting: the database's or the network's failure, retried on a new
connection. One more is the handler's (a poison event that breaks its connection every time):
the attempt fails, so such an event is retried and dead-lettered like any failing one."""


class LostUnderHandler(DatabaseDown):
    """The connection was lost while handlers of `deliveries` ran: retried on a new connection,
    without counting an attempt, up to LOSSES_FORGIVEN times per delivery (`counted`)."""

    def __init__(self, deliveries: Sequence[Delivery], message: str) -> None:
        super().__init__(message)
        self.deliveries = deliveries

    def counted(self) -> HandlerFailed | None:
        """Count the loss against its deliveries: their failure, ConnectionLostUnderHandler, once
        one of them has lost more than LOSSES_FORGIVEN connections; None while forgiven."""
        losses = 0
        for d in self.deliveries:
            d.lost_connections += 1
            losses = max(losses, d.lost_connections)
        if losses <= LOSSES_FORGIVEN:
            return None
        return HandlerFailed(self.deliveries, ConnectionLostUnderHandler(losses, str(self)))


class ConnectionLostUnderHandler(Exception):
    """An event's handler lost its database connection each time it ran, though the database
    answered the new ones: the attempt fails, as the event may be what breaks it."""

    def __init__(self, losses: int, last: str) -> None:
        super().__init__(
            f"the handler's database connection was lost under it {losses} times in a row "
            f"(last: {last}); counted as a failed attempt"
        )


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


Fence = Callable[[asyncpg.Connection], Awaitable[None]]
"""Checks, in the part's transaction just before its COMMIT, that the member may still commit
(an ordered partition's lease); raises to roll the transaction back."""


@asynccontextmanager
async def transaction(
    conn: asyncpg.Connection,
    part: Sequence[Delivery],
    bound: float | None = None,
    fence: Fence | None = None,
) -> AsyncIterator[None]:
    """The part's transaction, asyncpg's own so that handlers can nest theirs in it. It begins
    with a transaction-local marker (sent with BEGIN, in one round trip) and ends with one query
    of two statements (one round trip): the first lets the commit guard pass (app_0004), checks
    that no handler caught a database error and carried on — PostgreSQL would answer COMMIT of
    such an aborted transaction with a silent ROLLBACK, and then nothing of the part was written
    — and that the marker is still there: a handler that sent ROLLBACK (or a COMMIT, which the
    guard failed) and then BEGIN as SQL left the connection in a new transaction, without the
    part's ledger rows and earlier effects. COMMIT runs only when the first statement succeeded.

    Each of these round trips (and the rollback after a failure) gets `bound` seconds; one
    that timed out, or was cancelled, closes the connection instead of rolling back: its server
    may not be answering at all, and a late reply must never be read as another's.

    `fence`, when given, runs after the handlers and before the COMMIT, in the transaction: an
    ordered partition's lease check, which rolls everything back when the lease is gone."""
    started = conn.transaction()
    await _begin(conn, started, bound)
    try:
        yield
        if fence is not None:
            try:
                await fence(conn)
            except asyncpg.InFailedSQLTransactionError as exc:  # a handler swallowed an error
                raise HandlerFailed(part, SwallowedDatabaseError()) from exc
    except BaseException as exc:
        if isinstance(exc, (TimeoutError, asyncio.CancelledError)):
            conn.terminate()
        await _roll_back(conn, started, bound)
        raise
    await _commit(conn, started, part, bound)


async def _begin(conn: asyncpg.Connection, started: Transaction, bound: float | None) -> None:
    if not _MERGED_COMMIT:  # asyncpg's internals are not as expected: two round trips
        async with asyncio.timeout(bound):
            await started.start()
        try:
            await conn.execute(_MARK, timeout=bound)
        except BaseException:
            await _roll_back(conn, started, bound)
            raise
        return
    await conn.execute(_BEGIN, timeout=bound)
    # Tell asyncpg's transaction object that it began, as its own start() would have, so that
    # a handler's ctx.db.transaction() is a savepoint in it (see _MERGED_COMMIT).
    started._connection._top_xact = started
    started._state = TransactionState.STARTED


async def _commit(
    conn: asyncpg.Connection,
    started: Transaction,
    part: Sequence[Delivery],
    bound: float | None,
) -> None:
    if not _MERGED_COMMIT:  # asyncpg's internals are not as expected: two round trips
        try:
            await check_usable(conn, part, commit=True, bound=bound)
        except BaseException:
            await _roll_back(conn, started, bound)
            raise
        try:
            async with asyncio.timeout(bound):
                await started.commit()
        except Exception as exc:
            if (failed := _failed_commit(exc, part)) is not None:
                raise failed from exc
            raise
        return
    try:
        await conn.execute(_COMMIT, timeout=bound)
    except BaseException as exc:
        if isinstance(exc, (TimeoutError, asyncio.CancelledError)):
            conn.terminate()  # whether the COMMIT ran is unknown: the ledger tells on the retry
        # An error in the first statement leaves the transaction open (and aborted): the COMMIT
        # never ran. One in the COMMIT ended it.
        if not is_dead(conn) and conn.is_in_transaction():
            await _roll_back(conn, started, bound)
            failed = _failed_probe(exc, part)
        else:
            _ended(started, TransactionState.FAILED)
            failed = _failed_commit(exc, part)
        if failed is not None:
            raise failed from exc
        raise
    _ended(started, TransactionState.COMMITTED)


def _failed_probe(exc: BaseException, part: Sequence[Delivery]) -> HandlerFailed | None:
    """The handlers' failure that the probe before COMMIT found, if it was one: an aborted
    transaction (a swallowed error) or a missing marker (the transaction was replaced)."""
    if isinstance(exc, asyncpg.InFailedSQLTransactionError):
        return HandlerFailed(part, SwallowedDatabaseError())
    if isinstance(exc, asyncpg.InvalidTextRepresentationError):  # the marker's check
        return HandlerFailed(part, TransactionEnded())
    return None


def _failed_commit(exc: BaseException, part: Sequence[Delivery]) -> HandlerFailed | None:
    """The handlers' failure when the COMMIT itself raised `exc` for their writes — a deferred
    constraint or constraint trigger of their tables — though not yet pinned on one of the
    part's events; None when the database failed rather than a statement (see _TRANSIENT)."""
    if isinstance(exc, asyncpg.PostgresError) and not exc.sqlstate.startswith(_TRANSIENT):
        return HandlerFailed(part, exc)
    return None


async def _roll_back(
    conn: asyncpg.Connection, started: Transaction, bound: float | None = None
) -> None:
    if not is_dead(conn):
        with suppress(Exception):
            async with asyncio.timeout(bound):
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
    conn: asyncpg.Connection,
    deliveries: Sequence[Delivery],
    *,
    commit: bool = False,
    bound: float | None = None,
) -> None:
    """HandlerFailed(SwallowedDatabaseError) when the transaction is aborted (a handler caught
    a database error and returned normally); with `commit`, also HandlerFailed(TransactionEnded)
    when the transaction is not the one `transaction` began, else let the commit guard pass."""
    try:
        await conn.execute(_COMMIT_OK if commit else "SELECT", timeout=bound)
    except asyncpg.InFailedSQLTransactionError as exc:
        raise HandlerFailed(deliveries, SwallowedDatabaseError()) from exc
    except asyncpg.InvalidTextRepresentationError as exc:
        raise HandlerFailed(deliveries, TransactionEnded()) from exc


def handler_failed(
    conn: asyncpg.Connection, deliveries: Sequence[Delivery], exc: BaseException
) -> HandlerFailed | LostUnderHandler:
    """A handler call raised `exc`: its failure, or TransactionEnded when the transaction is gone
    too (a COMMIT sent as SQL, which the commit guard failed, or a ROLLBACK). DatabaseDown when
    the connection itself is gone (reset, or closed by the server): the database or the network
    failed under the handler, which runs again on a new connection, its attempt not counted
    (up to LOSSES_FORGIVEN times)."""
    if is_dead(conn):
        return LostUnderHandler(
            deliveries, f"connection lost under a handler: {type(exc).__name__}: {exc}"
        )
    if not conn.is_in_transaction():
        return HandlerFailed(deliveries, TransactionEnded())
    return HandlerFailed(deliveries, exc)


_MARK = "SELECT set_config('conveyor.lane_transaction', 'on', true)"
_BEGIN = f"BEGIN; {_MARK}"
"""BEGIN and the lane's marker, which PostgreSQL clears when the transaction ends."""
_COMMIT_OK = (
    "SELECT set_config('conveyor.ledger_commit', CASE current_setting('conveyor.lane_transaction', "
    "true) WHEN 'on' THEN 'on' ELSE ('not the transaction the lane began' || coalesce("
    "current_setting('conveyor.lane_transaction', true), ''))::boolean::text END, true)"
)
"""The probe: the commit guard's setting, or, when the marker is gone, an error (the text is
not a boolean: SQL has no RAISE, and this cast is not folded into an error at planning)."""
_COMMIT = f"{_COMMIT_OK}; COMMIT"
"""The probe and the COMMIT as one simple query: PostgreSQL skips the rest of such a query at
its first error, so an aborted or replaced transaction is never sent a COMMIT."""
_TRANSIENT = ("08", "25006", "40", "53", "55P03", "57", "58", "XX")
"""SQLSTATEs of a COMMIT that failed for the database's sake, retried as DatabaseDown: a lost
connection, a read-only node (a failover), serialization failures and deadlocks (class 40),
insufficient resources, a lock timeout, a cancel or shutdown, system and internal errors. Any
other error of a COMMIT (a deferred constraint or constraint trigger) is the handlers'."""


def _asyncpg_internals_known() -> bool:
    """Whether asyncpg keeps a transaction's state where `_begin` and `_ended` update it (true
    of every release since 0.18): otherwise BEGIN and the marker, and the probe and the COMMIT,
    go as two round trips each."""
    return "_state" in getattr(Transaction, "__slots__", ()) and "_top_xact" in getattr(
        asyncpg.Connection, "__slots__", ()
    )


_MERGED_COMMIT = _asyncpg_internals_known()


def is_failure(exc: BaseException) -> bool:
    """Whether a handler's exception fails its attempt: any Exception, and a CancelledError the
    handler let out (a library's own timeout) while nothing is cancelling the running task. A
    real cancellation (a stop), KeyboardInterrupt and SystemExit go on up."""
    if isinstance(exc, Exception):
        return True
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and not task.cancelling()


def failure_of(
    conn: asyncpg.Connection, deliveries: Sequence[Delivery], exc: BaseException
) -> HandlerFailed | LostUnderHandler:
    """The HandlerFailed of a handler call that raised `exc` (DatabaseDown when its connection
    was lost under it); raises `exc` when it is no failure."""
    if not is_failure(exc):
        raise exc
    return handler_failed(conn, deliveries, exc)


def returned(conn: asyncpg.Connection, deliveries: Sequence[Delivery]) -> None:
    """After handlers of `deliveries` returned normally: LostUnderHandler when they left the
    connection closed, HandlerFailed(TransactionEnded) when they ended the transaction."""
    if is_dead(conn):
        raise LostUnderHandler(deliveries, "a handler returned with its connection closed")
    if not conn.is_in_transaction():
        raise HandlerFailed(deliveries, TransactionEnded())


def pinned_on(failed: HandlerFailed) -> Delivery | None:
    """The one event a failure is pinned on: a per-event handler that raised or ended the
    transaction. None when it cannot be told: a batch handler's call, what a later handler
    raised because an earlier one swallowed a database error, a deferred constraint at COMMIT."""
    if len(failed.deliveries) != 1 or isinstance(
        failed.error, (asyncpg.InFailedSQLTransactionError, SwallowedDatabaseError)
    ):
        return None
    return failed.deliveries[0]
