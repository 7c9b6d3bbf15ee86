"""What the checker reads back after a scenario, and each event's trace for failure reports.

`load_facts` reads the outbox (ids, published_at, traceparent), the `effects` table, the
catalog's dead letters of the deployment's topic and, unless `scan_streams=False`, the topic
stream (every entry's event id, and whether it carries `rt.dead_letter`, the mark of a reprocess
entry, which belongs in a group's retry stream, never in the topic stream). `traces` adds the
ledger rows of a few events and renders everything known about each as text.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from conveyor import redis_client, wire
from tests.torture.deployment import Deployment
from tests.torture.workload import Txn

PAGE = 5000


@dataclass(frozen=True)
class OutboxRow:
    id: int
    event_id: uuid.UUID
    aggregate_id: str
    published_at: datetime | None
    traceparent: str | None


@dataclass(frozen=True)
class Effect:
    seq: int
    group: str
    event_id: uuid.UUID
    aggregate_id: str
    attempt: int
    stream: str
    entry_id: str
    pid: int | None


@dataclass(frozen=True)
class DeadLetter:
    id: int
    group: str
    event_id: uuid.UUID | None
    state: str
    reason: str
    source_stream: str
    source_entry_id: str
    dlq_entry_id: str


@dataclass(frozen=True)
class Entry:
    """One entry of the topic stream."""

    entry_id: str
    event_id: uuid.UUID | None
    reprocess_of: str | None  # rt.dead_letter: set only on (misplaced) reprocess entries


@dataclass
class Facts:
    outbox: dict[uuid.UUID, OutboxRow]
    effects: list[Effect]
    dead_letters: list[DeadLetter]
    entries: list[Entry] | None  # None: the stream was not scanned

    def entries_of(self) -> dict[uuid.UUID, list[Entry]]:
        out: dict[uuid.UUID, list[Entry]] = defaultdict(list)
        for entry in self.entries or ():
            if entry.event_id is not None:
                out[entry.event_id].append(entry)
        return out


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(_text(value))
    except ValueError:
        return None


async def load_facts(deployment: Deployment, *, scan_streams: bool = True) -> Facts:
    """Read everything the check needs from PostgreSQL and Redis."""
    d = deployment
    conn = await asyncpg.connect(d.database_url, timeout=10)
    try:
        outbox = {
            r["event_id"]: OutboxRow(
                r["id"], r["event_id"], r["aggregate_id"], r["published_at"], r["traceparent"]
            )
            for r in await conn.fetch(
                "SELECT id, event_id, aggregate_id, published_at, traceparent "
                f"FROM {d.schema}.outbox"
            )
        }
        effects = [
            Effect(*r)
            for r in await conn.fetch(
                "SELECT seq, consumer_group, event_id, aggregate_id, attempt, stream, entry_id, "
                f"pid FROM {d.schema}.effects ORDER BY seq"
            )
        ]
        dead_letters = [
            DeadLetter(*r)
            for r in await conn.fetch(
                "SELECT id, consumer_group, event_id, state, reason, source_stream, "
                "source_entry_id, dlq_entry_id FROM conveyor.dead_letters "
                "WHERE key_prefix = $1 AND topic = $2 ORDER BY id",
                d.key_prefix,
                d.topic,
            )
        ]
    finally:
        await conn.close()
    entries = None
    if scan_streams:
        entries = [e for k in d.streams for e in await scan_stream(d.redis_url, k.events)]
    return Facts(outbox, effects, dead_letters, entries)


async def scan_stream(redis_url: str, stream: str) -> list[Entry]:
    """Every entry of `stream`, in order, with its event id and reprocess mark."""
    r: Any = redis_client.connect(redis_url)  # redis+cluster:// too
    out: list[Entry] = []
    try:
        start = "-"
        while True:
            page = await r.xrange(stream, start, "+", count=PAGE)
            for entry_id, fields in page:
                mark = fields.get(wire.RT_DEAD_LETTER)
                out.append(
                    Entry(
                        _text(entry_id),
                        _uuid(fields.get(wire.F_EVENT_ID, b"")),
                        None if mark is None else _text(mark),
                    )
                )
            if len(page) < PAGE:
                return out
            start = "(" + _text(page[-1][0])
    finally:
        await r.aclose()


async def traces(
    deployment: Deployment,
    facts: Facts,
    txns: Mapping[uuid.UUID, Txn],
    event_ids: Iterable[uuid.UUID],
) -> dict[uuid.UUID, str]:
    """Everything known about each event, as a few indented lines: its transaction and trace id,
    outbox row, topic stream entries, ledger rows, dead letters and effects."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    ledger: dict[uuid.UUID, list[str]] = defaultdict(list)
    try:
        conn = await asyncpg.connect(deployment.database_url, timeout=10)
        try:
            for r in await conn.fetch(
                "SELECT event_id, consumer_group, processing_result, stream, entry_id, "
                f"processed_at FROM {deployment.schema}.event_ledger "
                "WHERE event_id = ANY($1::uuid[]) ORDER BY processed_at",
                ids,
            ):
                ledger[r[0]].append(f"{r[1]} {r[2]} {r[3]} {r[4]} at {r[5]:%H:%M:%S.%f}")
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        for event_id in ids:
            ledger[event_id].append(f"(ledger unreadable: {exc!r})")
    entries = facts.entries_of()
    wanted = set(ids)
    effects: dict[uuid.UUID, list[Effect]] = defaultdict(list)
    for effect in facts.effects:
        if effect.event_id in wanted:
            effects[effect.event_id].append(effect)
    return {e: _trace(e, facts, txns.get(e), entries, ledger[e], effects[e]) for e in ids}


