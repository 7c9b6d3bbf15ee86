"""Applying a batch of deliveries: ledger rows first, handlers only for the events won.

Exactly-once mode: the batch is split by aggregate id over a few connections; each part runs in
one transaction that inserts its ledger rows (`ON CONFLICT DO NOTHING RETURNING`) and runs the
handlers of the events it won, so their effects commit at most once per (group, event id).
If a handler fails, the part is rolled back and run again with one savepoint per event (per
batch-handler call, halved down to single events), so only the failing event is held back.

Transactions and savepoints are asyncpg's own (`Connection.transaction()`), so a handler may open
`ctx.db.transaction()` itself: it becomes a savepoint inside the event's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from opentelemetry import propagate, trace

from consumers.deliveries import DeadLetterMark, Delivery
from consumers.router import Route
from conveyor import database
from conveyor import telemetry as t


@dataclass(slots=True)
class Outcomes:
    """What became of a batch: deliveries to acknowledge, counts by result, and failures."""

    done: list[Delivery] = field(default_factory=list)
    """Applied, skipped or duplicate: to be acknowledged."""
    applied: int = 0
    skipped: int = 0
    duplicates: int = 0
    failed: list[tuple[Delivery, BaseException]] = field(default_factory=list)

    def add(self, other: Outcomes) -> Outcomes:
        self.done += other.done
        self.applied += other.applied
        self.skipped += other.skipped
        self.duplicates += other.duplicates
        self.failed += other.failed
        return self

    @classmethod
    def of(cls, deliveries: list[Delivery], won: set[str]) -> Outcomes:
        """Outcomes of deliveries whose handlers all succeeded; `won` holds the ids of those not
        applied before (the rest are duplicates)."""
        skipped = sum(1 for d in deliveries if d.route is None and d.event_id in won)
        return cls(list(deliveries), len(won) - skipped, skipped, len(deliveries) - len(won))


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


_OTHER_ENTRY = "(l.stream, l.entry_id) IS DISTINCT FROM (EXCLUDED.stream, EXCLUDED.entry_id)"
MARK_LOCK_TIMEOUT = 5
"""Seconds marking dead letters waits for a member still applying one of the events."""


class MarksBusy(Exception):
    """Another member is applying one of the events to be marked; try again later."""


class TransactionEnded(Exception):
    """A handler ended the transaction that holds the ledger rows (COMMIT or ROLLBACK sent as
    SQL), so its effects no longer commit together with them."""

    def __init__(self) -> None:
        super().__init__(
            "a handler ended the event's transaction with COMMIT or ROLLBACK sent as SQL; "
            "handlers must leave the transaction open (use `async with ctx.db.transaction():` "
            "for a part that may fail on its own)"
        )


class _Failed(Exception):
    def __init__(self, deliveries: Sequence[Delivery], error: BaseException) -> None:
        super().__init__(str(error))
        self.deliveries = deliveries
        self.error = error


Step = tuple[Route | None, list[Delivery]]
_tracer = trace.get_tracer(t.TRACER)
log = logging.getLogger(__name__)


def plan(deliveries: Sequence[Delivery]) -> list[Step]:
    """Order of handler calls: stream order per aggregate, same-handler events grouped.

    An event's layer is its aggregate's previous event's layer, plus one when the handler
    changes; within a layer each aggregate has one handler, so groups of a layer are independent.
    """
    if deliveries and all(d.route is deliveries[0].route for d in deliveries):
        return [(deliveries[0].route, list(deliveries))]  # one handler: stream order as it is
    last: dict[str, tuple[int, Route | None]] = {}
    layers: list[dict[int, Step]] = []
    for d in deliveries:
        prev = last.get(d.aggregate_id)
        layer = 0 if prev is None else prev[0] + (prev[1] is not d.route)
        last[d.aggregate_id] = (layer, d.route)
        while len(layers) <= layer:
            layers.append({})
        layers[layer].setdefault(id(d.route), (d.route, []))[1].append(d)
    return [step for groups in layers for step in groups.values()]


class Applier:
    """Runs handlers for deliveries, exactly once per (group, event id) or at least once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        group: str,
        ledger_schema: str,
        exactly_once: bool,
        partitions: int,
        stopping: asyncio.Event | None = None,
        on_trouble: Callable[[str], None] | None = None,
        backoff_max: float = 10.0,
    ) -> None:
        self._pool = pool
        self._stopping = stopping or asyncio.Event()
        self.on_trouble = on_trouble
        """Told why, whenever a lane's database work fails and is retried."""
        self._backoff_max = backoff_max
        self._group = group
        self._exactly_once = exactly_once
        self._partitions = partitions
        self._lanes: list[asyncpg.Connection | None] = [None] * partitions
        self._tails: list[asyncio.Future[Outcomes] | None] = [None] * partitions
        self._tracing = tracing_enabled()
        schema = database.validate_schema(ledger_schema)
        table = f"{schema}.{database.LEDGER_TABLE}"
        # The claim also touches this connection's row of the commit guard, whose deferred
        # trigger fails any COMMIT but the one `_transaction` sends (see app_0003).
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

    async def apply(self, deliveries: Sequence[Delivery]) -> Outcomes:
        """Apply `deliveries`. A lane whose database work fails (connection lost, deadlock,
        statement cancelled) retries its part with backoff until it commits; DatabaseDown only
        when a stop interrupts that (the lane's part then committed nothing)."""
        outcomes = Outcomes()
        seen: set[str] = set()
        parts: list[list[Delivery]] = [[] for _ in range(self._partitions)]
        n = self._partitions
        for d in deliveries:
            if d.event_id in seen:  # the same event twice in one read: a relay retry
                outcomes.done.append(d)
                outcomes.duplicates += 1
                continue
            seen.add(d.event_id)
            parts[hash(d.aggregate_id) % n].append(d)
        tasks = []
        for lane, part in enumerate(parts):
            if part:
                task = asyncio.ensure_future(self._after(self._tails[lane], lane, part))
                self._tails[lane] = task
                tasks.append(task)
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for part_outcomes in done:
            if isinstance(part_outcomes, BaseException):
                raise part_outcomes
            outcomes.add(part_outcomes)
        return outcomes

    async def _after(
        self, previous: asyncio.Future[Outcomes] | None, lane: int, part: list[Delivery]
    ) -> Outcomes:
        """Apply `part` on its lane once the lane's previous part is done: a lane takes the
        same aggregates batch after batch, so their events keep stream order while two batches
        overlap across lanes."""
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        failures = 0
        while True:
            try:
                return await self._apply_part(lane, part)
            except DatabaseDown as exc:
                failures += 1
                if self.on_trouble is not None:
                    self.on_trouble(f"database unavailable: {exc}")
                log.warning("lane %d: batch part not applied, retrying it: events=%d error=%s",
                            lane, len(part), exc)  # fmt: skip
                if self._stopping.is_set() or await self._pause(
                    min(self._backoff_max, 0.1 * 2**failures)
                ):
                    raise

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the stop came."""
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True

    async def _apply_part(self, lane: int, part: list[Delivery]) -> Outcomes:
        conn: asyncpg.Connection | None = None
        try:
            conn = await self._connection(lane)
            try:
                return await self._optimistic(conn, part)
            except _Failed as failed:
                bad = _known_bad(failed)
            while True:
                if _dead(conn):
                    raise DatabaseDown("connection lost")
                try:
                    return await self._isolated(conn, part, bad)
                except _Failed as again:
                    if not isinstance(again.error, TransactionEnded):
                        # Savepoints contain handler failures: this is the database.
                        raise DatabaseDown(str(again.error)) from again.error
                    bad |= _known_bad(again)  # run the rest again without that handler call
        except DatabaseDown:
            await self._drop(lane, conn)
            raise
        except Exception as exc:
            # Any failure outside a handler (lost connection, deadlock, statement cancelled,
            # failover to a read-only node, a connection left mid-protocol): the part committed
            # nothing; retry it on a fresh connection.
            await self._drop(lane, conn)
            raise DatabaseDown(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self._drop(lane, conn)  # cancelled mid-query: never reuse that connection
            raise

    async def _connection(self, lane: int) -> asyncpg.Connection:
        """The lane's own connection, kept across batches (a pool round trip and the pool's
        reset query per batch would cost more than a small batch's work); replaced when broken."""
        conn = self._lanes[lane]
        if conn is not None and not _dead(conn):
            return conn
        await self._drop(lane, conn)
        conn = self._lanes[lane] = await self._pool.acquire()
        return conn

    async def _drop(self, lane: int, conn: asyncpg.Connection | None) -> None:
        """Forget the lane's connection after a failure: closed at once (its protocol state is
        unknown) and handed back, so the pool opens a fresh one."""
        self._lanes[lane] = None
        if conn is not None:
            with suppress(Exception):  # already released by the pool, or broken: either way gone
                conn.terminate()
                await self._pool.release(conn, timeout=5)

    @asynccontextmanager
    async def marking_dead_letters(
        self, marks: Sequence[DeadLetterMark]
    ) -> AsyncIterator[set[str]]:
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
        # Event-id order, as the lanes' claims: two transactions take the rows' locks in one
        # order and cannot deadlock.
        marks = sorted(marks, key=_mark_order)
        try:
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
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if isinstance(exc, asyncpg.LockNotAvailableError):
                raise MarksBusy(str(exc)) from exc
            raise DatabaseDown(f"marking dead letters: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Give the lanes' connections back to the pool."""
        lanes, self._lanes = self._lanes, [None] * self._partitions
        for conn in lanes:
            if conn is not None:
                with suppress(Exception):
                    await self._pool.release(conn, timeout=5)

    async def _optimistic(self, conn: asyncpg.Connection, part: list[Delivery]) -> Outcomes:
        async with _transaction(conn, part):
            won = await self._claim(conn, part)
            todo = part if len(won) == len(part) else [d for d in part if d.event_id in won]
            for route, group in plan(todo):
                await self._run(conn, route, group)
        return Outcomes.of(part, won)

    async def _isolated(
        self, conn: asyncpg.Connection, part: list[Delivery], bad: dict[int, _Bad]
    ) -> Outcomes:
        """The part again, each event (each batch-handler call) in a savepoint of its own; the
        deliveries in `bad` are not run again but reported failed."""
        outcomes = Outcomes()
        async with _transaction(conn, part):
            for route, group in plan(part):
                outcomes.failed += [(b.delivery, b.error) for d in group if (b := bad.get(id(d)))]
                todo = [d for d in group if id(d) not in bad]
                if route is not None and not route.batch:
                    for d in todo:
                        outcomes.add(await self._savepoint(conn, route, [d]))
                elif todo:
                    outcomes.add(await self._halving(conn, route, todo))
        return outcomes

    async def _halving(
        self, conn: asyncpg.Connection, route: Route | None, group: list[Delivery]
    ) -> Outcomes:
        outcomes = await self._savepoint(conn, route, group)
        if len(group) == 1 or not outcomes.failed:
            return outcomes
        mid = len(group) // 2
        first = await self._halving(conn, route, group[:mid])
        return first.add(await self._halving(conn, route, group[mid:]))

    async def _savepoint(
        self, conn: asyncpg.Connection, route: Route | None, group: list[Delivery]
    ) -> Outcomes:
        savepoint = conn.transaction()
        await savepoint.start()
        try:
            won = await self._claim(conn, group)
            todo = [d for d in group if d.event_id in won]
            if todo:
                await self._run(conn, route, todo)
                await _check_usable(conn, todo)
        except (_Failed, asyncpg.InFailedSQLTransactionError) as exc:
            if _dead(conn):
                raise DatabaseDown(str(exc)) from exc
            if isinstance(exc, _Failed) and isinstance(exc.error, TransactionEnded):
                raise  # the whole transaction is gone: isolation starts over without them
            await savepoint.rollback()
            error = exc.error if isinstance(exc, _Failed) else SwallowedDatabaseError()
            return Outcomes(failed=[(d, error) for d in group])
        await savepoint.commit()
        return Outcomes.of(group, won)

    async def _claim(self, conn: asyncpg.Connection, part: Sequence[Delivery]) -> set[str]:
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
        )
        return {r[0] for r in rows}

    async def _run(
        self, conn: asyncpg.Connection, route: Route | None, group: list[Delivery]
    ) -> None:
        if route is None:
            return  # unknown type, skipped by policy: the ledger row says so
        for d in group:
            d.ctx.db = conn
        if route.batch:
            try:
                await route.fn([(d.payload, d.ctx) for d in group], conn)
            except Exception as exc:
                raise _failed(conn, group, exc) from exc
            if not conn.is_in_transaction():
                raise _Failed(group, TransactionEnded())
            return
        for d in group:
            try:
                if self._tracing:
                    with _process_span(d):
                        await route.fn(d.payload, d.ctx)
                else:
                    await route.fn(d.payload, d.ctx)
            except Exception as exc:
                raise _failed(conn, [d], exc) from exc
            if not conn.is_in_transaction():
                raise _Failed([d], TransactionEnded())


