"""What became of one outbox event for one consumer group, and the rules that decide it from what
the ledger, the catalog and the topic stream say. No I/O: the verifier reads, these decide.

Every rule errs the same way: when the evidence does not prove a loss, the event is in flight or
unknown, never lost. `conveyor verify` reads the stream's group state before the stream's entries
and the ledger again after both, so an event applied while it looked is never taken for lost.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from conveyor.entry_ids import EntryId

CLOCK_SKEW_MS: Final = 5000
"""How far Redis's clock may run behind PostgreSQL's. A row's `published_at` is the start of the
relay's transaction, which XADDs before it commits, so the row's entry id is at most this much
older than `published_at`, and an event published within it of the stream's first entry is never
called lost for being absent."""

SEARCH_MARGIN_MS: Final = 60_000
"""How long before `published_at` the stream is searched for an event's entries: well beyond any
clock skew, so an entry is not missed for a clock running behind (it costs one read of a minute
of entries per topic)."""

APPLIED_RESULTS: Final = ("success", "skipped")
"""Ledger results that count as applied (conveyor.database.LEDGER_RESULTS)."""


class Outcome(enum.StrEnum):
    """The classes `conveyor verify` counts, per group."""

    APPLIED = "applied"
    DEAD_LETTERED = "dead-lettered"
    IN_FLIGHT = "in-flight"
    UNKNOWN = "unknown"
    LOST = "lost"


# Details: the reason within a class.
UNPUBLISHED: Final = "unpublished"
"""In flight: the row is not published yet."""
UNDELIVERED: Final = "undelivered"
"""In flight: in the stream after the group's last-delivered id, or the group is not on the
stream yet (consumers create it at 0, so it will read the entry)."""
PENDING: Final = "pending"
"""In flight: delivered and not acknowledged (in the group's pending list): being handled,
waiting out a retry backoff, or on a member that died until another reclaims it."""
TRIMMED: Final = "trimmed"
"""Unknown: not in the stream, and as old as the entries trimmed from its head; trims remove only
what every group acknowledged (or what --max-stream-length cut): look with `conveyor trace`."""
LEDGER_EXPIRED: Final = "ledger-expired"
"""Unknown: created before the ledger retention, so the group's row may have been deleted."""
OTHER_LAYOUT: Final = "other-layout"
"""Unknown: seemingly lost from the stream its topic's current layout gives it, but published
before that layout was set (a partition count change), so it went to a stream of the earlier
layout: look with `conveyor trace`, replay its window if the group should have applied it."""
DELETED: Final = "deleted"
"""Lost: published, newer than the stream's first entry, yet not in the stream (XDEL, a lost
write), and never applied nor dead-lettered."""
ACKNOWLEDGED: Final = "acknowledged"
"""Lost: in the stream, delivered and acknowledged by the group, with no ledger row nor dead
letter."""
STREAM_GONE: Final = "stream-gone"
"""Lost: published, but the topic's stream no longer exists (Redis lost data, or it was
deleted)."""
STREAM_RESET: Final = "stream-reset"
"""Lost: not in the stream, which was created anew since the event was published (Redis lost
data and a consumer recreated it): nothing was ever removed from it, or it has had fewer entries
added than the window published to it."""
DETAILS: Final = {
    Outcome.IN_FLIGHT: (UNPUBLISHED, UNDELIVERED, PENDING),
    Outcome.UNKNOWN: (TRIMMED, LEDGER_EXPIRED, OTHER_LAYOUT),
    Outcome.LOST: (DELETED, ACKNOWLEDGED, STREAM_GONE, STREAM_RESET),
}
"""The details of the classes that have fixed ones (applied: the ledger result; dead-lettered:
the dead letter's state)."""


@dataclass(frozen=True, slots=True, order=True)
class Verdict:
    """An event's class for one group, and the detail within it."""

    outcome: Outcome
    detail: str


@dataclass(frozen=True, slots=True)
class Event:
    """An outbox row in the window, as far as verifying needs it."""

    event_id: str
    topic: str
    created_at: datetime
    published_at: datetime | None
    aggregate_id: str = ""

    @property
    def earliest_entry(self) -> EntryId:
        """The smallest entry id the relay can have given the event (see CLOCK_SKEW_MS)."""
        return EntryId(max(self._published_ms - CLOCK_SKEW_MS, 0), 0)

    @property
    def search_from(self) -> EntryId:
        """Where to start looking for the event's entries (see SEARCH_MARGIN_MS)."""
        return EntryId(max(self._published_ms - SEARCH_MARGIN_MS, 0), 0)

    @property
    def _published_ms(self) -> int:
        if self.published_at is None:
            raise ValueError(f"event {self.event_id} is not published")
        return int(self.published_at.timestamp() * 1000)


def settled(
    event: Event, ledger_result: str | None, dead_letter_state: str | None
) -> Verdict | None:
    """The verdict the ledger row, the group's latest dead letter of the event and the outbox row
    give on their own; None when the streams must be asked."""
    if ledger_result in APPLIED_RESULTS:
        return Verdict(Outcome.APPLIED, str(ledger_result))
    if dead_letter_state is not None:
        return Verdict(Outcome.DEAD_LETTERED, dead_letter_state)
    if ledger_result == "dead_letter":  # marked, its catalog row not written yet
        return Verdict(Outcome.DEAD_LETTERED, "open")
    if event.published_at is None:
        return Verdict(Outcome.IN_FLIGHT, UNPUBLISHED)
    return None


def undelivered(event: Event, last_delivered: EntryId | None, last_entry: EntryId | None) -> bool:
    """Whether the published event is surely after `last_delivered`, the group's position on
    its stream, and not after `last_entry`, the stream's last entry read with it: in flight,
    not delivered yet. False when the group is not on the stream or the stream holds nothing as
    late as the event (a stream created anew): the stream's entries decide then.

    An entry deleted before the group reached it counts as undelivered until the group reads
    past its place (its position moves beyond it, and the event is looked for in the stream)."""
    if last_delivered is None or last_entry is None:
        return False
    return last_delivered < event.earliest_entry <= last_entry


@dataclass(frozen=True, slots=True)
class StreamView:
    """What the topic stream said of one group, read in this order: the group's last-delivered
    id, then the entries, then the pending list and the first entry."""

    exists: bool
    """Whether the stream key exists (trims and deletions never remove it)."""
    last_delivered: EntryId | None
    """The group's last-delivered id; None when the group is not on the stream."""
    pending: Collection[EntryId]
    """The event entries found that are in the group's pending list."""
    first_entry: EntryId | None
    """The stream's first entry, read after its entries; None when empty."""
    reset: bool = False
    """Whether the stream, read after its entries, shows it was created anew since the window's
    events were published (see STREAM_RESET)."""


def placed(
    event: Event, entries: Iterable[EntryId], view: StreamView, ledger_cutoff: datetime
) -> Verdict:
    """The verdict of a published event with no ledger row nor dead letter, from its entries in
    the stream (`entries`, possibly none) and the view of the group there."""
    found = list(entries)
    if found:
        return _in_stream(found, view)
    if event.created_at < ledger_cutoff:
        return Verdict(Outcome.UNKNOWN, LEDGER_EXPIRED)
    if not view.exists:
        return Verdict(Outcome.LOST, STREAM_GONE)
    if view.reset:
        return Verdict(Outcome.LOST, STREAM_RESET)
    if view.first_entry is None or event.earliest_entry <= view.first_entry:
        return Verdict(Outcome.UNKNOWN, TRIMMED)
    return Verdict(Outcome.LOST, DELETED)


def _in_stream(entries: Sequence[EntryId], view: StreamView) -> Verdict:
    last = view.last_delivered
    if last is None or any(entry > last for entry in entries):
        return Verdict(Outcome.IN_FLIGHT, UNDELIVERED)
    if any(entry in view.pending for entry in entries):
        return Verdict(Outcome.IN_FLIGHT, PENDING)
    return Verdict(Outcome.LOST, ACKNOWLEDGED)
