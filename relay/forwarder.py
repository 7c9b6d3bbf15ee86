"""The relay loop of one schema: claim a batch, publish it, commit; pace the claims by what the
last one found (at once, after the gather delay, or on NOTIFY or poll)."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack

from conveyor import telemetry as t
from conveyor.outages import OUTAGE_LOG_INTERVAL
from conveyor.retry import pause
from relay.errors import XaddRejected
from relay.metrics import RelayMetrics
from relay.notify import WaitFlag
from relay.publisher import Publisher
from relay.settings import RelaySettings
from relay.spans import publish_traced, tracing_enabled
from relay.store import Outbox, Row

log = logging.getLogger(__name__)

REFUSED_WAIT_MAX = 0.05
"""Longest wait, in seconds, before looking again while "waiting" is refused: a producer that
read "busy" is still open, so the rows of others who read it too reach no NOTIFY meanwhile; this
bounds what one long producer transaction adds to their latency."""


class Next(enum.Enum):
    """What the next claim waits for, by what the last one found."""

    NOW = enum.auto()
    """A full batch (a backlog), a failure retried, or the start: claim at once."""
    GATHER = enum.auto()
    """Some rows: more are committing; let them gather for the gather delay."""
    IDLE = enum.auto()
    """Nothing: wait for a NOTIFY or the poll interval."""


class Forwarder:
    """Moves one schema's outbox rows to their streams, `concurrency` batches at a time.

    Batches are claimed one after another and their XADDs go out in claim order, so within one
    relay the stream order follows the outbox id order (except after a failed batch is retried).
    A batch that fails is rolled back and retried with jittered exponential backoff; its rows are
    never dropped. When Redis rejected some of its XADDs (error replies) and appended the others,
    the retries append only the rows it has not accepted yet.

    One worker at a time holds the claim lock, and waits there as the last claim says, so one
    NOTIFY wakes one claim, and a claim that found a few rows is followed by one claim after the
    gather delay, not one per commit. With a WaitFlag (the relay LISTENs), a worker that found
    nothing says "waiting" before it waits, and looks once more after that, since producers
    that read "busy" did not notify.
    """

    def __init__(
        self,
        store: Outbox,
        publisher: Publisher,
        settings: RelaySettings,
        metrics: RelayMetrics,
        stopping: asyncio.Event,
    ) -> None:
        self.schema = store.schema
        self.store = store
        self._publisher = publisher
        self._settings = settings
        self._batch_size = settings.batch_size
        self._policy = settings.retry_policy
        self._metrics = metrics
        self._stopping = stopping
        self._wakeup = asyncio.Event()
        self._claim_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._next = Next.NOW
        self._flag: WaitFlag | None = None
        self._flag_generation = 0
        self._waiting = False
        """Our row in the listeners table says waiting (producers notify)."""
        self._streak = 0
        """Claims in a row that found rows."""
        self._looks = 1_000
        """Idle waits since a claim last found rows (many: wait the whole poll interval)."""
        self._refused = 0
        """Times in a row "waiting" was refused because a producer that read "busy" was open."""
        self._attributes: dict[str, dict[str, str]] = {}
        self._appended: dict[int, None] = {}
        """Ids of rows Redis appended in a batch it rejected other XADDs of, which rolled back:
        their retry does not append them again (oldest first, a few batches at most)."""
        self._appended_max = 2 * settings.concurrency * settings.batch_size
        self.published = 0
        """Events published since start."""
        self.last_progress = time.monotonic()
        """When a batch last committed, or the forwarder started."""
        self.last_error: str | None = None
        self._failure_logged = 0.0
        self._failing_since: float | None = None
        """When a failure was first logged since the last commit; None while batches commit."""
        self._out_of_memory = False
        """Redis refused XADDs for want of memory since the last commit."""
        self._oom_logged = -OUTAGE_LOG_INTERVAL
        """When the last line saying Redis is out of memory was logged (monotonic seconds)."""
        self._tracing = tracing_enabled()

    def wake(self) -> None:
        """New rows may be there (NOTIFY, or shutdown): stop waiting and claim."""
        self._wakeup.set()

    def listen(self, flag: WaitFlag | None) -> None:
        """The relay's LISTEN connection is up and its row registered busy (`flag`), or it was
        lost (None: claims are paced by the poll interval alone until it is back)."""
        if flag is None and self._flag is None:
            return
        self._flag = flag
        self._flag_generation += 1
        self._waiting = False
        self._refused = 0
        self.wake()

    async def run(self) -> None:
        """Forward until `stopping` is set; the batch in flight then finishes."""
        await asyncio.gather(*(self._work() for _ in range(self._settings.concurrency)))

    async def _work(self) -> None:
        while not self._stopping.is_set():
            await self._forward_retrying()

    async def _forward_retrying(self) -> int:
        attempt = 0
        while True:
            try:
                return await self.forward_once()
            except Exception as exc:  # noqa: BLE001 - any failure: the rows stay, try again
                if self._stopping.is_set():
                    return 0
                attempt += 1
                delay = self._policy.delay(attempt)
                self._log_failure(exc, attempt, delay)
                if await pause(self._stopping, delay):
                    return 0

    async def forward_once(self) -> int:
        """Wait as the last claim says, then claim, publish and commit one batch; return how
        many events it held."""
        rows: Sequence[Row] = ()
        try:
            async with AsyncExitStack() as stack:
                async with self._claim_lock:
                    if not await self._ready():
                        return 0
                    rows = await stack.enter_async_context(self.store.claim(self._batch_size))
                    self._found(len(rows))
                    if not rows:
                        return 0
                    await self._publish_lock.acquire()
                try:
                    counts = await self._publish(rows)
                finally:
                    self._publish_lock.release()
        except Exception as exc:
            self._next = Next.NOW  # after the backoff
            if isinstance(exc, XaddRejected):
                self._remember(exc.accepted)
                rows = [row for row in rows if row[0] not in self._appended]
            for stream, n in Counter(self._publisher.stream_key(r[2], r[4]) for r in rows).items():
                self._metrics.publish_failed.add(n, self._attributes_of(stream))
            raise
        if self._appended:
            for row in rows:
                self._appended.pop(row[0], None)
        for stream, n in counts.items():
            self._metrics.published.add(n, self._attributes_of(stream))
        self.published += len(rows)
        self.last_progress = time.monotonic()
        self.last_error = None
        if self._failing_since is not None:
            self._recovered()
        self._out_of_memory = False
        return len(rows)

    def _found(self, n: int) -> None:
        if n >= self._batch_size:
            self._next = Next.NOW
        elif n:
            self._next, self._refused, self._looks = Next.GATHER, 0, 0
        else:
            self._next = Next.IDLE
        self._streak = self._streak + 1 if n else 0

    async def _ready(self) -> bool:
        """Wait as the last claim says; False when stopping, or when a look finds no rows."""
        claim = await self._pace()
        if self._stopping.is_set():
            return False
        self._wakeup.clear()  # a NOTIFY from here on may be for rows this claim does not see
        if claim or await self.store.pending():
            return True
        self._next = Next.IDLE
        if self.last_error is not None:  # another relay published what failed here
            self.last_error = None
            if self._failing_since is not None:
                self._recovered()
        return False

    async def _pace(self) -> bool:
        """Wait as `_next` says; True to claim, False to look for rows first (none expected)."""
        if self._next is Next.NOW:
            return True
        if self._next is Next.GATHER:
            # A plain sleep costs less than one a stop can cut short; a stop waits for it (the
            # gather delay is at most a second, and usually a few milliseconds).
            await asyncio.sleep(self._settings.gather_delay)
            if not self._waiting:
                return True  # nobody notifies a busy relay: claim
            if self._wakeup.is_set():
                if self._streak > 1:
                    # Rows keep committing: claim every gather delay, not on a NOTIFY each.
                    await self._say_busy()
                return True
            # Waiting, and no NOTIFY since the claim began: nothing new committed; wait as idle.
        elif self._flag is not None and not self._waiting:
            return await self._say_waiting(self._flag)
        # A NOTIFY (or a stop) ends the wait early: claim. The poll interval: look first.
        await self.store.rest()
        return await pause(self._wakeup, self._idle_wait())

    def _idle_wait(self) -> float:
        """The poll interval; without a LISTEN connection, no NOTIFY says when rows come, so
        after rows were found the wait starts at twice the gather delay and doubles up to it."""
        if self._flag is not None:
            return self._settings.poll_interval
        self._looks += 1
        base = max(self._settings.gather_delay, 0.001)
        grown: float = base * 2.0 ** min(self._looks, 30)
        return min(grown, self._settings.poll_interval)

    async def _say_busy(self) -> None:
        # Believed busy before the write: if it fails, the row may say either (the reply may be
        # lost after the commit), and either is safe for a relay that believes it is busy. It
        # claims without being woken, and the next time it finds nothing it says "waiting" again.
        self._waiting = False
        if self._flag is not None:
            await self._flag.busy()

    async def _say_waiting(self, flag: WaitFlag) -> bool:
        # `_waiting` turns True only once the write is known to hold: if it fails (its reply lost
        # after the commit), the relay still believes it is busy, which is safe whatever the row
        # says (a waiting row only costs producers a NOTIFY); the next idle moment says it again.
        generation = self._flag_generation
        if await flag.waiting():
            # Producers that read "busy" have all finished, those from now on notify: one look
            # now sees the rows of the former.
            self._waiting = generation == self._flag_generation
            self._refused = 0
            return False
        # A producer that read "busy" is still open: look again shortly, backing off while
        # producers keep the table busy (the look finds nothing until one commits).
        self._refused += 1
        await self.store.rest()
        base = max(self._settings.gather_delay, 0.001)
        ceiling = min(REFUSED_WAIT_MAX, self._settings.poll_interval)
        await pause(self._stopping, min(base * 2**self._refused, ceiling))
        return False

    def _attributes_of(self, stream: str) -> dict[str, str]:
        attributes = self._attributes.get(stream)
        if attributes is None:
            attributes = self._attributes[stream] = {t.ATTR_STREAM: stream}
        return attributes

    async def _publish(self, rows: Sequence[Row]) -> dict[str, int]:
        appended = self._appended
        if not appended:
            return await self._send(rows)
        # A retry of a batch Redis rejected part of: what it appended then is not appended again.
        rest = [row for row in rows if row[0] not in appended]
        done = Counter(
            self._publisher.stream_key(row[2], row[4]) for row in rows if row[0] in appended
        )
        counts = await self._send(rest) if rest else {}
        for stream, n in done.items():
            counts[stream] = counts.get(stream, 0) + n
        return counts

    async def _send(self, rows: Sequence[Row]) -> dict[str, int]:
        if not self._tracing:
            return await self._publisher.publish(rows)
        return await publish_traced(
            self._publisher.publish,
            rows,
            name=t.SPAN_RELAY_PUBLISH,
            attributes={t.ATTR_SCHEMA: self.schema},
        )

    def _remember(self, accepted: frozenset[int]) -> None:
        appended = self._appended
        for row_id in sorted(accepted):
            appended[row_id] = None
        while len(appended) > self._appended_max:
            del appended[next(iter(appended))]

    def _log_failure(self, exc: Exception, attempt: int, delay: float) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        now, level = time.monotonic(), logging.DEBUG
        if isinstance(exc, XaddRejected) and exc.out_of_memory:
            # One line every OUTAGE_LOG_INTERVAL whichever worker's batch is refused: Redis
            # refuses until someone frees memory, and every batch meets the same refusal.
            self._out_of_memory = True
            if now - self._oom_logged >= OUTAGE_LOG_INTERVAL:
                self._oom_logged, level = now, logging.ERROR
                if self._failing_since is None:
                    self._failing_since = now
            log.log(
                level,
                "redis is out of memory (used memory > maxmemory) and refuses the relay's XADDs: "
                "the events stay in the outbox and go out once Redis has room; free memory (let "
                "consumers acknowledge so housekeeping trims the streams, cap them with "
                "`conveyor consume --max-stream-length`, delete other keys) or raise maxmemory: "
                "schema=%s attempt=%d retry_in=%.2fs error=%s",
                self.schema,
                attempt,
                delay,
                exc.error,
            )
            return
        # The first failure of a batch, then one every OUTAGE_LOG_INTERVAL: an outage retries
        # for as long as it lasts.
        if attempt == 1 or now - self._failure_logged >= OUTAGE_LOG_INTERVAL:
            self._failure_logged, level = now, logging.WARNING
            if self._failing_since is None:
                self._failing_since = now
        log.log(
            level,
            "relay batch failed, rows stay unpublished and will be retried: schema=%s attempt=%d "
            "retry_in=%.2fs error=%s",
            self.schema,
            attempt,
            delay,
            self.last_error,
        )

    def _recovered(self) -> None:
        """A batch committed after failed ones, or the outbox found empty: say so once."""
        assert self._failing_since is not None
        log.info(
            "relay publishing again: schema=%s after %.0fs of failed batches%s",
            self.schema,
            time.monotonic() - self._failing_since,
            " (redis had no memory for them)" if self._out_of_memory else "",
        )
        self._failing_since = None
