"""Dead letters Redis refused for want of memory (at maxmemory with noeviction it refuses every
XADD, and every command of a MULTI): their entries stay pending on this member, kept from the
others as waiting retries are, and are moved when Redis has room again, with the reason and
attempts they had. Only a member that dies leaves them to be reclaimed after claim_idle."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import OutOfMemoryError

from consumers.deliveries import Entry
from consumers.settings import ConsumerSettings
from consumers.streams import TopicStreams
from conveyor.outages import OUTAGE_LOG_INTERVAL

log = logging.getLogger(__name__)

_TOUCH_MARGIN = 0.5
"""Seconds subtracted from our own idea of an entry's idle time when touching it."""


@dataclass(slots=True)
class Held:
    """A dead letter not yet written, and why it is one."""

    entry: Entry
    reason: str
    error_class: str
    error: str
    exc: BaseException | None
    touched: float
    """Monotonic time the entry's idle time last restarted (its delivery, or our touch)."""


class HeldDeadLetters:
    """The entries of one topic worker whose dead letters Redis refused, by entry id."""

    def __init__(self, streams: TopicStreams, settings: ConsumerSettings) -> None:
        self._streams = streams
        self._s = settings
        self._held: dict[tuple[str, str], Held] = {}
        self._tries = 0
        self._next_try = 0.0
        self._refusals = 0
        """Refusals since the last line saying so."""
        self._logged = -OUTAGE_LOG_INTERVAL

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: tuple[str, str], /) -> bool:
        """Whether the entry (stream, entry id) is held here."""
        return key in self._held

    def hold(self, held: Held, refusal: OutOfMemoryError) -> None:
        """Keep `held.entry` pending until its dead letter can be written."""
        self._held[held.entry.stream, held.entry.entry_id] = held
        self.refused([held.entry], refusal)

    def refused(self, entries: Sequence[Entry], refusal: OutOfMemoryError) -> None:
        """Redis refused the dead letters of `entries`; tried again after a backoff. Logged at
        the first refusal, then once every OUTAGE_LOG_INTERVAL with how many there were."""
        self._tries += 1
        self._next_try = time.monotonic() + self._s.outage_policy.delay(self._tries)
        self._refusals += len(entries)
        now = time.monotonic()
        if now - self._logged < OUTAGE_LOG_INTERVAL:
            log.debug("dead letters refused: %r", refusal)
            return
        log.error(
            "dead letter refused, redis is out of memory (used memory > maxmemory): the entry "
            "stays pending on this consumer, its dead letter is written once Redis has room; "
            "free memory (let consumers acknowledge so housekeeping trims the streams, cap them "
            "with --max-stream-length, delete other keys) or raise maxmemory: topic=%s group=%s "
            "entries=%s refused=%d held=%d",
            self._streams.keys.topic,
            self._s.group,
            ",".join(e.entry_id for e in entries[:20]),
            self._refusals,
            len(self._held),
        )
        self._logged, self._refusals = now, 0

    async def due(self) -> list[Held]:
        """The held dead letters to try again now (none before the backoff is over); the idle
        time of every held entry is restarted before another member may reclaim it, and those
        another member took over meanwhile are dropped."""
        if not self._held:
            return []
        await self._touch()
        if time.monotonic() < self._next_try:
            return []
        return list(self._held.values())

    def written(self, held: Held) -> None:
        """Its dead letter is written (or it needs none any more)."""
        self._held.pop((held.entry.stream, held.entry.entry_id), None)
        if not self._held:
            self._tries = 0

    def forget(self) -> None:
        """Drop every held entry: the group they were pending in is gone."""
        self._held.clear()
        self._tries = 0

    async def _touch(self) -> None:
        now = time.monotonic()
        stale: dict[tuple[str, float], list[Held]] = {}
        for held in self._held.values():
            if now - held.touched > self._s.claim_idle / 3:
                stale.setdefault((held.entry.stream, held.touched), []).append(held)
        for (stream, touched), group in stale.items():
            idle_ms = max(int((now - touched - _TOUCH_MARGIN) * 1000), 0)
            ours = await self._streams.touch(stream, [h.entry.entry_id for h in group], idle_ms)
            stamp = time.monotonic()
            for held in group:
                if held.entry.entry_id in ours:
                    held.touched = stamp
                else:
                    log.info(
                        "held entry taken over by another member: entry=%s", held.entry.entry_id
                    )
                    self.written(held)
