"""The dead-letter report of a topic over a window: counts, error fingerprints, a histogram."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg

from admin.catalog.records import checked_topic
from admin.errors import InvalidInput
from conveyor import database

MAX_HOURS: Final = 720
TOP_FINGERPRINTS: Final = 20
FINGERPRINT_CHARS: Final = 1000
"""Characters of an error message that make its fingerprint (messages run up to 64 KiB)."""

_DEAD_LETTERS: Final = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"
_IN_WINDOW: Final = "key_prefix = $1 AND topic = $2 AND created_at >= $3 AND created_at <= $4"

# Applied in this order: quoted text first (it may hold anything), a UUID before the hex run its
# first group would otherwise become, and numbers last. A hex run needs a letter, so plain
# numbers of eight digits or more read as <n>.
_NORMALISERS: Final = (
    (r"""'[^']*'|"[^"]*\"""", "<str>", "g"),
    (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", "gi"),
    (r"\m(0x)?(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\M", "<hex>", "gi"),
    (r"\d+(\.\d+)?", "<n>", "g"),
)


@dataclass(frozen=True)
class CountByKey:
    """How many dead letters share one value of a dimension ("" when the value is unknown)."""

    key: str
    count: int


@dataclass(frozen=True)
class ErrorFingerprint:
    """Dead letters whose error class and message agree once ids and numbers are blanked out."""

    error_class: str
    message: str
    """The normalised message: `<uuid>`, `<hex>`, `<n>` and `<str>` stand for what varied."""
    count: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class HourCount:
    """Dead letters created in the clock hour (UTC) starting at `hour`."""

    hour: datetime
    count: int


@dataclass(frozen=True)
class DeadLetterReport:
    """Dead letters of one topic created in [window_start, window_end]."""

    topic: str
    hours: int
    window_start: datetime
    window_end: datetime
    total: int
    by_event_type: tuple[CountByKey, ...]
    by_reason: tuple[CountByKey, ...]
    by_group: tuple[CountByKey, ...]
    fingerprints: tuple[ErrorFingerprint, ...]
    """The most frequent first, at most TOP_FINGERPRINTS."""
    histogram: tuple[HourCount, ...]
    """Exactly `hours` clock hours, oldest first, ending with the one holding window_end; the
    first also counts the partial hour before it that the rolling window starts in."""
    success_rate: float | None
    """1 - total / processed, clamped to 0..1; None when the processed count was not given."""


# --- dead-letter report ------------------------------------------------------------------------


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _check_hours(hours: int) -> None:
    if type(hours) is not int or not 1 <= hours <= MAX_HOURS:
        raise InvalidInput(
            f"invalid hours {hours!r}: use 1 to {MAX_HOURS}", field="hours", value=str(hours)
        )


def _check_processed(processed: int | None) -> None:
    if processed is not None and processed < 0:
        raise InvalidInput(
            "processed must be zero or more", field="processed", value=str(processed)
        )


def _success_rate(total: int, processed: int | None) -> float | None:
    if not processed:  # unknown, or nothing processed: no rate to speak of
        return None
    # Clamped: dead letters of at-least-once groups are not in the ledger's processed count.
    return min(1.0, max(0.0, 1.0 - total / processed))


async def dead_letter_report(
    pool: asyncpg.Pool,
    prefix: str,
    topic: str,
    hours: int,
    *,
    now: datetime | None = None,
    processed: int | None = None,
) -> DeadLetterReport:
    """Counts, error fingerprints and an hourly histogram of the topic's dead letters (of the
    deployment with key prefix `prefix`) created in the `hours` hours up to `now` (default: the
    current time).

    `processed` is how many events the topic's groups processed in the window, when the caller
    knows it (the ledger only knows exactly-once groups); it yields the success rate.
    """
    _check_hours(hours)
    _check_processed(processed)
    checked_topic(topic)
    end = now or datetime.now(UTC)
    if end.utcoffset() is None:
        raise InvalidInput("now must carry a time zone", field="now", value=end.isoformat())
    start = end - timedelta(hours=hours)
    first_hour = _hour(end) - timedelta(hours=hours - 1)
    window = _Window(_IN_WINDOW, (prefix, topic, start, end))
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # One snapshot, so the total, the breakdowns and the histogram add up.
        total, by_type, by_reason, by_group = await _counts(conn, window)
        fingerprints = await _fingerprints(conn, window)
        per_hour = await _per_hour(conn, window, first_hour)
    histogram = tuple(
        HourCount(h, per_hour.get(h, 0))
        for h in (first_hour + timedelta(hours=i) for i in range(hours))
    )
    return DeadLetterReport(
        topic=topic,
        hours=hours,
        window_start=start,
        window_end=end,
        total=total,
        by_event_type=by_type,
        by_reason=by_reason,
        by_group=by_group,
        fingerprints=fingerprints,
        histogram=histogram,
        success_rate=_success_rate(total, processed),
    )


