"""Why a reprocess skipped a dead letter: the reasons, and the audit rows naming who requeued it
first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

import asyncpg

from admin.catalog.records import DeadLetterRecord, Skip
from conveyor import wire
from conveyor.database import AUDIT_TABLE, CATALOG_SCHEMA

REASONS: Final = (
    "reprocessing",
    "reprocessed",
    "resolved",
    "other_deployment",
    "gone",
    "changed",
    "earlier_layout",
)
"""Every Skip.reason, in the order of conveyor.v1.SkipReason."""

_REQUEUED: Final = ("reprocessing", "reprocessed")
_AUDIT: Final = f"{CATALOG_SCHEMA}.{AUDIT_TABLE}"
_REQUEUES: Final = (
    f"SELECT DISTINCT ON (t.entry_id) t.entry_id, a.at, a.principal, "
    "a.detail->>'idempotency_key' AS key "
    f"FROM {_AUDIT} AS a, unnest(a.target_ids) AS t(entry_id) "
    "WHERE a.key_prefix IN ($1, '') AND a.action = 'reprocess' AND a.outcome = 'requeued' "
    "AND a.detail->>'topic' = $2 AND a.target_ids && $3::text[] AND t.entry_id = ANY($3::text[]) "
    "ORDER BY t.entry_id, a.id DESC"
)
"""The latest requeue of each of the entry ids, from the rows `reprocess` writes (action
`reprocess`, outcome `requeued`, detail.topic and detail.idempotency_key)."""


def not_open(record: DeadLetterRecord) -> Skip:
    """A dead letter whose state is no longer `open`; `explain` adds who requeued it."""
    if record.state == "resolved":
        by = f" by {record.resolved_by}" if record.resolved_by else ""
        why = f": {record.resolution}" if record.resolution else ""
        return Skip(record.entry_id, "resolved", f"resolved{by}{why}")
    if record.state == "reprocessing":
        return Skip(
            record.entry_id,
            "reprocessing",
            f"already requeued; group {record.group} has not applied it yet",
        )
    if record.retried_as:
        detail = (
            f"already reprocessed: it failed again as dead letter {record.retried_as}; "
            "reprocess that one"
        )
    else:
        detail = f"already reprocessed: group {record.group} applied it"
    return Skip(record.entry_id, "reprocessed", detail)


def resolved_before(record: DeadLetterRecord) -> Skip:
    """A dead letter a resolve left as it was: resolved before (by whom, when and why), or
    resolved or changed by a concurrent call."""
    if record.state != "resolved":
        return changed(record)
    by = f" by {record.resolved_by}" if record.resolved_by else ""
    why = f": {record.resolution}" if record.resolution else ""
    return Skip(
        record.entry_id, "resolved", f"already resolved{by} at {_iso(record.updated_at)}{why}"
    )


def other_deployment(record: DeadLetterRecord) -> Skip:
    """A dead letter recorded for another deployment's stream, or naming an invalid group."""
    return Skip(
        record.entry_id,
        "other_deployment",
        f"recorded for dead-letter stream {record.dlq_stream} and group {record.group!r}, "
        "not this deployment's",
    )


def gone(record: DeadLetterRecord, stream: str) -> Skip:
    """A dead letter no longer in its dead-letter stream."""
    return Skip(
        record.entry_id,
        "gone",
        f"gone from dead-letter stream {stream} (trimmed or deleted): no event left to send",
    )


def earlier_layout(record: DeadLetterRecord, topic: str, streams: Sequence[wire.Keys]) -> Skip:
    """A dead letter of a stream the topic no longer has (its partition count changed since):
    no consumer of the current layout reads that stream's retry stream; `streams` are the
    topic's streams now."""
    now = "unpartitioned" if streams[0].partition is None else f"{len(streams)} partitions"
    return Skip(
        record.entry_id,
        "earlier_layout",
        f"its dead-letter stream {record.dlq_stream} is of an earlier layout of topic {topic} "
        f"(now {now}): no consumer reads its retry stream; resolve it, and send the event to "
        f"group {record.group} with `conveyor relay backfill`",
    )


def changed(record: DeadLetterRecord) -> Skip:
    """A dead letter a concurrent reprocess or resolve took while this call ran."""
    return Skip(
        record.entry_id,
        "changed",
        "changed by a concurrent reprocess or resolve while this call ran",
    )


async def explain(
    conn: asyncpg.Connection, key_prefix: str, topic: str, skips: Sequence[Skip]
) -> tuple[Skip, ...]:
    """`skips`, those already requeued or reprocessed naming who requeued them, when, and with
    which idempotency key (from the audit log of the deployment)."""
    requeued = [s.entry_id for s in skips if s.reason in _REQUEUED]
    if not requeued:
        return tuple(skips)
    rows = await conn.fetch(_REQUEUES, key_prefix, topic, requeued)
    by_entry = {row["entry_id"]: row for row in rows}
    out = []
    for skip in skips:
        row = by_entry.get(skip.entry_id) if skip.reason in _REQUEUED else None
        if row is not None:
            key = f" (idempotency key {row['key']})" if row["key"] else ""
            who = f" by {row['principal']} at {_iso(row['at'])}{key}"
            if skip.reason == "reprocessing":
                detail = skip.detail.replace("already requeued", f"already requeued{who}", 1)
            else:
                detail = f"{skip.detail}; requeued{who}"
            out.append(replace(skip, detail=detail))
        else:
            out.append(skip)
    return tuple(out)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