@dataclass(frozen=True, slots=True)
class _Bad:
    delivery: Delivery
    error: BaseException


def _failed(conn: asyncpg.Connection, deliveries: list[Delivery], exc: Exception) -> _Failed:
    """A handler call raised `exc`: its failure, or TransactionEnded when the transaction is gone
    too (a COMMIT sent as SQL, which the commit guard failed, or a ROLLBACK)."""
    if not _dead(conn) and not conn.is_in_transaction():
        return _Failed(deliveries, TransactionEnded())
    return _Failed(deliveries, exc)


def _known_bad(failed: _Failed) -> dict[int, _Bad]:
    """The deliveries not to run again after `failed`, by id(): the one event whose handler
    failed on its own, or every event of a handler call that ended the transaction; none when
    what was raised is the symptom of an earlier handler having swallowed a database error."""
    if isinstance(failed.error, TransactionEnded) or (
        len(failed.deliveries) == 1
        and not isinstance(failed.error, asyncpg.InFailedSQLTransactionError)
    ):
        return {id(d): _Bad(d, failed.error) for d in failed.deliveries}
    return {}


def _mark_order(m: DeadLetterMark) -> str:
    return m.event_id


def _event_id(d: Delivery) -> str:
    return d.event_id


def _dead(conn: asyncpg.Connection) -> bool:
    """True when the connection is closed, or was already handed back to the pool (asyncpg
    does that itself when a pooled connection breaks)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


@asynccontextmanager
async def _transaction(conn: asyncpg.Connection, part: Sequence[Delivery]) -> AsyncIterator[None]:
    """The part's transaction, asyncpg's own so that handlers can nest theirs in it. Just before
    the COMMIT one statement both lets the commit guard pass and checks that no handler caught a
    database error and carried on: PostgreSQL would answer COMMIT of such an aborted transaction
    with a silent ROLLBACK, and then nothing of the part was written."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield
        await _check_usable(conn, part, commit=True)
    except BaseException:
        if not _dead(conn):
            with suppress(Exception):
                await transaction.rollback()
        raise
    await transaction.commit()


