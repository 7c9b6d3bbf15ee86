"""The consuming loop of one topic: read, decode, apply, acknowledge; failures go to the retrier
or the poison queue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from consumers.applier import LANE_MIN, Applier
from consumers.catalog import DeadLetterRow
from consumers.deliveries import Decoder, Delivery, Entry, Poison
from consumers.errors import GroupLost
from consumers.health import Health
from consumers.metrics import ConsumerMetrics, topic_attributes
from consumers.outcomes import Outcomes
from consumers.poison_queue import PoisonQueue
from consumers.reader import Reader
from consumers.retries import Retrier
from consumers.router import Router
from consumers.settings import ConsumerSettings
from consumers.signals import Reject
from consumers.spans import settling
from consumers.streams import TopicStreams
from consumers.transactions import DatabaseDown
from conveyor import telemetry as t
from conveyor.retry import pause

log = logging.getLogger(__name__)

_BATCHES_IN_FLIGHT = 2
"""Batches being applied at once: each lane applies its parts in order, so a batch's lanes
start as soon as the previous batch's same lanes are done."""
_IN_FLIGHT_POLL = 0.02
"""Seconds between reads of an empty stream while a batch is being applied (a blocking read
would hold back due retries; reading without a pause would spin)."""


@dataclass(slots=True)
class Batch:
    """A decoded batch waiting to be applied."""

    deliveries: list[Delivery] = field(default_factory=list)
    settled: list[Entry] = field(default_factory=list)
    """Entries to acknowledge without handling (deleted or trimmed while pending)."""


