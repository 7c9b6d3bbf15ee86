"""Where a topic worker's entries come from: new ones (read one batch ahead), those idle on dead
members, and the group's retry stream."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from consumers.deliveries import Entry
from consumers.metrics import ConsumerMetrics, topic_attributes
from consumers.retries import RetrySchedule
from consumers.settings import ConsumerSettings
from consumers.streams import TopicStreams

log = logging.getLogger(__name__)

_RETRY_STREAM_PERIOD = 0.2
"""Seconds between reads of the group's retry stream (reprocessed dead letters)."""


class Reader:
    """Reads one topic for one group; waiting retries are the `Retrier`'s, but a blocking read
    never sleeps past the first of them."""

    def __init__(
        self,
        streams: TopicStreams,
        schedule: RetrySchedule,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
    ) -> None:
        self._streams = streams
        self._schedule = schedule
        self._s = settings
        self._m = metrics
        self._attrs = topic_attributes(streams.keys.events, settings.group)
        self._next_reclaim = 0.0
        self._next_retry_read = 0.0
        self._cursors: dict[str, str] = {}
        self._ahead: asyncio.Task[list[Entry]] | None = None
        self._stranded = False
        """A round failed: reads may have been answered with entries that never arrived."""

    async def side_entries(self) -> list[Entry]:
        """Entries idle on dead consumers and reprocess requests, when it is time for them."""
        entries: list[Entry] = []
        if self._stranded:
            entries += await self._reclaim_stranded()
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + max(self._s.claim_idle / 4, 0.05)
            entries += await self._reclaim()
        if now >= self._next_retry_read:
            self._next_retry_read = now + _RETRY_STREAM_PERIOD
            streams = self._streams
            entries += await streams.read(streams.retry, self._s.batch_size, None)
        return entries

    async def read_new(self, count: int, *, wait: bool) -> list[Entry]:
        """Up to `count` new entries; with `wait`, blocking until some come or a retry is due."""
        if count <= 0:
            return []
        block = self._block_ms() if wait else None
        return await self._streams.read(self._streams.keys.events, count, block)

    @property
    def reading_ahead(self) -> bool:
        """A read of the next batch was started and not yet taken."""
        return self._ahead is not None

    def read_ahead(self) -> None:
        """Start reading the next batch while this one is decoded and applied."""
        self._ahead = asyncio.create_task(self.read_new(self._s.batch_size, wait=False))

    async def take_ahead(self) -> list[Entry]:
        """The entries the read ahead brought."""
        task, self._ahead = self._ahead, None
        assert task is not None
        return await task

    async def drop_ahead(self) -> None:
        """After a failure: entries a read ahead got stay pending and are reclaimed later."""
        task, self._ahead = self._ahead, None
        if task is not None:
            with suppress(Exception):
                await task

    def failed(self) -> None:
        """The worker's round failed and nothing is in flight any more: entries Redis delivered
        to a read whose reply was lost (a connection reset, a reply that never came) are
        pending on this consumer unseen. The next round takes them back at once, rather than
        leaving them to the reclaim of entries idle for `claim_idle`."""
        self._stranded = True

    async def _reclaim_stranded(self) -> list[Entry]:
        entries: list[Entry] = []
        for stream in (self._streams.keys.events, self._streams.retry):
            entries += await self._streams.reclaim_mine(stream, self._s.batch_size, self._schedule)
        self._stranded = False
        if entries:
            log.info(
                "took back entries a lost reply left pending: stream=%s group=%s count=%d",
                self._streams.keys.events,
                self._s.group,
                len(entries),
            )
        return entries

    def deleted(self, ids: list[str], stream: str) -> None:
        """Count and report entries found deleted or trimmed while pending."""
        self._m.deleted_pending.add(len(ids), self._attrs)
        log.warning(
            "entries deleted or trimmed while pending, acknowledged without handling: "
            "stream=%s group=%s ids=%s",
            stream,
            self._s.group,
            ",".join(ids[:20]),
        )

    def _block_ms(self) -> int:
        wait = self._s.block
        due = self._schedule.next_due()
        if due is not None:
            wait = min(wait, max(due - time.monotonic(), 0.001))
        return max(int(wait * 1000), 1)

    async def _reclaim(self) -> list[Entry]:
        entries: list[Entry] = []
        idle_ms = int(self._s.claim_idle * 1000)
        for stream in (self._streams.keys.events, self._streams.retry):
            # Redis looks at no more than 10 x COUNT pending entries per call: keep the cursor,
            # or entries behind a long front of busy ones would never be reached.
            claimed, deleted, self._cursors[stream] = await self._streams.autoclaim(
                stream, idle_ms, self._s.batch_size, self._cursors.get(stream, "0-0")
            )
            if deleted:
                self.deleted(deleted, stream)
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