async def _check_usable(
    conn: asyncpg.Connection, deliveries: Sequence[Delivery], *, commit: bool = False
) -> None:
    """_Failed(SwallowedDatabaseError) when the transaction is aborted (a handler caught a
    database error and returned normally); with `commit`, also let the commit guard pass."""
    try:
        await conn.execute(_COMMIT_OK if commit else "SELECT")
    except asyncpg.InFailedSQLTransactionError as exc:
        raise _Failed(deliveries, SwallowedDatabaseError()) from exc


_COMMIT_OK = "SELECT set_config('conveyor.ledger_commit', 'on', true)"


def tracing_enabled() -> bool:
    """True once a real TracerProvider is installed: only then are per-event spans worth their
    cost (extracting the producer's context and starting a span, a few microseconds each)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def _process_span(d: Delivery) -> Any:
    """A CONSUMER span continuing the producer's trace; a missing or malformed traceparent
    starts a fresh trace, and the event is processed all the same."""
    return _tracer.start_as_current_span(
        t.SPAN_PROCESS,
        context=propagate.extract(d.ctx.headers),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            t.ATTR_EVENT_ID: d.event_id,
            t.ATTR_EVENT_TYPE: d.event_type,
            t.ATTR_MESSAGING_SYSTEM: "redis",
            t.ATTR_MESSAGING_DESTINATION: d.entry.stream,
            t.ATTR_GROUP: d.ctx.group,
            "conveyor.attempt": d.ctx.attempt,
        },
    )
