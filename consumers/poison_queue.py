"""Moving entries that will not be applied to the dead-letter stream, and into the catalog:
poison, rejected events, and those over the attempts cap."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from redis.exceptions import OutOfMemoryError

from consumers import dead_letters
from consumers.catalog import Catalog, DeadLetterRow
from consumers.deliveries import DeadLetterMark, Entry, dead_letter_mark, describe
from consumers.ledger import MarksBusy
from consumers.metrics import ConsumerMetrics, topic_attributes
from consumers.refusals import Held, HeldDeadLetters
from consumers.settings import ConsumerSettings
from consumers.spans import tracing_enabled
from consumers.streams import TopicStreams
from conveyor import telemetry as t
from conveyor import wire
from conveyor.outages import unreachable

log = logging.getLogger(__name__)

Marking = Callable[[DeadLetterMark], AbstractAsyncContextManager[bool]]
"""Marks one event dead-lettered in the ledger around a block, yielding whether it needs no move
(`Applier.marking_dead_letter`)."""


class PoisonQueue:
    """Dead-letters entries of one topic for one group: the entry goes to the dead-letter stream
    and is acknowledged in one step, then is recorded in the catalog (or by the reconciler)."""

    def __init__(
        self,
        *,
        streams: TopicStreams,
        catalog: Catalog,
        marking: Marking,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
    ) -> None:
        self._streams = streams
        self._catalog = catalog
        self._marking = marking
        self._s = settings
        self._m = metrics
        self._attrs = topic_attributes(streams.keys.events, settings.group)
        self._tracing = tracing_enabled()
        self.held = HeldDeadLetters(streams, settings)
        """Entries whose dead letters Redis refused for want of memory, pending meanwhile."""

    async def move(
        self,
        entry: Entry,
        reason: str,
        error_class: str,
        error: str,
        exc: BaseException | None = None,
    ) -> DeadLetterRow | None:
        """Move `entry` to the dead-letter stream for `reason` (a wire reason name) and record
        its catalog row. A redelivery (a replay, a relay duplicate) of an event the group
        dead-lettered before is acknowledged as a duplicate instead, while that dead letter still
        stands (`dead_letters.standing`): then None. None too when Redis, out of memory, refuses
        the dead letter: the entry then stays pending, held until Redis has room
        (`retry_held`); and when the entry is no longer pending on this member (another took it
        over): nothing is written."""
        standing = await self._standing(entry)
        if standing is not None:
            await self._duplicate(entry, standing)
            return None
        try:
            return await self._move(entry, reason, error_class, error, exc)
        except OutOfMemoryError as refusal:
            held = Held(entry, reason, error_class, error, exc, entry.delivered_at)
            self.held.hold(held, refusal)
            return None

    async def retry_held(self) -> None:
        """Write the dead letters Redis refused for want of memory, once the backoff since the
        last refusal is over; those still refused stay held."""
        for held in await self.held.due():
            try:
                await self._move(held.entry, held.reason, held.error_class, held.error, held.exc)
            except OutOfMemoryError as refusal:
                self.held.refused([held.entry], refusal)
                return
            self.held.written(held)

    async def _move(
        self,
        entry: Entry,
        reason: str,
        error_class: str,
        error: str,
        exc: BaseException | None = None,
        *,
        record: bool = True,
    ) -> DeadLetterRow | None:
        """Move `entry` to the dead-letter stream; its catalog row is recorded now, or returned
        for the caller to record (`record=False`). None when the entry is no longer pending on
        this member: another took it over, and nothing was written."""
        dlq, tracing = self._streams.keys.dlq, self._tracing
        with dead_letters.span(entry, reason, error_class, dlq=dlq, enabled=tracing) as traceparent:
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
            dlq_id = await self._streams.dead_letter(entry, fields)
        if dlq_id is None:
            log.warning(
                "not dead-lettered: the entry is no longer pending on this member (another "
                "member took it over): topic=%s group=%s entry=%s reason=%s",
                self._streams.keys.topic,
                self._s.group,
                entry.entry_id,
                reason,
            )
            return None
        self._m.dead_lettered.add(1, {**self._attrs, t.ATTR_REASON: reason})
        self._m.processed.add(1, {**self._attrs, t.ATTR_RESULT: "dead_letter"})
        log.error(
            "dead letter: topic=%s group=%s entry=%s reason=%s attempts=%d dlq_entry=%s error=%s",
            self._streams.keys.topic,
            self._s.group,
            entry.entry_id,
            reason,
            entry.attempt,
            dlq_id,
            describe(f"{error_class}: {error}"),
        )
        keys = self._streams.keys
        row = dead_letters.catalog_row(keys.topic, keys.dlq, dlq_id, fields)
        if record:
            await self._record([row])
        return row

    async def _standing(self, entry: Entry) -> str | None:
        """The entry id of the group's earlier dead letter of `entry`'s event, if it still
        stands (`dead_letters.standing`); None when the catalog cannot say (the entry is then
        moved all the same: a second dead letter rather than none)."""
        try:
            return await dead_letters.standing(self._catalog, self._streams, entry)
        except Exception as exc:  # noqa: BLE001 - a second dead letter is the safe side
            # PostgreSQL away: the consumer's outage line says so once, and the dead-lettering
            # that follows fails and is retried; any other failure is worth a line per entry.
            log.log(
                logging.DEBUG if unreachable(exc) else logging.WARNING,
                "cannot look up earlier dead letters of the event, taking it for its first: "
                "entry=%s error=%r",
                entry.entry_id,
                exc,
            )
            return None

    async def _duplicate(self, entry: Entry, standing: str) -> None:
        """Acknowledge `entry`, whose event's dead letter `standing` stands, as a duplicate."""
        await self._streams.ack([entry])
        self._count_duplicates(1)
        log.info(
            "event already dead-lettered by the group, acknowledged as a duplicate: topic=%s "
            "group=%s entry=%s dlq_entry=%s",
            self._streams.keys.topic,
            self._s.group,
            entry.entry_id,
            standing,
        )

    async def _record(self, rows: Sequence[DeadLetterRow]) -> None:
        if not rows:
            return
        try:
            await self._catalog.record_dead_letters(rows)
        except Exception as record_error:  # noqa: BLE001 - the reconciler records them later
            log.warning(
                "dead letters not yet in the catalog, the reconciler will add them: "
                "dlq_entries=%s error=%r",
                ",".join(r.dlq_entry_id for r in rows),
                record_error,
            )

    async def over_attempts(self, entries: list[Entry]) -> list[Entry]:
        """Entries delivered more often than max_attempts, whose last deliveries ended without
        an outcome (their consumers crashed or stalled), go to the dead-letter stream. But a
        stalled member may still hold one: the ledger is marked around the moves, so such a
        member cannot apply one after it was moved, and one it applied meanwhile (or one moved
        already, or one whose event the group dead-lettered before and whose dead letter still
        stands) is acknowledged instead of moved. A database failure leaves them all pending
        (DatabaseDown: the worker backs off); they are reclaimed later. So does Redis refusing
        a move for want of memory, for that entry and those after it. Returns the entries to
        acknowledge."""
        marks: dict[str, tuple[Entry, DeadLetterMark]] = {}
        again: list[Entry] = []
        for entry in entries:
            mark = dead_letter_mark(entry)
            if mark is None:
                try:
                    await self._over_attempts_one(entry)  # not an event anyone could apply
                except OutOfMemoryError as refusal:
                    self.held.refused([entry], refusal)  # reclaimed later, as below
            elif mark.event_id in marks:
                again.append(entry)  # the same event twice: one dead letter is enough
            else:
                marks[mark.event_id] = (entry, mark)
        # Looked up before the marks, which each hold a connection of the pool meanwhile.
        standing = {i: await self._standing(entry) for i, (entry, _) in marks.items()}
        settled: list[Entry] = []
        rows: list[DeadLetterRow] = []
        order, finished = sorted(marks), 0
        try:
            # One transaction per event, so a move that fails leaves the marks of the entries
            # moved before it committed; in event-id order, as the lanes' claims take theirs.
            for event_id in order:
                entry, mark = marks[event_id]
                async with self._marking(mark) as done:
                    if done:
                        settled.append(entry)
                        self._count_duplicates(1)
                    elif (letter := standing[event_id]) is not None:
                        # Marked all the same: no stalled member applies it after this either.
                        await self._duplicate(entry, letter)
                    elif (row := await self._over_attempts_one(entry, record=False)) is not None:
                        rows.append(row)
                finished += 1
        except MarksBusy:
            log.info(
                "over max_attempts but still being applied elsewhere, left pending: "
                "topic=%s group=%s entries=%s",
                self._streams.keys.topic,
                self._s.group,
                ",".join(e.entry_id for e, _ in marks.values()),
            )
            await self._record(rows)
            return settled
        except OutOfMemoryError as refusal:
            # The refused entry's mark rolled back with its move; it and those after it stay
            # pending, as when marks are busy.
            self.held.refused([marks[event_id][0] for event_id in order[finished:]], refusal)
            await self._record(rows)
            return settled
        # Recorded once the marks have committed and given their connection back: the worker
        # never holds two of the pool's connections at once.
        await self._record(rows)
        self._count_duplicates(len(again))  # acknowledged with the others: duplicates
        return settled + again

    def _count_duplicates(self, n: int) -> None:
        """`n` entries acknowledged as duplicates, counted as the worker counts its own."""
        if n:
            self._m.duplicate.add(n, self._attrs)
            self._m.processed.add(n, {**self._attrs, t.ATTR_RESULT: "duplicate"})

    async def _over_attempts_one(
        self, entry: Entry, *, record: bool = True
    ) -> DeadLetterRow | None:
        return await self._move(
            entry,
            "max_attempts",
            "Redelivered",
            f"delivered {entry.attempt} times, over max_attempts={self._s.max_attempts}; "
            "the last deliveries ended without an outcome (consumer crash?)",
            record=record,
        )

    async def mark_reprocessed(self, settled: list[Entry]) -> None:
        """Settled entries of the retry stream that re-delivered a dead letter: record it."""
        retry = self._streams.retry
        ids = [
            e.fields[wire.RT_DEAD_LETTER].decode()
            for e in settled
            if e.stream == retry and wire.RT_DEAD_LETTER in e.fields
        ]
        if ids:
            self._m.reprocessed.add(len(ids), self._attrs)
            try:
                await self._catalog.mark_reprocessed(self._streams.keys.dlq, ids)
            except Exception as exc:  # noqa: BLE001 - the catalog is informative here
                log.warning("cannot mark dead letters reprocessed: ids=%s error=%r", ids, exc)
