"""An ordered partition's pending entries, taken back a page at a time in stream order.

Two cases. At a takeover, every entry of the partition pending in the group (on any member) is
claimed (XAUTOCLAIM, a page of `page` entries per call), the retry stream first. When an
aggregate whose later events the gate left pending in Redis only (past its cap,
`OrderedGate.spilled`) is released, this member's own pending entries are walked from the
aggregate's spill mark (XPENDING, then XRANGE: nothing claimed, no delivery counted) and its
events taken back. While either is under way the worker reads no new entries, so the events of
an aggregate reach the gate in stream order and none is skipped."""

from __future__ import annotations

import logging
from typing import Any

from consumers.deliveries import Entry
from consumers.ordering import OrderedGate
from consumers.streams import TopicStreams
from conveyor import wire
from conveyor.entry_ids import EntryId
from conveyor.replies import text

log = logging.getLogger(__name__)


class PendingPages:
    """The pages of pending entries an ordered worker takes back before reading new ones."""

    def __init__(self, streams: TopicStreams, gate: OrderedGate, reader: Any, page: int) -> None:
        self._streams = streams
        self._gate = gate
        self._reader = reader
        self._page = page
        self._stages: list[str] = []
        """Streams still to take over, in order; the first is under way at `_cursor`."""
        self._cursor = "0-0"
        self._seen: set[bytes] = set()
        """Aggregates met so far in the takeover."""
        self._taken = 0
        self._catching: dict[str, EntryId] = {}
        """Released aggregate -> the first of its events still to take back from Redis."""
        self._from: EntryId | None = None
        """Where the walk of this member's pending entries goes on."""

    @property
    def active(self) -> bool:
        """Entries remain to take back: no new entries may be read meanwhile."""
        return bool(self._stages or self._catching)

    def take_over(self) -> None:
        """Start taking over the partition's pending entries (forgetting any walk under way)."""
        self._stages = [self._streams.retry, self._streams.keys.events]
        self._cursor = "0-0"
        self._seen = set()
        self._taken = 0
        self._catching = {}
        self._from = None

    def catch_up(self, marks: dict[str, EntryId]) -> None:
        """Take back the events of these released aggregates from their spill marks on."""
        for agg, mark in marks.items():
            self._catching[agg] = min(mark, self._catching.get(agg, mark))
            if self._from is None or mark < self._from:
                self._from = mark

    async def next(self) -> list[Entry]:
        """The next page's entries, in stream order (empty once nothing remains)."""
        while self._stages:
            entries = await self._take_over_page()
            if entries:
                return entries
        while self._catching:
            entries = await self._catch_up_page()
            if entries:
                return entries
        return []

    async def _take_over_page(self) -> list[Entry]:
        """Claimed entries of the stream under way. Only the first of each aggregate counts the
        delivery as an attempt: the others were never tried (they waited behind it), unless
        their aggregate is parked."""
        stream = self._stages[0]
        claimed, deleted, cursor = await self._streams.autoclaim(
            stream, 0, self._page, self._cursor
        )
        if deleted:
            self._reader.deleted(deleted, stream)
        self._cursor = cursor
        if cursor in ("0-0", "0"):
            self._stages.pop(0)
            self._cursor = "0-0"
        for e in claimed:
            agg = None if e.raw is None else e.fields.get(wire.F_AGGREGATE_ID)
            if agg is None:
                continue
            if agg in self._seen or text(agg) in self._gate.parked:
                e.attempt = 1
            self._seen.add(agg)
        self._taken += len(claimed)
        if not self._stages and self._taken:
            log.info(
                "took over pending entries: stream=%s group=%s count=%d",
                self._streams.keys.events,
                self._streams.group,
                self._taken,
            )
        return claimed

    async def _catch_up_page(self) -> list[Entry]:
        """The events of the released aggregates in the next page of this member's pending
        entries, each as attempt 1: they waited behind their aggregate's failed event, never
        tried."""
        assert self._from is not None
        events = self._streams.keys.events
        ids = await self._streams.pending_mine(events, str(self._from), self._page)
        done = len(ids) < self._page
        if not done:
            self._from = EntryId.parse(ids[-1]).after()
        found, gone = await self._streams.entries(events, ids)
        if gone:
            self._reader.deleted(gone, events)
            await self._streams.ack([Entry(events, i, None) for i in gone])
        out: list[Entry] = []
        for e in found:
            raw = e.fields.get(wire.F_AGGREGATE_ID)
            agg = None if raw is None else text(raw)
            at = EntryId.parse(e.entry_id)
            if agg is None or agg not in self._catching or at < self._catching[agg]:
                continue
            self._catching[agg] = at.after()
            out.append(e)
        if done:
            self._catching = {}
            self._from = None
        return out
