"""The consuming loop of one topic: read, decode, apply, acknowledge, retry, dead-letter."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import RedisError

from consumers import dead_letters
from consumers.applier import (
    Applier,
    DatabaseDown,
    MarksBusy,
    Outcomes,
    tracing_enabled,
)
from consumers.deliveries import (
    DeadLetterMark,
    Decoder,
    Delivery,
    Entry,
    Poison,
    dead_letter_mark,
    describe,
)
from consumers.errors import GroupLost
from consumers.metrics import ConsumerMetrics
from consumers.retries import RetrySchedule, Waiting, backoff
from consumers.router import Router
from consumers.settings import ConsumerSettings
from consumers.signals import Reject, Retry
from consumers.streams import TopicStreams
from conveyor import telemetry as t
from conveyor import wire

log = logging.getLogger(__name__)

_RETRY_STREAM_PERIOD = 0.2
"""Seconds between reads of the group's retry stream (reprocessed dead letters)."""
_TOUCH_MARGIN = 0.5
"""Seconds subtracted from our own idea of an entry's idle time when touching it."""
_BATCHES_IN_FLIGHT = 2
"""Batches being applied at once: each lane applies its parts in order, so a batch's lanes
start as soon as the previous batch's same lanes are done."""
_IN_FLIGHT_POLL = 0.02
"""Seconds between reads of an empty stream while a batch is being applied (a blocking read
would hold back due retries; reading without a pause would spin)."""


class DeadLetterSink(Protocol):
    async def record(self, rows: Sequence[tuple[Any, ...]]) -> None: ...

    async def mark_reprocessed(self, dlq_stream: str, entry_ids: Sequence[str]) -> None: ...


@dataclass(slots=True)
class Batch:
    """A decoded batch waiting to be applied."""

    deliveries: list[Delivery] = field(default_factory=list)
    settled: list[Entry] = field(default_factory=list)
    """Entries to acknowledge without handling (deleted or trimmed while pending)."""


@dataclass(slots=True)
class Health:
    """What the worker says about itself; the ops plane turns it into health statuses."""

    serving: bool = False
    reason: str = "starting"
    last_progress: float = 0.0
    """Monotonic time a batch last finished (or the worker started)."""
    stopped: bool = False


