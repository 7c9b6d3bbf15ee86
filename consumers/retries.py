"""Events waiting out their backoff: pending in Redis, scheduled in memory, claimed when due."""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from consumers.deliveries import Delivery, Entry, describe
from consumers.metrics import ConsumerMetrics, topic_attributes
from consumers.settings import ConsumerSettings
from consumers.signals import Retry
from consumers.spans import retry_event
from consumers.streams import TopicStreams

log = logging.getLogger(__name__)

_TOUCH_MARGIN = 0.5
"""Seconds subtracted from our own idea of an entry's idle time when touching it."""


@dataclass(order=True, slots=True)
class Waiting:
    """A failed event still pending on this consumer, to be claimed again at `due`."""

    due: float
    stream: str = field(compare=False)
    entry_id: str = field(compare=False)
    attempt: int = field(compare=False)
    """Attempts made so far."""
    first_failed: float = field(compare=False)
    """Unix time of the first failure seen."""
    touched: float = field(compare=False)
    """Monotonic time this consumer last (re)claimed the entry, resetting its idle time."""


class RetrySchedule:
    """Waiting events by due time (monotonic seconds)."""

    def __init__(self) -> None:
        self._heap: list[Waiting] = []
        self._ids: set[tuple[str, str]] = set()

    def add(self, waiting: Waiting) -> None:
        heapq.heappush(self._heap, waiting)
        self._ids.add((waiting.stream, waiting.entry_id))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._heap)

    def pop_due(self, now: float, limit: int) -> list[Waiting]:
        """Remove and return up to `limit` entries due at `now`, earliest first."""
        due: list[Waiting] = []
        while self._heap and self._heap[0].due <= now and len(due) < limit:
            w = heapq.heappop(self._heap)
            self._ids.discard((w.stream, w.entry_id))
            due.append(w)
        return due

    def next_due(self) -> float | None:
        return self._heap[0].due if self._heap else None

    def stale(self, now: float, older_than: float) -> list[Waiting]:
        """Entries last touched more than `older_than` seconds ago (still scheduled)."""
        return [w for w in self._heap if now - w.touched > older_than]

    def drop(self, keys: set[tuple[str, str]]) -> None:
        """Forget entries another consumer has taken over."""
        if not keys:
            return
        self._heap = [w for w in self._heap if (w.stream, w.entry_id) not in keys]
        heapq.heapify(self._heap)
        self._ids -= keys

    def clear(self) -> None:
        self._heap.clear()
        self._ids.clear()


def _idle_ms(now: float, since: float) -> int:
    """Milliseconds an entry has been idle in Redis at the least, touched or claimed at `since`."""
    return max(int((now - since - _TOUCH_MARGIN) * 1000), 0)


class Retrier:
    """Keeps failed events pending on this member until their backoff is over: schedules them,
    keeps other members from reclaiming them meanwhile, and claims them back when due."""

    def __init__(
        self,
        streams: TopicStreams,
        schedule: RetrySchedule,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
        *,
        on_deleted: Callable[[list[str], str], None],
    ) -> None:
        self._streams = streams
        self._schedule = schedule
        self._s = settings
        self._policy = settings.retry_policy
        self._m = metrics
        self._attrs = topic_attributes(streams.keys.events, settings.group)
        self._on_deleted = on_deleted
        """Told the ids (and stream) of due entries found deleted or trimmed meanwhile."""

    async def schedule(self, d: Delivery, error: BaseException | None) -> None:
        """Plan another attempt of a failed delivery: after `Retry.delay`, else the backoff."""
        entry = d.entry
        delay = (
            error.delay
            if isinstance(error, Retry) and error.delay is not None
            else self._policy.delay(entry.attempt)
        )
        # Touch it now: Redis counts its idle time from the delivery, and the schedule's
        # min-idle arithmetic needs to start from a moment Redis agrees on.
        idle_ms = _idle_ms(time.monotonic(), entry.delivered_at)
        if entry.entry_id not in await self._streams.touch(entry.stream, [entry.entry_id], idle_ms):
            log.info(
                "failed entry taken over by another member meanwhile: entry=%s", entry.entry_id
            )
            return
        now = time.monotonic()
        first_failed = entry.first_failed or time.time()
        self._schedule.add(
            Waiting(now + delay, entry.stream, entry.entry_id, entry.attempt, first_failed, now)
        )
        self._m.retried.add(1, self._attrs)
        retry_event(error, entry.attempt, delay)
        log.warning(
            "handler failed, retrying: topic=%s group=%s event_id=%s entry=%s attempt=%d "
            "retry_in=%.2fs error=%s",
            self._streams.keys.topic,
            self._s.group,
            d.event_id,
            entry.entry_id,
            entry.attempt,
            delay,
            describe(f"{type(error).__name__ if error else 'Error'}: {error}"),
        )

    async def claim_due(self) -> list[Entry]:
        """The waiting entries now due, claimed back for their next attempt."""
        entries: list[Entry] = []
        now = time.monotonic()
        for w in self._schedule.pop_due(now, self._s.batch_size):
            entry = await self._streams.claim(w.stream, w.entry_id, _idle_ms(now, w.touched))
            if entry is None:
                if await self._streams.exists(w.stream, w.entry_id):
                    log.info("retry taken over by another member: entry=%s", w.entry_id)
                else:
                    self._on_deleted([w.entry_id], w.stream)
                continue
            entry.attempt, entry.first_failed = w.attempt + 1, w.first_failed
            entries.append(entry)
        return entries

    async def touch_waiting(self) -> None:
        """Reset the idle time of waiting entries before anyone may reclaim them: one call per
        set of entries last touched together, with a min-idle that refuses entries another
        member took over since."""
        now = time.monotonic()
        together: dict[tuple[str, float], list[Waiting]] = {}
        for w in self._schedule.stale(now, self._s.claim_idle / 3):
            together.setdefault((w.stream, w.touched), []).append(w)
        gone: set[tuple[str, str]] = set()
        for (stream, touched), waiting in together.items():
            ids = [w.entry_id for w in waiting]
            ours = await self._streams.touch(stream, ids, _idle_ms(now, touched))
            stamp = time.monotonic()
            for w in waiting:
                if w.entry_id in ours:
                    w.touched = stamp
                else:
                    gone.add((w.stream, w.entry_id))
        self._schedule.drop(gone)

    def forget(self) -> None:
        """Drop every waiting entry: the group they were pending in is gone."""
        self._schedule.clear()
