"""`conveyor verify`'s work: the outbox window page by page against each group's ledger and dead
letters, then the events neither settles against the topic streams, then a last look at the
ledger for those that seem lost.

The order of the reads is what keeps a live deployment from false alarms. An event is only lost
when the stream shows it delivered and acknowledged, or gone from the stream's kept range, and a
ledger read made after that still has no row: a consumer commits the ledger row before it
acknowledges, so an event acknowledged before the stream was read has its row by then.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import asyncpg

from admin.catalog import Catalog
from admin.catalog.layouts import changed_at, name_of_event, named_keys, stream_names
from admin.verify import tables
from admin.verify.groups import Groups, Selection
from admin.verify.report import GroupReport, Report
from admin.verify.streams import TopicStream
from admin.verify.verdicts import (
    CLOCK_SKEW_MS,
    OTHER_LAYOUT,
    UNDELIVERED,
    Event,
    Outcome,
    StreamView,
    Verdict,
    placed,
    settled,
    undelivered,
)
from conveyor.entry_ids import EntryId
from conveyor.layouts import Layout

LAYOUT_GRACE: Final = timedelta(milliseconds=CLOCK_SKEW_MS)
"""Events published this soon after a partition count change may still have gone by the earlier
layout (a relay's claim began before the change). Relays still running at a forced change keep
the earlier layout until their next look (up to a heartbeat interval): what they published then
is reported lost (it is in the old streams; `conveyor relay replay` brings it back)."""


@dataclass(frozen=True, slots=True)
class Request:
    """What to verify."""

    schema: str
    """The application schema whose outbox holds the events."""
    key_prefix: str
    since: datetime
    topic: str | None = None
    selection: Selection = field(default_factory=Selection)
    examples: int = 5
    """Example event ids kept per class and group."""
    ledger_retention: float = 30 * 86400.0
    """The groups' ledger retention in seconds: older events may have lost their row."""
    page_size: int = tables.PAGE_SIZE


class Progress(Protocol):
    """Told how far the run is, for a progress display."""

    def outbox(self, rows: int, reached: datetime | None) -> None:
        """`rows` more outbox rows read, the last published at `reached` (None: unpublished)."""

    def stream(self, topic: str, entries: int) -> None:
        """`entries` more entries of `topic`'s stream read."""


Key = tuple[str, str]
"""(group, event id)."""


class Verifier:
    """One run over one outbox window."""

    def __init__(
        self, pool: asyncpg.Pool, client: Any, request: Request, progress: Progress | None
    ) -> None:
        self._pool = pool
        self._client = client
        self._request = request
        self._progress = progress
        self._catalog = Catalog(pool, request.key_prefix)
        self._groups = Groups(self._catalog, client, request.selection)
        self._waiting: dict[str, dict[str, list[Event]]] = defaultdict(lambda: defaultdict(list))
        """Topic -> group -> events the stream must settle."""
        self._published: Counter[str] = Counter()
        """Topic -> published events of the window: each was added to its stream at least once."""
        self._cutoff = datetime.min
        self._layouts: dict[str, Layout] = {}
        self._layouts_set: dict[str, datetime] = {}
        """Partitioned topic -> when its layout was last set: events published before went by
        an earlier layout, to streams this run does not look at."""

    async def run(self) -> Report:
        """Verify and return the report; InvalidInput for a selection that names nothing."""
        r = self._request
        now = await tables.database_now(self._pool)
        self._cutoff = _before(now, r.ledger_retention)
        report = Report(r.schema, r.key_prefix, r.since, now, r.topic)
        # A partitioned topic's events are verified per partition stream, named `topic:N`.
        self._layouts = await self._catalog.layouts()
        if self._layouts:
            self._layouts_set = await changed_at(self._pool, r.key_prefix)
        await self._groups.load(stream_names(r.topic, self._layouts) if r.topic else [])
        window = tables.Window(r.schema, r.since, now, r.topic)
        # Published rows first: a row published between the two reads is in neither (it is
        # newer than the run), never in both.
        for source in (
            tables.published(self._pool, window, r.page_size),
            tables.unpublished(self._pool, window, r.page_size),
        ):
            async for page in source:
                await self._page(page, report)
                if self._progress is not None:
                    self._progress.outbox(len(page), page[-1].published_at)
        await self._groups.check()
        for topic, waiting in sorted(self._waiting.items()):
            await self._settle(topic, waiting)
        report.groups = dict(sorted(self._groups.reports.items()))
        return report

    async def _page(self, events: Sequence[Event], report: Report) -> None:
        """Count a page of the window: what the ledger and the catalog settle now, in flight what
        cannot have been delivered yet; the rest waits for the streams."""
        report.events += len(events)
        if self._layouts:
            events = [_on_stream(e, self._layouts) for e in events]
        self._published.update(e.topic for e in events if e.published_at is not None)
        on: dict[str, list[GroupReport]] = {}
        for topic in sorted({e.topic for e in events}):
            on[topic] = await self._groups.on_topic(topic)
            if not self._groups.consumed(topic):
                report.unconsumed[topic] += sum(1 for e in events if e.topic == topic)
        verified = {g.group: g for groups in on.values() for g in groups if g.verified}
        if not verified:
            return
        ids = [e.event_id for e in events]
        ledger = await self._ledger(list(verified.values()), ids)
        dead = await self._dead_letters(ids)
        for event in events:
            for group in on[event.topic]:
                if group.verified:
                    self._first_look(group, event, ledger, dead)

    def _first_look(
        self, group: GroupReport, event: Event, ledger: Mapping[Key, str], dead: Mapping[Key, str]
    ) -> None:
        key = (group.group, event.event_id)
        verdict = settled(event, ledger.get(key), dead.get(key))
        if verdict is None and undelivered(event, *self._groups.position(group.group, event.topic)):
            verdict = Verdict(Outcome.IN_FLIGHT, UNDELIVERED)
        if verdict is None:
            self._waiting[event.topic][group.group].append(event)
        else:
            group.add(verdict, event.event_id, self._request.examples)

    async def _ledger(self, groups: Sequence[GroupReport], ids: Sequence[str]) -> dict[Key, str]:
        by_schema: dict[str, set[str]] = defaultdict(set)
        for g in groups:
            if g.ledger_schema is not None:
                by_schema[g.ledger_schema].add(g.group)
        found: dict[Key, str] = {}
        for schema, names in sorted(by_schema.items()):
            found |= await tables.ledger_results(self._pool, schema, names, ids)
        return found

    async def _dead_letters(self, ids: Sequence[str]) -> dict[Key, str]:
        """(group, event id) -> state of the group's latest dead letter of the event."""
        records = await self._catalog.dead_letters_of_events([uuid.UUID(i) for i in ids])
        return {(d.group, str(d.event_id)): d.state for d in records}  # oldest first: last wins

    async def _settle(self, topic: str, waiting: Mapping[str, list[Event]]) -> None:
        """Place the waiting events of `topic` by its stream, then look again at those that seem
        lost. Read in this order: the groups' positions, the entries, the pending lists, and the
        stream's first entry and counts."""
        stream = TopicStream(self._client, named_keys(topic, self._request.key_prefix))
        infos = await stream.groups()
        before = await stream.info() if infos is not None else None
        events = [e for group in waiting.values() for e in group]
        entries: dict[str, list[EntryId]] = {}
        if before is not None and before.last_entry is not None:
            start = min(e.search_from for e in events)
            wanted = {e.event_id for e in events}
            on_page = self._stream_progress(topic)
            entries = await stream.entries_of(start, before.last_entry, wanted, on_page)
        views = {}
        for group, group_events in sorted(waiting.items()):
            info = (infos or {}).get(group)
            last = None if info is None else info.last_delivered
            delivered = [
                x for e in group_events for x in entries.get(e.event_id, ()) if last and x <= last
            ]
            pending = await stream.pending(group, delivered) if delivered else set()
            views[group] = StreamView(infos is not None, last, pending, first_entry=None)
        after = await stream.info() if infos is not None else None
        reset = after is not None and after.created_since(self._published[topic])
        for group, group_events in sorted(waiting.items()):
            view = dataclasses.replace(
                views[group],
                exists=after is not None,
                first_entry=None if after is None else after.first_entry,
                reset=reset,
            )
            verdicts = {
                e.event_id: placed(e, entries.get(e.event_id, ()), view, self._cutoff)
                for e in group_events
            }
            await self._look_again(stream, self._groups.reports[group], group_events, verdicts)

    def _stream_progress(self, topic: str) -> Callable[[int], None] | None:
        progress = self._progress
        if progress is None:
            return None
        return lambda n: progress.stream(topic, n)

    async def _look_again(
        self,
        stream: TopicStream,
        group: GroupReport,
        events: Sequence[Event],
        verdicts: dict[str, Verdict],
    ) -> None:
        """Count the verdicts, those of seemingly lost events after a last look at the ledger,
        the catalog and the dead-letter stream, all read after the stream."""
        lost = [e for e in events if verdicts[e.event_id].outcome is Outcome.LOST]
        if lost and group.ledger_schema is not None:
            ids = [e.event_id for e in lost]
            schema, names = group.ledger_schema, [group.group]
            ledger = await tables.ledger_results(self._pool, schema, names, ids)
            dead = await self._dead_letters(ids)
            for event in lost:
                key = (group.group, event.event_id)
                again = settled(event, ledger.get(key), dead.get(key))
                if again is not None:
                    verdicts[event.event_id] = again
            still = {e.event_id for e in lost if verdicts[e.event_id].outcome is Outcome.LOST}
            start = min(e.search_from for e in lost)
            for event_id in await stream.dead_lettered(group.group, start, still):
                verdicts[event_id] = Verdict(Outcome.DEAD_LETTERED, "open")
        for event in events:
            verdict = verdicts[event.event_id]
            if verdict.outcome is Outcome.LOST and self._other_layout(event):
                verdict = Verdict(Outcome.UNKNOWN, OTHER_LAYOUT)
            group.add(verdict, event.event_id, self._request.examples)

    def _other_layout(self, event: Event) -> bool:
        """Whether `event` was published before its topic's layout was set (LAYOUT_GRACE)."""
        topic = event.topic.partition(":")[0]
        since = self._layouts_set.get(topic)
        if since is None or event.published_at is None:
            return False
        return event.published_at < since + LAYOUT_GRACE


def _before(now: datetime, seconds: float) -> datetime:
    """`seconds` before `now`; the earliest datetime when that is before year 1 (a retention
    that long has expired nothing)."""
    try:
        return now - timedelta(seconds=seconds)
    except OverflowError:
        return datetime.min.replace(tzinfo=now.tzinfo)


async def verify(
    pool: asyncpg.Pool, client: Any, request: Request, progress: Progress | None = None
) -> Report:
    """Verify the outbox window of `request` against every selected group (see `Verifier`)."""
    return await Verifier(pool, client, request, progress).run()


def _on_stream(event: Event, layouts: Mapping[str, Layout]) -> Event:
    """`event` with its topic as the name of the stream it went to (`topic:N` for a partition)."""
    name = name_of_event(event.topic, event.aggregate_id, layouts)
    return event if name == event.topic else dataclasses.replace(event, topic=name)