@dataclass(frozen=True, slots=True)
class _Window:
    """The report's rows: the WHERE clause (constants only) and its four parameters."""

    where: str
    params: tuple[str, str, datetime, datetime]


# GROUPING() sets a bit per column left out of the grouping set: event_type is the high bit.
_BY_EVENT_TYPE, _BY_REASON, _BY_GROUP, _ALL = 0b011, 0b101, 0b110, 0b111


async def _counts(
    conn: Any, window: _Window
) -> tuple[int, tuple[CountByKey, ...], tuple[CountByKey, ...], tuple[CountByKey, ...]]:
    rows = await conn.fetch(
        "SELECT GROUPING(event_type, reason, consumer_group) AS g, "
        "coalesce(event_type, reason, consumer_group, '') AS key, count(*) AS n "
        f"FROM {_DEAD_LETTERS} WHERE {window.where} "
        "GROUP BY GROUPING SETS ((), (event_type), (reason), (consumer_group))",
        *window.params,
    )

    def by(g: int) -> tuple[CountByKey, ...]:
        counts = [CountByKey(r["key"], r["n"]) for r in rows if r["g"] == g]
        return tuple(sorted(counts, key=lambda c: (-c.count, c.key)))

    total = next((r["n"] for r in rows if r["g"] == _ALL), 0)
    return total, by(_BY_EVENT_TYPE), by(_BY_REASON), by(_BY_GROUP)


def _normalised(column: str, first_param: int) -> str:
    """SQL replacing the varying parts of `column`; patterns go in as parameters from
    `first_param` on (they are constants, but parameters spare escaping them into SQL text)."""
    sql = column
    for i, (_pattern, placeholder, flags) in enumerate(_NORMALISERS):
        sql = f"regexp_replace({sql}, ${first_param + i}, '{placeholder}', '{flags}')"
    return sql


async def _fingerprints(conn: Any, window: _Window) -> tuple[ErrorFingerprint, ...]:
    message = _normalised(f"left(coalesce(error_message, ''), {FINGERPRINT_CHARS})", 6)
    rows = await conn.fetch(
        f"SELECT coalesce(error_class, '') AS error_class, {message} AS message, count(*) AS n, "
        "min(created_at) AS first_seen, max(created_at) AS last_seen "
        f"FROM {_DEAD_LETTERS} WHERE {window.where} GROUP BY 1, 2 "
        "ORDER BY n DESC, last_seen DESC, 1, 2 LIMIT $5",
        *window.params,
        TOP_FINGERPRINTS,
        *(pattern for pattern, _placeholder, _flags in _NORMALISERS),
    )
    return tuple(
        ErrorFingerprint(r["error_class"], r["message"], r["n"], r["first_seen"], r["last_seen"])
        for r in rows
    )


async def _per_hour(conn: Any, window: _Window, first_hour: datetime) -> dict[datetime, int]:
    # Clock hours in UTC (not the session's zone, which may be offset by half an hour); the
    # rolling window starts inside the hour before the first bucket, which that bucket absorbs.
    rows = await conn.fetch(
        "SELECT greatest(date_trunc('hour', created_at, 'UTC'), $5) AS hour, count(*) AS n "
        f"FROM {_DEAD_LETTERS} WHERE {window.where} GROUP BY 1",
        *window.params,
        first_hour,
    )
    return {r["hour"]: r["n"] for r in rows}