class TopicWorker:
    """Consumes one topic for one group until `stopping` is set; in-flight work then finishes."""

    def __init__(
        self,
        topic: str,
        *,
        streams: TopicStreams,
        applier: Applier,
        catalog: DeadLetterSink,
        router: Router,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
        stopping: asyncio.Event,
    ) -> None:
        self.topic = topic
        self.streams = streams
        self._applier = applier
        self._catalog = catalog
        self._s = settings
        self._m = metrics
        self._stopping = stopping
        self._schedule = RetrySchedule()
        self._next_reclaim = 0.0
        self._cursors: dict[str, str] = {}
        self._next_retry_read = 0.0
        self._prefetch: asyncio.Task[list[Entry]] | None = None
        self.health = Health(last_progress=time.monotonic())
        self._tracing = tracing_enabled()
        self._decoder = Decoder(
            topic=topic, group=settings.group, router=router, max_bytes=settings.max_event_bytes
        )
        self._attrs = {t.ATTR_STREAM: streams.keys.events, t.ATTR_GROUP: settings.group}
        applier.on_trouble = self._unhealthy

    async def run(self) -> None:
        """Consume until stopped. Redis failures back off and resume; a group that vanished is
        handled as a lost group, also when it is noticed while reconnecting."""
        failures = 0
        recreate = False
        while not self.health.stopped and not self._stopping.is_set():
            try:
                if failures or recreate:
                    created = await self.streams.ensure_groups()
                    if created and not recreate:  # vanished while we were reconnecting
                        raise GroupLost(self.streams.keys.events, self._s.group)
                    recreate = False
                await self._consume()
                failures = 0
            except GroupLost as lost:
                recreate = self._on_group_lost(lost)
            except (RedisError, OSError, TimeoutError, DatabaseDown) as exc:
                failures += 1
                self._unhealthy(f"{type(exc).__name__}: {exc}")
                await self._pause(min(self._s.db_backoff_max, 0.1 * 2**failures))
            finally:
                await self._drop_prefetch()
        if self.health.stopped:
            await self._stopping.wait()  # stay up, not serving, until told to stop

    async def close(self) -> None:
        """Release the worker's database connections."""
        await self._applier.close()

    async def _consume(self) -> None:
        """Rounds until stopped, as a pipeline: while batches N-1 and N are applied, batch N+1
        is decoded and N+2 read. Each database lane applies its part of one batch after the
        other, so one aggregate's events keep stream order. A batch already read when the stop
        comes is still applied and acknowledged."""
        applying: deque[asyncio.Task[None]] = deque()
        try:
            while True:
                stopping = self._stopping.is_set()
                entries = [] if stopping else await self._side_entries()
                if self._prefetch is not None:
                    entries += await self._take_prefetch()
                elif not stopping:
                    room = self._s.batch_size - len(entries)
                    entries += await self._read_new(room, wait=not entries and not applying)
                if stopping and not entries:
                    return
                if entries and not stopping:
                    self._prefetch = asyncio.create_task(
                        self._read_new(self._s.batch_size, wait=False)
                    )
                await self._touch_waiting()
                batch = await self.prepare(entries)
                while applying and (applying[0].done() or len(applying) >= _BATCHES_IN_FLIGHT):
                    await applying.popleft()
                if batch.deliveries or batch.settled:
                    applying.append(asyncio.create_task(self.finish(batch)))
                elif applying:  # nothing new; the batch in flight marks progress when done
                    await asyncio.wait([applying[0]], timeout=_IN_FLIGHT_POLL)
                else:
                    self._progressed()  # idle: nothing waiting, nothing in flight
        finally:
            while applying:
                await applying.popleft()

    async def _side_entries(self) -> list[Entry]:
        """Due retries, entries idle on dead consumers and reprocess requests, when it is time."""
        entries = await self._due_retries()
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + max(self._s.claim_idle / 4, 0.05)
            entries += await self._reclaim()
        if now >= self._next_retry_read:
            self._next_retry_read = now + _RETRY_STREAM_PERIOD
            entries += await self.streams.read(self.streams.retry, self._s.batch_size, None)
        return entries

    async def _read_new(self, count: int, *, wait: bool) -> list[Entry]:
        if count <= 0:
            return []
        block = self._block_ms() if wait else None
        return await self.streams.read(self.streams.keys.events, count, block)

    async def _take_prefetch(self) -> list[Entry]:
        task, self._prefetch = self._prefetch, None
        assert task is not None
        return await task

    async def _drop_prefetch(self) -> None:
        """After a failure: entries a prefetch read stay pending and are reclaimed later."""
        task, self._prefetch = self._prefetch, None
        if task is not None:
            with suppress(Exception):
                await task

    def _block_ms(self) -> int:
        wait = self._s.block
        due = self._schedule.next_due()
        if due is not None:
            wait = min(wait, max(due - time.monotonic(), 0.001))
        return max(int(wait * 1000), 1)

    async def process(self, entries: list[Entry]) -> None:
        """Decode, apply and settle one batch of entries."""
        await self.finish(await self.prepare(entries))

    async def prepare(self, entries: list[Entry]) -> Batch:
        """Decode a batch; entries that can never be handled become dead letters now."""
        batch = Batch()
        if entries:
            self._m.consumed.add(len(entries), self._attrs)
        over: list[Entry] = []
        for entry in entries:
            if entry.deleted:
                self._deleted([entry.entry_id], entry.stream)
                batch.settled.append(entry)
                continue
            if entry.attempt > self._s.max_attempts:
                over.append(entry)
                continue
            decoded = self._decoder.decode(entry)
            if isinstance(decoded, Poison):
                await self._dead_letter(
                    entry, decoded.reason, decoded.error_class or "Poison", decoded.error
                )
            else:
                batch.deliveries.append(decoded)
        if over:
            await self._over_attempts(over, batch)
        return batch

    async def _over_attempts(self, entries: list[Entry], batch: Batch) -> None:
        """Entries delivered more often than max_attempts, whose last deliveries ended without
        an outcome (their consumers crashed or stalled), go to the dead-letter stream. But a
        stalled member may still hold one: the ledger is marked around the moves, so such a
        member cannot apply one after it was moved, and one it applied meanwhile (or one moved
        already) is acknowledged instead of moved. A database failure leaves them all pending
        (DatabaseDown: the worker backs off); they are reclaimed later."""
        marks: dict[str, tuple[Entry, DeadLetterMark]] = {}
        again: list[Entry] = []
        for entry in entries:
            mark = dead_letter_mark(entry)
            if mark is None:
                await self._over_attempts_one(entry)  # not an event anyone could apply
            elif mark.event_id in marks:
                again.append(entry)  # the same event twice: one dead letter is enough
            else:
                marks[mark.event_id] = (entry, mark)
        rows: list[tuple[object, ...]] = []
        try:
            async with self._applier.marking_dead_letters([m for _, m in marks.values()]) as done:
                for event_id, (entry, _) in marks.items():
                    if event_id in done:
                        batch.settled.append(entry)
                        self._m.duplicate.add(1, self._attrs)
                    else:
                        rows.append(await self._over_attempts_one(entry, record=False))
        except MarksBusy:
            log.info(
                "over max_attempts but still being applied elsewhere, left pending: "
                "topic=%s group=%s entries=%s",
                self.topic,
                self._s.group,
                ",".join(e.entry_id for e, _ in marks.values()),
            )
            return
        # Recorded once the marks have committed and given their connection back: the worker
        # never holds two of the pool's connections at once.
        await self._record(rows)
        batch.settled += again

    async def _over_attempts_one(self, entry: Entry, *, record: bool = True) -> tuple[object, ...]:
        return await self._dead_letter(
            entry,
            "max_attempts",
            "Redelivered",
            f"delivered {entry.attempt} times, over max_attempts={self._s.max_attempts}; "
            "the last deliveries ended without an outcome (consumer crash?)",
            record=record,
        )

    async def finish(self, batch: Batch) -> None:
        """Apply a decoded batch, schedule or dead-letter its failures, acknowledge the rest."""
        settled = batch.settled
        if batch.deliveries:
            started = time.perf_counter()
            # Database failures are retried per lane inside the applier; DatabaseDown comes
            # out only when a stop cuts those retries short.
            outcomes = await self._applier.apply(batch.deliveries)
            per_event = (time.perf_counter() - started) / len(batch.deliveries)
            self._m.processing.record(per_event, self._attrs)
            settled += await self._settle(outcomes)
        if settled:
            await self.streams.ack(settled)
            await self._reprocessed(settled)
        self._progressed()

    async def _reprocessed(self, settled: list[Entry]) -> None:
        """Settled entries of the retry stream that re-delivered a dead letter: record it."""
        ids = [
            e.fields[wire.RT_DEAD_LETTER].decode()
            for e in settled
            if e.stream == self.streams.retry and wire.RT_DEAD_LETTER in e.fields
        ]
        if ids:
            try:
                await self._catalog.mark_reprocessed(self.streams.keys.dlq, ids)
            except Exception as exc:  # noqa: BLE001 - the catalog is informative here
                log.warning("cannot mark dead letters reprocessed: ids=%s error=%r", ids, exc)

    def _progressed(self) -> None:
        self.health.serving, self.health.reason = True, ""
        self.health.last_progress = time.monotonic()

    async def _settle(self, outcomes: Outcomes) -> list[Entry]:
        for d, error in outcomes.failed:
            await self._failed(d, error)
        if outcomes.duplicates:
            self._m.duplicate.add(outcomes.duplicates, self._attrs)
        for result, n in (("success", outcomes.applied), ("skipped", outcomes.skipped),
                          ("duplicate", outcomes.duplicates)):  # fmt: skip
            if n:
                self._m.processed.add(n, {**self._attrs, t.ATTR_RESULT: result})
        return [d.entry for d in outcomes.done]

    async def _failed(self, d: Delivery, error: BaseException | None) -> None:
        entry = d.entry
        entry.first_failed = entry.first_failed or time.time()
        name = type(error).__name__ if error else "Error"
        if isinstance(error, Reject):
            await self._dead_letter(entry, "rejected", name, error.reason, error)
            return
        if entry.attempt >= self._s.max_attempts:
            await self._dead_letter(entry, "max_attempts", name, str(error), error)
            return
        delay = (
            error.delay
            if isinstance(error, Retry) and error.delay is not None
            else backoff(entry.attempt, self._s.retry_backoff, self._s.retry_backoff_max)
        )
        # Touch it now: Redis counts its idle time from the delivery, and the schedule's
        # min-idle arithmetic needs to start from a moment Redis agrees on.
        idle_ms = max(int((time.monotonic() - entry.delivered_at - _TOUCH_MARGIN) * 1000), 0)
        if entry.entry_id not in await self.streams.touch(entry.stream, [entry.entry_id], idle_ms):
            log.info("failed entry taken over by another member meanwhile: entry=%s",
                     entry.entry_id)  # fmt: skip
            return
        now = time.monotonic()
        self._schedule.add(
            Waiting(
                now + delay, entry.stream, entry.entry_id, entry.attempt, entry.first_failed, now
            )
        )
        self._m.retried.add(1, self._attrs)
        log.warning(
            "handler failed, retrying: topic=%s group=%s event_id=%s entry=%s attempt=%d "
            "retry_in=%.2fs error=%s",
            self.topic,
            self._s.group,
            d.event_id,
            entry.entry_id,
            entry.attempt,
            delay,
            describe(f"{name}: {error}"),
        )

    async def _dead_letter(
        self,
        entry: Entry,
        reason: str,
        error_class: str,
        error: str,
        exc: BaseException | None = None,
        *,
        record: bool = True,
    ) -> tuple[object, ...]:
        """Move `entry` to the dead-letter stream; its catalog row is recorded now, or returned
        for the caller to record (`record=False`)."""
        with dead_letters.span(entry, reason, enabled=self._tracing) as traceparent:
            fields = dead_letters.fields(
                entry,
                reason=reason,
                group=self._s.group,
                consumer=self._s.consumer,
                error_class=error_class,
                error=error,
                exc=exc,
                traceparent=traceparent,
            )
            dlq_id = await self.streams.dead_letter(entry, fields)
        self._m.dead_lettered.add(1, {**self._attrs, t.ATTR_REASON: reason})
        self._m.processed.add(1, {**self._attrs, t.ATTR_RESULT: "dead_letter"})
        log.error(
            "dead letter: topic=%s group=%s entry=%s reason=%s attempts=%d dlq_entry=%s error=%s",
            self.topic,
            self._s.group,
            entry.entry_id,
            reason,
            entry.attempt,
            dlq_id,
            describe(f"{error_class}: {error}"),
        )
        row = dead_letters.catalog_row(self.topic, self.streams.keys.dlq, dlq_id, fields)
        if record:
            await self._record([row])
        return row

    async def _record(self, rows: Sequence[tuple[object, ...]]) -> None:
        if not rows:
            return
        try:
            await self._catalog.record(rows)
        except Exception as record_error:  # noqa: BLE001 - the reconciler records them later
            log.warning(
                "dead letters not yet in the catalog, the reconciler will add them: "
                "dlq_entries=%s error=%r",
                ",".join(str(r[2]) for r in rows),
                record_error,
            )

    async def _due_retries(self) -> list[Entry]:
        entries: list[Entry] = []
        now = time.monotonic()
        for w in self._schedule.pop_due(now, self._s.batch_size):
            idle_ms = max(int((now - w.touched - _TOUCH_MARGIN) * 1000), 0)
            entry = await self.streams.claim(w.stream, w.entry_id, idle_ms)
            if entry is None:
                if await self.streams.exists(w.stream, w.entry_id):
                    log.info("retry taken over by another member: entry=%s", w.entry_id)
                else:
                    self._deleted([w.entry_id], w.stream)
                continue
            entry.attempt, entry.first_failed = w.attempt + 1, w.first_failed
            entries.append(entry)
        return entries

    async def _reclaim(self) -> list[Entry]:
        entries: list[Entry] = []
        idle_ms = int(self._s.claim_idle * 1000)
        for stream in (self.streams.keys.events, self.streams.retry):
            # Redis looks at no more than 10 x COUNT pending entries per call: keep the cursor,
            # or entries behind a long front of busy ones would never be reached.
            claimed, deleted, self._cursors[stream] = await self.streams.autoclaim(
                stream, idle_ms, self._s.batch_size, self._cursors.get(stream, "0-0")
            )
            if deleted:
                self._deleted(deleted, stream)
            mine = [e for e in claimed if (e.stream, e.entry_id) not in self._schedule]
            if mine:
                log.info(
                    "reclaimed entries idle over %.1fs: stream=%s group=%s count=%d",
                    self._s.claim_idle,
                    stream,
                    self._s.group,
                    len(mine),
                )
            entries += mine
        return entries

    async def _touch_waiting(self) -> None:
        """Reset the idle time of waiting entries before anyone may reclaim them: one call per
        set of entries last touched together, with a min-idle that refuses entries another
        member took over since."""
        now = time.monotonic()
        together: dict[tuple[str, float], list[Waiting]] = {}
        for w in self._schedule.stale(now, self._s.claim_idle / 3):
            together.setdefault((w.stream, w.touched), []).append(w)
        gone: set[tuple[str, str]] = set()
        for (stream, touched), waiting in together.items():
            idle_ms = max(int((now - touched - _TOUCH_MARGIN) * 1000), 0)
            ours = await self.streams.touch(stream, [w.entry_id for w in waiting], idle_ms)
            stamp = time.monotonic()
            for w in waiting:
                if w.entry_id in ours:
                    w.touched = stamp
                else:
                    gone.add((w.stream, w.entry_id))
        self._schedule.drop(gone)

    def _deleted(self, ids: list[str], stream: str) -> None:
        self._m.deleted_pending.add(len(ids), self._attrs)
        log.warning(
            "entries deleted or trimmed while pending, acknowledged without handling: "
            "stream=%s group=%s ids=%s",
            stream,
            self._s.group,
            ",".join(ids[:20]),
        )

    def _on_group_lost(self, lost: GroupLost) -> bool:
        """Count and report a lost group; True when it is to be recreated at 0."""
        self._m.groups_lost.add(1, self._attrs)
        self._schedule.clear()  # the pending entries went with the group
        self._unhealthy(str(lost))
        if self._s.exactly_once or self._s.recreate_lost_group:
            log.error(
                "CONSUMER GROUP LOST: %s; recreating it at 0, the whole retained stream "
                "is delivered again (exactly-once groups skip what they applied)",
                lost,
            )
            return True
        self.health.stopped = True
        log.error(
            "CONSUMER GROUP LOST: %s; this at-least-once group stops here, as recreating it "
            "re-applies the retained stream: restart with --recreate-lost-group to accept "
            "that",
            lost,
        )
        return False

    def _unhealthy(self, reason: str) -> None:
        if self.health.serving or self.health.reason != reason:
            log.warning(
                "consumer not serving: topic=%s group=%s reason=%s",
                self.topic,
                self._s.group,
                describe(reason),
            )
        self.health.serving, self.health.reason = False, reason

    async def _pause(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass
