"""`conveyor verify`'s rules: what the ledger, the catalog and the stream must show before an
event counts as applied, dead-lettered, in flight, unknown or lost (admin/verify/verdicts.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from admin.verify.report import GroupReport
from admin.verify.verdicts import (
    CLOCK_SKEW_MS,
    Event,
    Outcome,
    StreamView,
    Verdict,
    placed,
    settled,
    undelivered,
)
from conveyor.entry_ids import EntryId

PUBLISHED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MS = int(PUBLISHED.timestamp() * 1000)
CUTOFF = PUBLISHED - timedelta(days=30)
LAST = EntryId(MS + 10_000, 0)
"""The group's last-delivered id: 10 s after the publish."""
FIRST = EntryId(MS - 60_000, 0)
"""The stream's first entry: a minute before the publish."""
TRIMMED = Verdict(Outcome.UNKNOWN, "trimmed")
GONE = Verdict(Outcome.LOST, "stream-gone")
RESET = Verdict(Outcome.LOST, "stream-reset")
EXPIRED = Verdict(Outcome.UNKNOWN, "ledger-expired")


def event(published: datetime | None = PUBLISHED, created: datetime = PUBLISHED) -> Event:
    return Event("0190c1f8-9f6e-7b7a-8d1e-3f2a4b5c6d7e", "identity", created, published)


def view(
    *,
    exists: bool = True,
    last: EntryId | None = LAST,
    pending: tuple[EntryId, ...] = (),
    first: EntryId | None = FIRST,
    reset: bool = False,
) -> StreamView:
    return StreamView(exists, last, set(pending), first, reset)


@pytest.mark.parametrize(
    ("result", "dead_letter", "expected"),
    [
        ("success", None, Verdict(Outcome.APPLIED, "success")),
        ("skipped", None, Verdict(Outcome.APPLIED, "skipped")),
        # Reprocessed and applied: the ledger's success wins over the dead letter.
        ("success", "reprocessed", Verdict(Outcome.APPLIED, "success")),
        (None, "resolved", Verdict(Outcome.DEAD_LETTERED, "resolved")),
        ("dead_letter", "open", Verdict(Outcome.DEAD_LETTERED, "open")),
        # Marked in the ledger, the catalog row not written yet.
        ("dead_letter", None, Verdict(Outcome.DEAD_LETTERED, "open")),
        # A failure row does not count as applied: the stream must say more.
        ("failure", None, None),
        (None, None, None),
    ],
)
def test_the_ledger_and_the_catalog_settle_what_they_can(
    result: str | None, dead_letter: str | None, expected: Verdict | None
) -> None:
    assert settled(event(), result, dead_letter) == expected


def test_an_unpublished_row_is_in_flight() -> None:
    assert settled(event(published=None), None, None) == Verdict(Outcome.IN_FLIGHT, "unpublished")


def test_only_an_entry_surely_after_the_groups_position_is_undelivered_without_looking() -> None:
    latest = EntryId(MS + 60_000, 0)
    assert undelivered(event(), EntryId(MS - CLOCK_SKEW_MS - 1, 0), latest)
    # Within the clock skew of the position: the entry may be before it, so the stream decides.
    assert not undelivered(event(), EntryId(MS - CLOCK_SKEW_MS, 0), latest)
    assert not undelivered(event(), EntryId(MS + 5, 0), latest)
    # The group is not on the stream: the stream decides whether it still holds the entry.
    assert not undelivered(event(), None, latest)
    # The stream holds nothing as late as the event (created anew since): the stream decides.
    assert not undelivered(event(), EntryId(0, 0), EntryId(MS - CLOCK_SKEW_MS - 1, 0))
    assert not undelivered(event(), EntryId(0, 0), None)


@pytest.mark.parametrize(
    ("entries", "stream", "expected"),
    [
        ([EntryId(MS + 20_000, 0)], view(), Verdict(Outcome.IN_FLIGHT, "undelivered")),
        ([EntryId(MS + 5, 0)], view(last=None), Verdict(Outcome.IN_FLIGHT, "undelivered")),
        (
            [EntryId(MS + 5, 0)],
            view(pending=(EntryId(MS + 5, 0),)),
            Verdict(Outcome.IN_FLIGHT, "pending"),
        ),
        # A duplicate still pending keeps the event in flight.
        (
            [EntryId(MS + 5, 0), EntryId(MS + 7, 0)],
            view(pending=(EntryId(MS + 7, 0),)),
            Verdict(Outcome.IN_FLIGHT, "pending"),
        ),
        ([EntryId(MS + 5, 0)], view(), Verdict(Outcome.LOST, "acknowledged")),
    ],
)
def test_an_event_in_the_stream_is_in_flight_until_acknowledged(
    entries: list[EntryId], stream: StreamView, expected: Verdict
) -> None:
    assert placed(event(), entries, stream, CUTOFF) == expected


@pytest.mark.parametrize(
    ("stream", "created", "expected"),
    [
        (view(), PUBLISHED, Verdict(Outcome.LOST, "deleted")),
        (view(exists=False, last=None, first=None), PUBLISHED, GONE),
        # Created anew since (Redis lost data): lost, also where a trimmed stream would not say.
        (view(first=None, reset=True), PUBLISHED, RESET),
        (view(first=EntryId(MS + 60_000, 0), reset=True), PUBLISHED, RESET),
        # Trimmed from the head, or possibly so (within the clock skew): never called lost.
        (view(first=EntryId(MS + 60_000, 0)), PUBLISHED, TRIMMED),
        (view(first=EntryId(MS - CLOCK_SKEW_MS, 0)), PUBLISHED, TRIMMED),
        (view(first=None), PUBLISHED, TRIMMED),
        # Older than the ledger retention: its row may have been deleted.
        (view(), CUTOFF - timedelta(seconds=1), EXPIRED),
        (view(exists=False), CUTOFF - timedelta(seconds=1), EXPIRED),
    ],
)
def test_an_event_gone_from_the_stream_is_lost_only_where_nothing_was_trimmed(
    stream: StreamView, created: datetime, expected: Verdict
) -> None:
    assert placed(event(created=created), [], stream, CUTOFF) == expected


def test_a_group_report_counts_every_event_and_keeps_a_few_examples_per_class() -> None:
    report = GroupReport("mailer", "exactly-once", "mailer", "registry")
    for i in range(4):
        report.add(Verdict(Outcome.LOST, "deleted"), f"lost-{i}", examples=2)
    report.add(Verdict(Outcome.LOST, "acknowledged"), "acked", examples=2)
    report.add(Verdict(Outcome.APPLIED, "success"), "applied", examples=2)
    assert report.count(Outcome.LOST) == 5
    assert report.details(Outcome.LOST) == {"acknowledged": 1, "deleted": 4}
    assert report.examples == {Outcome.LOST: ["lost-0", "lost-1"]}
    assert report.events == 6
