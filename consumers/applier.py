"""Applying a batch of deliveries: ledger rows first, handlers only for the events won.

Exactly-once mode: the batch is split by aggregate id over a few connections; each part runs in
one transaction that inserts its ledger rows (`ON CONFLICT DO NOTHING RETURNING`) and runs the
handlers of the events it won, so their effects commit at most once per (group, event id).
If a handler fails, the part is rolled back and split: the events before the failing one and
those after it run again, each piece in a transaction of its own (halved instead when the failure
cannot be pinned on one event), so only failing events are held back.

Transactions are asyncpg's own (`Connection.transaction()`), so a handler may open
`ctx.db.transaction()` itself: it becomes a savepoint inside the event's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from datetime import timedelta

import asyncpg
from opentelemetry import trace

from consumers import spans
from consumers.deliveries import DeadLetterMark, Delivery
from consumers.leases import LeaseLost
from consumers.ledger import Ledger
from consumers.ordering import block_after
from consumers.outcomes import Outcomes
from consumers.router import Route
from consumers.transactions import (
    DatabaseDown,
    Fence,
    HandlerFailed,
    LostUnderHandler,
    failure_of,
    is_dead,
    is_failure,
    pinned_on,
    returned,
    transaction,
)
from conveyor import sampling
from conveyor.deadlines import DEPENDENCY_TIMEOUT, unanswered
from conveyor.outages import Outage
from conveyor.retry import RetryPolicy, pause

Step = tuple[Route | None, list[Delivery]]
_BACKOFF = RetryPolicy(timedelta(seconds=0.2), timedelta(seconds=10))
"""Backoff of a lane whose database work failed, when none is given (the settings' default)."""
LANE_MIN = 32
"""Fewest events per lane worth a transaction of its own: a smaller batch goes to one lane."""
MERGE_SECONDS = 0.02
"""Handler time under which a small batch goes to one lane: running it on two would save at
most half of it, for the price of a second transaction."""
log = logging.getLogger(__name__)
tracing_enabled = spans.tracing_enabled


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
        backoff: RetryPolicy = _BACKOFF,
        outage: Outage | None = None,
        lanes: asyncpg.Pool | None = None,
        timeout: float | None = DEPENDENCY_TIMEOUT,
        fence: Fence | None = None,
        ordered: bool = False,
    ) -> None:
        self._pool = pool
        self._fence = fence
        """Checked in every part's transaction before its COMMIT (an ordered partition's lease);
        LeaseLost out of it ends `apply` with nothing of the part committed."""
        self._ordered = ordered
        """When an event fails, the later events of its aggregate in the part are not run but
        returned as blocked: no later event of an aggregate commits before an earlier one."""
        self._lane_pool = lanes or pool
        """Where the lanes take their connections: one without a statement timeout, since the
        handlers' statements run on them (the consumer's own go with `timeout`)."""
        self._timeout = timeout
        """Bound on each of the lane's own round trips (BEGIN, the ledger claim, the COMMIT)."""
        self._outage = outage
        """Told when PostgreSQL is away (which it logs once) and when it answers again."""
        self._stopping = stopping or asyncio.Event()
        self._on_trouble = on_trouble
        """Told why, whenever a lane's database work fails and is retried."""
        self._backoff = backoff
        self._partitions = partitions
        self._lanes: list[asyncpg.Connection | None] = [None] * partitions
        self._tails: list[asyncio.Future[Outcomes] | None] = [None] * partitions
        self._working: dict[int, float] = {}
        """Lane -> when (monotonic) the part it applies now began."""
        self._tracing = spans.tracing_enabled()
        self._root_ratio = sampling.installed_ratio()
        self._handler_seconds = 0.0
        """Recent handler time per event (a moving average over transactions)."""
        self._failed_spans: dict[tuple[str, str], trace.Span] = {}
        """Spans of failed handler calls, by (stream, entry id), until the failure is settled."""
        self._ledger = Ledger(
            pool,
            group=group,
            ledger_schema=ledger_schema,
            exactly_once=exactly_once,
            timeout=timeout,
        )

    async def apply(self, deliveries: Sequence[Delivery]) -> Outcomes:
        """Apply `deliveries`. A lane whose database work fails (connection lost, deadlock,
        statement cancelled) retries its part with backoff until it commits; DatabaseDown only
        when a stop interrupts that (the lane's part then committed nothing).

        A small batch is not split: one transaction on one lane costs less than one on each.
        It then goes after the previous parts of every lane its aggregates belong to, and their
        next parts after it."""
        outcomes = Outcomes()
        seen: set[str] = set()
        n = self._partitions
        parts: list[list[Delivery]] = [[] for _ in range(n)]
        whole: list[Delivery] = []
        for d in deliveries:
            if d.event_id in seen:  # the same event twice in one read: a relay retry
                outcomes.done.append(d)
                outcomes.duplicates += 1
                continue
            seen.add(d.event_id)
            whole.append(d)
            parts[hash(d.aggregate_id) % n].append(d)
        lanes = [lane for lane, part in enumerate(parts) if part]
        tails = self._tails
        tasks = []
        if len(lanes) > 1 and self._small(len(whole), len(lanes)):
            task = asyncio.ensure_future(self._after([tails[i] for i in lanes], lanes[0], whole))
            for lane in lanes:
                tails[lane] = task
            tasks.append(task)
        else:
            for lane in lanes:
                task = asyncio.ensure_future(self._after([tails[lane]], lane, parts[lane]))
                tails[lane] = task
                tasks.append(task)
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for part_outcomes in done:
            if isinstance(part_outcomes, BaseException):
                raise part_outcomes
            outcomes.add(part_outcomes)
        return outcomes

    def _small(self, events: int, lanes: int) -> bool:
        """Whether `events` are better applied on one lane than split over `lanes`: fewer than
        LANE_MIN per lane, and their handlers not slow enough (MERGE_SECONDS in all, by the
        recent time per event) for the lanes' parallelism to matter more than a transaction."""
        return events < LANE_MIN * lanes and events * self._handler_seconds < MERGE_SECONDS

    async def _after(
        self,
        previous: list[asyncio.Future[Outcomes] | None],
        lane: int,
        part: list[Delivery],
    ) -> Outcomes:
        """Apply `part` on `lane` once the previous parts of its aggregates' lanes are done: a
        lane takes the same aggregates batch after batch, so their events keep stream order
        while two batches overlap across lanes."""
        waiting = [p for p in previous if p is not None and not p.done()]
        if waiting:
            await asyncio.wait(waiting)
        failures = 0
        while True:
            try:
                outcomes = await self._apply_part(lane, part)
            except DatabaseDown as exc:
                failures += 1
                self._retrying(lane, part, exc)
                if self._stopping.is_set() or await pause(
                    self._stopping, self._backoff.delay(failures)
                ):
                    raise
            else:
                if failures and self._outage is not None:
                    self._outage.answered()
                return outcomes

    def _retrying(self, lane: int, part: list[Delivery], exc: DatabaseDown) -> None:
        """Report a part about to be retried: as PostgreSQL's outage when it is away (the lane's
        line then at DEBUG), else with a warning."""
        cause = exc.__cause__
        level = logging.WARNING
        if self._outage is not None and (cause is None or unanswered(cause)):
            self._outage.failed(cause or exc)  # no cause: the connection was found dead
            level = logging.DEBUG
        if self._on_trouble is not None:
            self._on_trouble(f"database unavailable: {exc}")
        log.log(
            level,
            "lane %d: batch part not applied, retrying it: events=%d error=%s",
            lane,
            len(part),
            exc,
        )

    def waiting(self, now: float) -> float:
        """Seconds the longest-running part has been on its lane's connection (0 when none
        is): a handler's statement that long without an answer may be one that never comes."""
        return max((now - began for began in self._working.values()), default=0.0)

    async def _apply_part(self, lane: int, part: list[Delivery]) -> Outcomes:
        self._working[lane] = time.monotonic()
        try:
            return await self._in_pieces(lane, part)
        except LeaseLost:
            raise  # rolled back: the partition is another member's now
        except DatabaseDown:
            await self._drop(lane, self._lanes[lane])
            raise
        except Exception as exc:
            # Any failure outside a handler (lost connection, deadlock, statement cancelled,
            # failover to a read-only node, a connection left mid-protocol): the piece being
            # applied committed nothing; retry the part on a fresh connection (what committed
            # before is found in the ledger).
            await self._drop(lane, self._lanes[lane])
            raise DatabaseDown(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self._drop(lane, self._lanes[lane])  # cancelled mid-query: never reuse it
            raise
        finally:
            self._working.pop(lane, None)

    async def _in_pieces(self, lane: int, part: list[Delivery]) -> Outcomes:
        """Apply `part` in one transaction; when a handler fails, split it around the failing
        event (or in halves, when the failure cannot be pinned on one event: a batch handler,
        a swallowed error's symptom, a deferred constraint at COMMIT) and apply each piece in a
        transaction of its own, until only failing events are left out. Pieces keep stream
        order, so each aggregate's events still apply in order. A handler that lost its
        connection once too often failed too (LostUnderHandler.counted); the next piece goes on a
        new connection."""
        outcomes = Outcomes()
        pieces: deque[list[Delivery]] = deque([part])
        while pieces:
            piece = pieces.popleft()
            if not piece:
                continue
            conn = await self._connection(lane)
            try:
                try:
                    outcomes.add(await self._optimistic(conn, piece))
                except LostUnderHandler as lost:
                    if (counted := lost.counted()) is None:
                        raise
                    raise counted from lost
            except HandlerFailed as failed:
                culprit = pinned_on(failed)
                if culprit is None and len(piece) == 1:
                    culprit = piece[0]
                if culprit is not None:
                    outcomes.failed.append((culprit, failed.error))
                    at = next(i for i, d in enumerate(piece) if d is culprit)
                    pieces.extendleft([piece[at + 1 :], piece[:at]])
                    if self._ordered:
                        block_after(pieces, culprit.aggregate_id, outcomes.blocked)
                else:
                    mid = len(piece) // 2
                    pieces.extendleft([piece[mid:], piece[:mid]])
        return outcomes

    async def _connection(self, lane: int) -> asyncpg.Connection:
        """The lane's own connection, kept across batches (a pool round trip and the pool's
        reset query per batch would cost more than a small batch's work); replaced when broken."""
        conn = self._lanes[lane]
        if conn is not None and not is_dead(conn):
            return conn
        await self._drop(lane, conn)
        conn = self._lanes[lane] = await self._lane_pool.acquire(timeout=self._timeout)
        return conn

    async def _drop(self, lane: int, conn: asyncpg.Connection | None) -> None:
        """Forget the lane's connection after a failure: closed at once (its protocol state is
        unknown) and handed back, so the pool opens a fresh one."""
        self._lanes[lane] = None
        if conn is not None:
            with suppress(Exception):  # already released by the pool, or broken: either way gone
                conn.terminate()
                await self._lane_pool.release(conn, timeout=5)

    async def _traced(self, route: Route, d: Delivery) -> None:
        """The handler call in its process span. A failed call's span stays open until the
        worker settles the failure (`failed_span`), so the retry or the dead letter shows on it;
        a call made again meanwhile (the piece split, the part retried) ends it first."""
        key = (d.entry.stream, d.entry.entry_id)
        if self._failed_spans and (stale := self._failed_spans.pop(key, None)) is not None:
            stale.end()
        span = spans.start_process(d, self._root_ratio)
        if span is trace.INVALID_SPAN:  # a root the sampler's ratio did not draw
            await route.fn(d.payload, d.ctx)
            return
        try:
            with trace.use_span(span, end_on_exit=False):
                await route.fn(d.payload, d.ctx)
        except BaseException as exc:
            spans.fail(span, exc)
            if is_failure(exc):
                self._failed_spans[key] = span
            else:
                span.end()
            raise
        span.end()

    def failed_span(self, d: Delivery) -> trace.Span | None:
        """The open span of `d`'s failed handler call, for the worker to settle and end."""
        return self._failed_spans.pop((d.entry.stream, d.entry.entry_id), None)

    def marking_dead_letter(self, mark: DeadLetterMark) -> AbstractAsyncContextManager[bool]:
        """The ledger's `marking`: see `Ledger.marking`."""
        return self._ledger.marking(mark)

    async def close(self) -> None:
        """Give the lanes' connections back to the pool."""
        for span in self._failed_spans.values():
            span.end()
        self._failed_spans.clear()
        lanes, self._lanes = self._lanes, [None] * self._partitions
        for conn in lanes:
            if conn is not None:
                with suppress(Exception):
                    await self._lane_pool.release(conn, timeout=5)

    async def _optimistic(self, conn: asyncpg.Connection, part: list[Delivery]) -> Outcomes:
        async with transaction(conn, part, self._timeout, self._fence):
            won = await self._ledger.claim(conn, part)
            todo = part if len(won) == len(part) else [d for d in part if d.event_id in won]
            if todo:
                started = time.perf_counter()
                for route, group in plan(todo):
                    await self._run(conn, route, group)
                per_event = (time.perf_counter() - started) / len(todo)
                self._handler_seconds += (per_event - self._handler_seconds) * 0.2
        return Outcomes.of(part, won)

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
            except BaseException as exc:
                raise failure_of(conn, group, exc) from exc
            returned(conn, group)
            return
        fn, traced = route.fn, self._tracing
        for d in group:
            try:
                if traced:
                    await self._traced(route, d)
                else:
                    await fn(d.payload, d.ctx)
            except BaseException as exc:
                raise failure_of(conn, [d], exc) from exc
            if is_dead(conn) or not conn.is_in_transaction():
                returned(conn, [d])