def _trace(
    event_id: uuid.UUID,
    facts: Facts,
    txn: Txn | None,
    entries: Mapping[uuid.UUID, list[Entry]],
    ledger: list[str],
    effects: list[Effect],
) -> str:
    lines = [f"event {event_id}"]
    if txn is None:
        lines.append("  journal: unknown to the journal (no producer enqueued it)")
    else:
        unknown = " (commit answer lost; resolved by its orders row)" if txn.was_unknown else ""
        doomed = " doomed on purpose" if txn.doomed else ""
        error = f" error={txn.error}" if txn.error else ""
        lines.append(
            f"  journal: txn {txn.id} producer {txn.producer} #{txn.number} "
            f"{txn.status}{unknown}{doomed}{error} trace {txn.trace_id}"
        )
    row = facts.outbox.get(event_id)
    if row is None:
        lines.append("  outbox: no row")
    else:
        trace_id = (row.traceparent or "").split("-")[1:2] or ["-"]
        published = f"{row.published_at:%H:%M:%S.%f}" if row.published_at else "never"
        lines.append(
            f"  outbox: id {row.id} aggregate {row.aggregate_id} published_at {published} "
            f"trace {trace_id[0]}"
        )
    if facts.entries is None:
        lines.append("  stream entries: (not scanned)")
    else:
        found = entries.get(event_id, [])
        listed = ", ".join(
            e.entry_id + (f" (reprocess of {e.reprocess_of})" if e.reprocess_of else "")
            for e in found
        )
        lines.append(f"  stream entries: {listed or 'none'}")
    lines += [f"  ledger: {line}" for line in ledger] or ["  ledger: no rows"]
    letters = [d for d in facts.dead_letters if d.event_id == event_id]
    lines += [
        f"  dead letter: {d.group} {d.state} {d.reason} from {d.source_stream} "
        f"{d.source_entry_id} as {d.dlq_entry_id}"
        for d in letters
    ] or ["  dead letters: none"]
    lines += [
        f"  effect: {f.group} seq {f.seq} attempt {f.attempt} from {f.stream} {f.entry_id} "
        f"pid {f.pid}"
        for f in effects
    ] or ["  effects: none"]
    return "\n".join(lines)