class TopicWorker:
    """Consumes one topic for one group until `stopping` is set; in-flight work then finishes."""

    def __init__(
        self,
        topic: str,
        *,
        streams: TopicStreams,
        applier: Applier,
        reader: Reader,
        retrier: Retrier,
        poison: PoisonQueue,
        health: Health,
        router: Router,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
        stopping: asyncio.Event,
    ) -> None:
        self.topic = topic
        self.streams = streams
        self.health = health
        self._applier = applier
        self._reader = reader
        self._retrier = retrier
        self._poison = poison
        self._s = settings
        self._outage = settings.outage_policy
        self._m = metrics
        self._stopping = stopping
        self._decoder = Decoder(
            topic=topic, group=settings.group, router=router, max_bytes=settings.max_event_bytes
        )
        self._attrs = topic_attributes(streams.keys.events, settings.group)
        self._small = min(settings.batch_size, LANE_MIN * settings.partitions)
        """Batches smaller than this are gathered; larger ones read the next batch ahead."""
        self._ahead_from = self._small if settings.gather_delay else 1
        """Batches this large read the next one ahead: every batch when none is gathered."""
        self._flowing = False
        """The last read found new entries: the next waits the gather delay, not for one."""
        self._last_read = 0.0
        """time.monotonic() when the last read of new entries returned."""
        metrics.start(streams.keys.events, settings.group)

    async def run(self) -> None:
        """Consume until stopped. Redis failures back off and resume; a group that vanished is
        handled as a lost group, also when it is noticed while reconnecting."""
        failures = 0
        recreate = False
        while not self.health.stopped and not self._stopping.is_set():
            began = time.monotonic()
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
                # Rounds went through since the last failure: a new outage backs off from the
                # start again, not from where the previous one left off.
                failures = 1 if self.health.last_progress > began else failures + 1
                self.health.unhealthy(f"{type(exc).__name__}: {exc}")
                self._reader.failed()
                await pause(self._stopping, self._outage.delay(failures))
            finally:
                await self._reader.drop_ahead()
        if self.health.stopped:
            await self._stopping.wait()  # stay up, not serving, until told to stop

    def applying_for(self, now: float) -> float:
        """Seconds the longest part being applied has been at it (0 when none is)."""
        return self._applier.waiting(now)

    async def close(self) -> None:
        """Release the worker's database connections."""
        await self._applier.close()

    async def _consume(self) -> None:
        """Rounds until stopped, as a pipeline: while batches N-1 and N are applied, batch N+1
        is decoded and N+2 read. Each database lane applies its part of one batch after the
        other, so one aggregate's events keep stream order. A small batch is gathered first
        (`_gather`). A batch already read when the stop comes is still applied and
        acknowledged."""
        applying: deque[asyncio.Task[None]] = deque()
        try:
            while True:
                while applying and applying[0].done():
                    await applying.popleft()
                stopping = self._stopping.is_set()
                entries = await self._entries(applying, stopping=stopping)
                if stopping and not entries:
                    return
                await self._retrier.touch_waiting()
                if self._poison.held:  # dead letters Redis had no memory for
                    await self._poison.retry_held()
                batch = await self.prepare(entries)
                while applying and (applying[0].done() or len(applying) >= _BATCHES_IN_FLIGHT):
                    await applying.popleft()
                if batch.deliveries or batch.settled:
                    applying.append(asyncio.create_task(self.finish(batch)))
                elif applying:  # nothing new; the batch in flight marks progress when done
                    await asyncio.wait([applying[0]], timeout=_IN_FLIGHT_POLL)
                else:
                    self.health.progressed()  # idle: nothing waiting, nothing in flight
        finally:
            # Every batch in flight is waited for, also when the round or one of them failed:
            # one left behind would go on beside the next round, its failure unobserved.
            done = await asyncio.gather(*applying, return_exceptions=True)
            applying.clear()
            if failed := next((r for r in done if isinstance(r, BaseException)), None):
                raise failed

    async def _entries(self, applying: deque[asyncio.Task[None]], *, stopping: bool) -> list[Entry]:
        """The next batch: due retries first, then entries idle on dead members and reprocess
        requests, then new ones (waiting for some only when nothing else is to be done). A
        large batch reads the next one ahead; small ones are gathered (`_gathered`)."""
        reader = self._reader
        entries = [] if stopping else await self._retrier.claim_due()
        if not stopping:
            entries += await reader.side_entries(entries)
        if reader.reading_ahead:
            entries += await reader.take_ahead()
            if not stopping and len(entries) >= self._ahead_from:
                reader.read_ahead()
            return entries
        if stopping:
            return entries
        if self._s.gather_delay:
            return await self._gathered(entries, applying)
        room = self._s.batch_size - len(entries)
        entries += await reader.read_new(room, wait=not entries and not applying)
        if entries:
            reader.read_ahead()
        return entries

    async def _gathered(
        self, entries: list[Entry], applying: deque[asyncio.Task[None]]
    ) -> list[Entry]:
        """New entries when small batches come: they are applied one at a time, each read once
        the one in flight is applied (or after _IN_FLIGHT_POLL: a slow one does not hold the
        stream back) and at least the gather delay after the previous read, so the events
        arriving meanwhile share its transaction. A read that waited for its first entry waits
        the gather delay from there and reads again (entries published together wake a blocked
        reader at the first of them)."""
        reader, delay = self._reader, self._s.gather_delay
        if applying and not entries:
            await asyncio.wait(applying, timeout=_IN_FLIGHT_POLL)
        busy = not all(task.done() for task in applying)
        flowing, self._flowing = self._flowing, False
        if flowing and not (entries or busy):
            await _sleep_until(self._last_read + delay)
        room = self._s.batch_size - len(entries)
        new = await reader.read_new(room, wait=not (entries or busy or flowing))
        self._last_read = time.monotonic()
        entries += new
        self._flowing = bool(new)
        if new and len(entries) < self._small and not (busy or flowing):
            await _sleep_until(self._last_read + delay)
            entries += await reader.read_new(self._s.batch_size - len(entries), wait=False)
            self._last_read = time.monotonic()
        if len(entries) >= self._small:
            reader.read_ahead()
        return entries

    async def process(self, entries: list[Entry]) -> None:
        """Decode, apply and settle one batch of entries."""
        await self.finish(await self.prepare(entries))

    async def prepare(self, entries: list[Entry]) -> Batch:
        """Decode a batch; entries that can never be handled become dead letters now."""
        batch = Batch()
        if entries:
            self._m.consumed.add(len(entries), self._attrs)
        over: list[Entry] = []
        decode, most, deliveries = self._decoder.decode, self._s.max_attempts, batch.deliveries
        for entry in entries:
            if entry.raw is None:  # deleted or trimmed while pending
                self._reader.deleted([entry.entry_id], entry.stream)
                batch.settled.append(entry)
                continue
            if entry.attempt > most:
                over.append(entry)
                continue
            decoded = decode(entry)
            if isinstance(decoded, Poison):
                await self._poisoned(entry, decoded)
            else:
                deliveries.append(decoded)
        if over:
            batch.settled += await self._poison.over_attempts(over)
        return batch

    async def _poisoned(self, entry: Entry, poison: Poison) -> DeadLetterRow | None:
        """Dead-letter an entry that can never be handled; its row, when written."""
        reason, error_class = poison.reason, poison.error_class or "Poison"
        return await self._poison.move(entry, reason, error_class, poison.error)

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
            if outcomes.done and not outcomes.duplicates:  # a duplicate's age is no latency
                self._record_latency(outcomes.done)
            settled += await self._settle(outcomes)
        if settled:
            await self.streams.ack(settled)
            await self._poison.mark_reprocessed(settled)
        self.health.progressed()

    def _record_latency(self, done: list[Delivery]) -> None:
        """One observation per batch, of its oldest event with a time (a histogram record costs
        several microseconds): `done` is in lane order, not stream order, so the oldest is
        looked for, once per batch."""
        oldest = nanos = 0
        for d in done:
            at = d.ctx.envelope.time
            if at.seconds and (not oldest or (at.seconds, at.nanos) < (oldest, nanos)):
                oldest, nanos = at.seconds, at.nanos
        if oldest:
            age = time.time() - (oldest + nanos * 1e-9)
            self._m.end_to_end.record(max(age, 0.0), self._attrs)

    async def _settle(self, outcomes: Outcomes) -> list[Entry]:
        for d, error in outcomes.failed:
            await self._failed(d, error)
        if outcomes.duplicates:
            self._m.duplicate.add(outcomes.duplicates, self._attrs)
        for result, n in (
            ("success", outcomes.applied),
            ("skipped", outcomes.skipped),
            ("duplicate", outcomes.duplicates),
        ):
            if n:
                self._m.processed.add(n, {**self._attrs, t.ATTR_RESULT: result})
        return [d.entry for d in outcomes.done]

    async def _failed(self, d: Delivery, error: BaseException | None) -> DeadLetterRow | None:
        """A rejected event or a last attempt is dead-lettered (its row returned, when written);
        any other gets another try."""
        entry = d.entry
        entry.first_failed = entry.first_failed or time.time()
        name = type(error).__name__ if error else "Error"
        with settling(self._applier.failed_span(d)):  # the handler call's span, when traced
            if isinstance(error, Reject):
                return await self._poison.move(entry, "rejected", name, error.reason, error)
            if entry.attempt >= self._s.max_attempts:
                return await self._poison.move(entry, "max_attempts", name, str(error), error)
            await self._retrier.schedule(d, error)
            return None

    def _on_group_lost(self, lost: GroupLost) -> bool:
        """Count and report a lost group; True when it is to be recreated at 0."""
        self._m.groups_lost.add(1, self._attrs)
        self._retrier.forget()  # the pending entries went with the group
        self._poison.held.forget()
        self.health.unhealthy(str(lost))
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


async def _sleep_until(deadline: float) -> None:
    """Sleep until time.monotonic() reaches `deadline`, if it has not. A plain sleep: the gather
    delay is short (a stop waits for it), and a wake-up on stop would cost more than the wait."""
    wait = deadline - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)
